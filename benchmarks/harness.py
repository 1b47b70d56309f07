"""Timing helpers every benchmark shares: compile outside the timer, medians, JSON lines.

Also :class:`Case`, one operator at one size, which ``run.py`` times and the
case modules (``run.py``'s builders, ``topk_bench.py``, ``masking_bench.py``,
``ragged_bench.py``, ``attention_bench.py``) build, and the small input
helpers they share.

Times are wall-clock medians of calls that each end in ``block_until_ready``.
Quote ratios between variants measured in the same run, not absolute times:
the machines are shared and noisy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class Case:
    """One operator at one size: its JAX variants, PyTorch variants and byte counts.

    ``run.py`` times every variant: ``jaxops`` and ``naive`` are required,
    ``jaxops:<path>`` are other jaxops paths and ``naive:<what>`` other
    formulations of the naive one (both reported as jaxops / that path; the
    ``naive:<what>`` of ``variants`` are peers, those of ``host_variants``
    are not).
    """

    op: str
    params: str
    size: str
    shapes: str
    args: tuple  # args[0] is the differentiable pytree; the rest get no gradient
    variants: dict[str, Callable]  # "jaxops", "naive", ... -> fn(*args) -> out
    bytes_fwd: int  # what the forward pass must read and write
    bytes_bwd: int  # what the backward pass must read and write (0: not differentiable)
    torch_variants: dict[str, Callable] = dataclasses.field(default_factory=dict)
    torch_args: tuple = ()
    torch_diff: dict[str, int] = dataclasses.field(default_factory=dict)  # differentiable arg
    check: bool = True  # compare naive and jaxops forward outputs
    # Also time jaxops with args[0] donated ("jaxops:donated"): in-place where XLA can.
    donate: bool = False
    # "naive:<what>" -> (place, fn): ``place()`` is host work (NumPy) returning arrays and
    # ``fn(args[0], *place())`` the jitted rest; timed with the host work inside the timer.
    host_variants: dict[str, tuple[Callable, Callable]] = dataclasses.field(default_factory=dict)
    # Variant -> its own args (same roles: [0] differentiable), e.g. a padded-batch peer.
    variant_args: dict[str, tuple] = dataclasses.field(default_factory=dict)
    # compare(jaxops_out, naive_out) instead of assert_allclose (primary outputs).
    compare: Callable | None = None


def random_lengths(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    """``[n]`` int32 lengths uniform in ``[1, t]``."""
    return rng.integers(1, t + 1, size=n).astype(np.int32)


def offsets(lengths: jax.Array) -> jax.Array:
    """Where each segment starts (exclusive cumulative sum, int32)."""
    return jax.numpy.cumsum(lengths, dtype=jax.numpy.int32) - lengths


def torch_pad(torch, values, lengths, width: int, fill: float = 0.0, *, time_major=False):
    """PyTorch padding by one mask assignment: ``p = full(..., fill); p[t < lengths] = values``.

    ``values [M, F...]`` (the segments concatenated, ``M = sum(lengths)``) to
    ``[N, width, F...]``, or ``[width, N, F...]`` with ``time_major`` (assigned
    through the transposed view, so the result is contiguous). Differentiable
    w.r.t. ``values``.
    """
    n = lengths.shape[0]
    shape = (width, n) if time_major else (n, width)
    padded = values.new_full((*shape, *values.shape[1:]), fill)
    batch_major = padded.transpose(0, 1) if time_major else padded
    batch_major[torch.arange(width)[None, :] < lengths[:, None]] = values
    return padded


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


def compile_cold(jitted: Any, *args: Any, tries: int = 2) -> tuple[Any, float]:
    """``jitted.lower(*args).compile()`` and its seconds: the best of ``tries`` cold compiles.

    Each try starts from ``jax.clear_caches()``, so every variant pays its own
    tracing and lowering (jaxops' inner jitted rules included) whatever ran
    before it; the best try drops the noise of a shared machine.
    """
    best = float("inf")
    for _ in range(tries):
        jax.clear_caches()
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        best = min(best, time.perf_counter() - start)
    return compiled, best


def time_jax(
    fn: Callable[..., Any], *args: Any, repeats: int = 10, donate_argnums: tuple[int, ...] = ()
) -> dict[str, float]:
    """Jits ``fn``, compiles it outside the timer, and times ``repeats`` calls.

    With ``donate_argnums``, those arguments are donated to the program (it may
    write its output into their buffers); each call gets fresh copies, made
    outside the timer.

    Returns ``median_ms``, ``min_ms``, ``compile_s`` and, where XLA reports
    it, ``temp_bytes`` (the compiled program's temporary memory).
    """
    compiled, compile_s = compile_cold(jax.jit(fn, donate_argnums=donate_argnums), *args)

    def call_args():
        if not donate_argnums:
            return args
        fresh = [jax.numpy.copy(a) if i in donate_argnums else a for i, a in enumerate(args)]
        return _block(tuple(fresh))

    _block(compiled(*call_args()))  # warm up: first-call allocations
    times = []
    for _ in range(repeats):
        current = call_args()
        start = time.perf_counter()
        _block(compiled(*current))
        times.append(time.perf_counter() - start)
        del current
    result = {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "compile_s": compile_s,
        "timed_calls": repeats,
    }
    memory = compiled.memory_analysis()
    if memory is not None:
        result["temp_bytes"] = int(getattr(memory, "temp_size_in_bytes", 0))
    return result


def time_python(
    fn: Callable[[], Any], *, repeats: int = 10, sync=None, budget_s: float | None = None
) -> dict[str, float]:
    """Times a no-argument callable (e.g. PyTorch), after one warm-up call.

    With ``budget_s``, a callable whose warm-up call alone takes longer is not
    called again: the warm-up time is reported (``timed_calls`` 1,
    ``warmup_only`` True); otherwise the timed calls are cut to fit the budget
    (at least 3).
    """
    start = time.perf_counter()
    out = fn()
    if sync is not None:
        sync(out)
    warmup = time.perf_counter() - start
    del out
    if budget_s is not None and warmup > budget_s:
        ms = 1e3 * warmup
        return {"median_ms": ms, "min_ms": ms, "timed_calls": 1, "warmup_only": True}
    if budget_s is not None:
        repeats = min(repeats, max(3, int(budget_s / max(warmup, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if sync is not None:
            sync(out)
        times.append(time.perf_counter() - start)
        del out
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "timed_calls": repeats,
    }


def cpu_count() -> int:
    """The cores this process may run on (XLA CPU sizes its thread pool to these)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_torch():
    """``torch`` with as many threads as XLA uses here, or ``None`` when not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(cpu_count())
    return torch


def allocator() -> str:
    """``"jemalloc"`` when jemalloc is loaded here (``LD_PRELOAD``), else ``"glibc"``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            if "jemalloc" in f.read():
                return "jemalloc"
    except OSError:
        pass
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"


_COPIES: dict[int, Any] = {}


def time_copy(nbytes: int, *, repeats: int = 10) -> dict[str, float]:
    """The copy limit: a jitted ``x + 1`` that reads ``nbytes / 2`` and writes ``nbytes / 2``.

    Each call returns a fresh array, as an operator does, so it pays the same
    allocation costs (page faults of fresh ``mmap`` blocks under glibc).
    """
    n = max(1, int(nbytes) // 8)
    x = jax.numpy.zeros((n,), jax.numpy.float32)
    if n not in _COPIES:
        _COPIES[n] = jax.jit(lambda x: x + 1).lower(x).compile()
    compiled = _COPIES[n]
    _block(compiled(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(compiled(x))
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    torch = import_torch()
    return {
        "cores": cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "allocator": allocator(),
        "malloc_conf": os.environ.get("MALLOC_CONF"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
