"""Tests for lengths_top_k and lengths_top_k_gradient."""

from __future__ import annotations

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify
from jax.test_util import check_grads

import jaxops
from jaxops._src import topk
from tests.helpers import (
    offsets,
    ragged_lengths,
    raises_eager_and_checkified,
    raises_message,
    x64_for,
)

# --------------------------------------------------------------------------- #
# Reference and helpers
# --------------------------------------------------------------------------- #


def _rank(x, is_float: bool):
    """Sort key of one entry: NaN first, then descending value (-0.0 == +0.0)."""
    if is_float:
        x = float(x)
        return (0, 0.0) if np.isnan(x) else (1, -x)
    return (1, -int(x))


def reference(data, lengths, k):
    """Per-segment stable sort in plain Python."""
    data, lengths = np.asarray(data), np.asarray(lengths)
    is_float = np.issubdtype(data.dtype, np.floating) or data.dtype == jnp.bfloat16
    num = lengths.shape[0]
    values = np.zeros((num, k), data.dtype)
    indices = np.full((num, k), -1, np.int32)
    for n, off in enumerate(np.cumsum(lengths) - lengths):
        seg = data[off : off + lengths[n]]
        order = sorted(range(len(seg)), key=lambda i: (*_rank(seg[i], is_float), i))[:k]
        values[n, : len(order)] = seg[order]
        indices[n, : len(order)] = order
    return values, indices


def reference_gradient(lengths, indices, g, data_length):
    out = np.zeros(data_length, g.dtype)
    for n, off in enumerate(np.cumsum(lengths) - lengths):
        for j in range(indices.shape[1]):
            if indices[n, j] >= 0:
                out[off + indices[n, j]] = g[n, j]
    return out


def safe_gradient_reference(lengths, indices, g, data_length):
    """SPEC's safe result for invalid indices: slots outside ``[0, lengths[n])`` are dropped."""
    out = np.zeros(data_length, g.dtype)
    for n, off in enumerate(offsets(lengths)):
        for j in range(indices.shape[1]):
            if 0 <= indices[n, j] < lengths[n]:
                out[off + indices[n, j]] += g[n, j]
    return out


def assert_bits_equal(actual, expected):
    """Exact equality including the sign of zero and NaN payloads."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    unsigned = f"u{actual.dtype.itemsize}"
    np.testing.assert_array_equal(actual.view(unsigned), expected.view(unsigned))


def assert_matches(out, expected):
    assert isinstance(out, jaxops.TopK)
    assert out.indices.dtype == jnp.int32
    assert_bits_equal(out.values, expected[0])
    np.testing.assert_array_equal(out.indices, expected[1])


@contextlib.contextmanager
def small_chunks():
    """Chunks of width 2k, so that small inputs take several chunked passes."""
    saved = topk._MIN_CHUNK, topk._CHUNK_PER_K
    topk._MIN_CHUNK, topk._CHUNK_PER_K = 2, 2
    try:
        yield
    finally:
        topk._MIN_CHUNK, topk._CHUNK_PER_K = saved


def _robust(data, lengths, k):
    return jaxops.lengths_top_k(data, lengths, k=k)


def _robust_small(data, lengths, k):  # a distinct function: jit caches traces per function
    return jaxops.lengths_top_k(data, lengths, k=k)


def _padded(data, lengths, k, max_length):
    return jaxops.lengths_top_k(data, lengths, k=k, max_length=max_length)


# Traced lengths without max_length: the chunked formulation.
robust = jax.jit(_robust, static_argnames="k")
# Only ever called inside `small_chunks()` (its traces bake in the chunk width).
robust_small_chunks = jax.jit(_robust_small, static_argnames="k")
grad_small_chunks = jax.jit(
    jax.grad(lambda d, ls, w, k: (jaxops.lengths_top_k(d, ls, k=k).values * w).sum()),
    static_argnames="k",
)
padded = jax.jit(_padded, static_argnames=("k", "max_length"))

OP, GRAD_OP = "lengths_top_k", "lengths_top_k_gradient"

POOL = [-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, np.inf, -np.inf, np.nan]


@st.composite
def ragged_problem(draw):
    lengths = draw(ragged_lengths())
    # sizes rounded up to a multiple of 16 (fewer compilations); the tail is ignored
    size = -(-(int(lengths.sum()) + draw(st.integers(0, 3))) // 16) * 16
    data = np.asarray(draw(st.lists(st.sampled_from(POOL), min_size=size, max_size=size)))
    return data.astype(np.float32), lengths, draw(st.sampled_from([1, 2, 3, 7]))


# --------------------------------------------------------------------------- #
# (1) Matches the reference; both formulations agree
# --------------------------------------------------------------------------- #


@given(ragged_problem())
def test_matches_reference_with_ties_nan_and_signed_zeros(problem):
    data, lengths, k = problem
    expected = reference(data, lengths, k)
    assert_matches(jaxops.lengths_top_k(data, lengths, k=k), expected)
    assert_matches(robust(data, lengths, k=k), expected)
    with small_chunks():
        assert_matches(robust_small_chunks(data, lengths, k=k), expected)
    max_length = int(lengths.max(initial=0)) + 1
    assert_matches(padded(data, lengths, k=k, max_length=max_length), expected)


def test_long_segment_takes_chunked_passes():
    rng = np.random.default_rng(0)
    lengths = np.array([1500, 3, 0, 200, 1, 129], np.int32)
    data = rng.integers(-20, 20, size=int(lengths.sum()) + 5).astype(np.float32)
    data[rng.random(data.shape) < 0.01] = np.nan
    data[rng.random(data.shape) < 0.05] = -0.0
    for k in (1, 40):
        assert topk._plan(data.shape[0], len(lengths), k, data.shape[0], False)[1]  # passes
        expected = reference(data, lengths, k)
        assert_matches(robust(data, lengths, k=k), expected)
        assert_matches(padded(data, lengths, k=k, max_length=1500), expected)
    assert_matches(jaxops.lengths_top_k(data, lengths, k=40), expected)


def _boundary_lengths(width):
    """Segments around multiples of the chunk width: last chunks of 1, 3, width-1 or width
    entries, a single short chunk, an empty segment, and several full chunks."""
    return np.array(
        [width + 1, 2 * width + 3, width - 1, width, 0, 2 * width + 1, 1, 3 * width, 7, 2 * width],
        np.int32,
    )


def _tie_heavy_data(rng, lengths, extra=3):
    """Few distinct values (ties across chunk boundaries), both zeros, NaN, both infinities;
    segment 1 is all -inf but two entries (ties with the padding key) and segment 5 all zeros."""
    size = int(lengths.sum()) + extra
    data = rng.integers(-20, 20, size=size).astype(np.float32)
    data[(data == 0) & (rng.random(size) < 0.5)] = -0.0
    special = rng.random(size)
    data[special < 0.01] = np.nan
    data[(special >= 0.01) & (special < 0.02)] = np.inf
    data[(special >= 0.02) & (special < 0.07)] = -np.inf
    off = offsets(lengths)
    data[off[1] : off[1] + lengths[1]] = -np.inf
    data[off[1] + lengths[1] - 2] = 3.0  # in the short last chunk
    data[off[1] + 5] = -0.0
    data[off[5] : off[5] + lengths[5]] = np.where(rng.random(lengths[5]) < 0.5, -0.0, 0.0)
    return data


@pytest.mark.parametrize("k", [8, 40])
def test_chunked_path_at_chunk_boundaries(k):
    # Traced lengths, no max_length: the chunked formulation (one pass with k=8, two with
    # k=40), with last chunks of 1 and 3 entries, a lone chunk of 1 or 7 (all fewer than k),
    # exact multiples of the width, and an empty segment.
    width = max(topk._MIN_CHUNK, topk._CHUNK_PER_K * k)
    lengths = _boundary_lengths(width)
    data = _tie_heavy_data(np.random.default_rng(k), lengths)
    plan_width, passes, _ = topk._plan(data.shape[0], len(lengths), k, data.shape[0], False)
    assert plan_width == width and len(passes) == (1 if k == 8 else 2)
    expected = reference(data, lengths, k)
    assert_matches(robust(data, lengths, k=k), expected)
    # the same segments, each alone (its last chunk is the last row); one shape, one trace
    for n in (0, 1, 4, 6, 8):
        one = lengths[n : n + 1]
        start = int(offsets(lengths)[n])
        seg = np.full(3 * width + 3, np.nan, np.float32)  # rows past the segment are ignored
        seg[: one[0]] = data[start : start + one[0]]
        assert_matches(robust(seg, one, k=k), reference(seg, one, k))


def test_chunked_path_at_chunk_boundaries_many_passes():
    k = 3
    with small_chunks():
        width = max(topk._MIN_CHUNK, topk._CHUNK_PER_K * k)  # 6
        lengths = _boundary_lengths(width)
        data = _tie_heavy_data(np.random.default_rng(12), lengths)
        passes = topk._plan(data.shape[0], len(lengths), k, data.shape[0], False)[1]
        assert len(passes) >= 3
        assert_matches(robust_small_chunks(data, lengths, k=k), reference(data, lengths, k))


def _float64_bits(*bits):
    return np.array(bits, np.uint64).view(np.float64)


def test_float64_signed_zeros_and_nan_order_padded_and_chunked():
    nans = _float64_bits(0x7FF0000000000123, 0xFFF8000000000000, 0xFFF0000000000456)
    zeros = np.array([-0.0, 0.0, -0.0, 0.0, -0.0])
    specials = np.array([1.0, nans[0], np.inf, nans[1], np.nan, -np.inf, nans[2]])
    negatives = np.array([-1e308, -1e-300, -1.0, -2.0, -0.0, 1e-300, -3e-300])
    pool = np.concatenate([zeros, specials, negatives, [1e308, 0.5]])
    long = pool[np.random.default_rng(13).integers(0, len(pool), size=300)]
    data = np.concatenate([zeros, specials, negatives, long, [7.0]])
    lengths = np.array([5, 7, 7, 300], np.int32)
    with jax.enable_x64(True):
        assert topk._plan(data.shape[0], 4, 7, data.shape[0], False)[1]  # robust: chunked
        expected = reference(data, lengths, 7)
        out = jaxops.lengths_top_k(data, lengths, k=7)  # concrete lengths: padded
        assert_matches(out, expected)
        assert_matches(padded(data, lengths, k=7, max_length=300), expected)
        assert_matches(robust(data, lengths, k=7), expected)
        with small_chunks():
            assert_matches(robust_small_chunks(data, lengths, k=7), expected)
    # spelled out: zeros tie (by position, signs kept); NaNs (any sign or payload) above +inf
    np.testing.assert_array_equal(out.indices[0], [0, 1, 2, 3, 4, -1, -1])
    assert list(np.signbit(out.values[0, :5])) == [True, False, True, False, True]
    np.testing.assert_array_equal(out.indices[1], [1, 3, 4, 6, 2, 0, 5])
    np.testing.assert_array_equal(out.indices[2], [5, 4, 1, 6, 2, 3, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_subnormals_rank_by_value_not_as_zero(dtype):
    # Only -0.0 and +0.0 are equal; a subnormal is a nonzero value (lax.top_k orders them).
    tiny = np.finfo(dtype).smallest_subnormal
    data = np.array([-tiny, -0.0, tiny, 0.0, 2 * tiny], dtype)
    lengths = np.array([5], np.int32)
    with x64_for(dtype):
        expected = reference(data, lengths, 5)
        np.testing.assert_array_equal(expected[1], [[4, 2, 1, 3, 0]])
        assert_matches(jaxops.lengths_top_k(data, lengths, k=5), expected)
        assert_matches(robust(data, lengths, k=5), expected)


def _extremes(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype == jnp.bfloat16:
        info = jnp.finfo(dtype)
        pool = [info.max, info.min, info.tiny, -info.tiny, 1.5, -0.0, 0.0, np.inf, -np.inf]
        pool += [np.nan, -np.nan, 1.5, 0.0]
        return np.asarray(pool, np.float64).astype(dtype)
    info = np.iinfo(dtype)
    pool = [info.max, info.min, info.min, 0, 1, info.max - 1, info.max // 2 + 1, info.max // 2]
    return np.asarray(pool, dtype)


@pytest.mark.parametrize(
    "dtype",
    [
        jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64,
        np.int8, np.int32, np.uint32, np.int64, np.uint64,
    ],
)  # fmt: skip
def test_dtypes(dtype):
    rng = np.random.default_rng(1)
    pool = _extremes(dtype)
    with x64_for(dtype):
        lengths = np.array([7, 0, 12, 3, 1], np.int32)
        data = pool[rng.integers(0, len(pool), size=int(lengths.sum()) + 2)]
        expected = reference(data, lengths, 4)
        # NaN sign: the reference keeps the stored entries, so must we.
        assert_matches(jaxops.lengths_top_k(data, lengths, k=4), expected)
        assert_matches(robust(data, lengths, k=4), expected)
        with small_chunks():
            assert_matches(robust_small_chunks(data, lengths, k=4), expected)


def test_values_keep_the_stored_entry():
    data = np.array([-0.0, 0.0, -0.0, np.nan, -np.nan], np.float32)
    out = jaxops.lengths_top_k(data, np.array([3, 2]), k=3)
    assert list(np.signbit(out.values[0])) == [True, False, True]
    np.testing.assert_array_equal(out.indices, [[0, 1, 2], [0, 1, -1]])
    assert np.signbit(out.values[1, 1]) and not np.signbit(out.values[1, 0])


def test_lengths_dtypes_and_lax_top_k_difference():
    data = jnp.array([0.0, -0.0, 0.0], jnp.float32)
    _, lax_indices = jax.lax.top_k(jnp.array([-0.0, 0.0]), 2)
    np.testing.assert_array_equal(lax_indices, [1, 0])  # why we normalise zeros
    for lengths_dtype in (np.int8, np.uint16, np.int32):
        out = jaxops.lengths_top_k(data, np.array([2, 1], lengths_dtype), k=2)
        np.testing.assert_array_equal(out.indices, [[0, 1], [0, -1]])


# --------------------------------------------------------------------------- #
# (6) Edge cases
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("size", "lengths", "k"),
    [
        (0, [], 3),  # N = 0, M = 0
        (4, [], 2),  # N = 0
        (0, [0, 0], 2),  # M = 0
        (5, [0, 0, 0], 1),  # empty segments, data ignored
        (6, [2, 0, 1], 5),  # k larger than every segment, tail ignored
    ],
)
def test_edge_cases(size, lengths, k):
    data = np.arange(size, dtype=np.float32)[::-1].copy()
    lengths = np.asarray(lengths, np.int32)
    expected = reference(data, lengths, k)
    assert_matches(jaxops.lengths_top_k(data, lengths, k=k), expected)
    assert_matches(robust(data, lengths, k=k), expected)
    assert_matches(padded(data, lengths, k=k, max_length=3), expected)
    grad = jax.grad(lambda d: jaxops.lengths_top_k(d, lengths, k=k).values.sum())(data)
    ones = np.ones((len(lengths), k), np.float32)
    np.testing.assert_array_equal(grad, reference_gradient(lengths, expected[1], ones, size))


# --------------------------------------------------------------------------- #
# (2) Gradients
# --------------------------------------------------------------------------- #


def _naive_top_k_values(data, lengths, idx):
    """Autodiff reference: indices from the NumPy reference, values by a JAX gather."""
    if data.shape[0] == 0:
        return jnp.zeros(idx.shape, data.dtype)
    rows = np.where(idx >= 0, (np.cumsum(lengths) - lengths)[:, None] + idx, 0)
    return jnp.where(jnp.asarray(idx >= 0), data[rows], 0)


@given(ragged_problem())
def test_custom_gradient_matches_autodiff_of_reference(problem):
    data, lengths, k = problem
    data = np.nan_to_num(data, nan=3.0, posinf=4.0, neginf=-4.0)
    weights = np.arange(1, len(lengths) * k + 1, dtype=np.float32).reshape(len(lengths), k)
    _, idx = reference(data, lengths, k)
    expected = jax.grad(lambda d: (_naive_top_k_values(d, lengths, idx) * weights).sum())(data)
    loss = lambda d: (jaxops.lengths_top_k(d, lengths, k=k).values * weights).sum()
    actual = jax.grad(loss)(data)
    assert actual.dtype == data.dtype
    np.testing.assert_array_equal(actual, expected)
    with small_chunks():  # the chunked formulation under grad, traced lengths
        actual = grad_small_chunks(data, lengths, weights, k=k)
    np.testing.assert_array_equal(actual, expected)


def test_check_grads_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        lengths = np.array([5, 0, 9, 2], np.int32)
        data = jnp.asarray(rng.permutation(18) + rng.random(18) * 0.1, jnp.float64)
        f = lambda d: jaxops.lengths_top_k(d, lengths, k=3).values
        check_grads(f, (data,), order=1, modes=["rev"])
        g = lambda d: robust(d, jnp.asarray(lengths), k=3).values
        check_grads(g, (data,), order=1, modes=["rev"])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, np.int32])
def test_gradient_function_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    lengths = np.array([4, 0, 2, 6], np.int32)
    indices = np.array([[3, 0, -1], [-1, -1, -1], [1, 0, -1], [5, 2, 4]], np.int32)
    g = rng.integers(1, 9, size=indices.shape).astype(dtype)
    expected = reference_gradient(lengths, indices, g, 14)
    out = jaxops.lengths_top_k_gradient(lengths, indices, g, data_length=14)
    assert_bits_equal(out, expected)
    jitted = jax.jit(jaxops.lengths_top_k_gradient, static_argnames="data_length")
    assert_bits_equal(jitted(lengths, indices, g, data_length=14), expected)


def test_integer_data_gets_no_gradient_and_indices_cotangent_is_ignored():
    data = jnp.array([3.0, 1.0, 2.0])

    def loss(d):
        out = jaxops.lengths_top_k(d, jnp.array([3]), k=2)
        return out.values.sum() + out.indices.sum().astype(jnp.float32)

    np.testing.assert_array_equal(jax.grad(loss)(data), [1.0, 0.0, 1.0])
    vjp_out, vjp = jax.vjp(lambda d: jaxops.lengths_top_k(d, jnp.array([3]), k=2).values, data)
    np.testing.assert_array_equal(vjp(jnp.ones_like(vjp_out))[0], [1.0, 0.0, 1.0])


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


def test_integer_data_vjp_returns_a_float0_cotangent():
    data = np.array([3, -1, 7, 7, 0, 2], np.int32)
    lengths = np.array([4, 0, 2], np.int32)
    out, vjp = jax.vjp(lambda d: jaxops.lengths_top_k(d, lengths, k=3), data)
    assert_matches(out, reference(data, lengths, 3))
    (ct,) = vjp(jaxops.TopK(_float0_like(out.values), _float0_like(out.indices)))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == data.shape
    # a float loss whose only path to x runs through integer top-k data gets zeros
    loss = lambda x: (
        jaxops.lengths_top_k(jnp.round(x).astype(jnp.int32), lengths, k=3)
        .values.sum()
        .astype(jnp.float32)
        + jnp.sum(x)
    )
    grad = jax.grad(loss)(data.astype(np.float32))
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.ones(6, np.float32))


def test_backward_rule_returns_no_cotangent_for_non_float_data():
    # JAX never runs a custom_vjp's backward pass when no input is floating (jax.vjp,
    # jit(vjp), linearize and grad(allow_int=True) all short-circuit), so the rule's
    # non-floating branch is reachable only directly.
    lengths, indices = jnp.array([3]), jnp.array([[2, 0]], jnp.int32)
    g = _float0_like(indices)
    plan = topk._plan(3, 1, 2, 3, True)
    assert topk._top_k_rule.bwd(3, 2, 3, plan, (lengths, indices), (g, g)) == (None, None)


# --------------------------------------------------------------------------- #
# (3) vmap, (4) jit
# --------------------------------------------------------------------------- #


def test_vmap_over_data_and_lengths_matches_loop():
    rng = np.random.default_rng(4)
    data = rng.integers(-3, 3, size=(3, 20)).astype(np.float32)
    lengths = np.array([[5, 0, 9, 3], [1, 1, 1, 1], [0, 0, 20, 0]], np.int32)
    expected = [reference(data[b], lengths[b], 4) for b in range(3)]
    variants = {
        "robust": jax.vmap(lambda d, ls: jaxops.lengths_top_k(d, ls, k=4)),
        "padded": jax.vmap(lambda d, ls: jaxops.lengths_top_k(d, ls, k=4, max_length=20)),
        "data only": jax.vmap(lambda d: jaxops.lengths_top_k(d, lengths[0], k=4)),
    }
    for name, fn in variants.items():
        out = jax.jit(fn)(data, lengths) if name != "data only" else jax.jit(fn)(data)
        for b in range(3):
            want = expected[b] if name != "data only" else reference(data[b], lengths[0], 4)
            assert_matches(jaxops.TopK(out.values[b], out.indices[b]), want)
    with small_chunks():
        out = jax.jit(jax.vmap(lambda d, ls: jaxops.lengths_top_k(d, ls, k=2)))(data, lengths)
    for b in range(3):
        assert_matches(
            jaxops.TopK(out.values[b], out.indices[b]), reference(data[b], lengths[b], 2)
        )


def test_vmap_of_grad_matches_loop():
    data = np.array([[1.0, 3.0, 2.0, 5.0], [4.0, 4.0, 0.0, 1.0]], np.float32)
    lengths = np.array([[2, 2], [3, 1]], np.int32)
    loss = lambda d, ls: jaxops.lengths_top_k(d, ls, k=1).values.sum()
    batched = jax.jit(jax.vmap(jax.grad(loss)))(data, lengths)
    ones = np.ones((2, 1), np.float32)
    for b in range(2):
        expected = reference_gradient(lengths[b], reference(data[b], lengths[b], 1)[1], ones, 4)
        np.testing.assert_array_equal(batched[b], expected)
        np.testing.assert_array_equal(jax.grad(loss)(data[b], lengths[b]), expected)
    np.testing.assert_array_equal(batched, [[0, 1, 0, 1], [1, 0, 0, 1]])  # ties: first wins


def test_jit_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(d, ls):
        return jaxops.lengths_top_k(d, ls, k=2)

    data = np.array([1.0, 2.0, 3.0], np.float32)
    f(data, np.array([2, 1], np.int32))
    out = f(data + 1, np.array([1, 2], np.int32))
    np.testing.assert_array_equal(out.indices, [[0, -1], [1, 0]])


# --------------------------------------------------------------------------- #
# (5) Errors
# --------------------------------------------------------------------------- #


def test_type_and_static_errors():
    data, lengths = jnp.arange(4.0), jnp.array([2, 2])
    with pytest.raises(TypeError, match=r"lengths_top_k: expected `data` of a real"):
        jaxops.lengths_top_k(jnp.array([True, False]), jnp.array([2]), k=1)
    with pytest.raises(TypeError, match=r"lengths_top_k: expected `lengths` of an integer"):
        jaxops.lengths_top_k(data, jnp.array([2.0, 2.0]), k=1)
    with pytest.raises(TypeError, match=r"expected `k` to be a Python int, got k=2.0"):
        jaxops.lengths_top_k(data, lengths, k=2.0)
    with pytest.raises(TypeError, match=r"expected `k` to be a Python int"):
        jaxops.lengths_top_k(data, lengths, k=True)
    with pytest.raises(TypeError, match=r"expected `max_length` to be a Python int"):
        jaxops.lengths_top_k(data, lengths, k=1, max_length=jnp.array(3))
    with pytest.raises(ValueError, match=r"^lengths_top_k: expected k >= 1, got k=0\.$"):
        jaxops.lengths_top_k(data, lengths, k=0)
    with pytest.raises(ValueError, match=r"expected max_length >= 0, got max_length=-1"):
        jaxops.lengths_top_k(data, lengths, k=1, max_length=-1)
    with pytest.raises(ValueError, match=r"expected `data` of rank 1, got shape \(2, 2\)"):
        jaxops.lengths_top_k(data.reshape(2, 2), lengths, k=1)
    with pytest.raises(ValueError, match=r"expected `lengths` of rank 1"):
        jaxops.lengths_top_k(data, lengths.reshape(1, 2), k=1)


@pytest.mark.parametrize(
    ("lengths", "max_length", "match"),
    [
        ([2, -1, 1], None, r"expected lengths >= 0, got lengths\[1\] = -1\."),
        ([3, 3], None, r"expected sum\(lengths\) <= data.shape\[0\] = 5, got sum\(lengths\) = 6\."),
        ([1, 4], 3, r"expected lengths <= max_length = 3, got lengths\[1\] = 4\."),
    ],
)
def test_value_errors_eager_and_checkified(lengths, max_length, match):
    data = jnp.arange(5.0)
    lengths = np.asarray(lengths, np.int32)
    kwargs = {"k": 2} if max_length is None else {"k": 2, "max_length": max_length}
    raises_eager_and_checkified(jaxops.lengths_top_k, (data, lengths), match, kwargs, op=OP)
    # also under vmap over lengths, and through checkify(grad(...))
    batched = jax.jit(jax.vmap(lambda ls: jaxops.lengths_top_k(data, ls, **kwargs).values))
    with raises_message(ValueError, OP, match):
        jaxops.checked(batched)(lengths[None])
    loss = lambda d, ls: jaxops.lengths_top_k(d, ls, **kwargs).values.sum()
    with raises_message(ValueError, OP, match):
        jaxops.checked(jax.jit(jax.grad(loss)))(data, lengths)


def test_invalid_traced_lengths_are_clipped_without_checkify():
    data = jnp.array([1.0, 5.0, 3.0, 2.0])
    out = robust(data, jnp.array([-2, 3, 9]), k=2)
    np.testing.assert_array_equal(out.indices, [[-1, -1], [1, 2], [0, -1]])
    np.testing.assert_array_equal(out.values, [[0.0, 0.0], [5.0, 3.0], [2.0, 0.0]])
    out = padded(data, jnp.array([4]), k=2, max_length=2)
    np.testing.assert_array_equal(out.indices, [[1, 0]])
    err, _ = checkify.checkify(padded, errors=checkify.user_checks)(
        data, jnp.array([4]), k=2, max_length=2
    )
    assert "lengths <= max_length = 2" in err.get()


def test_gradient_function_errors():
    op = jaxops.lengths_top_k_gradient
    lengths, indices, g = jnp.array([2, 1]), jnp.array([[1, 0], [0, -1]]), jnp.ones((2, 2))
    with pytest.raises(TypeError, match=r"lengths_top_k_gradient: expected `indices` of an int"):
        op(lengths, indices.astype(jnp.float32), g, data_length=3)
    with pytest.raises(TypeError, match=r"expected `g` of a real"):
        op(lengths, indices, g > 0, data_length=3)
    with pytest.raises(TypeError, match=r"expected `data_length` to be a Python int"):
        op(lengths, indices, g, data_length=3.0)
    with pytest.raises(ValueError, match=r"expected data_length >= 0"):
        op(lengths, indices, g, data_length=-1)
    with pytest.raises(ValueError, match=r"expected `indices` of rank 2"):
        op(lengths, indices[0], g, data_length=3)
    with pytest.raises(ValueError, match=r"expected indices.shape\[0\] == len\(lengths\) = 2"):
        op(lengths, indices[:1], g[:1], data_length=3)
    with pytest.raises(ValueError, match=r"expected g.shape == indices.shape = \(2, 2\)"):
        op(lengths, indices, g[:, :1], data_length=3)
    kwargs = {"data_length": 3}
    raises_eager_and_checkified(
        op,
        (jnp.array([2, 2]), indices, g),
        r"expected sum\(lengths\) <= data_length = 3, got sum\(lengths\) = 4\.",
        kwargs,
        op=GRAD_OP,
    )
    raises_eager_and_checkified(
        op,
        (jnp.array([-1, 1]), indices, g),
        r"expected lengths >= 0, got lengths\[0\] = -1\.",
        kwargs,
        op=GRAD_OP,
    )
    bad = jnp.array([[1, 0], [1, -1]])
    match = (
        r"expected -1 <= indices\[n, j\] < lengths\[n\], "
        r"got indices\[1, 0\] = 1 with lengths\[1\] = 1\."
    )
    raises_eager_and_checkified(op, (lengths, bad, g), match, kwargs, op=GRAD_OP)
    raises_eager_and_checkified(
        op,
        (lengths, jnp.array([[1, -2], [0, -1]]), g),
        r"expected -1 <= indices\[n, j\] < lengths\[n\], "
        r"got indices\[0, 1\] = -2 with lengths\[0\] = 2\.",
        kwargs,
        op=GRAD_OP,
    )
    # without checkify, out-of-range slots are dropped (nothing lands in another segment)
    out = jax.jit(op, static_argnames="data_length")(lengths, bad, g, data_length=3)
    np.testing.assert_array_equal(out, [1.0, 1.0, 0.0])


# Valid lengths over 10 rows (segments [0, 3), [3, 5), [5, 5), [5, 9), tail row 9); every
# out-of-range slot (index >= lengths[n], or < -1) would land in another segment or in the
# tail if it were not dropped.
OOR_LENGTHS = np.array([3, 2, 0, 4], np.int32)
OOR_INDICES = np.array([[3, 0, 5], [2, 1, -1], [0, -1, -2], [4, 3, -3]], np.int32)
OOR_MATCH = (
    r"expected -1 <= indices\[n, j\] < lengths\[n\], "
    r"got indices\[0, 0\] = 3 with lengths\[0\] = 3\."
)


def test_gradient_function_drops_out_of_range_indices_under_jit():
    g = (2.0 ** np.arange(12, dtype=np.float32)).reshape(4, 3)  # a misplaced slot shows
    expected = safe_gradient_reference(OOR_LENGTHS, OOR_INDICES, g, 10)
    np.testing.assert_array_equal(expected, [g[0, 1], 0, 0, 0, g[1, 1], 0, 0, 0, g[3, 1], 0])
    f = jax.jit(lambda ls, i, g: jaxops.lengths_top_k_gradient(ls, i, g, data_length=10))
    np.testing.assert_array_equal(f(OOR_LENGTHS, OOR_INDICES, g), expected)
    batched = jax.vmap(f)(*(np.stack([x, x]) for x in (OOR_LENGTHS, OOR_INDICES, g)))
    np.testing.assert_array_equal(batched, [expected, expected])
    with raises_message(ValueError, GRAD_OP, OOR_MATCH):
        jaxops.checked(f)(OOR_LENGTHS, OOR_INDICES, g)


def test_gradient_function_judges_concrete_per_array():
    g = np.arange(1.0, 13.0, dtype=np.float32).reshape(4, 3)
    good = np.array([[2, 0, -1], [1, 0, -1], [-1, -1, -1], [3, 1, 0]], np.int32)
    expected = reference_gradient(OOR_LENGTHS, good, g, 10)
    # NumPy lengths closed over (concrete) with traced indices, and the other way round
    by_indices = jax.jit(
        lambda i, g: jaxops.lengths_top_k_gradient(OOR_LENGTHS, i, g, data_length=10)
    )
    np.testing.assert_array_equal(by_indices(good, g), expected)
    np.testing.assert_array_equal(jaxops.checked(by_indices)(good, g), expected)
    bad_expected = safe_gradient_reference(OOR_LENGTHS, OOR_INDICES, g, 10)
    np.testing.assert_array_equal(by_indices(OOR_INDICES, g), bad_expected)
    with raises_message(ValueError, GRAD_OP, OOR_MATCH):
        jaxops.checked(by_indices)(OOR_INDICES, g)
    by_lengths = jax.jit(
        lambda ls, g: jaxops.lengths_top_k_gradient(ls, OOR_INDICES, g, data_length=10)
    )
    np.testing.assert_array_equal(by_lengths(OOR_LENGTHS, g), bad_expected)
    with raises_message(ValueError, GRAD_OP, OOR_MATCH):
        jaxops.checked(by_lengths)(OOR_LENGTHS, g)
    # concrete lengths are still checked when the indices are traced
    negative = np.array([3, -2, 0, 4], np.int32)
    with raises_message(ValueError, GRAD_OP, r"expected lengths >= 0, got lengths\[1\] = -2\."):
        jaxops.checked(
            jax.jit(lambda i, g: jaxops.lengths_top_k_gradient(negative, i, g, data_length=10))
        )(good, g)


# --------------------------------------------------------------------------- #
# Cost: the chunked formulation never builds an [N, max(lengths)] array
# --------------------------------------------------------------------------- #


def test_skewed_lengths_compile_small_and_are_exact():
    num_short, long = 1000, 100_000
    lengths = np.concatenate([[long], np.ones(num_short)]).astype(np.int32)
    rng = np.random.default_rng(5)
    data = rng.integers(-1000, 1000, size=long + num_short).astype(np.float32)
    k = 8
    f = jax.jit(lambda d, ls: jaxops.lengths_top_k(d, ls, k=k))
    compiled = f.lower(data, lengths).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    padded_bytes = (num_short + 1) * long * 4
    assert temp < padded_bytes // 50, temp
    out = compiled(data, lengths)
    order = np.lexsort((np.arange(long), -data[:long]))[:k]
    np.testing.assert_array_equal(out.indices[0], order)
    np.testing.assert_array_equal(out.values[0], data[:long][order])
    np.testing.assert_array_equal(out.indices[1:, 0], 0)
    np.testing.assert_array_equal(out.indices[1:, 1:], -1)
    np.testing.assert_array_equal(out.values[1:, 0], data[long:])
    # concrete lengths with that much padding also avoid the padded layout
    eager = jaxops.lengths_top_k(data, lengths, k=k)
    np.testing.assert_array_equal(eager.indices, out.indices)
