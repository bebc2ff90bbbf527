"""The table every benchmark prints: rich when available, aligned plain text with ``--plain``."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str,
    *,
    plain: bool,
    right: Collection[int] = (),
) -> None:
    """Print ``rows`` (strings, one per header) under ``title``.

    ``right`` holds the indices of the right-justified (numeric) columns in the rich
    table; the plain table left-justifies everything so that scripts can split it.
    """
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in right else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
