"""Plain-text tables and human units for the command line (no dependencies)."""

from __future__ import annotations

from typing import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
          wrap: dict[int, int] | None = None) -> str:
    """Columns padded to fit; `align` is one char per column, 'l' or 'r' (default: first l, rest r).
    `wrap` {column: width}: that column's cells break after commas onto continuation lines."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    pieces = [[_wrapped(c, (wrap or {}).get(i)) for i, c in enumerate(r)] for r in cells]
    widths = [max(len(line) for r in pieces for line in r[i]) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate(pieces):
        for k in range(max(len(c) for c in row)):
            parts = [(c[k] if k < len(c) else "").ljust(w) if a == "l" else (c[k] if k < len(c) else "").rjust(w)
                     for c, w, a in zip(row, widths, align)]
            lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _wrapped(text: str, width: int | None) -> list[str]:
    """`text` in lines of at most `width` characters, broken after commas (a longer item alone)."""
    if width is None or len(text) <= width:
        return [text]
    out, line = [], ""
    for item in text.split(","):
        piece = item if not line else f"{line},{item}"
        if line and len(piece) + 1 > width:
            out.append(line + ",")
            line = item
        else:
            line = piece
    return out + [line]


def num(value: float, digits: int = 3) -> str:
    """About `digits` significant digits, never in scientific notation: 32,270 / 493 / 4.93 / 0.0493."""
    a = abs(value)
    if a >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    if a == 0:
        return "0"
    decimals = digits - 1 - int(f"{a:e}".split("e")[1])
    return f"{value:.{max(0, decimals)}f}"


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """1.23e12 -> '1.23 T' + unit."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{num(value / factor, digits)} {prefix}{unit}"
    return f"{num(value, digits)} {unit}".rstrip()


def nbytes(value: float) -> str:
    """Bytes in decimal units, as datasheets quote memory (80 GB = 80e9), everywhere on the command line."""
    for factor, prefix in ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= factor:
            return f"{num(value / factor)} {prefix}"
    return f"{value:.0f} B"


def seconds(value: float) -> str:
    if value >= 2 * 86400:
        return f"{num(value / 86400)} days"
    if value >= 2 * 3600:
        return f"{num(value / 3600)} h"
    if value >= 120:
        return f"{num(value / 60)} min"
    if value >= 1:
        return f"{num(value)} s"
    if value >= 1e-3:
        return f"{num(value * 1e3)} ms"
    return f"{num(value * 1e6)} us"
