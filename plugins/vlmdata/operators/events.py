"""What an operator attaches to the asset events it emits."""

from __future__ import annotations


def _extra(summary: dict) -> dict:
    """The summary's scalar fields: small and JSON-safe, as an event's extra must be (lists of
    dead URLs or dropped records stay in the reports)."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def emit(context, outlets, summary: dict) -> None:
    """Attach the summary to each outlet's event (an Asset outlet gets one whenever the task succeeds)."""
    extra = _extra(summary)
    for outlet in outlets:
        context["outlet_events"][outlet].extra = extra


def emit_through(context, alias, asset, summary: dict) -> None:
    """An event for ``asset`` through the task's AssetAlias outlet. Airflow 3.3 sends an event for
    every Asset outlet of a task that succeeds; through an alias, only for what the task adds,
    so a task that succeeds without changing anything can stay silent."""
    context["outlet_events"][alias].add(asset, extra=_extra(summary))
