"""Markdown tables for the proof tooling's reports (``report.md`` and friends).

One renderer, :func:`table`, on `tabulate`'s GitHub format: the load test, the
chaos run and the worker benchmark write their tables through it instead of
joining ``|`` by hand. Cells are written as given (no number re-formatting).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tabulate import tabulate

__all__ = ["table"]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a GitHub-flavoured markdown table of ``rows`` under ``headers``."""
    rendered = tabulate(
        [[str(cell) for cell in row] for row in rows],
        headers=list(headers),
        tablefmt="github",
        disable_numparse=True,
    )
    return rendered.splitlines()
