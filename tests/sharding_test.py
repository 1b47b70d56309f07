# ruff: noqa: E501  (the subprocess script keeps one case per line)
"""Multiple devices (SPEC §1 rule 10, §8, §9): every op on Explicit and Auto meshes, shard_ragged.

The sharded checks run in one subprocess with 8 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before
jax is imported); it prints one JSON line per check.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxops

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, os, re
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import tests.conftest  # the suite's strict promotion rules
import jaxops

assert jax.device_count() == 8
rng = np.random.default_rng(0)
N, M, T = 16, 64, 6
lengths = rng.integers(0, T + 1, N).astype(np.int32)
lengths[-1] = max(0, lengths[-1] - max(0, int(lengths.sum()) - (M - 8)))
values = rng.normal(size=(M, 2)).astype(np.float32)
data = rng.normal(size=M).astype(np.float32)
mask = rng.random(M) < 0.5
ids = rng.integers(-1, 5, M).astype(np.int32)
x = rng.normal(size=(N, 8)).astype(np.float32)
total = int(lengths.sum())
packed = np.asarray(jaxops.pack_rnn_sequence(values, lengths, max_length=T))
# Packed rows (SPEC §8): R = N rows of 2T slots always hold the N sequences (next-fit).
R, L = N, 2 * T
rows = jaxops.pack_sequences(values, lengths, num_rows=R, row_length=L)
packed_rows, row_ids, row_pos = (np.asarray(a) for a in rows)
assert (row_ids[:, 0] >= 0).sum() > 1 and (row_ids == -1).any()  # several rows, some padding
allowed = np.asarray(jaxops.attention_mask(segment_ids=row_ids, positions=row_pos, causal=True))
scores = rng.normal(size=(R, 2, L, L)).astype(np.float32)  # [B, H, Tq, Tk]

# name -> (function, args, the sharded axis of each arg (None: replicated))
CASES = {
    "pack_rnn_sequence": (lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=T), (values, lengths), (0, 0)),
    "grad pack_rnn_sequence": (jax.grad(lambda v, n: jnp.sum(jaxops.pack_rnn_sequence(v, n, max_length=T) ** 2)), (values, lengths), (0, 0)),
    "unpack_rnn_sequence": (lambda p, n: jaxops.unpack_rnn_sequence(p, n, total_length=M), (packed, lengths), (1, 0)),
    "lengths_top_k": (lambda d, n: tuple(jaxops.lengths_top_k(d, n, k=3)), (data, lengths), (0, 0)),
    "lengths_top_k padded": (lambda d, n: tuple(jaxops.lengths_top_k(d, n, k=3, max_length=T)), (data, lengths), (0, 0)),
    "grad lengths_top_k": (jax.grad(lambda d, n: jnp.sum(jaxops.lengths_top_k(d, n, k=3).values ** 2)), (data, lengths), (0, 0)),
    "lengths_top_k_gradient": (lambda n, i, g: jaxops.lengths_top_k_gradient(n, i, g, data_length=M), (lengths, np.asarray(jaxops.lengths_top_k(data, lengths, k=2).indices), np.ones((N, 2), np.float32)), (0, 0, 0)),
    "boolean_mask": (lambda d, m: tuple(jaxops.boolean_mask(d, m, size=40)), (values, mask), (0, 0)),
    "grad boolean_mask": (jax.grad(lambda d, m: jnp.sum(jaxops.boolean_mask(d, m, size=40).values ** 2)), (values, mask), (0, 0)),
    "boolean_mask_gradient": (jaxops.boolean_mask_gradient, (mask, np.ones((40, 2), np.float32)), (0, 0)),
    "boolean_mask_lengths": (jaxops.boolean_mask_lengths, (np.full(8, 8, np.int32), mask), (0, 0)),
    "boolean_unmask": (lambda m, v: jaxops.boolean_unmask([m, ~m], [v, v]), (mask, values), (0, 0)),
    "sequence_mask": (lambda x, n: jaxops.sequence_mask(x, n), (x, lengths), (0, 0)),
    "sequence_mask upper": (lambda x: jaxops.sequence_mask(x, mode="upper", axis=2, batch=0), (rng.normal(size=(8, 4, 4)).astype(np.float32),), (0,)),
    "safe_softmax": (jaxops.safe_softmax, (x,), (0,)),
    "expand": (lambda x: jaxops.expand(x, (3, 1, 1)), (x,), (0,)),
    "expand_gradient": (lambda g: jaxops.expand_gradient(g, (1, 8)), (x,), (0,)),
    "lengths_to_offsets": (jaxops.lengths_to_offsets, (lengths,), (0,)),
    "lengths_to_segment_ids": (lambda n: jaxops.lengths_to_segment_ids(n, total_length=M), (lengths,), (0,)),
    "lengths_range_fill": (lambda n: jaxops.lengths_range_fill(n, total_length=M), (lengths,), (0,)),
    "segment_ids_to_lengths": (lambda i: jaxops.segment_ids_to_lengths(i, num_segments=5), (ids,), (0,)),
    "segment_top_k": (lambda d, i: tuple(jaxops.segment_top_k(d, i, k=3, num_segments=5)), (data, ids), (0, 0)),
    "grad segment_top_k": (jax.grad(lambda d, i: jnp.sum(jaxops.segment_top_k(d, i, k=3, num_segments=5).values ** 2)), (data, ids), (0, 0)),
    "segment_softmax": (lambda d, i: jaxops.segment_softmax(d, i, num_segments=5), (values, ids), (0, 0)),
    "Ragged methods": (lambda v, n: (jaxops.Ragged(v, n).segment_sum(), jaxops.Ragged(v, n).to_padded(max_length=T), jaxops.Ragged(v, n).softmax().values), (values, lengths), (0, 0)),
    "checked pack_rnn_sequence": (jaxops.checked(jax.jit(lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=T))), (values, lengths), (0, 0)),
    "pack_sequences": (lambda v, n: tuple(jaxops.pack_sequences(v, n, num_rows=R, row_length=L)), (values, lengths), (0, 0)),
    "grad pack_sequences": (jax.grad(lambda v, n: jnp.sum(jaxops.pack_sequences(v, n, num_rows=R, row_length=L).values ** 2)), (values, lengths), (0, 0)),
    "unpack_sequences": (lambda r, n: jaxops.unpack_sequences(r, n, total_length=M), (packed_rows, lengths), (0, 0)),
    "grad unpack_sequences": (jax.grad(lambda r, n: jnp.sum(jaxops.unpack_sequences(r, n, total_length=M) ** 2)), (packed_rows, lengths), (0, 0)),
    "length_mask": (lambda n: jaxops.length_mask(n, T), (lengths,), (0,)),
    "attention_mask": (lambda i, p: jaxops.attention_mask(segment_ids=i, positions=p, causal=True), (row_ids, row_pos), (0, 0)),
    "attention_mask window": (lambda i, p: jaxops.attention_mask(segment_ids=i, positions=p, window=(2, 1)), (row_ids, row_pos), (0, 0)),
    "attention_mask lengths": (lambda n: jaxops.attention_mask(lengths=n, q_len=T, causal=True), (lengths,), (0,)),
    "safe_softmax where": (lambda x, w: jaxops.safe_softmax(x, where=w[:, None]), (scores, allowed), (0, 0)),
    "grad safe_softmax where": (jax.grad(lambda x, w: jnp.sum(jaxops.safe_softmax(x, where=w[:, None]) ** 2)), (scores, allowed), (0, 0)),
    "checked pack_sequences": (jaxops.checked(jax.jit(lambda v, n: tuple(jaxops.pack_sequences(v, n, num_rows=R, row_length=L)))), (values, lengths), (0, 0)),
}
ELEMENTWISE = {
    "sequence_mask", "sequence_mask upper", "safe_softmax", "expand",
    "length_mask", "attention_mask", "attention_mask window", "attention_mask lengths",
    "safe_softmax where",
}
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def leaves(out):
    return [np.asarray(a) for a in jax.tree.leaves(out)]


def report(name, ok, detail=""):
    print("RESULT " + json.dumps([name, bool(ok), detail]), flush=True)


for kind, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    for name, (fn, args, axes) in CASES.items():
        expected = leaves(fn(*args))
        spec = lambda axis: P(*([None] * axis + ["data"])) if axis is not None else P()
        try:
            with jax.set_mesh(mesh):
                sharded = [jax.device_put(a, NamedSharding(mesh, spec(ax))) for a, ax in zip(args, axes)]
                jitted = fn if name.startswith("checked") else jax.jit(fn)
                got = leaves(jitted(*sharded))
                hlo = "" if name.startswith("checked") else jax.jit(fn).lower(*sharded).compile().as_text()
            # Sharded float reductions may sum in another order: a tolerance for floats.
            same = all(
                np.allclose(g, e, rtol=1e-5, atol=1e-6, equal_nan=True) if g.dtype.kind == "f" else np.array_equal(g, e)
                for g, e in zip(got, expected)
            )
            report(f"{kind}:{name}", same, "" if same else "differs from the unsharded result")
            if name in ELEMENTWISE:
                found = [c for c in COLLECTIVES if re.search(rf"\b{c}(-start)?\(", hlo) or f" {c}(" in hlo]
                report(f"{kind}:{name}:no-collectives", not found, ",".join(found))
        except Exception as e:
            report(f"{kind}:{name}", False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")

# Every op inside shard_map (replicated inputs: each device runs the whole op on
# its local copy, under manual axes).
for kind, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    for name, (fn, args, axes) in CASES.items():
        if name.startswith("checked"):
            continue
        expected = leaves(fn(*args))
        try:
            with jax.set_mesh(mesh):
                local = jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P())
                got = leaves(jax.jit(local)(*args))
            same = all(
                np.allclose(g, e, rtol=1e-5, atol=1e-6, equal_nan=True) if g.dtype.kind == "f" else np.array_equal(g, e)
                for g, e in zip(got, expected)
            )
            report(f"{kind}:shard_map:{name}", same, "" if same else "differs from the unsharded result")
        except Exception as e:
            report(f"{kind}:shard_map:{name}", False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")

# Inside shard_map: one self-contained block per device from shard_ragged.
seq_lengths = rng.integers(1, 6, 20).astype(np.int32)
flat = rng.normal(size=int(seq_lengths.sum())).astype(np.float32)
blocks = jaxops.shard_ragged(flat, seq_lengths, num_shards=8, rows_per_shard=16, seqs_per_shard=4)


def local(r):
    top = r.top_k(2, max_length=8)
    return r.segment_sum(), top.values, r.to_padded(max_length=8)


for kind, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    try:
        with jax.set_mesh(mesh):
            ragged = jax.device_put(blocks.ragged, NamedSharding(mesh, P("data")))
            step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data")))
            sums, tops, padded = (np.asarray(a) for a in step(ragged))
            hlo = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data"))).lower(ragged).compile().as_text()
        ok = True
        starts = np.concatenate([[0], np.cumsum(seq_lengths)])
        for slot, n in enumerate(blocks.order):
            if n < 0:
                ok &= float(sums[slot]) == 0.0
                continue
            seq = flat[starts[n]:starts[n + 1]]
            ok &= np.isclose(float(sums[slot]), seq.sum(), rtol=1e-5)
            ok &= np.array_equal(np.asarray(padded[slot, : len(seq)]), seq)
            want = np.sort(seq)[::-1][:2]
            ok &= np.array_equal(np.asarray(tops[slot, : len(want)]), want)
        report(f"{kind}:shard_map blocks", ok)
        found = [c for c in COLLECTIVES if f" {c}(" in hlo or f"{c}-start(" in hlo]
        report(f"{kind}:shard_map blocks:no-collectives", not found, ",".join(found))
    except Exception as e:
        report(f"{kind}:shard_map blocks", False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")

# A Scope of shardings places a Scope of arrays.
mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
params = jaxops.Scope({"w": np.ones((8, 2), np.float32), "b": np.zeros(2, np.float32)})
specs = jaxops.Scope({"w": NamedSharding(mesh, P("data")), "b": NamedSharding(mesh, P())})
placed = jax.device_put(params, specs)
report("scope of shardings", placed["w"].sharding.spec == P("data") and placed["b"].sharding.spec == P())
"""


@pytest.fixture(scope="module")
def sharded_results() -> dict[str, tuple[bool, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            name, ok, detail = json.loads(line[len("RESULT ") :])
            results[name] = (ok, detail)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results


OPS = [
    "pack_rnn_sequence", "grad pack_rnn_sequence", "unpack_rnn_sequence", "lengths_top_k",
    "lengths_top_k padded", "grad lengths_top_k", "lengths_top_k_gradient", "boolean_mask",
    "grad boolean_mask", "boolean_mask_gradient", "boolean_mask_lengths", "boolean_unmask",
    "sequence_mask", "sequence_mask upper", "safe_softmax", "expand", "expand_gradient",
    "lengths_to_offsets", "lengths_to_segment_ids", "lengths_range_fill",
    "segment_ids_to_lengths", "segment_top_k", "grad segment_top_k", "segment_softmax",
    "Ragged methods", "checked pack_rnn_sequence",
    "pack_sequences", "grad pack_sequences", "unpack_sequences", "grad unpack_sequences",
    "length_mask", "attention_mask", "attention_mask window", "attention_mask lengths",
    "safe_softmax where", "grad safe_softmax where", "checked pack_sequences",
]  # fmt: skip
# Elementwise and per-row ops (SPEC §1 rule 10): batch-sharded, they add no collectives
# (their plain JAX formulations have none on the same mesh).
ELEMENTWISE = [
    "sequence_mask", "sequence_mask upper", "safe_softmax", "expand",
    "length_mask", "attention_mask", "attention_mask window", "attention_mask lengths",
    "safe_softmax where",
]  # fmt: skip
CHECKS = [f"{kind}:{op}" for kind in ("explicit", "auto") for op in OPS]
CHECKS += [f"{kind}:{op}:no-collectives" for kind in ("explicit", "auto") for op in ELEMENTWISE]
CHECKS += [
    f"{kind}:shard_map blocks{tail}"
    for kind in ("explicit", "auto")
    for tail in ("", ":no-collectives")
]
CHECKS += [
    f"{kind}:shard_map:{op}"
    for kind in ("explicit", "auto")
    for op in OPS
    if not op.startswith("checked")
]
CHECKS += ["scope of shardings"]


@pytest.mark.parametrize("name", CHECKS)
def test_sharded(sharded_results, name):
    assert name in sharded_results, f"{name} did not report"
    ok, detail = sharded_results[name]
    assert ok, detail


# --------------------------------------------------------------------------- #
# shard_ragged on the host
# --------------------------------------------------------------------------- #


def test_shard_ragged_balances_greedily_and_lays_out_blocks():
    lengths = np.array([5, 1, 4, 2, 3, 3], np.int32)
    values = np.arange(18.0).reshape(18, 1)
    out = jaxops.shard_ragged(values, lengths, num_shards=3, rows_per_shard=7, seqs_per_shard=3)
    # Longest first to the least-filled block: 5->0, 4->1, 3(#4)->2, 3(#5)->2, 2->1, 1->0.
    np.testing.assert_array_equal(out.order, [0, 1, -1, 2, 3, -1, 4, 5, -1])
    np.testing.assert_array_equal(out.ragged.lengths, [5, 1, 0, 4, 2, 0, 3, 3, 0])
    assert isinstance(out.ragged.values, np.ndarray) and out.ragged.values.shape == (21, 1)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for d in range(3):
        block = out.ragged.values[d * 7 : (d + 1) * 7, 0]
        slots = out.order[d * 3 : (d + 1) * 3]
        expected = np.concatenate([values[starts[n] : starts[n + 1], 0] for n in slots if n >= 0])
        np.testing.assert_array_equal(block[: len(expected)], expected)
        np.testing.assert_array_equal(block[len(expected) :], 0)
    labels = np.array([10, 11, 12, 13, 14, 15])
    np.testing.assert_array_equal(np.where(out.order >= 0, labels[out.order], -1)[:2], [10, 11])


def test_shard_ragged_says_how_many_would_be_needed():
    lengths = np.array([5, 1, 4, 2, 3, 3], np.int32)
    values = np.zeros(18)
    with pytest.raises(
        ValueError, match=r"^shard_ragged: expected rows_per_shard >= 6, .*got rows_per_shard=5\.$"
    ):
        jaxops.shard_ragged(values, lengths, num_shards=3, rows_per_shard=5, seqs_per_shard=3)
    with pytest.raises(
        ValueError,
        match=r"^shard_ragged: expected seqs_per_shard >= 2 for 6 sequences on 3 shards, got seqs_per_shard=1\.$",
    ):
        jaxops.shard_ragged(values, lengths, num_shards=3, rows_per_shard=9, seqs_per_shard=1)
    with pytest.raises(ValueError, match=r"^shard_ragged: expected lengths >= 0"):
        jaxops.shard_ragged(
            values, np.array([2, -1]), num_shards=2, rows_per_shard=4, seqs_per_shard=1
        )
    with pytest.raises(TypeError, match=r"^shard_ragged: expected `lengths` of an integer dtype"):
        jaxops.shard_ragged(
            values, np.array([2.0]), num_shards=2, rows_per_shard=4, seqs_per_shard=1
        )


def test_shard_ragged_is_deterministic_and_handles_empty_input():
    lengths = np.random.default_rng(5).integers(0, 9, 40).astype(np.int32)
    values = np.arange(int(lengths.sum()), dtype=np.float32)
    a = jaxops.shard_ragged(values, lengths, num_shards=4, rows_per_shard=60, seqs_per_shard=10)
    b = jaxops.shard_ragged(values, lengths, num_shards=4, rows_per_shard=60, seqs_per_shard=10)
    np.testing.assert_array_equal(a.order, b.order)
    totals = np.asarray(a.ragged.lengths).reshape(4, 10).sum(axis=1)
    assert totals.max() - totals.min() <= lengths.max()  # greedy: within one sequence
    assert sorted(a.order[a.order >= 0].tolist()) == list(range(40))
    empty = jaxops.shard_ragged(
        np.zeros((0, 2)), np.zeros(0, np.int32), num_shards=2, rows_per_shard=1, seqs_per_shard=1
    )
    np.testing.assert_array_equal(empty.order, [-1, -1])
    assert empty.ragged.values.shape == (2, 2)


def test_scope_accepts_sharding_leaves():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    scope = jaxops.Scope({"w": sharding, "b": jax.sharding.PartitionSpec()})
    assert scope["w"] is sharding
    leaves = jax.tree.leaves(scope)
    assert leaves == [jax.sharding.PartitionSpec(), sharding]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.uint16, np.int64])
def test_shard_ragged_narrow_lengths(dtype):
    lengths = np.array([100, 100, 100], dtype)  # the row count exceeds int8's maximum
    values = np.arange(300.0)
    out = jaxops.shard_ragged(values, lengths, num_shards=3, rows_per_shard=100, seqs_per_shard=1)
    np.testing.assert_array_equal(out.order, [0, 1, 2])
    np.testing.assert_array_equal(out.ragged.values, values)
    with pytest.raises(
        ValueError, match=r"^shard_ragged: expected sum\(lengths\) <= values.shape\[0\] = 299"
    ):
        jaxops.shard_ragged(
            values[:299], lengths, num_shards=3, rows_per_shard=100, seqs_per_shard=1
        )


def test_shard_ragged_keeps_input_order_inside_a_block_and_counts_slots_up():
    # The longer sequence 1 is assigned first, but the block lays out 0 before 1.
    out = jaxops.shard_ragged(
        np.arange(6.0), np.array([1, 5]), num_shards=1, rows_per_shard=6, seqs_per_shard=2
    )
    np.testing.assert_array_equal(out.order, [0, 1])
    np.testing.assert_array_equal(out.ragged.lengths, [1, 5])
    # 5 sequences on 2 shards need ceil(5 / 2) = 3 slots each.
    with pytest.raises(
        ValueError,
        match=r"^shard_ragged: expected seqs_per_shard >= 3 for 5 sequences on 2 shards, "
        r"got seqs_per_shard=2\.$",
    ):
        jaxops.shard_ragged(
            np.zeros(5), np.ones(5, np.int32), num_shards=2, rows_per_shard=5, seqs_per_shard=2
        )
