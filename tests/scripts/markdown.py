"""Reading the reports' markdown tables back, cell by cell."""

from __future__ import annotations

import re


def table_rows(text: str) -> list[list[str]]:
    """The stripped cells of every markdown table row in ``text`` (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [cell.strip() for cell in line[1:-1].split("|")]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue
        rows.append(cells)
    return rows
