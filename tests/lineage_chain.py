"""Following lineage back: the datasets a dataset comes from, through every step's inputs and
outputs (what a data catalog does with OpenLineage events)."""

from __future__ import annotations

Name = tuple[str, str]  # OpenLineage's (namespace, name)


def sources_of(steps: list[tuple[set[Name], set[Name]]], wanted: set[Name]) -> set[Name]:
    """Every dataset ``wanted`` derives from, at any depth: the inputs of the steps that wrote
    it, then the inputs of the steps that wrote those, and so on."""
    found: set[Name] = set()
    todo = set(wanted)
    while todo:
        name = todo.pop()
        for inputs, outputs in steps:
            if name in outputs:
                todo |= inputs - found
                found |= inputs
    return found


def roots(steps: list[tuple[set[Name], set[Name]]], wanted: set[Name]) -> set[Name]:
    """The datasets ``wanted`` derives from that no step wrote: where its chain starts."""
    written = {name for _, outputs in steps for name in outputs}
    return {name for name in sources_of(steps, wanted) if name not in written}
