"""Eager calls of the data-dependent ops: exact results, one program per size bucket.

An eager call whose output size depends on the data (``boolean_mask`` without
``size=``, ``pack_rnn_sequence`` without ``max_length=``, ...) compiles for
the power of two at or above that size and trims the result on the host, so
five calls with five different sizes compile at most two programs. Each case
below makes five such calls on inputs of fixed shapes, counts XLA
compilations with ``jax.monitoring``, and compares every result with the
exact-size program under ``jit``.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops._src import attention, checks

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_compiles = [0]


def _count(event, duration, **kwargs):
    del duration, kwargs
    if event == _BACKEND_COMPILE:
        _compiles[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


@contextlib.contextmanager
def count_compiles():
    """Yields a one-element list that holds the XLA compilations inside the block."""
    jax.clear_caches()
    start, seen = _compiles[0], [0]
    try:
        yield seen
    finally:
        seen[0] = _compiles[0] - start


RNG = np.random.default_rng(0)
M, F, N = 512, 3, 16
X = RNG.standard_normal((M, F)).astype(np.float32)
# Five masks whose true counts (about 180 to 330) straddle one power of two.
MASKS = [RNG.random(M) < d for d in (0.35, 0.45, 0.5, 0.55, 0.65)]


def _fixed_sum(extra):
    """16 lengths summing to 512 whose maximum grows with ``extra``."""
    lengths = np.full(N, 32, np.int32)
    lengths[0] += extra
    lengths[1 : 1 + extra] -= 1
    return lengths


FIXED_SUM = [_fixed_sum(e) for e in (1, 4, 8, 11, 14)]  # max 33 .. 46
# Sums 200 .. 300 rows, every length <= 32.
VARYING_SUM = [
    np.minimum(RNG.integers(0, 2 * s // N, N), 32).astype(np.int32)
    for s in (200, 230, 250, 275, 300)
]
PADDED = RNG.standard_normal((N, 32, F)).astype(np.float32)
ROWS = RNG.standard_normal((12, 32, F)).astype(np.float32)


def _ids(lengths):
    return np.repeat(np.arange(lengths.shape[0]), lengths).astype(np.int32)


SEGMENT_IDS = [np.pad(_ids(v)[:200], (0, 0)) for v in VARYING_SUM]  # max id varies


SHUFFLED = [RNG.permutation(_ids(v)) for v in VARYING_SUM]

# name: (eager call of i, the same with explicit sizes, jitted)
CASES = {
    "boolean_mask": (
        lambda i: tuple(jaxops.boolean_mask(X, MASKS[i])),
        lambda i: tuple(
            jax.jit(lambda x, m: jaxops.boolean_mask(x, m, size=int(MASKS[i].sum())))(X, MASKS[i])
        ),
    ),
    "boolean_unmask": (
        lambda i: jaxops.boolean_unmask([MASKS[i], ~MASKS[i]], [X[MASKS[i]], X[~MASKS[i]]]),
        lambda i: jax.jit(jaxops.boolean_unmask)(
            [MASKS[i], ~MASKS[i]], [X[MASKS[i]], X[~MASKS[i]]]
        ),
    ),
    "boolean_mask_lengths": (
        lambda i: jaxops.boolean_mask_lengths(FIXED_SUM[i], MASKS[i]),
        lambda i: jax.jit(jaxops.boolean_mask_lengths)(FIXED_SUM[i], MASKS[i]),
    ),
    "pack_rnn_sequence": (
        lambda i: jaxops.pack_rnn_sequence(X, FIXED_SUM[i]),
        lambda i: jax.jit(
            lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=int(FIXED_SUM[i].max()))
        )(X, FIXED_SUM[i]),
    ),
    "pack_rnn_sequence batch-major": (
        lambda i: jaxops.pack_rnn_sequence(X, FIXED_SUM[i], time_major=False),
        lambda i: jax.jit(
            lambda v, n: jaxops.pack_rnn_sequence(
                v, n, max_length=int(FIXED_SUM[i].max()), time_major=False
            )
        )(X, FIXED_SUM[i]),
    ),
    "unpack_rnn_sequence": (
        lambda i: jaxops.unpack_rnn_sequence(PADDED, VARYING_SUM[i], time_major=False),
        lambda i: jax.jit(
            lambda p, n: jaxops.unpack_rnn_sequence(
                p, n, total_length=int(VARYING_SUM[i].sum()), time_major=False
            )
        )(PADDED, VARYING_SUM[i]),
    ),
    "lengths_top_k": (
        lambda i: tuple(jaxops.lengths_top_k(X[:, 0], FIXED_SUM[i], k=3)),
        lambda i: tuple(
            jax.jit(lambda d, n: jaxops.lengths_top_k(d, n, k=3))(X[:, 0], FIXED_SUM[i])
        ),
    ),
    "lengths_to_segment_ids": (
        lambda i: jaxops.lengths_to_segment_ids(VARYING_SUM[i]),
        lambda i: jax.jit(
            lambda n: jaxops.lengths_to_segment_ids(n, total_length=int(VARYING_SUM[i].sum()))
        )(VARYING_SUM[i]),
    ),
    "lengths_range_fill": (
        lambda i: jaxops.lengths_range_fill(VARYING_SUM[i]),
        lambda i: jax.jit(
            lambda n: jaxops.lengths_range_fill(n, total_length=int(VARYING_SUM[i].sum()))
        )(VARYING_SUM[i]),
    ),
    "segment_ids_to_lengths": (
        lambda i: jaxops.segment_ids_to_lengths(SEGMENT_IDS[i]),
        lambda i: jax.jit(
            lambda s: jaxops.segment_ids_to_lengths(s, num_segments=int(SEGMENT_IDS[i].max()) + 1)
        )(SEGMENT_IDS[i]),
    ),
    "Ragged.to_padded": (
        lambda i: jaxops.Ragged(X, FIXED_SUM[i]).to_padded(),
        lambda i: jax.jit(
            lambda v, n: jaxops.Ragged(v, n).to_padded(max_length=int(FIXED_SUM[i].max()))
        )(X, FIXED_SUM[i]),
    ),
    "Ragged.from_padded": (
        lambda i: tuple(jax.tree.leaves(jaxops.Ragged.from_padded(PADDED, VARYING_SUM[i]))),
        lambda i: tuple(
            jax.tree.leaves(
                jax.jit(
                    lambda p, n: jaxops.Ragged.from_padded(p, n, capacity=int(VARYING_SUM[i].sum()))
                )(PADDED, VARYING_SUM[i])
            )
        ),
    ),
    "unpack_sequences": (
        lambda i: jaxops.unpack_sequences(ROWS, VARYING_SUM[i]),
        lambda i: jax.jit(
            lambda r, n: jaxops.unpack_sequences(r, n, total_length=int(VARYING_SUM[i].sum()))
        )(ROWS, VARYING_SUM[i]),
    ),
    # Inputs whose row count changes too (a batch's concatenated rows): padded
    # to a bucket on the host, rows past sum(lengths) never read.
    "pack_rnn_sequence, rows change": (
        lambda i: jaxops.pack_rnn_sequence(X[: VARYING_SUM[i].sum()], VARYING_SUM[i]),
        lambda i: jax.jit(
            lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=int(VARYING_SUM[i].max()))
        )(X[: VARYING_SUM[i].sum()], VARYING_SUM[i]),
    ),
    "unpack_rnn_sequence, steps change": (
        lambda i: jaxops.unpack_rnn_sequence(
            PADDED[:, : VARYING_SUM[i].max()], VARYING_SUM[i], time_major=False
        ),
        lambda i: jax.jit(
            lambda p, n: jaxops.unpack_rnn_sequence(
                p, n, total_length=int(VARYING_SUM[i].sum()), time_major=False
            )
        )(PADDED[:, : VARYING_SUM[i].max()], VARYING_SUM[i]),
    ),
    "lengths_top_k, rows change": (
        lambda i: tuple(jaxops.lengths_top_k(X[: VARYING_SUM[i].sum(), 0], VARYING_SUM[i], k=3)),
        lambda i: tuple(
            jax.jit(lambda d, n: jaxops.lengths_top_k(d, n, k=3, max_length=32))(
                X[: VARYING_SUM[i].sum(), 0], VARYING_SUM[i]
            )
        ),
    ),
    "segment_top_k": (
        lambda i: tuple(
            jaxops.segment_top_k(X[: len(SHUFFLED[i]), 0], SHUFFLED[i], k=3, num_segments=N)
        ),
        lambda i: tuple(
            jax.jit(lambda d, s: jaxops.segment_top_k(d, s, k=3, num_segments=N))(
                X[: len(SHUFFLED[i]), 0], SHUFFLED[i]
            )
        ),
    ),
    "segment_top_k, sorted ids": (
        lambda i: tuple(
            jaxops.segment_top_k(
                X[: VARYING_SUM[i].sum(), 0],
                _ids(VARYING_SUM[i]),
                k=3,
                num_segments=N,
                indices_are_sorted=True,
            )
        ),
        lambda i: tuple(
            jax.jit(lambda d, s: jaxops.segment_top_k(d, s, k=3, num_segments=N, max_length=32))(
                X[: VARYING_SUM[i].sum(), 0], _ids(VARYING_SUM[i])
            )
        ),
    ),
    "segment_ids_to_lengths, rows change": (
        lambda i: jaxops.segment_ids_to_lengths(SHUFFLED[i]),
        lambda i: jax.jit(lambda s: jaxops.segment_ids_to_lengths(s, num_segments=N))(SHUFFLED[i]),
    ),
    "boolean_mask_lengths, rows change": (
        lambda i: jaxops.boolean_mask_lengths(VARYING_SUM[i], MASKS[i][: VARYING_SUM[i].sum()]),
        lambda i: jax.jit(jaxops.boolean_mask_lengths)(
            VARYING_SUM[i], MASKS[i][: VARYING_SUM[i].sum()]
        ),
    ),
    "pack_sequences": (
        lambda i: tuple(
            jaxops.pack_sequences(
                X[: VARYING_SUM[i].sum()], VARYING_SUM[i], num_rows=24, row_length=32
            )
        ),
        lambda i: tuple(
            jax.jit(lambda v, n: jaxops.pack_sequences(v, n, num_rows=24, row_length=32))(
                X[: VARYING_SUM[i].sum()], VARYING_SUM[i]
            )
        ),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_five_sizes_compile_at_most_two_programs(name):
    eager, exact = CASES[name]
    with count_compiles() as compiles:
        results = [jax.block_until_ready(eager(i)) for i in range(5)]
    assert compiles[0] <= 2, f"{name}: {compiles[0]} programs compiled for 5 eager calls"
    for i, got in enumerate(results):
        want = exact(i)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype, (name, i, g.shape, w.shape)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{name} {i}")


def test_the_sizes_really_change():
    # Guards the cases above: each runs five distinct data-dependent sizes.
    assert len({int(m.sum()) for m in MASKS}) == 5
    assert len({int(v.max()) for v in FIXED_SUM}) == 5
    assert len({int(v.sum()) for v in VARYING_SUM}) == 5
    assert len({int(s.max()) for s in SEGMENT_IDS}) >= 3


def test_a_bucket_compiles_once():
    # MASKS[3] and MASKS[4] select 257..512 rows: one program serves both.
    assert {checks.bucket(int(MASKS[j].sum()), M) for j in (3, 4)} == {M}
    with count_compiles() as compiles:
        jaxops.boolean_mask(X, MASKS[3])
        jaxops.boolean_mask(X, MASKS[4])
    assert compiles[0] == 1


def test_traced_calls_keep_exact_sizes():
    # Under jit, with the mask a closed-over constant, the size is still exact (no trimming).
    mask = MASKS[0]
    out = jax.jit(lambda x: jaxops.boolean_mask(x, mask).values)(X)
    assert out.shape == (int(mask.sum()), F)
    # Under grad (data traced, mask concrete) the exact program runs too.
    g = jax.grad(lambda x: jnp.sum(jaxops.boolean_mask(x, mask).values ** 2))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(g), np.where(mask[:, None], 2 * X, 0), rtol=1e-6)
    top = jax.jit(lambda d: jaxops.lengths_top_k(d, FIXED_SUM[0], k=2).values)(X[:, 0])
    assert top.shape == (N, 2)


@pytest.mark.parametrize(
    ("size", "cap", "want"),
    [
        (0, 8, 1),
        (0, 0, 0),
        (1, 8, 1),
        (3, 8, 4),
        (4, 8, 4),
        (5, 8, 8),
        (5, 6, 6),
        (9, 6, 9),
        (1025, 4096, 2048),
        (2048, 4096, 2048),
        (2049, 3000, 3000),
    ],
)
def test_bucket(size, cap, want):
    assert checks.bucket(size, cap) == want


def test_trim_and_pad_rows_compile_nothing():
    x = jnp.asarray(X)
    with count_compiles() as compiles:
        trimmed = [checks.trim(x, n) for n in (3, 7, 11)]
        padded = [checks.pad_rows(x, M + n) for n in (1, 2)]
        cols = checks.trim(x, 2, axis=1)
    assert compiles[0] == 0
    np.testing.assert_array_equal(np.asarray(trimmed[1]), X[:7])
    np.testing.assert_array_equal(np.asarray(padded[1])[:M], X)
    assert not np.asarray(padded[1])[M:].any() and padded[1].shape == (M + 2, F)
    np.testing.assert_array_equal(np.asarray(cols), X[:, :2])
    assert checks.trim(x, M) is x and checks.pad_rows(x, M) is x


def test_host_fit_check_matches_the_jitted_one():
    rng = np.random.default_rng(1)
    for _ in range(200):
        row_length = int(rng.integers(1, 12))
        lengths = rng.integers(0, row_length + 2, int(rng.integers(0, 25))).astype(np.int32)
        host = attention._rows_needed_host(lengths, row_length)
        assert host == int(attention._rows_needed(jnp.asarray(lengths), row_length)), lengths


def test_unchecked_eager_calls_clip_like_traced_ones():
    # Invalid lengths (sum 4 > 3 rows) inside unchecked: clipped to the rows, eagerly
    # as under jit; padding the rows to a bucket would have read a fourth row.
    values, lengths = np.arange(1.0, 4.0, dtype=np.float32), np.array([2, 2], np.int32)
    pack = jaxops.unchecked(lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=2, pad_value=-1))
    np.testing.assert_array_equal(pack(values, lengths), jax.jit(pack)(values, lengths))
    np.testing.assert_array_equal(pack(values, lengths), [[1, 3], [2, -1]])
    top = jaxops.unchecked(lambda d, n: jaxops.lengths_top_k(d, n, k=2).values)
    np.testing.assert_array_equal(top(-values, lengths), [[-1, -2], [-3, 0]])


def test_unsigned_segment_ids_are_not_padded_into_a_segment():
    ids = np.array([0, 255, 255], np.uint8)  # 255 is a real segment here
    got = np.asarray(jaxops.segment_ids_to_lengths(ids))
    assert got.shape == (256,) and got[0] == 1 and got[255] == 2 and got.sum() == 3


def test_unchecked_eager_unmask_fills_a_short_stream():
    # Stream 0 wins 4 positions but has 3 rows: unchecked, the fourth is fill_value,
    # eagerly as under jit (padding the rows to a bucket of 4 would read a zero row).
    masks = [np.array([True] * 4 + [False]), np.array([False] * 4 + [True])]
    values = [np.array([1.0, 2.0, 3.0], np.float32), np.array([5.0], np.float32)]
    unmask = jaxops.unchecked(lambda m, v: jaxops.boolean_unmask(m, v, fill_value=-1))
    np.testing.assert_array_equal(unmask(masks, values), [1, 2, 3, -1, 5])
    np.testing.assert_array_equal(unmask(masks, values), jax.jit(unmask)(masks, values))
