"""Timing helper shared by the bench modules."""

from __future__ import annotations

import time

import numpy as np


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls of fn(), seconds (the least disturbed run on a
    shared machine)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
