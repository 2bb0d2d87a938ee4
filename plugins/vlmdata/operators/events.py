"""What an operator attaches to the asset events it emits."""

from __future__ import annotations


def emit(context, outlets, summary: dict) -> None:
    """Attach the summary's scalar fields to each outlet's event: small and JSON-safe, as an
    event's extra must be (lists of dead URLs or dropped records stay in the reports)."""
    extra = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    for outlet in outlets:
        context["outlet_events"][outlet].extra = extra
