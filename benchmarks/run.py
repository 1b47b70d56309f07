"""Benchmarks every jaxops operator against its strongest peers: plain JAX, PyTorch, a copy.

Run ``python benchmarks/run.py`` (about 40 minutes on 2 cores; ``--glibc-sizes
large``: 20, ``--no-scaling``: 11; ``--help``). For each operator and size it
measures, in one process:

* ``jaxops``: the operator, jitted, forward (``fwd``) and forward+backward
  (``fwd+bwd``: ``jax.value_and_grad`` of ``sum(out * ct)`` with a fixed
  cotangent ``ct``, so the forward pass is not dead code);
* ``jaxops:unchecked`` (``tiny`` and ``small`` only): the same inside
  ``jax.jit(jaxops.unchecked(f))``, without the value checks' effects,
  whose fixed per-call cost shows at small sizes;
* ``naive``: what a user would write instead (gather / ``jnp.where`` /
  pad-then-``lax.top_k`` / ``jnp.nonzero(size=)``), differentiated by autodiff;
* ``naive:<what>``: another plain-JAX formulation, e.g. the additive mask
  ``x + bias`` for ``sequence_mask``;
* ``torch:*``: the PyTorch CPU equivalents, when torch is importable, with as
  many threads as XLA uses;
* ``copy``: a jitted copy moving the bytes the operator must read and write
  (the copy limit), so each time is also a fraction of memory bandwidth.

The cases live beside this runner: ``pack_rnn_sequence``,
``unpack_rnn_sequence`` and ``expand`` here; ``lengths_top_k`` in
``topk_bench.py``; the masks and ``safe_softmax`` in ``masking_bench.py``;
``segment_top_k``, ``segment_softmax`` and ``Ragged.to_padded`` in
``ragged_bench.py``; ``pack_sequences``, ``unpack_sequences``,
``attention_mask`` and ``safe_softmax(where=)`` in ``attention_bench.py``;
the converters and ``length_mask`` in ``convert_bench.py``.
Their docstrings name every peer. Here: ``pack_rnn_sequence`` against the
gather + ``where`` pad (``ragged_bench.naive_pad``, time-major),
``torch:pad_sequence`` (of ``split(values, lengths)``), ``torch:out[mask]=v``
(one mask assignment, ``harness.torch_pad``) and ``torch:pad_packed_sequence``
(from ``PackedSequence.data``); ``unpack_rnn_sequence`` against
``jnp.nonzero(size=)`` + gather, ``torch:transpose[mask]`` and
``torch:pack_padded_sequence`` (its ``.data``, in ``PackedSequence``'s row
order); ``expand`` against ``jnp.broadcast_to`` and ``torch:expand``
(``.contiguous()``).

The best peer is the fastest of ``naive``, the ``naive:<what>`` formulations
and the ``torch:*`` variants: each computes the operator's forward output
with no host work inside the timer (up to what the case modules name:
``PackedSequence``'s row order, the additive masks' gradient at masked
slots, ``torch:softmax``'s NaN rows; ``torch:softmax (unsafe)`` stays a
peer as the cost floor). Not peers: the ``jaxops:*`` paths, and the
``naive:<what>`` variants of ``Case.host_variants`` (``naive:host
placement``), which redo host work inside the timer to show what it costs.

Compile time is excluded from the timings and reported (``jit(f).lower(...)
.compile()`` seconds, jaxops and naive), with the compiled program's
temporary memory (``memory_analysis()``), which shows the custom VJPs'
residuals. Large arrays are timed under jemalloc and under glibc
(``--allocator both``, the default when ``libjemalloc.so.2`` is installed):
the script re-runs itself in a subprocess per allocator and merges the
results into one JSON-lines file and ``benchmarks/RESULTS.md``. The eager
section (``eager_bench.py``: no ``jit``, first call in a fresh process and
calls whose sizes change) runs after them, once.

Quote the ratios, not the absolute times: they are measured in the same
process, while the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attention_bench
import convert_bench
import eager_bench
import harness
import jax
import jax.numpy as jnp
import masking_bench
import numpy as np
import ragged_bench
import topk_bench
from harness import Case, random_lengths, torch_pad
from jax import lax

# Builders that benchmarks/profile.py reaches through this module.
from masking_bench import build_boolean_mask as build_boolean_mask
from masking_bench import build_safe_softmax as build_safe_softmax
from masking_bench import build_sequence_mask as build_sequence_mask
from topk_bench import build_top_k as build_top_k

import jaxops

HERE = os.path.dirname(os.path.abspath(__file__))
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"

OPS = (
    "pack_rnn_sequence",
    "unpack_rnn_sequence",
    *topk_bench.OPS,  # lengths_top_k
    "expand",
    *masking_bench.OPS,  # boolean_mask, boolean_unmask, boolean_mask_lengths, sequence_mask, ...
    *ragged_bench.OPS,  # segment_top_k, segment_softmax, Ragged.to_padded
    *attention_bench.OPS,  # pack_sequences, unpack_sequences, attention_mask
    *convert_bench.OPS,  # the converters and length_mask
)

# Sizes: N sequences with lengths uniform in [1, T], F features. Ops whose
# natural input is not a batch of sequences map these onto their own shapes
# (see the builders); "2N" doubles the batch, "2T" the length.
SIZES = {
    "tiny": {"n": 4, "t": 8, "f": 4},
    "small": {"n": 32, "t": 64, "f": 128},
    "large": {"n": 256, "t": 512, "f": 256},
    "large-2N": {"n": 512, "t": 512, "f": 256},
    "large-2T": {"n": 256, "t": 1024, "f": 256},
}
UNCHECKED_SIZES = ("tiny", "small")  # where jaxops:unchecked is timed too
MIB = 1 << 20


def _primary(out):
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------- #
# Naive JAX formulations: what a user writes without jaxops (autodiff gradients);
# pack_rnn_sequence's is ragged_bench.naive_pad (time-major)
# --------------------------------------------------------------------------- #


def naive_unpack(packed, lengths, *, total_length):
    t = lax.broadcasted_iota(jnp.int32, (lengths.shape[0], packed.shape[0]), 1)
    seq, step = jnp.nonzero(t < lengths[:, None], size=total_length)
    return packed[step, seq]


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


def _split(torch, x, lengths):
    return torch.split(x, [int(v) for v in lengths])


def build_pack(rng, size, dims, torch):
    n, t, f = dims["n"], dims["t"], dims["f"]
    lengths = random_lengths(rng, n, t)
    m, tmax = int(lengths.sum()), int(lengths.max())
    values = rng.standard_normal((m, f), dtype=np.float32)
    out_bytes = tmax * n * f * 4
    case = Case(
        "pack_rnn_sequence",
        "",
        size,
        f"values [{m}, {f}] -> [{tmax}, {n}, {f}]",
        (jnp.asarray(values), jnp.asarray(lengths)),
        {
            "jaxops": lambda v, lens: jaxops.pack_rnn_sequence(v, lens, max_length=tmax),
            "naive": lambda v, lens: ragged_bench.naive_pad(
                v, lens, max_length=tmax, time_major=True
            ),
        },
        values.nbytes + out_bytes,
        values.nbytes + out_bytes,
    )
    if torch is not None:
        rnn = torch.nn.utils.rnn
        tv, tl = torch.from_numpy(values), torch.from_numpy(lengths.astype(np.int64))
        packed = rnn.pack_sequence(_split(torch, tv, lengths), enforce_sorted=False)
        order = packed.sorted_indices
        batch_sizes = packed.batch_sizes
        unsorted = packed.unsorted_indices
        case.torch_variants = {
            "torch:pad_sequence": lambda v, _d: rnn.pad_sequence(_split(torch, v, lengths)),
            "torch:out[mask]=v": lambda v, _d: torch_pad(torch, v, tl, tmax, time_major=True),
            "torch:pad_packed_sequence": lambda _v, d: rnn.pad_packed_sequence(
                rnn.PackedSequence(d, batch_sizes, order, unsorted)
            )[0],
        }
        # pad_packed_sequence starts from PackedSequence.data (its own row order).
        case.torch_args = (tv, packed.data.clone())
        case.torch_diff = {"torch:pad_packed_sequence": 1}
    return case


def build_unpack(rng, size, dims, torch):
    n, t, f = dims["n"], dims["t"], dims["f"]
    lengths = random_lengths(rng, n, t)
    m, tmax = int(lengths.sum()), int(lengths.max())
    packed = rng.standard_normal((tmax, n, f), dtype=np.float32)
    in_bytes = m * f * 4  # padding slots need not be read
    case = Case(
        "unpack_rnn_sequence",
        "",
        size,
        f"packed [{tmax}, {n}, {f}] -> [{m}, {f}]",
        (jnp.asarray(packed), jnp.asarray(lengths)),
        {
            "jaxops": lambda p, lens: jaxops.unpack_rnn_sequence(p, lens, total_length=m),
            "naive": lambda p, lens: naive_unpack(p, lens, total_length=m),
        },
        in_bytes + m * f * 4,
        in_bytes + packed.nbytes,
    )
    if torch is not None:
        rnn = torch.nn.utils.rnn
        tl = torch.from_numpy(lengths.astype(np.int64))

        def masked(p):
            valid = torch.arange(p.shape[0])[None, :] < tl[:, None]
            return p.transpose(0, 1)[valid]

        case.torch_variants = {
            "torch:transpose[mask]": masked,
            "torch:pack_padded_sequence": lambda p: (
                rnn.pack_padded_sequence(p, tl, enforce_sorted=False).data
            ),
        }
        case.torch_args = (torch.from_numpy(packed),)
    return case


def build_expand(rng, size, dims, torch):
    n, t, f = dims["n"], dims["t"], dims["f"]
    x = rng.standard_normal((n, 1, f), dtype=np.float32)
    out_bytes = n * t * f * 4
    case = Case(
        "expand",
        "",
        size,
        f"[{n}, 1, {f}] with ({t}, 1) -> [{n}, {t}, {f}]",
        (jnp.asarray(x),),
        {
            "jaxops": lambda x: jaxops.expand(x, (t, 1)),
            "naive": lambda x: jnp.broadcast_to(x, (n, t, f)),
        },
        x.nbytes + out_bytes,
        x.nbytes + out_bytes,
    )
    if torch is not None:
        # expand() alone is a view; .contiguous() materialises it like jit's output.
        # The backward pass of expand is sum_to_size.
        case.torch_variants = {"torch:expand": lambda x: x.expand(n, t, f).contiguous()}
        case.torch_args = (torch.from_numpy(x),)
    return case


BUILDERS: dict[str, list[Callable]] = {
    "pack_rnn_sequence": [build_pack],
    "unpack_rnn_sequence": [build_unpack],
    **topk_bench.BUILDERS,
    "expand": [build_expand],
    **masking_bench.BUILDERS,
    "safe_softmax": [
        *masking_bench.BUILDERS["safe_softmax"],
        *attention_bench.SAFE_SOFTMAX_BUILDERS,
    ],
    **ragged_bench.BUILDERS,
    **attention_bench.BUILDERS,
    **convert_bench.BUILDERS,
}


# --------------------------------------------------------------------------- #
# Measurement
# --------------------------------------------------------------------------- #


def _value_and_grad(fn):
    def loss(x, ct, *rest):
        return jnp.sum(_primary(fn(x, *rest)) * ct)

    return jax.value_and_grad(loss)


def _torch_fwd_bwd(torch, fn, args, diff_index=0):
    """A no-argument callable: forward, ``sum(out * ct)``, ``autograd.grad`` w.r.t. the data."""
    x = args[diff_index]
    leaves = (
        tuple(t.detach().clone().requires_grad_(True) for t in x)
        if isinstance(x, tuple)
        else x.detach().clone().requires_grad_(True)
    )
    full = list(args)
    full[diff_index] = leaves
    with torch.no_grad():
        out = _primary(fn(*full))
    ct = torch.from_numpy(np.random.default_rng(1).standard_normal(out.shape, np.float32))
    inputs = list(leaves) if isinstance(leaves, tuple) else [leaves]

    def run():
        loss = (_primary(fn(*full)) * ct).sum()
        return loss, torch.autograd.grad(loss, inputs)

    return run


def measure(
    case: Case, *, repeats: int, torch, alloc: str, log, torch_budget: float, too_slow: set
) -> list[dict[str, Any]]:
    """Times every variant of ``case``, forward then forward+backward, as JSON rows.

    A PyTorch variant whose first call takes longer than ``torch_budget``
    seconds is reported from that call alone and skipped at the later
    (larger) sizes: ``too_slow`` collects them across calls.
    """
    rows = []
    base = {
        "kind": "result",
        "op": case.op,
        "params": case.params,
        "size": case.size,
        "shapes": case.shapes,
        "allocator": alloc,
        "repeats": repeats,
    }

    def emit(variant, pass_, result, nbytes=None):
        row = {**base, "variant": variant, "pass": pass_, **result}
        row["repeats"] = row.pop("timed_calls", repeats)
        if nbytes is not None:
            row["bytes"] = int(nbytes)
        rows.append(row)
        log(
            f"  {case.op:22s} {case.params:14s} {case.size:9s} {pass_:8s} {variant:34s}"
            f" {row['median_ms']:10.3f} ms"
        )

    passes = [("fwd", case.bytes_fwd)]
    if case.bytes_bwd:
        passes.append(("fwd+bwd", case.bytes_fwd + case.bytes_bwd))
    cts: dict[tuple, jax.Array] = {}

    def cotangent(fn, args):
        """The fixed cotangent of ``fn``'s primary output (one per output shape)."""
        shape = jax.eval_shape(_primary_fn(fn), *args).shape
        if shape not in cts:
            cts[shape] = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32))
        return cts[shape]

    if case.check:
        check_naive(case)
    for pass_, nbytes in passes:
        emit("copy", pass_, harness.time_copy(nbytes, repeats=repeats), nbytes)
        variants = [(name, fn, ()) for name, fn in case.variants.items()]
        if case.donate:
            variants.append(("jaxops:donated", case.variants["jaxops"], (0,)))
        for name, fn, donate in variants:
            args = case.variant_args.get(name, case.args)
            if pass_ != "fwd":
                fn, args = _value_and_grad(fn), (args[0], cotangent(fn, args), *args[1:])
            result = harness.time_jax(fn, *args, repeats=repeats, donate_argnums=donate)
            emit(name, pass_, result, nbytes)
            gc.collect()
        for name, (place, fn) in case.host_variants.items():
            result = _time_host(case, place, fn, pass_, cotangent, repeats)
            emit(name, pass_, {**result, "host_work": True}, nbytes)
            gc.collect()
        for name, fn in case.torch_variants.items():
            slow_key = (case.op, case.params, name, pass_)
            if slow_key in too_slow:
                rows.append({**base, "kind": "skipped", "variant": name, "pass": pass_})
                log(f"  {case.op:22s} {case.params:14s} {case.size:9s} {pass_:8s} {name} skipped")
                continue
            diff_index = case.torch_diff.get(name, 0)
            if pass_ == "fwd":

                def run(fn=fn):
                    with torch.no_grad():
                        return fn(*case.torch_args)

            else:
                run = _torch_fwd_bwd(torch, fn, case.torch_args, diff_index)
            result = harness.time_python(run, repeats=repeats, budget_s=torch_budget)
            if result.get("warmup_only"):
                too_slow.add(slow_key)
            emit(name, pass_, result, nbytes)
            del run
            gc.collect()
    return rows


def check_naive(case: Case) -> None:
    """Every plain-JAX formulation (``naive``, ``naive:<what>``) gives jaxops' forward output."""
    # Fresh wrappers: jitting the variants themselves would cache their compilation.
    got = np.asarray(jax.jit(_primary_fn(case.variants["jaxops"]))(*case.args))
    for name, fn in case.variants.items():
        if not name.startswith("naive"):
            continue
        want = np.asarray(jax.jit(_primary_fn(fn))(*case.variant_args.get(name, case.args)))
        if case.compare is not None:
            case.compare(got, want)
        elif got.dtype == np.bool_:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def effects_overhead_ms(repeats: int) -> float:
    """Per-call cost of a ``checkify.debug_check`` in a jitted program (no checkify).

    The value checks of the jaxops operators are ``debug_check`` s under
    tracing. They add nothing to the compiled program, but their effect makes
    every call of it go through JAX's effects-token path: a fixed cost that
    matters for small inputs.
    """
    from jax.experimental import checkify

    x = jnp.ones((16,), jnp.float32)

    def checked(x):
        checkify.debug_check(jnp.all(x > 0), "x > 0")
        return x * 2

    plain = harness.time_jax(lambda x: x * 2, x, repeats=max(repeats, 100))
    with_check = harness.time_jax(checked, x, repeats=max(repeats, 100))
    return with_check["median_ms"] - plain["median_ms"]


def _primary_fn(fn):
    return lambda *args: _primary(fn(*args))


def _time_host(case, place, fn, pass_, cotangent, repeats):
    """Times ``fn(args[0], *place())`` with the host work ``place()`` inside the timer.

    ``fn`` (or its ``value_and_grad``) is compiled outside the timer for the
    shapes ``place()`` returns; each timed call redoes the host work, passes its
    NumPy arrays to the compiled program (the transfer is timed too) and blocks.
    """
    placed = place()
    lead: tuple = (case.args[0],)
    if pass_ != "fwd":
        lead = (case.args[0], cotangent(fn, (*lead, *placed)))
        fn = _value_and_grad(fn)
    compiled, compile_s = harness.compile_cold(jax.jit(fn), *lead, *placed)
    result = harness.time_python(
        lambda: compiled(*lead, *place()), repeats=repeats, sync=jax.block_until_ready
    )
    return {**result, "compile_s": compile_s}


def _logger(args) -> Callable[[str], None]:
    return (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))


def run_in_process(args) -> list[dict[str, Any]]:
    torch = None if args.no_torch else harness.import_torch()
    alloc = harness.allocator()
    info = harness.machine()
    info["xla_threads"] = harness.cpu_count()
    info["debug_check_overhead_ms"] = effects_overhead_ms(args.repeats)
    rows: list[dict[str, Any]] = [{"kind": "machine", **info}]
    log = _logger(args)
    log(f"# allocator={alloc} torch={info['torch']} cores={info['cores']}")
    too_slow: set = set()
    for size in args.sizes:
        for op in args.only:
            for build in BUILDERS[op]:
                rng = np.random.default_rng(0)
                start = time.perf_counter()
                case = build(rng, size, SIZES[size], torch)
                case.check = size in ("tiny", "small")  # the naive formulations agree
                if size in UNCHECKED_SIZES:
                    case.variants["jaxops:unchecked"] = jaxops.unchecked(case.variants["jaxops"])
                rows += measure(
                    case,
                    repeats=args.repeats,
                    torch=torch,
                    alloc=alloc,
                    log=log,
                    torch_budget=args.torch_budget,
                    too_slow=too_slow,
                )
                log(f"  ({time.perf_counter() - start:.1f} s)")
                del case
                gc.collect()
        if "segment_top_k" in args.only:
            rows += ragged_bench.memory_rows(
                size, SIZES[size], alloc=alloc, repeats=args.repeats, log=log
            )
    return rows


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def is_peer(variant: str, row: dict[str, Any]) -> bool:
    """``naive``, ``naive:<what>`` without host work in the timer, ``torch:*`` (see the top)."""
    if variant.startswith("torch:"):
        return True
    return variant.split(":")[0] == "naive" and not row.get("host_work")


UNCHECKED = "jaxops:unchecked"


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (allocator, op, params, size, pass): times and ratios."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") != "result":
            continue
        key = (r["allocator"], r["op"], r["params"], r["size"], r["pass"])
        groups.setdefault(key, {})[r["variant"]] = r
    order = {op: i for i, op in enumerate(OPS)}
    size_order = {s: i for i, s in enumerate(SIZES)}
    lines = []
    for key in sorted(
        groups,
        key=lambda k: (
            k[0] != "jemalloc",
            k[0],
            order[k[1]],
            len(k[2]),
            k[2],
            size_order[k[3]],
            k[4] != "fwd",
        ),
    ):
        alloc, op, params, size, pass_ = key
        v = groups[key]
        ms = {name: row["median_ms"] for name, row in v.items()}
        torch_names = [n for n in ms if n.startswith("torch:")]
        best_torch = min(torch_names, key=ms.get) if torch_names else None
        best_peer = min((n for n in ms if is_peer(n, v[n])), key=ms.get)
        j, unchecked = ms.get("jaxops"), ms.get(UNCHECKED)
        compile_s = {n: v[n].get("compile_s") if n in v else None for n in ("jaxops", "naive")}
        lines.append(
            {
                "allocator": alloc,
                "op": op + (f" ({params})" if params else ""),
                "size": size,
                "shapes": v["jaxops"]["shapes"],
                "pass": pass_,
                "jaxops ms": j,
                "jaxops/naive": _ratio(j, ms.get("naive")),
                "jaxops/torch": _ratio(j, ms.get(best_torch)) if best_torch else None,
                "best torch": (
                    best_torch.removeprefix("torch:")
                    + (" (1 call)" if v[best_torch].get("warmup_only") else "")
                    if best_torch
                    else None
                ),
                "jaxops/best peer": _ratio(j, ms[best_peer]),
                "best peer": best_peer,
                "jaxops/copy": _ratio(j, ms.get("copy")),
                "%BW": 100 * _ratio(ms.get("copy"), j) if j else None,
                "compile s jaxops": compile_s["jaxops"],
                "compile s naive": compile_s["naive"],
                "compile jaxops/naive": _ratio(compile_s["jaxops"], compile_s["naive"]),
                "temp MiB jaxops": v["jaxops"].get("temp_bytes", 0) / MIB,
                "temp MiB naive": v["naive"].get("temp_bytes", 0) / MIB if "naive" in v else None,
                "unchecked ms": unchecked,
                "unchecked/naive": _ratio(unchecked, ms.get("naive")),
                "unchecked/best peer": _ratio(unchecked, ms[best_peer]),
                "extra": {
                    n: _ratio(j, ms[n])
                    for n in ms
                    if n.startswith(("jaxops:", "naive:")) and n != UNCHECKED and ms[n]
                },
            }
        )
    return lines


COLUMNS = [
    "op",
    "size",
    "pass",
    "jaxops/best peer",
    "best peer",
    "jaxops/naive",
    "jaxops/torch",
    "best torch",
    "jaxops/copy",
    "%BW",
    "jaxops ms",
    "compile s jaxops",
    "compile s naive",
    "compile jaxops/naive",
    "temp MiB jaxops",
    "temp MiB naive",
]
# "Small sizes, checks off": no "jaxops/best peer" column, so that docs/plot_benchmarks.py
# (which reads every table with one) plots the main tables only.
UNCHECKED_COLUMNS = [
    "op",
    "size",
    "pass",
    "jaxops/naive",
    "unchecked/naive",
    "unchecked/best peer",
    "best peer",
    "jaxops ms",
    "unchecked ms",
]


def unchecked_section(lines: list[dict[str, Any]]) -> list[str]:
    """The report's "Small sizes, checks off" section (no ``jaxops:unchecked`` rows: none)."""
    small = [x for x in lines if x["unchecked ms"] is not None]
    if not small:
        return []
    out = [
        "## Small sizes, checks off",
        "",
        "`unchecked` is the jaxops call inside `jax.jit(jaxops.unchecked(f))`: no value",
        "checks, so no `debug_check` effect and its per-call cost. Same runs as above.",
        "",
    ]
    for alloc in sorted({x["allocator"] for x in small}, key=lambda a: a != "jemalloc"):
        rows = [x for x in small if x["allocator"] == alloc]
        out += [f"{alloc}:", "", harness.markdown_table(rows, UNCHECKED_COLUMNS), ""]
    return out


def report(rows: list[dict[str, Any]], command: str) -> str:
    machines = {r["allocator"]: r for r in rows if r.get("kind") == "machine"}
    lines = summarize(rows)
    any_machine = next(iter(machines.values()), {})
    out = [
        "# jaxops benchmarks",
        "",
        f"Generated by `{command}` on {any_machine.get('date')}.",
        "",
        "Machine: {cores} cores ({platform}), Python {python}, jax {jax}, numpy {numpy}, "
        "torch {torch} ({torch_threads} threads).".format(**any_machine),
        "Per-call cost of a `checkify.debug_check` in a jitted program, measured here: "
        + ", ".join(
            f"{a}: {m['debug_check_overhead_ms']:.3f} ms"
            for a, m in sorted(machines.items())
            if "debug_check_overhead_ms" in m
        )
        + " (every jitted call of an op with value checks pays it; it shows at small sizes).",
        "Allocators: "
        + "; ".join(
            f"**{a}**" + (f" (`MALLOC_CONF={m['malloc_conf']}`)" if m.get("malloc_conf") else "")
            for a, m in sorted(machines.items())
        )
        + ".",
        "",
        "How to read this:",
        "",
        "- Times are medians of timed calls (each ending in `block_until_ready`), compile",
        "  excluded. Quote the **ratios**: they compare variants measured in the same",
        "  process minutes apart, while the machine is shared; absolute times are indicative.",
        "- `fwd` is the jitted operator; `fwd+bwd` is `jax.value_and_grad` of `sum(out * ct)`",
        "  for a fixed cotangent `ct` (PyTorch: the same loss and `torch.autograd.grad`).",
        "- `naive` is the plain-JAX formulation differentiated by autodiff (gather + `where`,",
        "  `jnp.nonzero(size=)`, pad then `lax.top_k`, `.at[].set`, `segment_sum`,",
        "  `jax.nn.softmax` + `where`, sort by segment id + scatter-pad + `lax.top_k`,",
        "  `segment_max` + `exp` + `segment_sum`); `naive:<what>` another plain-JAX",
        "  formulation (`naive:bias`: the additive mask `x + bias`; `naive:gather`,",
        "  `naive:cumsum`). The case modules' docstrings (`benchmarks/*_bench.py`, `run.py`)",
        "  name every peer. The best peer is the fastest of `naive`, `naive:<what>` (those",
        "  without host work in the timer) and the PyTorch variants. A ratio below 1 means",
        "  jaxops is faster.",
        "- `compile s` is the ahead-of-time compile time (`jit(f).lower(...).compile()`) of",
        "  the `fwd` or `fwd+bwd` program, jaxops and naive.",
        "- `copy` is a jitted `x + 1` moving the bytes the operator must read and write",
        "  (for `fwd+bwd`, forward plus backward bytes); `jaxops/copy` is the distance from",
        "  the memory-bandwidth limit and `%BW` its inverse. For tiny outputs the copy is",
        "  dominated by dispatch overhead.",
        "- `temp MiB` is XLA's temporary memory for the compiled `fwd` or `fwd+bwd` program",
        "  (`compiled.memory_analysis()`): residuals of the custom VJPs show here.",
        "- `torch:softmax (unsafe)` returns NaN rows where `safe_softmax` returns zeros; it",
        "  is the cost floor, not an equivalent.",
        "- JAX variants and the copy: {} timed calls each. A PyTorch variant whose first",
        "  call took longer than the budget is reported from that one call (`(1 call)`)",
        "  and not run at the larger sizes (listed at the end).",
        "",
    ]
    repeats = sorted({r["repeats"] for r in rows if r.get("variant") == "jaxops"})
    out = [line.replace("{}", "/".join(map(str, repeats))) for line in out]
    for alloc in sorted({line["allocator"] for line in lines}, key=lambda a: a != "jemalloc"):
        out += [f"## {alloc}", ""]
        out.append(harness.markdown_table([x for x in lines if x["allocator"] == alloc], COLUMNS))
        extra = [x for x in lines if x["allocator"] == alloc and x["extra"]]
        if extra:
            out += ["", "Other paths (jaxops / that path):", ""]
            for x in extra:
                for name, r in x["extra"].items():
                    out.append(f"- {x['op']} {x['size']} {x['pass']}: {name} {r:.3g}")
        out.append("")
    out += unchecked_section(lines)
    by_key = {(x["allocator"], x["op"], x["size"], x["pass"]): x for x in lines}
    pairs = [
        (x, by_key.get(("jemalloc", x["op"], x["size"], x["pass"])))
        for x in lines
        if x["allocator"] == "glibc"
    ]
    pairs = [(g, j) for g, j in pairs if j is not None and g["jaxops ms"] and j["jaxops ms"]]
    if pairs:
        copies = {
            (
                r["allocator"],
                r["op"] + (f" ({r['params']})" if r["params"] else ""),
                r["size"],
                r["pass"],
            ): r["median_ms"]
            for r in rows
            if r.get("kind") == "result" and r["variant"] == "copy"
        }
        out += [
            "## Allocator effect (glibc time / jemalloc time)",
            "",
            "Separate processes run one after the other: indicative only.",
            "",
        ]
        table = []
        for g, j in pairs:
            key = (g["op"], g["size"], g["pass"])
            table.append(
                {
                    "op": g["op"],
                    "size": g["size"],
                    "pass": g["pass"],
                    "jaxops": g["jaxops ms"] / j["jaxops ms"],
                    "copy": _ratio(copies.get(("glibc", *key)), copies.get(("jemalloc", *key))),
                }
            )
        out.append(harness.markdown_table(table, ["op", "size", "pass", "jaxops", "copy"]))
        out.append("")
    out += ragged_bench.memory_section(rows)
    packed = attention_bench.section(rows)
    if packed:
        out += ["## Packed sequences and attention masks: every variant", "", *packed, ""]
    out += eager_bench.section(rows)
    slow = sorted(
        {
            (r["allocator"], r["op"], r["params"], r["variant"], r["pass"], r["size"])
            for r in rows
            if r.get("kind") == "skipped" or r.get("warmup_only")
        }
    )
    if slow:
        out += ["## PyTorch variants timed from one call, or skipped", ""]
        for alloc, op, params, variant, pass_, size in slow:
            what = next(
                (
                    f"{r['median_ms'] / 1e3:.1f} s, one call"
                    for r in rows
                    if r.get("warmup_only")
                    and (r["allocator"], r["op"], r["params"], r["variant"], r["pass"], r["size"])
                    == (alloc, op, params, variant, pass_, size)
                ),
                "skipped",
            )
            label = op + (f" ({params})" if params else "")
            out.append(f"- {alloc}: {label} {size} {pass_} {variant}: {what}")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes, 1 timed call, no scaling")
    p.add_argument(
        "--only",
        action="append",
        choices=(*OPS, "eager"),
        help="operators to run (repeatable); 'eager': the eager section (eager_bench.py)",
    )
    p.add_argument("--no-eager", action="store_true", help="skip the eager section")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per variant (10)")
    p.add_argument("--sizes", default=None, help="comma-separated, from " + ",".join(SIZES))
    p.add_argument("--no-scaling", action="store_true", help="skip large-2N and large-2T")
    p.add_argument(
        "--allocator",
        choices=("both", "jemalloc", "glibc", "current"),
        default=None,
        help="run under jemalloc, glibc, both (subprocesses; default when jemalloc is "
        "installed, except with --tiny) or whatever this process has",
    )
    p.add_argument(
        "--glibc-sizes",
        default="large,large-2N,large-2T",
        help="sizes of the glibc pass under --allocator both (default: the large ones)",
    )
    p.add_argument(
        "--torch-budget",
        type=float,
        default=10.0,
        help="seconds per PyTorch variant: slower first calls are reported alone",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--out", default=None, help="markdown report (default benchmarks/RESULTS.md)")
    p.add_argument("--jsonl", default=None, help="JSON-lines results (default next to --out)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--merge",
        default=None,
        help="a previous run's JSON lines: keep its rows of the operators not run now",
    )
    args = p.parse_args(argv)
    only = args.only or [*OPS, "eager"]
    args.eager = "eager" in only and not args.no_eager
    args.only = [op for op in only if op != "eager"]
    if args.sizes:
        args.sizes = args.sizes.split(",")
        for s in args.sizes:
            if s not in SIZES:
                p.error(f"unknown size {s!r}")
    elif args.tiny:
        args.sizes = ["tiny"]
    else:
        args.sizes = ["small", "large"] + ([] if args.no_scaling else ["large-2N", "large-2T"])
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 10
    if args.allocator is None:
        args.allocator = "both" if os.path.exists(JEMALLOC) and not args.tiny else "current"
    if args.out is None:
        if args.tiny:
            args.out = os.path.join(tempfile.mkdtemp(prefix="jaxops-bench-"), "RESULTS.md")
        else:
            args.out = os.path.join(HERE, "RESULTS.md")
    if args.jsonl is None:
        args.jsonl = os.path.splitext(args.out)[0] + ".jsonl"
    return args


def _child_argv(args, allocator, jsonl, sizes):
    argv = [sys.executable, os.path.abspath(__file__), "--allocator", "current"]
    argv += ["--repeats", str(args.repeats), "--sizes", ",".join(sizes)]
    argv += ["--jsonl", jsonl, "--out", os.devnull]
    for op in args.only:
        argv += ["--only", op]
    argv += ["--torch-budget", str(args.torch_budget)]
    for flag in ("no_torch", "quiet"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split() if "jemalloc" not in p]
    if allocator == "jemalloc":
        if not os.path.exists(JEMALLOC):
            raise SystemExit(f"run.py: expected {JEMALLOC}, got none. apt-get install libjemalloc2")
        preload.append(JEMALLOC)
        env["MALLOC_CONF"] = env.get("MALLOC_CONF", JEMALLOC_CONF)
    else:
        env.pop("MALLOC_CONF", None)
    env["LD_PRELOAD"] = " ".join(preload)
    if not env["LD_PRELOAD"]:
        del env["LD_PRELOAD"]
    return argv, env


def _merged(args, rows):
    """The rows of ``args.merge`` for the operators (and eager section) not run now, then ``rows``.

    Its machine rows stay (the report's header is the earlier run's); this
    run's are dropped.
    """
    with open(args.merge, encoding="utf-8") as f:
        previous = [json.loads(line) for line in f]
    rerun = set(args.only)
    kept = [
        r
        for r in previous
        if not (r.get("op") in rerun and r.get("kind") != "eager")
        and not (r.get("kind") == "eager" and args.eager)
    ]
    return kept + [r for r in rows if r.get("kind") != "machine"]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/run.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    if not args.only:
        rows = [{"kind": "machine", **harness.machine()}]
    elif args.allocator == "current":
        rows = run_in_process(args)
    else:
        allocators = ["jemalloc", "glibc"] if args.allocator == "both" else [args.allocator]
        rows = []
        for alloc in allocators:
            with tempfile.TemporaryDirectory() as tmp:
                jsonl = os.path.join(tmp, "rows.jsonl")
                sizes = args.sizes
                if alloc == "glibc" and args.allocator == "both":
                    sizes = [s for s in args.sizes if s in args.glibc_sizes.split(",")]
                if not sizes:
                    continue
                child, env = _child_argv(args, alloc, jsonl, sizes)
                subprocess.run(child, env=env, check=True)
                with open(jsonl, encoding="utf-8") as f:
                    rows += [json.loads(line) for line in f]
    if args.eager:  # after the timed runs, alone on the machine: fresh processes
        rows += eager_bench.run(tiny=args.tiny, log=_logger(args))
    if args.merge:
        rows = _merged(args, rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.jsonl)), exist_ok=True)
    with open(args.jsonl, "w", encoding="utf-8"):
        pass
    harness.write_jsonl(args.jsonl, rows)
    if args.out != os.devnull:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report(rows, command))
        if not args.quiet:
            print(f"wrote {args.out} and {args.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
