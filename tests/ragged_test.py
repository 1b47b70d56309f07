"""Ragged batches and segment ids against SPEC §7."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxops
from tests import helpers
from tests.topk_test import reference as lengths_top_k_reference

# --------------------------------------------------------------------------- #
# NumPy references
# --------------------------------------------------------------------------- #


def segment_ids_reference(lengths, total):
    ids = np.full(total, -1, np.int32)
    pos = np.full(total, -1, np.int32)
    row = 0
    for n, length in enumerate(np.asarray(lengths, np.int64)):
        for t in range(int(length)):
            if row < total:
                ids[row], pos[row] = n, t
            row += 1
    return ids, pos


def segment_top_k_reference(data, ids, k, num_segments):
    data, ids = np.asarray(data), np.asarray(ids)
    values = np.zeros((num_segments, k), data.dtype)
    indices = np.full((num_segments, k), -1, np.int32)
    for n in range(num_segments):
        rows = np.nonzero(ids == n)[0]
        v, i = lengths_top_k_reference(data[rows], np.array([len(rows)]), k)
        values[n] = v[0]
        indices[n] = np.where(i[0] >= 0, rows[np.maximum(i[0], 0)] if len(rows) else -1, -1)
    return values, indices


def segment_softmax_reference(logits, ids, num_segments):
    x = np.asarray(logits, np.float64)
    ids = np.asarray(ids)
    out = np.zeros_like(x)
    for n in range(num_segments):
        rows = ids == n
        if not rows.any():
            continue
        seg = x[rows]
        top = seg.max(axis=0)
        with np.errstate(invalid="ignore"):
            e = np.where(top > -np.inf, np.exp(seg - np.where(top > -np.inf, top, 0)), 0)
        denom = e.sum(axis=0)
        out[rows] = np.where(denom > 0, e / np.where(denom > 0, denom, 1), 0)
    return out


@st.composite
def segment_ids(draw, max_rows=24, max_segments=5):
    """Unsorted ids with padding (-1) and ids past num_segments."""
    num_segments = draw(st.integers(0, max_segments))
    m = draw(st.integers(0, max_rows))
    ids = draw(st.lists(st.integers(-1, num_segments), min_size=m, max_size=m))
    return np.asarray(ids, np.int32), num_segments


# --------------------------------------------------------------------------- #
# Converters
# --------------------------------------------------------------------------- #

LENGTHS = np.array([2, 0, 3, 1], np.int32)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64])
def test_converters_match_reference_in_every_lengths_dtype(dtype):
    with helpers.x64_for(dtype):
        lengths = jnp.asarray(LENGTHS.astype(dtype))
        offsets = jaxops.lengths_to_offsets(lengths)
        assert offsets.dtype == jnp.int32
        np.testing.assert_array_equal(offsets, [0, 2, 2, 5, 6])
        ids, pos = segment_ids_reference(LENGTHS, 8)
        for fn, expected in (
            (jaxops.lengths_to_segment_ids, ids),
            (jaxops.lengths_range_fill, pos),
        ):
            out = fn(lengths, total_length=8)
            assert out.dtype == jnp.int32
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(fn(lengths), expected[:6])  # eager default: the sum
            np.testing.assert_array_equal(
                jax.jit(fn, static_argnames="total_length")(lengths, total_length=8), expected
            )


@given(lengths=helpers.ragged_lengths(), extra=st.integers(0, 3))
def test_converters_hypothesis(lengths, extra):
    total = int(lengths.sum()) + extra
    ids, pos = segment_ids_reference(lengths, total)
    np.testing.assert_array_equal(jaxops.lengths_to_segment_ids(lengths, total_length=total), ids)
    np.testing.assert_array_equal(jaxops.lengths_range_fill(lengths, total_length=total), pos)
    np.testing.assert_array_equal(
        jaxops.lengths_to_offsets(lengths), np.concatenate([[0], np.cumsum(lengths)])
    )
    back = jaxops.segment_ids_to_lengths(ids, num_segments=len(lengths))
    np.testing.assert_array_equal(back, lengths)


def test_segment_ids_to_lengths_ignores_out_of_range_and_unsorted_ids():
    ids = np.array([2, -1, 0, 2, 5, 0, 2, -7], np.int32)
    np.testing.assert_array_equal(jaxops.segment_ids_to_lengths(ids, num_segments=3), [2, 0, 3])
    np.testing.assert_array_equal(jaxops.segment_ids_to_lengths(ids), [2, 0, 3, 0, 0, 1])
    np.testing.assert_array_equal(jaxops.segment_ids_to_lengths(np.array([-1, -1])), [])
    np.testing.assert_array_equal(jaxops.segment_ids_to_lengths(np.zeros(0, np.int8)), [])
    narrow = jnp.array([1, -1, 1, 127], jnp.int8)
    np.testing.assert_array_equal(jaxops.segment_ids_to_lengths(narrow, num_segments=2), [0, 2])
    jitted = jax.jit(jaxops.segment_ids_to_lengths, static_argnames="num_segments")
    np.testing.assert_array_equal(jitted(ids, num_segments=3), [2, 0, 3])


def test_converters_static_sizes_under_tracing():
    with pytest.raises(
        ValueError, match=r"^lengths_to_segment_ids: expected a static `total_length=`"
    ):
        jax.jit(jaxops.lengths_to_segment_ids)(LENGTHS)
    with pytest.raises(ValueError, match=r"^lengths_range_fill: expected a static `total_length=`"):
        jax.jit(jaxops.lengths_range_fill)(LENGTHS)
    with pytest.raises(
        ValueError, match=r"^segment_ids_to_lengths: expected a static `num_segments=`"
    ):
        jax.jit(jaxops.segment_ids_to_lengths)(LENGTHS)
    with pytest.raises(ValueError, match=r"^lengths_to_segment_ids: expected an output of at most"):
        jaxops.lengths_to_segment_ids(LENGTHS, total_length=2**40)


def test_converter_value_checks_and_safe_results():
    helpers.raises_eager_and_checkified(
        lambda n: jaxops.lengths_to_segment_ids(n, total_length=4),
        (np.array([2, 3], np.int32),),
        op="lengths_to_segment_ids",
        match=r"expected sum\(lengths\) <= total_length = 4, got sum\(lengths\) = 5.",
    )
    helpers.raises_eager_and_checkified(
        jaxops.lengths_to_offsets,
        (np.array([2, -3], np.int32),),
        op="lengths_to_offsets",
        match=r"expected lengths >= 0, got lengths\[1\] = -3.",
    )
    helpers.raises_eager_and_checkified(
        jaxops.lengths_to_offsets,
        (np.array([2**31 - 1, 1], np.int32),),
        op="lengths_to_offsets",
        match=r"expected sum\(lengths\) <= 2\*\*31 - 1 = 2147483647, got sum\(lengths\) "
        r"(= 2147483648|>= 2\*\*31).",
    )
    # Without checks: truncated to the rows, offsets saturate, negative lengths count as 0.
    ids = jax.jit(lambda n: jaxops.lengths_to_segment_ids(n, total_length=4))(np.array([2, -1, 3]))
    np.testing.assert_array_equal(ids, [0, 0, 2, 2])
    offsets = jax.jit(jaxops.lengths_to_offsets)(np.array([2**31 - 1, 5, -2], np.int32))
    np.testing.assert_array_equal(offsets, [0, 2**31 - 1, 2**31 - 1, 2**31 - 1])


# --------------------------------------------------------------------------- #
# Ragged: construction, pytree, transformations
# --------------------------------------------------------------------------- #

VALUES = np.arange(1.0, 15.0, dtype=np.float32).reshape(7, 2)  # capacity 7, 6 rows used


def make():
    return jaxops.Ragged(VALUES, LENGTHS)


def test_ragged_validates_like_pack():
    with pytest.raises(
        ValueError, match=r"^Ragged: expected lengths >= 0, got lengths\[1\] = -1\.$"
    ):
        jaxops.Ragged(VALUES, np.array([2, -1]))
    with pytest.raises(
        ValueError, match=r"^Ragged: expected sum\(lengths\) <= values.shape\[0\] = 7"
    ):
        jaxops.Ragged(VALUES, np.array([4, 4]))
    with pytest.raises(TypeError, match=r"^Ragged: expected `lengths` of an integer dtype"):
        jaxops.Ragged(VALUES, np.array([1.0]))
    with pytest.raises(ValueError, match=r"^Ragged: expected `values` of rank >= 1"):
        jaxops.Ragged(np.float32(1.0), np.array([1]))
    bad = jax.jit(lambda v, n: jaxops.Ragged(v, n).segment_sum())
    with pytest.raises(
        ValueError,
        match=r"^Ragged: expected sum\(lengths\) <= values.shape\[0\] = 7, "
        r"got sum\(lengths\) = 8\.$",
    ):
        jaxops.checked(bad)(VALUES, np.array([4, 4]))


def test_ragged_is_a_pytree_with_keys_and_static_sizes():
    r = make()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(r)[0]]
    assert paths == [".values", ".lengths"]
    assert r.capacity == 7 and r.num_segments == 4
    assert isinstance(r.capacity, int) and isinstance(r.num_segments, int)
    # Unflattening never validates (JAX passes placeholders).
    placeholder = jax.tree_util.tree_map(lambda _: object(), r)
    assert isinstance(placeholder, jaxops.Ragged)
    with pytest.raises(AttributeError):
        r.values = VALUES  # type: ignore[misc]
    assert repr(r) == "Ragged(values=float32[7, 2], lengths=int32[4])"


def test_ragged_through_jit_vmap_and_grad():
    r = make()
    traces = []

    @jax.jit
    def total(r):
        traces.append(1)
        return r.segment_sum()

    expected = np.array([VALUES[0:2].sum(0), [0, 0], VALUES[2:5].sum(0), VALUES[5]])
    np.testing.assert_array_equal(total(r), expected)
    total(jaxops.Ragged(VALUES + 1, LENGTHS))
    assert len(traces) == 1
    # vmap: a batch of Ragged has the batch axis on both leaves.
    lengths_b = np.array([[2, 0, 3, 1], [1, 1, 1, 1]], np.int32)
    batch = jaxops.Ragged._make(jnp.stack([VALUES, VALUES * 2]), jnp.asarray(lengths_b))
    out = jax.vmap(lambda r: r.segment_sum())(batch)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], 2 * VALUES[:4])
    # grad: the cotangent is a Ragged whose values hold the gradient (lengths: float0).
    g = jax.grad(lambda r: jnp.sum(r.segment_sum() ** 2), allow_int=True)(r)
    assert isinstance(g, jaxops.Ragged)
    expected_g = np.zeros_like(VALUES)
    for n, (start, length) in enumerate(zip(helpers.offsets(LENGTHS), LENGTHS, strict=True)):
        expected_g[start : start + length] = 2 * expected[n]
    np.testing.assert_allclose(g.values, expected_g)


def test_ragged_export_round_trip():
    # The pytree is registered for serialisation (ops with value checks export
    # once checks can be switched off: that is the multi-device issue's `unchecked`).
    def f(r):
        return jaxops.Ragged._make(r.values * 2, r.lengths + 1)

    exported = jax.export.export(jax.jit(f))(make())
    restored = jax.export.deserialize(exported.serialize())
    out = restored.call(make())
    assert isinstance(out, jaxops.Ragged)
    np.testing.assert_array_equal(out.values, VALUES * 2)
    np.testing.assert_array_equal(out.lengths, LENGTHS + 1)


def test_from_list_and_to_list():
    arrays = [
        np.array([[1, 2]], np.int32),
        np.zeros((0, 2), np.int32),
        np.array([[3, 4], [5, 6]], np.int32),
    ]
    r = jaxops.Ragged.from_list(arrays, capacity=5)
    np.testing.assert_array_equal(r.values, [[1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
    np.testing.assert_array_equal(r.lengths, [1, 0, 2])
    for got, want in zip(r.to_list(), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert jaxops.Ragged.from_list(arrays).capacity == 3
    assert jaxops.Ragged.from_list([]).capacity == 0
    with pytest.raises(
        ValueError,
        match=r"^Ragged.from_list: expected capacity >= the total length 3, got capacity=2\.$",
    ):
        jaxops.Ragged.from_list(arrays, capacity=2)
    with pytest.raises(
        ValueError, match=r"^Ragged.from_list: expected arrays with common trailing shape"
    ):
        jaxops.Ragged.from_list([np.zeros((1, 2)), np.zeros((1, 3))])
    with pytest.raises(TypeError, match=r"^Ragged.from_list: expected arrays of one dtype"):
        jaxops.Ragged.from_list([np.zeros(1, np.float32), np.zeros(1, np.int32)])
    with pytest.raises(
        TypeError, match=r"^Ragged.from_list: expected `arrays` to be a list or tuple"
    ):
        jaxops.Ragged.from_list(np.zeros((2, 2)))


@pytest.mark.parametrize("time_major", [False, True])
def test_to_padded_and_from_padded_round_trip(time_major):
    r = make()
    padded = r.to_padded(time_major=time_major, pad_value=-1)
    np.testing.assert_array_equal(
        padded,
        jaxops.pack_rnn_sequence(VALUES, LENGTHS, pad_value=-1, time_major=time_major),
    )
    assert padded.shape == ((3, 4, 2) if time_major else (4, 3, 2))
    back = jaxops.Ragged.from_padded(padded, LENGTHS, time_major=time_major, capacity=7)
    np.testing.assert_array_equal(back.values[:6], VALUES[:6])
    np.testing.assert_array_equal(back.values[6:], 0)
    assert jaxops.Ragged.from_padded(padded, LENGTHS, time_major=time_major).capacity == 6
    with pytest.raises(ValueError, match=r"^Ragged.from_padded: expected a static `capacity=`"):
        jax.jit(lambda p, n: jaxops.Ragged.from_padded(p, n, time_major=time_major))(
            padded, LENGTHS
        )
    # Differentiable w.r.t. padded: the padding slots get 0.
    g = jax.grad(
        lambda p: jnp.sum(jaxops.Ragged.from_padded(p, LENGTHS, time_major=time_major).values)
    )(padded)
    np.testing.assert_array_equal(g, (padded != -1).astype(np.float32))


def test_readers():
    r = make()
    np.testing.assert_array_equal(r.offsets(), [0, 2, 2, 5, 6])
    np.testing.assert_array_equal(r.segment_ids(), [0, 0, 2, 2, 2, 3, -1])
    np.testing.assert_array_equal(r.positions(), [0, 1, 0, 1, 2, 0, -1])
    np.testing.assert_array_equal(r.row_mask(), [1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(
        r.length_mask(2), [[True, True], [False, False], [True, True], [True, False]]
    )
    assert r.length_mask(0).shape == (4, 0)


def test_from_segment_ids_groups_stably_with_padding_last():
    values = np.arange(6.0, dtype=np.float32)
    ids = np.array([1, -1, 0, 1, 3, 0], np.int32)
    r = jaxops.Ragged.from_segment_ids(values, ids, num_segments=3)
    np.testing.assert_array_equal(r.values, [2, 5, 0, 3, 1, 4])  # id 3 is out of range
    np.testing.assert_array_equal(r.lengths, [2, 2, 0])
    assert r.capacity == 6
    g = jax.grad(
        lambda v: jnp.sum(
            jaxops.Ragged.from_segment_ids(v, ids, num_segments=3).segment_sum()
            * jnp.array([1.0, 10.0, 100.0])
        )
    )(values)
    np.testing.assert_array_equal(g, [10, 0, 1, 10, 0, 1])
    jitted = jax.jit(lambda v, i: jaxops.Ragged.from_segment_ids(v, i, num_segments=3).values)
    np.testing.assert_array_equal(jitted(values, ids), [2, 5, 0, 3, 1, 4])


def test_top_k_boolean_mask_and_map():
    data = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], np.float32)
    r = jaxops.Ragged(data, LENGTHS)
    top = r.top_k(2)
    expected = jaxops.lengths_top_k(data, LENGTHS, k=2)
    np.testing.assert_array_equal(top.values, expected.values)
    np.testing.assert_array_equal(top.indices, expected.indices)
    mask = np.array([False, True, True, False, True, True, True])
    kept = r.boolean_mask(mask)
    assert kept.capacity == 7
    np.testing.assert_array_equal(kept.lengths, [1, 0, 2, 1])
    np.testing.assert_array_equal(kept.values, [1, 4, 5, 9, 0, 0, 0])  # the padding row is dropped
    jitted = jax.jit(lambda r, m: r.boolean_mask(m))(r, mask)
    np.testing.assert_array_equal(jitted.lengths, [1, 0, 2, 1])
    with pytest.raises(ValueError, match=r"^Ragged.boolean_mask: expected mask of shape \(7,\)"):
        r.boolean_mask(mask[:3])
    doubled = r.map(lambda v: v * 2)
    np.testing.assert_array_equal(doubled.values, data * 2)
    np.testing.assert_array_equal(doubled.lengths, LENGTHS)
    with pytest.raises(ValueError, match=r"^Ragged.map: expected fn to keep the 7 rows"):
        r.map(lambda v: v[:3])


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_segment_reductions(dtype):
    with helpers.x64_for(dtype):
        values = VALUES.astype(dtype)
        r = jaxops.Ragged(values, LENGTHS)
        sums = np.array([VALUES[0:2].sum(0), [0, 0], VALUES[2:5].sum(0), VALUES[5]])
        counts = np.maximum(LENGTHS, 1)[:, None]
        for got, want in (
            (r.segment_sum(), sums),
            (r.segment_mean(), sums / counts),
        ):
            assert got.dtype == values.dtype
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2)
        maxima = r.segment_max()
        np.testing.assert_array_equal(np.asarray(maxima[1], np.float64), [-np.inf, -np.inf])
        np.testing.assert_array_equal(np.asarray(maxima)[[0, 2, 3]], VALUES[[1, 4, 5]])
        soft = r.softmax()
        assert isinstance(soft, jaxops.Ragged)
        np.testing.assert_array_equal(soft.values[6], 0)  # the padding row
        np.testing.assert_allclose(
            np.asarray(soft.values, np.float64),
            segment_softmax_reference(values, np.array([0, 0, 2, 2, 2, 3, -1]), 4),
            rtol=1e-2,
            atol=1e-3,
        )


def test_segment_sum_of_16_bit_values_accumulates_in_float32():
    values = np.full(4096, 1.0, jnp.bfloat16)  # bfloat16 sums stall at 256
    r = jaxops.Ragged(values, np.array([4096]))
    assert float(r.segment_sum()[0]) == 4096.0


# --------------------------------------------------------------------------- #
# segment_top_k
# --------------------------------------------------------------------------- #


def assert_top_k(out, expected):
    np.testing.assert_array_equal(np.asarray(out.indices), expected[1])
    np.testing.assert_array_equal(
        np.asarray(out.values).view(np.uint8), np.asarray(expected[0]).view(np.uint8)
    )


@pytest.mark.parametrize(
    "dtype", [*helpers.FLOAT_DTYPES, jnp.int32, jnp.uint8], ids=lambda d: np.dtype(d).name
)
def test_segment_top_k_matches_reference(dtype):
    rng = np.random.default_rng(0)
    with helpers.x64_for(dtype):
        data = (
            helpers.random_data(rng, (30,), dtype)
            if dtype != jnp.uint8
            else rng.integers(0, 9, 30).astype(np.uint8)
        )
        ids = rng.integers(-1, 6, 30).astype(np.int32)
        for k in (1, 3, 8):
            expected = segment_top_k_reference(data, ids, k, 5)
            assert_top_k(jaxops.segment_top_k(data, ids, k=k, num_segments=5), expected)
            order = np.argsort(ids, kind="stable")
            sorted_out = jaxops.segment_top_k(
                data[order], ids[order], k=k, num_segments=5, indices_are_sorted=True
            )
            assert_top_k(sorted_out, segment_top_k_reference(data[order], ids[order], k, 5))


@given(case=segment_ids(), k=st.integers(1, 4))
def test_segment_top_k_hypothesis(case, k):
    ids, num_segments = case
    data = np.random.default_rng(len(ids)).integers(-3, 3, len(ids)).astype(np.float32)
    data[::5] = -0.0
    expected = segment_top_k_reference(data, ids, k, num_segments)
    fn = jax.jit(jaxops.segment_top_k, static_argnames=("k", "num_segments", "indices_are_sorted"))
    assert_top_k(fn(data, ids, k=k, num_segments=num_segments), expected)
    order = np.argsort(ids, kind="stable")
    assert_top_k(
        fn(data[order], ids[order], k=k, num_segments=num_segments, indices_are_sorted=True),
        segment_top_k_reference(data[order], ids[order], k, num_segments),
    )


def test_segment_top_k_ties_nan_and_signed_zero():
    data = np.array([0.0, -0.0, np.nan, np.inf, 1.0, -0.0, 0.0], np.float32)
    ids = np.array([0, 0, 1, 1, 0, 0, 0], np.int32)
    out = jaxops.segment_top_k(data, ids, k=4, num_segments=2)
    np.testing.assert_array_equal(out.indices, [[4, 0, 1, 5], [2, 3, -1, -1]])


def test_segment_top_k_gradient():
    rng = np.random.default_rng(1)
    data = rng.normal(size=20)
    ids = rng.integers(-1, 4, 20).astype(np.int32)
    weights = rng.normal(size=(3, 4))
    with jax.enable_x64(True):
        f = lambda d: jnp.sum(jaxops.segment_top_k(d, ids, k=4, num_segments=3).values * weights)
        g = jax.grad(f)(data)
        _, indices = segment_top_k_reference(data, ids, 4, 3)
        expected = np.zeros(20)
        for n in range(3):
            for j in range(4):
                if indices[n, j] >= 0:
                    expected[indices[n, j]] = weights[n, j]
        np.testing.assert_allclose(g, expected)
        check_grads(f, (data,), order=1, modes=["rev"])
        # vmap over a batch of data and ids against the reference.
        batch_ids = np.stack([ids, ids[::-1]])
        batched = jax.vmap(lambda d, i: jaxops.segment_top_k(d, i, k=2, num_segments=3))(
            np.stack([data, data]), batch_ids
        )
        for b in range(2):
            ref = segment_top_k_reference(data, batch_ids[b], 2, 3)
            np.testing.assert_array_equal(batched.indices[b], ref[1])
    ints = jax.vjp(
        lambda d: jaxops.segment_top_k(d, ids, k=2, num_segments=3).values,
        np.arange(20, dtype=np.int32),
    )
    assert ints[0].dtype == jnp.int32


def test_segment_top_k_jit_does_not_retrace():
    data, ids = np.arange(10.0, dtype=np.float32), np.arange(10, dtype=np.int32) % 3
    fn = jax.jit(
        chex.assert_max_traces(lambda d, i: jaxops.segment_top_k(d, i, k=2, num_segments=3), n=1)
    )
    first = fn(data, ids)
    second = fn(data + 1, ids)
    np.testing.assert_array_equal(second.values, first.values + 1)


def test_segment_top_k_errors():
    data, ids = np.arange(4.0, dtype=np.float32), np.array([0, 1, 1, 0], np.int32)
    with pytest.raises(ValueError, match=r"^segment_top_k: expected k >= 1, got k=0\.$"):
        jaxops.segment_top_k(data, ids, k=0, num_segments=2)
    with pytest.raises(ValueError, match=r"^segment_top_k: expected len\(segment_ids\) == 4 rows"):
        jaxops.segment_top_k(data, ids[:3], k=1, num_segments=2)
    with pytest.raises(
        TypeError, match=r"^segment_top_k: expected `segment_ids` of an integer dtype"
    ):
        jaxops.segment_top_k(data, ids.astype(np.float32), k=1, num_segments=2)
    with pytest.raises(ValueError, match=r"^segment_top_k: expected an output of at most"):
        jaxops.segment_top_k(data, ids, k=2**40, num_segments=2)
    helpers.raises_eager_and_checkified(
        lambda d, i: jaxops.segment_top_k(d, i, k=1, num_segments=2, indices_are_sorted=True),
        (data, ids),
        op="segment_top_k",
        match=r"expected sorted segment_ids with indices_are_sorted=True, "
        r"got segment_ids\[3\] = 0 after segment_ids\[2\] = 1.",
    )


def test_segment_top_k_memory_does_not_grow_with_the_longest_segment():
    m, n = 4096, 256
    data = jax.ShapeDtypeStruct((m,), jnp.float32)
    ids = jax.ShapeDtypeStruct((m,), jnp.int32)
    fn = jax.jit(lambda d, i: jaxops.segment_top_k(d, i, k=8, num_segments=n))
    temp = fn.lower(data, ids).compile().memory_analysis().temp_size_in_bytes
    # One segment may hold every row: a padded [N, M] top-k would need 4 MiB of keys.
    assert temp < 4 * n * m / 4, temp


# --------------------------------------------------------------------------- #
# segment_softmax
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("features", [(), (3,)])
def test_segment_softmax_matches_reference(dtype, features):
    rng = np.random.default_rng(2)
    with helpers.x64_for(dtype):
        logits = rng.normal(size=(25, *features)).astype(dtype)
        logits[3] = -np.inf
        ids = rng.integers(-1, 5, 25).astype(np.int32)
        ids[ids == 3] = 2  # segment 3 empty
        out = jaxops.segment_softmax(logits, ids, num_segments=4)
        assert out.dtype == logits.dtype and out.shape == logits.shape
        tol = 1e-2 if np.dtype(dtype).itemsize == 2 else 1e-6
        np.testing.assert_allclose(
            np.asarray(out, np.float64),
            segment_softmax_reference(logits, ids, 4),
            rtol=tol,
            atol=tol,
        )


def test_segment_softmax_all_inf_segments_and_padding_give_zero_with_finite_gradient():
    logits = np.array([-np.inf, -np.inf, 1.0, 2.0, 7.0], np.float32)
    ids = np.array([0, 0, 1, 1, -1], np.int32)
    out = jaxops.segment_softmax(logits, ids, num_segments=2)
    np.testing.assert_allclose(out, [0, 0, 1 / (1 + np.e), np.e / (1 + np.e), 0], rtol=1e-6)
    g = jax.grad(
        lambda x: jnp.sum(jaxops.segment_softmax(x, ids, num_segments=2) * jnp.arange(5.0))
    )(logits)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[[0, 1, 4]], 0)


def test_segment_softmax_gradient_matches_autodiff_of_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(12, 2))
    ids = np.array([0, 1, 0, 2, -1, 1, 1, 0, 2, 2, 5, 0], np.int32)
    w = rng.normal(size=(12, 2))

    def naive(x):
        bucket = jnp.where((ids >= 0) & (ids < 3), ids, 3)
        top = jax.ops.segment_max(x, bucket, 4)[bucket]
        e = jnp.exp(x - jax.lax.stop_gradient(top))
        y = e / jax.ops.segment_sum(e, bucket, 4)[bucket]
        return jnp.where((bucket < 3)[:, None], y, 0)

    with jax.enable_x64(True):
        f = lambda x: jnp.sum(jaxops.segment_softmax(x, ids, num_segments=3) * w)
        np.testing.assert_allclose(
            jax.grad(f)(logits),
            jax.grad(lambda x: jnp.sum(naive(x) * w))(logits),
            rtol=1e-10,
            atol=1e-12,
        )
        check_grads(f, (logits,), order=1, modes=["rev"])
        batched = jax.vmap(lambda x: jaxops.segment_softmax(x, ids, num_segments=3))(
            np.stack([logits, 2 * logits])
        )
        np.testing.assert_allclose(
            batched[1], segment_softmax_reference(2 * logits, ids, 3), rtol=1e-10
        )


def test_segment_softmax_errors():
    with pytest.raises(TypeError, match=r"^segment_softmax: expected `logits` of a floating dtype"):
        jaxops.segment_softmax(np.arange(3), np.zeros(3, np.int32), num_segments=1)
    with pytest.raises(
        ValueError, match=r"^segment_softmax: expected len\(segment_ids\) == 3 rows"
    ):
        jaxops.segment_softmax(np.zeros(3), np.zeros(2, np.int32), num_segments=1)
    with pytest.raises(ValueError, match=r"^segment_softmax: expected num_segments >= 0"):
        jaxops.segment_softmax(np.zeros(3), np.zeros(3, np.int32), num_segments=-1)


@given(case=segment_ids(), k=st.integers(1, 4))
def test_segment_top_k_with_max_length_gives_identical_results(case, k):
    ids, num_segments = case
    data = np.random.default_rng(len(ids) + 7).integers(-3, 3, len(ids)).astype(np.float32)
    longest = int(np.max(np.bincount(ids[(ids >= 0) & (ids < num_segments)]), initial=0))
    fn = jax.jit(
        jaxops.segment_top_k,
        static_argnames=("k", "num_segments", "indices_are_sorted", "max_length"),
    )
    for bound in (longest, longest + 3):
        out = fn(data, ids, k=k, num_segments=num_segments, max_length=bound)
        assert_top_k(out, segment_top_k_reference(data, ids, k, num_segments))
        order = np.argsort(ids, kind="stable")
        out = fn(
            data[order],
            ids[order],
            k=k,
            num_segments=num_segments,
            indices_are_sorted=True,
            max_length=bound,
        )
        assert_top_k(out, segment_top_k_reference(data[order], ids[order], k, num_segments))


def test_segment_top_k_max_length_is_checked():
    data = np.arange(6.0, dtype=np.float32)
    ids = np.array([1, 0, 1, 1, -1, 0], np.int32)
    helpers.raises_eager_and_checkified(
        lambda d, i: jaxops.segment_top_k(d, i, k=2, num_segments=2, max_length=2),
        (data, ids),
        op="segment_top_k",
        match=r"expected segment lengths <= max_length = 2, got segment lengths\[1\] = 3.",
    )
    # Without checks, the long segment is cut to its first max_length rows (lengths_top_k).
    out = jax.jit(lambda d, i: jaxops.segment_top_k(d, i, k=3, num_segments=2, max_length=2))(
        data, ids
    )
    np.testing.assert_array_equal(out.indices, [[5, 1, -1], [2, 0, -1]])
    g = jax.grad(
        lambda d: jnp.sum(jaxops.segment_top_k(d, ids, k=2, num_segments=2, max_length=3).values)
    )(data)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0, 1])
