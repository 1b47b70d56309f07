"""Eager latency of the data-dependent jaxops ops against the plain-JAX expression a user writes.

``python benchmarks/eager_bench.py`` (about a minute; ``--tiny`` for a smoke
run, ``--only OP``); ``run.py`` runs it once after the jitted benchmarks and
appends its section to ``RESULTS.md``.

No ``jax.jit`` around the calls: each op is called as a script or a data
pipeline calls it, with the sizes left to the data (no ``size``,
``max_length`` or ``total_length``). For every case, in a fresh Python
process per implementation (``jaxops``, then ``plain``), so that no
compilation is cached, the worker

1. imports JAX and jaxops and puts the inputs of 6 calls on the device
   (untimed);
2. times the first call (``first s``: tracing, compilation and the run);
3. times 5 more calls, each with a data-dependent size different from the
   others (``5 calls s``, their total): e.g. masks of densities 0.35, 0.45,
   0.5, 0.55, 0.65, or 64 lengths drawn afresh from ``[1, 128]``;
4. counts XLA compilations (the ``/jax/core/compile/backend_compile_duration``
   monitoring event) during those 5 calls.

Every call ends in ``jax.block_until_ready``. The plain expressions (listed in
the report; :func:`cases` holds them) compute the same outputs, which
``check(op)`` verifies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import attention_bench
import harness
import jax
import jax.numpy as jnp
import numpy as np
import ragged_bench
import topk_bench
from ragged_bench import shuffled_segment_ids

import jaxops

DENSITIES = (0.4, 0.35, 0.45, 0.5, 0.55, 0.65)  # the first call's, then the timed calls'
CALLS = len(DENSITIES) - 1  # timed after the first call, each with a new data-dependent size
COMPILE_EVENT = "backend_compile"  # in /jax/core/compile/backend_compile_duration
K = 8  # lengths_top_k, segment_top_k
# N sequences of lengths in [1, T], F features, masks over `rows` rows. Packed rows
# hold L = 2T slots, so at least two sequences each: N sequences fit in R = N / 2 rows.
DIMS = {
    "default": {"n": 64, "t": 128, "f": 16, "rows": 4096},
    "tiny": {"n": 4, "t": 8, "f": 2, "rows": 64},
}


@dataclasses.dataclass(frozen=True)
class EagerCase:
    """One op: inputs of ``1 + CALLS`` calls, the jaxops call and the plain expression."""

    shapes: str  # what the inputs are and which size changes from call to call
    inputs: Callable[[np.random.Generator, dict], list[tuple]]  # NumPy, one tuple per call
    jaxops: Callable  # fn(*inputs) -> array or tuple of arrays, comparable with plain's
    plain: Callable
    plain_text: str  # the plain expression (markdown), for the report
    host: bool = False  # the inputs stay NumPy (host) arrays


# --------------------------------------------------------------------------- #
# Inputs: one tuple per call, NumPy (made on the device by the worker)
# --------------------------------------------------------------------------- #


def _lengths(rng, d):
    return [harness.random_lengths(rng, d["n"], d["t"]) for _ in DENSITIES]


def _values(rng, d, rows):
    return rng.standard_normal((int(rows), d["f"]), dtype=np.float32)


def _masks(rng, d):
    return [rng.random(d["rows"]) < p for p in DENSITIES]


def _packing(d):
    """``(R, L)``: rows and row length for ``pack_sequences`` / ``unpack_sequences``."""
    return d["n"] // 2, 2 * d["t"]


def boolean_mask_inputs(rng, d):
    x = rng.standard_normal((d["rows"], d["f"]), dtype=np.float32)
    return [(x, m) for m in _masks(rng, d)]


def boolean_unmask_inputs(rng, d):
    out = []
    for m in _masks(rng, d):
        masks = (m, ~m)
        out.append((masks, tuple(_values(rng, d, k.sum()) for k in masks)))
    return out


def boolean_mask_lengths_inputs(rng, d):
    return [(ls, rng.random(int(ls.sum())) < 0.5) for ls in _lengths(rng, d)]


def flat_inputs(rng, d):
    return [(_values(rng, d, ls.sum()), ls) for ls in _lengths(rng, d)]


def padded_inputs(rng, d):
    out = []
    for ls in _lengths(rng, d):
        out.append((rng.standard_normal((int(ls.max()), d["n"], d["f"]), np.float32), ls))
    return out


def list_inputs(rng, d):
    return [
        ([rng.standard_normal((n, d["f"]), np.float32) for n in ls],) for ls in _lengths(rng, d)
    ]


def lengths_inputs(rng, d):
    return [(ls,) for ls in _lengths(rng, d)]


def top_k_inputs(rng, d):
    return [(rng.standard_normal(int(ls.sum()), np.float32), ls) for ls in _lengths(rng, d)]


def segment_ids_inputs(rng, d):
    """Ids of a varying number of segments (``N/2 .. N``): ``max(id) + 1`` changes too."""
    counts = rng.integers(d["n"] // 2, d["n"] + 1, size=len(DENSITIES))
    lengths = _lengths(rng, d)
    return [(shuffled_segment_ids(rng, ls[:c]),) for ls, c in zip(lengths, counts, strict=True)]


def segment_top_k_inputs(rng, d):
    out = []
    for ls in _lengths(rng, d):
        ids = shuffled_segment_ids(rng, ls)
        out.append((rng.standard_normal(ids.shape[0], np.float32), ids))
    return out


def unpack_sequences_inputs(rng, d):
    rows = rng.standard_normal((*_packing(d), d["f"]), np.float32)
    return [(rows, ls) for ls in _lengths(rng, d)]


# --------------------------------------------------------------------------- #
# The plain expressions (sizes read from the data, as eager code does)
# --------------------------------------------------------------------------- #


def plain_boolean_unmask(masks, values):
    out = jnp.zeros((masks[0].shape[0], *values[0].shape[1:]), values[0].dtype)
    for m, v in zip(masks, values, strict=True):
        out = out.at[jnp.nonzero(m)[0]].set(v)
    return out


def plain_boolean_mask_lengths(lengths, mask):
    n = lengths.shape[0]
    segment = jnp.repeat(jnp.arange(n), lengths, total_repeat_length=mask.shape[0])
    return jax.ops.segment_sum(mask.astype(jnp.int32), segment, n)


def plain_unpack(packed, lengths):
    valid = jnp.arange(packed.shape[0])[None, :] < lengths[:, None]
    return packed.transpose(1, 0, 2)[valid]


def plain_lengths_range_fill(lengths):
    starts = jnp.cumsum(lengths) - lengths
    return jnp.arange(int(lengths.sum())) - jnp.repeat(starts, lengths)


def _counts(ids, num_segments):
    return jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments)


def plain_segment_top_k(data, ids, num_segments):
    longest = int(_counts(ids, num_segments).max())
    return ragged_bench.naive_segment_top_k(
        data, ids, k=K, num_segments=num_segments, max_length=longest
    )


def plain_pack_sequences(values, lengths, num_rows, row_length):
    row, col, ids, pos = attention_bench.host_placement(np.asarray(lengths), num_rows, row_length)
    packed = attention_bench.naive_pack(values, row, col, num_rows=num_rows, row_length=row_length)
    return packed, jnp.asarray(ids), jnp.asarray(pos)


def plain_unpack_sequences(rows, lengths):
    num_rows, row_length = rows.shape[:2]
    row, col, _, _ = attention_bench.host_placement(np.asarray(lengths), num_rows, row_length)
    return rows[row, col]


def _ragged(r):
    return r.values, r.lengths


def cases(d: dict) -> dict[str, EagerCase]:
    """Every data-dependent op at dims ``d`` (``DIMS``)."""
    n, f, rows = d["n"], d["f"], d["rows"]
    r, length = _packing(d)
    seqs = f"{n} lengths in [1, {d['t']}]"
    return {
        "boolean_mask": EagerCase(
            f"x [{rows}, {f}], masks of densities {', '.join(map(str, DENSITIES))}",
            boolean_mask_inputs,
            lambda x, m: jaxops.boolean_mask(x, m).values,
            lambda x, m: x[m],
            "`x[m]`",
        ),
        "boolean_unmask": EagerCase(
            f"masks (m, ~m) [{rows}] as above, values [count, {f}]",
            boolean_unmask_inputs,
            lambda masks, values: jaxops.boolean_unmask(list(masks), list(values)),
            plain_boolean_unmask,
            "`out = out.at[jnp.nonzero(m)[0]].set(v)` per stream, from `jnp.zeros`",
        ),
        "boolean_mask_lengths": EagerCase(
            f"{seqs}, mask [M] of density 0.5: M changes",
            boolean_mask_lengths_inputs,
            jaxops.boolean_mask_lengths,
            plain_boolean_mask_lengths,
            "`segment_sum(m.astype(int32), jnp.repeat(arange(N), lengths,"
            " total_repeat_length=M), N)`",
        ),
        "pack_rnn_sequence": EagerCase(
            f"values [M, {f}], {seqs}: M and T = max(lengths) change",
            flat_inputs,
            jaxops.pack_rnn_sequence,
            lambda v, ls: ragged_bench.naive_pad(v, ls, max_length=int(ls.max()), time_major=True),
            "gather + `where` pad to `[int(lengths.max()), N, F]`",
        ),
        "unpack_rnn_sequence": EagerCase(
            f"packed [T, {n}, {f}], {seqs}: T and M change",
            padded_inputs,
            jaxops.unpack_rnn_sequence,
            plain_unpack,
            "`p.transpose(1, 0, 2)[arange(T)[None, :] < lengths[:, None]]`",
        ),
        "lengths_top_k": EagerCase(
            f"data [M], {seqs}, k={K}: M and T change",
            top_k_inputs,
            lambda x, ls: tuple(jaxops.lengths_top_k(x, ls, k=K)),
            lambda x, ls: topk_bench.naive_top_k(x, ls, k=K, max_length=int(ls.max())),
            "gather + `where` pad to `[N, int(lengths.max())]`, `lax.top_k`",
        ),
        "Ragged.from_list": EagerCase(
            f"a list of {n} NumPy arrays [L_i, {f}], L_i in [1, {d['t']}]: M changes",
            list_inputs,
            lambda arrays: _ragged(jaxops.Ragged.from_list(arrays)),
            lambda arrays: (
                jnp.asarray(np.concatenate(arrays)),
                jnp.asarray([a.shape[0] for a in arrays], jnp.int32),
            ),
            "`jnp.asarray(np.concatenate(arrays))`, `jnp.asarray(lengths)`",
            host=True,
        ),
        "Ragged.to_padded": EagerCase(
            f"values [M, {f}], {seqs}: M and T change",
            flat_inputs,
            lambda v, ls: jaxops.Ragged(v, ls).to_padded(),
            lambda v, ls: ragged_bench.naive_pad(v, ls, max_length=int(ls.max())),
            "gather + `where` pad to `[N, int(lengths.max()), F]`",
        ),
        "segment_ids_to_lengths": EagerCase(
            f"[M] shuffled ids of {n // 2}..{n} segments (5% -1): M and N change",
            segment_ids_inputs,
            jaxops.segment_ids_to_lengths,
            lambda ids: _counts(ids, int(ids.max()) + 1),
            "`segment_sum(ones_like(ids), ids, int(ids.max()) + 1)`",
        ),
        "lengths_to_segment_ids": EagerCase(
            f"{seqs}: M changes",
            lengths_inputs,
            jaxops.lengths_to_segment_ids,
            lambda ls: jnp.repeat(jnp.arange(ls.shape[0]), ls),
            "`jnp.repeat(arange(N), lengths)`",
        ),
        "lengths_range_fill": EagerCase(
            f"{seqs}: M changes",
            lengths_inputs,
            jaxops.lengths_range_fill,
            plain_lengths_range_fill,
            "`arange(int(lengths.sum())) - jnp.repeat(cumsum(lengths) - lengths, lengths)`",
        ),
        "segment_top_k": EagerCase(
            f"data [M], shuffled ids of {n} segments (5% -1), k={K}: M changes",
            segment_top_k_inputs,
            lambda x, ids: tuple(jaxops.segment_top_k(x, ids, k=K, num_segments=n)),
            lambda x, ids: plain_segment_top_k(x, ids, n),
            "stable `argsort` by id, scatter-pad to `[N, longest]`"
            " (`longest` from `segment_sum`), `lax.top_k`",
        ),
        "pack_sequences": EagerCase(
            f"values [M, {f}], {seqs} into {r} x {length} rows: M changes",
            flat_inputs,
            lambda v, ls: tuple(
                jaxops.pack_sequences(
                    v, ls, num_rows=r, row_length=length, pad_value=attention_bench.PAD
                )
            ),
            lambda v, ls: plain_pack_sequences(v, ls, r, length),
            "next-fit on the host (NumPy), `.at[row, col].set`",
        ),
        "unpack_sequences": EagerCase(
            f"rows [{r}, {length}, {f}], {seqs}: M changes",
            unpack_sequences_inputs,
            jaxops.unpack_sequences,
            plain_unpack_sequences,
            "next-fit on the host (NumPy), `rows[row, col]`",
        ),
    }


CASES = tuple(cases(DIMS["tiny"]))  # the op names, in report order


# --------------------------------------------------------------------------- #
# Measurement: one fresh process per (op, implementation)
# --------------------------------------------------------------------------- #


def _inputs(case: EagerCase, d: dict) -> list[tuple]:
    inputs = case.inputs(np.random.default_rng(0), d)
    return inputs if case.host else jax.block_until_ready(jax.device_put(inputs))


def measure(op: str, impl: str, *, tiny: bool = False) -> dict[str, Any]:
    """Times ``impl`` ("jaxops" or "plain") of ``op`` here: meant for a fresh process."""
    d = DIMS["tiny" if tiny else "default"]
    case = cases(d)[op]
    fn = getattr(case, impl)
    compiles = [0]

    def count(event: str, _duration: float, **_: Any) -> None:
        if COMPILE_EVENT in event:
            compiles[0] += 1

    inputs = _inputs(case, d)
    jax.monitoring.register_event_duration_secs_listener(count)
    start = time.perf_counter()
    jax.block_until_ready(fn(*inputs[0]))
    first_s = time.perf_counter() - start
    first_compiles = compiles[0]
    start = time.perf_counter()
    for args in inputs[1:]:
        jax.block_until_ready(fn(*args))
    calls_s = time.perf_counter() - start
    return {
        "kind": "eager",
        "op": op,
        "impl": impl,
        "shapes": case.shapes,
        "plain": case.plain_text,
        "size": "tiny" if tiny else "default",
        "allocator": harness.allocator(),
        "first_s": first_s,
        "calls_s": calls_s,
        "calls": len(inputs) - 1,
        "compiles_first": first_compiles,
        "compiles_calls": compiles[0] - first_compiles,
    }


def check(op: str, *, tiny: bool = True) -> None:
    """jaxops and the plain expression give the same outputs on every call's inputs."""
    d = DIMS["tiny" if tiny else "default"]
    case = cases(d)[op]
    for args in _inputs(case, d):
        got, want = case.jaxops(*args), case.plain(*args)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=op)


def _worker(op: str, impl: str, tiny: bool, timeout_s: float) -> dict[str, Any]:
    """:func:`measure` in a fresh process; a failure gives a row with ``error``."""
    argv = [sys.executable, os.path.abspath(__file__), "--worker", op, impl]
    argv += ["--tiny"] if tiny else []
    failed = {"kind": "eager", "op": op, "impl": impl}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"over {timeout_s} s"}
    if done.returncode:
        return {**failed, "error": (done.stderr.strip().splitlines() or ["no stderr"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(ops=CASES, *, tiny: bool = False, log=print, timeout_s: float = 300) -> list[dict]:
    """:func:`measure` in a fresh process per op and implementation, one after the other.

    A worker that fails (e.g. an op raising) gives a row with ``error`` (its
    last line of stderr) instead of stopping the run.
    """
    rows = []
    for op in ops:
        for impl in ("jaxops", "plain"):
            row = _worker(op, impl, tiny, timeout_s)
            rows.append(row)
            if "error" in row:
                log(f"  eager {op:24s} {impl:7s} failed: {row['error']}")
            else:
                log(
                    f"  eager {op:24s} {impl:7s} first {row['first_s']:7.3f} s,"
                    f" {row['calls']} calls {row['calls_s']:7.3f} s,"
                    f" {row['compiles_calls']} compilations"
                )
    return rows


# --------------------------------------------------------------------------- #
# Report section
# --------------------------------------------------------------------------- #

COLUMNS = [
    "op",
    "first s jaxops",
    "first s plain",
    "first jaxops/plain",
    f"{CALLS} calls s jaxops",
    f"{CALLS} calls s plain",
    f"{CALLS} calls jaxops/plain",
    "compiles jaxops",
    "compiles plain",
]


def section(rows: list[dict]) -> list[str]:
    """The report's eager section (no ``eager`` rows: no lines)."""
    eager = [r for r in rows if r.get("kind") == "eager"]
    if not eager:
        return []
    by_op: dict[str, dict[str, dict]] = {}
    for r in eager:
        by_op.setdefault(r["op"], {})[r["impl"]] = r
    table, notes = [], []
    for op, impls in by_op.items():
        j, p = impls.get("jaxops", {}), impls.get("plain", {})
        table.append(
            {
                "op": op,
                "first s jaxops": j.get("first_s"),
                "first s plain": p.get("first_s"),
                "first jaxops/plain": _ratio(j.get("first_s"), p.get("first_s")),
                COLUMNS[4]: j.get("calls_s"),
                COLUMNS[5]: p.get("calls_s"),
                COLUMNS[6]: _ratio(j.get("calls_s"), p.get("calls_s")),
                "compiles jaxops": j.get("compiles_calls"),
                "compiles plain": p.get("compiles_calls"),
            }
        )
        described = j if "shapes" in j else p
        if "shapes" in described:
            notes.append(f"- {op}: {described['shapes']}; plain: {described['plain']}.")
        notes += [
            f"- {op} {impl}: failed: `{r['error']}`" for impl, r in impls.items() if "error" in r
        ]
    return [
        f"## Eager calls (no jit): first call, then {CALLS} calls of changing sizes",
        "",
        "Each implementation in a fresh process (nothing compiled yet), inputs on the",
        f"device before the timer. `first s`: the first call; `{CALLS} calls s`: the total of",
        f"{CALLS} more calls, each with a different data-dependent size; `compiles`: XLA",
        f"compilations during those {CALLS} calls. `plain` is the eager expression a user",
        "writes without jaxops. `benchmarks/eager_bench.py` has the inputs.",
        "",
        harness.markdown_table(table, COLUMNS),
        "",
        *notes,
        "",
    ]


def _ratio(a, b):
    return None if a is None or not b else a / b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny inputs (a smoke run)")
    p.add_argument("--only", action="append", choices=CASES, help="ops to run (repeatable)")
    p.add_argument("--out", default=None, help="write the markdown section here (else print)")
    p.add_argument("--jsonl", default=None, help="append the rows to this JSON-lines file")
    p.add_argument("--worker", nargs=2, metavar=("OP", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(*args.worker, tiny=args.tiny)))
        return 0
    rows = run(args.only or CASES, tiny=args.tiny)
    text = "\n".join(section(rows))
    if args.jsonl:
        harness.write_jsonl(args.jsonl, rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
