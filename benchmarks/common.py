"""Timing helpers shared by the benchmarks: compile time and steady-state time, measured separately."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def machine() -> str:
    devices = jax.devices()
    return f"{platform.machine()} {platform.processor() or ''} | jax {jax.__version__} | {devices[0].platform}: {len(devices)} x {devices[0].device_kind}"


def compile_seconds(fn: Callable, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds to trace, lower and compile `fn` (a jax.jit function) for these arguments, and the executable."""
    start = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    return time.perf_counter() - start, compiled


def steady_seconds(fn: Callable, *args: Any, repeats: int = 5, **kwargs: Any) -> float:
    """Median wall seconds of already-compiled calls, waiting for the results each time."""
    jax.block_until_ready(fn(*args, **kwargs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall(fn: Callable, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return time.perf_counter() - start, out
