"""A progress bar on stderr for long work (calibration, validation, a run's steps)."""

from __future__ import annotations

import sys

WIDTH = 30


def bar(done: int, total: int, label: str) -> None:
    """Redraw `[#####.....] done/total label` in place; a newline when done."""
    filled = int(WIDTH * done / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} {label:<40}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
