"""Per-item work side by side on threads (torch and scipy release the GIL)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def on_threads(function: Callable, items: Sequence, workers: int | None = None) -> list:
    """``[function(item) for item in items]``, side by side on ``workers`` threads (``None``: one per CPU
    core; one item or one worker: on this thread). For per-nodule work in torch and scipy, which
    release the GIL."""
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))
