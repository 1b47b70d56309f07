"""boolean_mask*, boolean_unmask, sequence_mask and safe_softmax against SPEC §5."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxops
from jaxops._src import masking
from tests import helpers

# --------------------------------------------------------------------------- #
# NumPy references: loops over rows and positions, obviously correct
# --------------------------------------------------------------------------- #


def mask_reference(data, mask, size=None, fill_value=0):
    data, mask = np.asarray(data), np.asarray(mask)
    chosen = [i for i in range(len(mask)) if mask[i]]
    size = len(chosen) if size is None else size
    values = np.full((size, *data.shape[1:]), fill_value, dtype=data.dtype)
    indices = np.full((size,), -1, np.int32)
    for slot, i in enumerate(chosen[:size]):
        values[slot] = data[i]
        indices[slot] = i
    return values, indices


def mask_gradient_reference(mask, g):
    mask, g = np.asarray(mask), np.asarray(g)
    out = np.zeros((len(mask), *g.shape[1:]), dtype=g.dtype)
    slot = 0
    for i in range(len(mask)):
        if mask[i]:
            if slot < len(g):
                out[i] = g[slot]
            slot += 1
    return out


def mask_lengths_reference(lengths, mask):
    ends = np.cumsum(lengths)
    return np.array(
        [np.sum(mask[e - n : e]) for n, e in zip(lengths, ends, strict=True)],
        dtype=np.asarray(lengths).dtype,
    )


def unmask_reference(masks, values, fill_value=0):
    masks = [np.asarray(m) for m in masks]
    values = [np.asarray(v) for v in values]
    out = np.full((len(masks[0]), *values[0].shape[1:]), fill_value, dtype=values[0].dtype)
    used = [0] * len(masks)
    for p in range(len(masks[0])):
        for k, m in enumerate(masks):
            if m[p]:
                if used[k] < len(values[k]):
                    out[p] = values[k][used[k]]
                used[k] += 1
                break
    return out


def masked_out(mode, i, j, lengths, radius):
    if mode == "sequence":
        return j >= lengths[i]
    if mode == "window":
        return j < lengths[i] - radius or j > lengths[i] + radius
    return {"upper": j > i, "lower": j < i, "upperdiag": j >= i, "lowerdiag": j <= i}[mode]


def sequence_mask_reference(
    x, lengths=None, mode="sequence", axis=1, batch=None, repeat_from_axis=None, radius=10,
    fill_value=-np.inf,
):  # fmt: skip
    x = np.array(x)
    shape, ndim = x.shape, x.ndim
    axis %= ndim
    lead = 0 if batch is None else batch % ndim + 1
    repeat = 1 if repeat_from_axis is None else int(np.prod(shape[repeat_from_axis % ndim :]))
    rows, cols = int(np.prod(shape[lead:axis])), int(np.prod(shape[axis:]))
    out = x.reshape(-1, rows, cols // repeat, repeat)
    for i in range(rows):
        for j in range(cols // repeat):
            if masked_out(mode, i, j, lengths, radius):
                out[:, i, j, :] = fill_value
    return out.reshape(shape)


def softmax_reference(x, axis=-1):
    x = np.asarray(x, np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isneginf(top), 0.0, top)
    e = np.exp(x - top)
    total = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(total == 0, 1.0, total)


def naive_mask(data, mask_np, size):
    """What a user would write with a concrete mask: an index gather and a pad; autodiff."""
    rows = data[np.flatnonzero(mask_np)[:size]]
    return jnp.pad(rows, [(0, size - rows.shape[0])] + [(0, 0)] * (data.ndim - 1))


MASK = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
DTYPE_IDS = lambda d: np.dtype(d).name

# --------------------------------------------------------------------------- #
# boolean_mask and boolean_mask_gradient
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", helpers.DATA_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("features", [(), (2, 3)])
def test_boolean_mask_matches_reference(dtype, features):
    rng = np.random.default_rng(0)
    with helpers.x64_for(dtype):
        data = helpers.random_data(rng, (len(MASK), *features), dtype)
        for size, fill in [(None, 0), (6, 1), (2, 0)]:  # exact, fill rows, truncation
            values, indices = jaxops.boolean_mask(data, MASK, size=size, fill_value=fill)
            ref_values, ref_indices = mask_reference(data, MASK, size, fill)
            assert values.dtype == data.dtype
            assert indices.dtype == jnp.int32
            np.testing.assert_array_equal(values, ref_values)
            np.testing.assert_array_equal(indices, ref_indices)
        g = helpers.random_data(rng, (6, *features), dtype)
        back = jaxops.boolean_mask_gradient(MASK, g)
        assert back.dtype == g.dtype
        np.testing.assert_array_equal(back, mask_gradient_reference(MASK, g))


# Hypothesis tests use fixed shapes and jitted functions, so that each example
# does not recompile (the eager paths are covered by the example-based tests).
jit_mask = jax.jit(jaxops.boolean_mask, static_argnames=("size", "fill_value"))
jit_mask_gradient = jax.jit(jaxops.boolean_mask_gradient)


@given(
    bits=st.lists(st.booleans(), min_size=12, max_size=12),
    size=st.sampled_from([0, 5, 14]),  # none, fewer and more slots than selected rows
)
def test_boolean_mask_hypothesis(bits, size):
    mask = np.array(bits, bool)
    data = np.arange(2 * len(mask), dtype=np.float32).reshape(len(mask), 2)
    values, indices = jit_mask(data, mask, size=size, fill_value=-1)
    ref_values, ref_indices = mask_reference(data, mask, size, -1)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(indices, ref_indices)
    g = np.arange(values.size, dtype=np.float32).reshape(values.shape) + 1
    np.testing.assert_array_equal(jit_mask_gradient(mask, g), mask_gradient_reference(mask, g))


def test_boolean_mask_edge_cases():
    none = np.zeros(5, bool)
    data = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    values, indices = jaxops.boolean_mask(data, none)
    chex.assert_shape(values, (0, 2))
    chex.assert_shape(indices, (0,))
    values, indices = jaxops.boolean_mask(data, none, size=3, fill_value=7)
    np.testing.assert_array_equal(values, np.full((3, 2), 7, np.float32))
    np.testing.assert_array_equal(indices, [-1, -1, -1])
    # Empty data: only fill rows, never a gather from an empty axis.
    empty = np.zeros((0, 3), np.int32)
    values, indices = jaxops.boolean_mask(empty, np.zeros(0, bool), size=2, fill_value=-1)
    np.testing.assert_array_equal(values, np.full((2, 3), -1, np.int32))
    np.testing.assert_array_equal(indices, [-1, -1])
    chex.assert_shape(jaxops.boolean_mask(data, MASK[:5], size=0).values, (0, 2))
    np.testing.assert_array_equal(
        jaxops.boolean_mask_gradient(np.zeros(0, bool), np.ones((4, 2), np.float32)),
        np.zeros((0, 2), np.float32),
    )
    np.testing.assert_array_equal(
        jaxops.boolean_mask_gradient(MASK, np.ones((0,), np.float32)), np.zeros(len(MASK))
    )


def test_boolean_mask_gradients():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        data = rng.normal(size=(len(MASK), 3))
        for size in (6, 2):
            f = lambda d, size=size: jaxops.boolean_mask(d, MASK, size=size).values
            check_grads(f, (data,), order=1, modes=["rev"])
            g = rng.normal(size=(size, 3))
            ours = jax.vjp(f, data)[1](g)[0]
            naive = jax.vjp(lambda d, size=size: naive_mask(d, MASK, size), data)[1](g)[0]
            np.testing.assert_allclose(ours, naive)
            # boolean_mask_gradient is linear; its own gradient is boolean_mask.
            check_grads(lambda g: jaxops.boolean_mask_gradient(MASK, g), (g,), 1, modes=["rev"])
        # Fill-row cotangents are dropped: only the first 4 (selected) slots matter.
        grad = jax.grad(lambda d: jnp.sum(jaxops.boolean_mask(d, MASK, size=6).values))(data)
        np.testing.assert_array_equal(grad, np.broadcast_to(MASK[:, None], data.shape))
        assert grad.dtype == data.dtype


def test_boolean_mask_vmap_and_jit():
    rng = np.random.default_rng(2)
    masks = rng.random((4, 8)) < 0.5
    data = rng.normal(size=(4, 8, 2)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda d, m: jaxops.boolean_mask(d, m, size=5, fill_value=-1)))
    values, indices = f(data, masks)
    for b in range(4):
        ref_values, ref_indices = mask_reference(data[b], masks[b], 5, -1)
        np.testing.assert_array_equal(values[b], ref_values)
        np.testing.assert_array_equal(indices[b], ref_indices)
    # vmap over the mask only, with shared data, and over the gradient.
    shared = jax.vmap(lambda m: jaxops.boolean_mask(data[0], m, size=8).values)(masks)
    back = jax.vmap(jaxops.boolean_mask_gradient)(masks, shared)
    for b in range(4):
        np.testing.assert_array_equal(shared[b], mask_reference(data[0], masks[b], 8)[0])
        np.testing.assert_array_equal(back[b], np.where(masks[b][:, None], data[0], 0))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def masked_sum(d, m):
        return jnp.sum(jaxops.boolean_mask(d, m, size=3).values)

    for b in (0, 1):
        expected = mask_reference(data[b], masks[b], 3)[0].sum()
        np.testing.assert_allclose(masked_sum(data[b], masks[b]), expected, rtol=1e-6)
        eager = jnp.sum(jaxops.boolean_mask(data[b], masks[b], size=3).values)
        np.testing.assert_allclose(eager, expected, rtol=1e-6)
    grad = jax.jit(jax.vmap(jax.grad(masked_sum)))(data, masks)
    for b in range(4):  # 1 on the rows that fill the first 3 slots
        expected = mask_gradient_reference(masks[b], np.ones((3, 2), np.float32))
        np.testing.assert_array_equal(grad[b], expected)
        np.testing.assert_array_equal(jax.grad(masked_sum)(data[b], masks[b]), expected)


def test_boolean_mask_errors():
    data = np.zeros((8, 2), np.float32)
    with pytest.raises(TypeError, match=r"boolean_mask: expected `mask` of dtype bool"):
        jaxops.boolean_mask(data, MASK.astype(np.int32))
    with pytest.raises(ValueError, match=r"expected len\(mask\) == data.shape\[0\] = 8"):
        jaxops.boolean_mask(data, MASK[:5])
    with pytest.raises(ValueError, match=r"expected `data` of rank >= 1"):
        jaxops.boolean_mask(np.float32(1), MASK[:1])
    with pytest.raises(ValueError, match=r"boolean_mask: expected a static `size=`.*Pass size="):
        jax.jit(lambda m: jaxops.boolean_mask(data, m))(MASK)
    with pytest.raises(ValueError, match=r"expected size >= 0"):
        jaxops.boolean_mask(data, MASK, size=-1)
    with pytest.raises(TypeError, match=r"boolean_mask_gradient: expected `mask` of dtype bool"):
        jaxops.boolean_mask_gradient(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match=r"boolean_mask_gradient: expected `g` of rank >= 1"):
        jaxops.boolean_mask_gradient(MASK, np.float32(1))


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_], ids=DTYPE_IDS)
def test_integer_and_bool_data_vjp_returns_float0_cotangents(dtype):
    rng = np.random.default_rng(10)
    data = helpers.random_data(rng, (len(MASK), 2), dtype)
    mask = jax.jit(lambda d: jaxops.boolean_mask(d, MASK, size=6, fill_value=1))
    out, vjp = jax.vjp(mask, data)
    ref_values, ref_indices = mask_reference(data, MASK, 6, 1)
    np.testing.assert_array_equal(out.values, ref_values)
    np.testing.assert_array_equal(out.indices, ref_indices)
    (ct,) = vjp(jaxops.Masked(_float0_like(out.values), _float0_like(out.indices)))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == data.shape

    g = helpers.random_data(rng, (6, 2), dtype)
    back, vjp = jax.vjp(jax.jit(lambda g: jaxops.boolean_mask_gradient(MASK, g)), g)
    np.testing.assert_array_equal(back, mask_gradient_reference(MASK, g))
    (ct,) = vjp(_float0_like(back))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == g.shape

    values = [helpers.random_data(rng, (n, 2), dtype) for n in (3, 2, 4)]
    unmask = jax.jit(lambda *v: jaxops.boolean_unmask(UNMASK_MASKS, list(v)))
    merged, vjp = jax.vjp(unmask, *values)
    np.testing.assert_array_equal(merged, unmask_reference(UNMASK_MASKS, values))
    for ct, v in zip(vjp(_float0_like(merged)), values, strict=True):
        assert ct.dtype == jax.dtypes.float0 and ct.shape == v.shape

    # a float loss that reaches x only through the integer/bool data paths: no gradient
    def loss(x):
        d = x.astype(dtype)
        picked = jaxops.boolean_mask(d, MASK, size=6).values
        back = jaxops.boolean_mask_gradient(MASK, picked)
        merged = jaxops.boolean_unmask([MASK, ~MASK], [picked, d])
        total = back.astype(jnp.float32).sum() + merged.astype(jnp.float32).sum()
        return total + jnp.sum(x)

    grad = jax.jit(jax.grad(loss))(np.ones((len(MASK), 2), np.float32))
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.ones((len(MASK), 2), np.float32))


def test_backward_rules_return_no_cotangent_for_non_float_data():
    # JAX never runs a custom_vjp's backward pass when no input is floating (jax.vjp,
    # jit(vjp), linearize and grad(allow_int=True) all short-circuit), so the rules'
    # non-floating branches are reachable only directly.
    mask = jnp.asarray(MASK)
    g = _float0_like(np.zeros((4, 2)))
    assert masking._boolean_mask_rule.bwd(4, 0, mask, (g, _float0_like(np.zeros(4)))) == (
        None,
        None,
    )
    assert masking._boolean_mask_gradient_rule.bwd(4, mask, _float0_like(np.zeros((8, 2)))) == (
        None,
        None,
    )
    win = jnp.stack([mask, ~mask])
    assert masking._boolean_unmask_rule.bwd((4, 4), 0, win, _float0_like(np.zeros(8))) == (
        None,
        (None, None),
    )


# --------------------------------------------------------------------------- #
# boolean_mask_lengths
# --------------------------------------------------------------------------- #


jit_mask_lengths = jax.jit(jaxops.boolean_mask_lengths)


@given(lengths=helpers.ragged_lengths(), seed=st.integers(0, 2**16))
def test_boolean_mask_lengths_hypothesis(lengths, seed):
    # ragged_lengths sums to at most 64: a last segment covers the rest; pad to 8 segments.
    lengths = np.concatenate([lengths, [64 - lengths.sum()], np.zeros(7 - len(lengths))])
    lengths = lengths.astype(np.int32)
    mask = np.random.default_rng(seed).random(64) < 0.5
    out = jit_mask_lengths(lengths, mask)
    assert out.dtype == lengths.dtype
    np.testing.assert_array_equal(out, mask_lengths_reference(lengths, mask))
    assert int(out.sum()) == mask.sum()  # the new lengths describe boolean_mask's output


@given(
    total=st.integers(0, 200),
    cuts=st.lists(st.integers(0, 200), max_size=12),
    seed=st.integers(0, 2**16),
)
def test_boolean_mask_lengths_segments_across_blocks(total, cuts, seed):
    # Masks longer than one count block, of lengths that are not a multiple of it,
    # split at arbitrary points (zero-length segments included).
    bounds = np.sort(np.clip(np.asarray([*cuts, 0, total], np.int64), 0, total))
    lengths = np.diff(bounds).astype(np.int32)
    mask = np.random.default_rng(seed).random(total) < 0.5
    out = jit_mask_lengths(lengths, mask)
    np.testing.assert_array_equal(out, mask_lengths_reference(lengths, mask))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64], ids=DTYPE_IDS)
def test_boolean_mask_lengths_dtypes_vmap_jit(dtype):
    with helpers.x64_for(dtype):
        lengths = np.array([[2, 0, 3, 3], [1, 1, 1, 5]], dtype)
        masks = np.random.default_rng(3).random((2, 8)) < 0.5
        out = jax.jit(jax.vmap(jaxops.boolean_mask_lengths))(lengths, masks)
        assert out.dtype == dtype
        for b in range(2):
            np.testing.assert_array_equal(out[b], mask_lengths_reference(lengths[b], masks[b]))


def test_boolean_mask_lengths_errors():
    helpers.raises_eager_and_checkified(
        jaxops.boolean_mask_lengths,
        (np.array([2, 3], np.int32), MASK),
        r"expected sum\(lengths\) == len\(mask\) = 8, got sum\(lengths\) = 5\.",
        op="boolean_mask_lengths",
    )
    helpers.raises_eager_and_checkified(
        jaxops.boolean_mask_lengths,
        (np.array([9, -1], np.int32), MASK),
        r"expected lengths >= 0, got lengths\[1\] = -1\.",
        op="boolean_mask_lengths",
    )
    with pytest.raises(TypeError, match=r"expected `lengths` of an integer dtype"):
        jaxops.boolean_mask_lengths(np.array([8.0]), MASK)
    with pytest.raises(TypeError, match=r"expected `mask` of dtype bool"):
        jaxops.boolean_mask_lengths(np.array([8]), MASK.astype(np.int32))
    # Without checkify, lengths past the mask never count past its end.
    out = jax.jit(jaxops.boolean_mask_lengths)(np.array([6, 6, 1], np.int32), MASK)
    np.testing.assert_array_equal(out, [3, 1, 0])


# --------------------------------------------------------------------------- #
# boolean_unmask
# --------------------------------------------------------------------------- #

UNMASK_MASKS = [
    np.array([1, 0, 0, 1, 0, 1], bool),
    np.array([1, 1, 0, 0, 0, 1], bool),  # loses positions 0 and 5 to mask 0
    np.array([0, 1, 1, 0, 1, 1], bool),
]


@pytest.mark.parametrize("dtype", helpers.DATA_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("features", [(), (2,)])
def test_boolean_unmask_matches_reference(dtype, features):
    rng = np.random.default_rng(4)
    with helpers.x64_for(dtype):
        values = [helpers.random_data(rng, (n, *features), dtype) for n in (3, 2, 4)]
        out = jaxops.boolean_unmask(UNMASK_MASKS, values)  # stream 2 has an extra row
        assert out.dtype == values[0].dtype
        np.testing.assert_array_equal(out, unmask_reference(UNMASK_MASKS, values))


@functools.partial(jax.jit, static_argnames="n")
def split_and_merge(x, m, n):
    parts = [jaxops.boolean_mask(x, m, size=n).values, jaxops.boolean_mask(x, ~m, size=n).values]
    return jaxops.boolean_unmask([m, ~m], parts)


@given(bits=st.lists(st.booleans(), min_size=10, max_size=10), n=st.sampled_from([10, 13]))
def test_boolean_unmask_round_trip(bits, n):
    m = np.array(bits, bool)
    x = np.arange(2 * len(m), dtype=np.float32).reshape(len(m), 2)
    np.testing.assert_array_equal(split_and_merge(x, m, n), x)


def test_boolean_unmask_gradients():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        values = [rng.normal(size=(n, 2)) for n in (3, 2, 4)]
        f = lambda *v: jaxops.boolean_unmask(UNMASK_MASKS, list(v))
        check_grads(f, values, order=1, modes=["rev"])

        def naive(*v):  # concrete masks: pick rows position by position
            used, rows = [0, 0, 0], []
            for p in range(6):
                k = next(k for k in range(3) if UNMASK_MASKS[k][p])
                rows.append(v[k][used[k]])
                used[k] += 1
            return jnp.stack(rows)

        g = rng.normal(size=(6, 2))
        ours = jax.vjp(f, *values)[1](g)
        theirs = jax.vjp(naive, *values)[1](g)
        for a, b, v in zip(ours, theirs, values, strict=True):
            assert a.dtype == v.dtype
            np.testing.assert_allclose(a, b)
        np.testing.assert_array_equal(ours[2][3], [0.0, 0.0])  # the unconsumed row


def test_boolean_unmask_vmap_jit_and_traced_fill():
    rng = np.random.default_rng(6)
    masks = rng.random((3, 7)) < 0.5
    x = rng.normal(size=(3, 7)).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def split_and_merge(x, m):
        a = jaxops.boolean_mask(x, m, size=7).values
        b = jaxops.boolean_mask(x, ~m, size=7).values
        return jaxops.boolean_unmask([m, ~m], [a, b])

    np.testing.assert_array_equal(jax.vmap(split_and_merge)(x, masks), x)
    np.testing.assert_array_equal(split_and_merge(x[0], masks[0]), x[0])
    np.testing.assert_array_equal(split_and_merge(x[1], masks[1]), x[1])
    # vmap over masks with shared values, against a loop.
    values = [np.arange(4.0, dtype=np.float32), -np.arange(1.0, 8.0, dtype=np.float32)]
    merged = jax.vmap(lambda m: jaxops.boolean_unmask([m, ~m], values))(masks)
    for b in range(3):
        np.testing.assert_array_equal(merged[b], unmask_reference([masks[b], ~masks[b]], values))
    # Under tracing without checkify: uncovered or exhausted positions get fill_value.
    m0, m1 = np.array([1, 0, 1, 1, 0], bool), np.array([0, 0, 0, 0, 1], bool)
    out = jax.jit(lambda a, b: jaxops.boolean_unmask([a, b], values, fill_value=9))(m0, m1)
    np.testing.assert_array_equal(out, [0.0, 9.0, 1.0, 2.0, -1.0])
    few = [np.arange(2.0, dtype=np.float32), values[1]]
    out = jax.jit(lambda a, b: jaxops.boolean_unmask([a, b], few, fill_value=9))(m0, ~m0)
    np.testing.assert_array_equal(out, [0.0, -1.0, 1.0, 9.0, -2.0])


def test_boolean_unmask_edge_cases():
    empty = np.zeros(0, bool)
    out = jaxops.boolean_unmask([empty, empty], [np.zeros((0, 3)), np.ones((2, 3))])
    chex.assert_shape(out, (0, 3))
    out = jaxops.boolean_unmask([np.ones(3, bool)], [np.arange(3)])
    np.testing.assert_array_equal(out, [0, 1, 2])
    out = jax.jit(lambda m: jaxops.boolean_unmask([m], [np.zeros((0,), np.float32)]))(MASK)
    np.testing.assert_array_equal(out, np.zeros(8))


def test_boolean_unmask_judges_concrete_per_mask():
    # One mask traced (a jit argument), the other a NumPy array closed over.
    traced = np.array([1, 0, 1, 1, 0, 0], bool)
    concrete = np.array([0, 1, 1, 0, 1, 1], bool)  # loses position 2 to the first mask
    values = [np.array([1.0, 2.0, 3.0], np.float32), np.array([10.0, 20.0, 30.0, 40.0], np.float32)]
    first = jax.jit(lambda a: jaxops.boolean_unmask([a, concrete], values, fill_value=-1))
    swapped = values[::-1]  # the concrete mask, first here, wins 4 positions
    second = jax.jit(lambda b: jaxops.boolean_unmask([concrete, b], swapped, fill_value=-1))
    expected = unmask_reference([traced, concrete], values)
    np.testing.assert_array_equal(expected, [1.0, 10.0, 2.0, 3.0, 20.0, 30.0])
    np.testing.assert_array_equal(first(traced), expected)
    np.testing.assert_array_equal(jaxops.checked(first)(traced), expected)
    np.testing.assert_array_equal(
        jaxops.checked(second)(traced), unmask_reference([concrete, traced], swapped)
    )
    # a bad value still raises through checkify; without it, the safe result
    uncovered = traced.copy()
    uncovered[0] = False
    match = r"expected every position covered by some mask, got position 0 covered by none\."
    with helpers.raises_message(ValueError, "boolean_unmask", match):
        jaxops.checked(first)(uncovered)
    with helpers.raises_message(ValueError, "boolean_unmask", match):
        jaxops.checked(second)(uncovered)
    np.testing.assert_array_equal(
        first(uncovered), unmask_reference([uncovered, concrete], values, fill_value=-1)
    )
    greedy = np.ones(6, bool)  # wins every position: 6 rows needed, 3 given
    match = (
        r"expected each stream to have at least as many rows as positions it wins, "
        r"got stream 0 wins 6 positions but values\[0\] has 3 rows\."
    )
    with helpers.raises_message(ValueError, "boolean_unmask", match):
        jaxops.checked(first)(greedy)


def test_boolean_unmask_errors():
    values = [np.arange(3.0), np.arange(3.0)]
    m0, m1 = np.array([1, 0, 1, 0], bool), np.array([0, 0, 0, 1], bool)
    helpers.raises_eager_and_checkified(
        lambda a, b: jaxops.boolean_unmask([a, b], values),
        (m0, m1),
        r"expected every position covered by some mask, got position 1 covered by none\.",
        op="boolean_unmask",
    )
    helpers.raises_eager_and_checkified(
        lambda a, b: jaxops.boolean_unmask([a, b], [np.arange(1.0), np.arange(3.0)]),
        (m0, ~m0),
        r"expected each stream to have at least as many rows as positions it wins, got stream 0 "
        r"wins 2 positions but values\[0\] has 1 rows\.",
        op="boolean_unmask",
    )
    with pytest.raises(ValueError, match=r"boolean_unmask: expected at least one mask"):
        jaxops.boolean_unmask([], [])
    with pytest.raises(ValueError, match=r"expected len\(masks\) == len\(values\)"):
        jaxops.boolean_unmask([m0], values)
    with pytest.raises(TypeError, match=r"expected `masks` to be a list or tuple"):
        jaxops.boolean_unmask(np.stack([m0, m1]), values)
    with pytest.raises(TypeError, match=r"expected `masks\[1\]` of dtype bool"):
        jaxops.boolean_unmask([m0, m1.astype(int)], values)
    with pytest.raises(ValueError, match=r"expected every mask of length len\(masks\[0\]\) = 4"):
        jaxops.boolean_unmask([m0, m1[:3]], values)
    with pytest.raises(ValueError, match=r"expected values with common trailing shape"):
        jaxops.boolean_unmask([m0, ~m0], [np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(TypeError, match=r"expected values of one dtype"):
        jaxops.boolean_unmask([m0, ~m0], [np.zeros(2, np.float32), np.zeros(2, np.int32)])


# --------------------------------------------------------------------------- #
# sequence_mask
# --------------------------------------------------------------------------- #

MODES = ["sequence", "window", "upper", "lower", "upperdiag", "lowerdiag"]
# (shape, kwargs) per view: plain, batch, repeat; in 2-D and 4-D.
VIEWS = {
    "2d-plain": ((4, 6), {"axis": 1}),
    "2d-batch": ((4, 6), {"axis": -1, "batch": 0}),
    "2d-repeat": ((4, 6), {"axis": 0, "repeat_from_axis": 1}),
    "4d-plain": ((2, 3, 4, 5), {"axis": -2}),
    "4d-batch": ((2, 3, 4, 5), {"axis": 2, "batch": -4}),
    "4d-repeat": ((2, 3, 4, 5), {"axis": 1, "repeat_from_axis": -1}),
}


def _second_argument(mode, rng, rows=24):
    if mode == "sequence":
        return rng.integers(-1, 8, size=rows).astype(np.int32)
    if mode == "window":
        return rng.integers(-3, 25, size=rows).astype(np.int32)
    return None


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("mode", MODES)
def test_sequence_mask_modes_and_views(mode, view):
    shape, kwargs = VIEWS[view]
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype(np.float32)
    lengths = _second_argument(mode, rng)
    kwargs = dict(kwargs, mode=mode, radius=2)
    if "repeat_from_axis" in kwargs and mode != "sequence":
        with pytest.raises(
            ValueError, match=r'expected repeat_from_axis only with mode="sequence"'
        ):
            jaxops.sequence_mask(x, lengths, **kwargs)
        return
    out, vjp = jax.vjp(lambda x: jaxops.sequence_mask(x, lengths, **kwargs), x)
    ref = sequence_mask_reference(x, lengths, **kwargs)
    np.testing.assert_array_equal(out, ref)
    g = rng.normal(size=shape).astype(np.float32)
    (grad,) = vjp(g)
    np.testing.assert_array_equal(grad, np.where(np.isneginf(ref), 0.0, g))


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=DTYPE_IDS)
def test_sequence_mask_dtypes(dtype):
    with helpers.x64_for(dtype):
        x = np.arange(24).reshape(2, 3, 4).astype(dtype)
        lengths = np.array([0, 1, 2, 3, 4, 5], np.int64 if dtype == jnp.float64 else np.int8)
        out = jaxops.sequence_mask(x, lengths, axis=2, fill_value=-1)
        assert out.dtype == dtype
        np.testing.assert_array_equal(
            out, sequence_mask_reference(x, lengths, axis=2, fill_value=-1)
        )
        grad = jax.grad(lambda x: jnp.sum(jaxops.sequence_mask(x, lengths, axis=2)))(x)
        assert grad.dtype == dtype
        ref = sequence_mask_reference(np.ones_like(x), lengths, axis=2, fill_value=0)
        np.testing.assert_array_equal(grad, ref)


jit_sequence_mask = jax.jit(jaxops.sequence_mask, static_argnames=("mode", "radius", "fill_value"))


@given(
    lengths=st.lists(st.integers(-3, 14), min_size=4, max_size=4),
    radius=st.sampled_from([0, 3]),
    window=st.booleans(),
)
def test_sequence_mask_hypothesis(lengths, radius, window):
    x = np.arange(30.0, dtype=np.float32).reshape(3, 10)
    lengths = np.array(lengths, np.int32)  # beyond cols, negative, more than rows: all fine
    mode = "window" if window else "sequence"
    out = jit_sequence_mask(x, lengths, mode=mode, radius=radius, fill_value=0.5)
    ref = sequence_mask_reference(x, lengths, mode=mode, radius=radius, fill_value=0.5)
    np.testing.assert_array_equal(out, ref)


def test_sequence_mask_extreme_lengths_int64():
    with jax.enable_x64(True):
        x = np.zeros((3, 4))
        lengths = np.array([2**40, -(2**40), 3], np.int64)
        out = jaxops.sequence_mask(x, lengths, fill_value=1.0)
        np.testing.assert_array_equal(out, [[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
        centers = np.array([2**40, 1, -(2**40)], np.int64)
        out = jaxops.sequence_mask(x, centers, mode="window", radius=1, fill_value=1.0)
        np.testing.assert_array_equal(out, [[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])


def test_sequence_mask_vmap_jit_grads():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    lengths = rng.integers(0, 21, size=(3, 8)).astype(np.int32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, lengths):
        return jaxops.sequence_mask(x, lengths, axis=-2, fill_value=0.0)

    batched = jax.vmap(f)(x, lengths)  # x and lengths batched
    for b in range(3):
        ref = sequence_mask_reference(x[b], lengths[b], axis=-2, fill_value=0.0)
        np.testing.assert_array_equal(batched[b], ref)
        np.testing.assert_array_equal(f(x[b], lengths[b]), ref)
    shared_x = jax.vmap(f, in_axes=(None, 0))(x[0], lengths)
    for b in range(3):
        ref = sequence_mask_reference(x[0], lengths[b], axis=-2, fill_value=0.0)
        np.testing.assert_array_equal(shared_x[b], ref)
    causal = jax.vmap(lambda x: jaxops.sequence_mask(x, mode="upper", axis=-1, batch=0))(x)
    np.testing.assert_array_equal(
        causal, np.stack([sequence_mask_reference(v, mode="upper", axis=-1, batch=0) for v in x])
    )
    with jax.enable_x64(True):
        x64 = rng.normal(size=(4, 6))
        for mode, second in [("sequence", np.array([1, 6, 0, 3])), ("lowerdiag", None)]:
            f64 = lambda x, mode=mode, second=second: jaxops.sequence_mask(
                x, second, mode=mode, fill_value=2.0
            )
            check_grads(f64, (x64,), order=1, modes=["rev"])
            g = rng.normal(size=(4, 6))
            ours = jax.vjp(f64, x64)[1](g)[0]
            keep = ~sequence_mask_reference(np.zeros((4, 6), bool), second, mode=mode, fill_value=1)
            naive = jax.vjp(lambda x, keep=keep: jnp.where(keep, x, 2.0), x64)[1](g)[0]
            np.testing.assert_array_equal(ours, naive)


@pytest.mark.parametrize(
    ("shape", "lengths", "kwargs"),
    [
        ((2, 3, 4), 2, {"axis": 1}),
        ((2, 3, 4, 5), 6, {"axis": 2, "repeat_from_axis": 3}),
        ((2, 3, 4, 5), 3, {"axis": 2, "batch": 0}),
        ((2, 3, 3), None, {"mode": "upper", "axis": 2, "batch": 0}),
    ],
)
def test_sequence_mask_donated_input_is_masked_in_place(shape, lengths, kwargs):
    # The mask broadcasts against x in x's own layout; a reshape of x would make
    # XLA copy the donated buffer instead of writing the result into it.
    args = () if lengths is None else (jnp.full((lengths,), 2),)
    f = jax.jit(lambda x, *a: jaxops.sequence_mask(x, *a, **kwargs), donate_argnums=0)
    compiled = f.lower(jnp.zeros(shape), *args).compile()
    assert "copy(" not in compiled.as_text()
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    want = jaxops.sequence_mask(x, *args, **kwargs)
    got = f(jnp.copy(x), *args)
    np.testing.assert_array_equal(got, want)


def test_sequence_mask_errors():
    x = np.zeros((2, 3, 4), np.float32)
    lengths = np.array([1, 2], np.int32)
    cases = [
        (dict(mode="causal"), r"sequence_mask: expected mode in \("),
        (dict(mode="upper"), r"expected no second argument for mode='upper', got lengths"),
        (dict(axis=3), r"expected axis in \[-ndim, ndim\) = \[-3, 3\), got axis=3"),
        (dict(axis=-4), r"got axis=-4"),
        (dict(axis=2), r"expected at least rows = prod\(x.shape\[0:2\]\) = 6 lengths"),
        (dict(batch=1), r"expected batch < axis = 1, got batch=1"),
        (dict(batch=3, axis=2), r"expected batch in \[-ndim, ndim\)"),
        (dict(axis=1, repeat_from_axis=1), r"expected repeat_from_axis > axis = 1"),
        (dict(axis=1, repeat_from_axis=-3), r"expected repeat_from_axis > axis = 1"),
        (dict(axis=2, batch=0, repeat_from_axis=2), r'expected repeat_from_axis only with mode="'),
        (dict(mode="window", radius=-1), r"expected radius >= 0"),
        (dict(mode="window", radius=2**31), r"expected radius <= 2\*\*30"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            jaxops.sequence_mask(x, lengths, **kwargs)
    with pytest.raises(ValueError, match=r"expected lengths for mode='sequence', got lengths=None"):
        jaxops.sequence_mask(x)
    with pytest.raises(TypeError, match=r"sequence_mask: expected `x` of a floating dtype"):
        jaxops.sequence_mask(x.astype(np.int32), lengths)
    with pytest.raises(TypeError, match=r"expected `lengths` of an integer dtype"):
        jaxops.sequence_mask(x, lengths.astype(np.float32))
    with pytest.raises(TypeError, match=r"expected `axis` to be a Python int"):
        jaxops.sequence_mask(x, lengths, axis=1.0)
    # Too few lengths is a shape error, so it is also raised under jit.
    with pytest.raises(ValueError, match=r"expected at least rows"):
        jax.jit(lambda n: jaxops.sequence_mask(x, n, axis=2))(lengths)


# --------------------------------------------------------------------------- #
# safe_softmax
# --------------------------------------------------------------------------- #

NEG_INF = -np.inf
LOGITS = np.array([[0.5, -1.0, 2.0, 0.0], [NEG_INF] * 4, [1.0, NEG_INF, NEG_INF, 3.0]], np.float32)


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=DTYPE_IDS)
def test_safe_softmax_values(dtype):
    with helpers.x64_for(dtype):
        logits = LOGITS.astype(dtype)
        out = jaxops.safe_softmax(logits)
        assert out.dtype == dtype
        tol = 1e-2 if np.dtype(dtype).itemsize == 2 else 1e-6
        np.testing.assert_allclose(np.asarray(out, np.float64), softmax_reference(LOGITS), atol=tol)
        np.testing.assert_array_equal(out[1], np.zeros(4))
        grad = jax.grad(lambda x: jnp.sum(jaxops.safe_softmax(x)[:, 0]))(logits)
        assert grad.dtype == dtype
        assert np.all(np.isfinite(np.asarray(grad, np.float64)))
    # Finite rows equal jax.nn.softmax (to float32 rounding: safe_softmax computes
    # exp(x - logsumexp)); other axes and tuples of axes work.
    softmax = functools.partial(np.testing.assert_allclose, rtol=1e-6)
    softmax(jaxops.safe_softmax(LOGITS[::2]), jax.nn.softmax(LOGITS[::2]))
    huge = np.array([[-3e38, -3e38, -3e38, -3.1e38]], np.float32)  # very negative, not -inf
    softmax(jaxops.safe_softmax(huge), jax.nn.softmax(huge))
    cube = np.where(np.arange(24).reshape(2, 3, 4) % 5 == 0, NEG_INF, 1.0).astype(np.float32)
    cube[1, :, 2] = NEG_INF
    np.testing.assert_allclose(
        jaxops.safe_softmax(cube, axis=1), softmax_reference(cube, axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        jaxops.safe_softmax(cube, axis=(0, -1)), softmax_reference(cube, axis=(0, 2)), rtol=1e-6
    )


def test_safe_softmax_is_clean_under_debug_nans():
    # The all -inf slices must not produce a NaN that jax_debug_nans can see.
    logits = jnp.asarray(LOGITS)
    with jax.debug_nans(True):
        out = jaxops.safe_softmax(logits)
        grad = jax.grad(lambda x: jnp.sum(jaxops.safe_softmax(x)[:, 0]))(logits)
    np.testing.assert_array_equal(out[1], np.zeros(4))
    assert np.all(np.isfinite(np.asarray(grad)))


def _rounded(x, dtype):
    return np.asarray(x, np.float64).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=DTYPE_IDS)
def test_safe_softmax_16_bit_matches_float64_rounded(dtype):
    # Rows of 4096 16-bit logits: forward and gradient equal a float64 computation from the
    # same 16-bit inputs, rounded to 16 bits, within 1 ulp; each step done in 16 bits is not.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 4096)).astype(dtype)
    # cotangents near their y-weighted mean (about 1.06): g - sum(g * y) cancels, so a
    # 16-bit dot product shows in every entry
    g = np.where(rng.random((2, 4096)) < 0.5, 1.0, 1.125).astype(dtype)
    x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
    y64 = softmax_reference(x64)
    y_expected = _rounded(y64, dtype)
    y16 = np.asarray(y_expected, np.float64)  # the 16-bit output is the backward residual
    grad_expected = _rounded(y16 * (g64 - np.sum(g64 * y16, axis=-1, keepdims=True)), dtype)
    # the same in 16 bits, every step rounded (sums left to right)
    e = _rounded(np.exp(x64 - x64.max(axis=-1, keepdims=True)), dtype)
    total = np.asarray(helpers.sequential_sum_16(e, dtype), np.float64)
    y_naive = _rounded(np.asarray(e, np.float64) / total, dtype)
    dot = np.asarray(helpers.sequential_sum_16(_rounded(g64 * y16, dtype), dtype), np.float64)
    grad_naive = _rounded(y16 * np.asarray(_rounded(g64 - dot, dtype), np.float64), dtype)
    assert helpers.ulp_distance(y_naive, y_expected, dtype).max() > 1  # the tolerance bites
    assert helpers.ulp_distance(grad_naive, grad_expected, dtype).max() > 1

    y, vjp = jax.vjp(jaxops.safe_softmax, jnp.asarray(x))
    assert y.dtype == dtype
    assert helpers.ulp_distance(y, y_expected, dtype).max() <= 1
    (grad,) = vjp(jnp.asarray(g))
    assert grad.dtype == dtype
    assert helpers.ulp_distance(grad, grad_expected, dtype).max() <= 1


def test_safe_softmax_gradients_vmap_jit():
    with jax.enable_x64(True):
        logits = LOGITS.astype(np.float64)
        check_grads(jaxops.safe_softmax, (logits,), order=1, modes=["rev"])
        rng = np.random.default_rng(9)
        g = rng.normal(size=logits.shape)
        ours = jax.vjp(jaxops.safe_softmax, logits)[1](g)[0]
        np.testing.assert_array_equal(ours[1], np.zeros(4))  # the fully masked row
        finite = jax.vjp(jax.nn.softmax, logits[::2])[1](g[::2])[0]
        np.testing.assert_allclose(ours[::2], finite, atol=1e-12)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x):
        return jaxops.safe_softmax(x, axis=0)

    batched = jax.vmap(f)(np.stack([LOGITS.T, LOGITS.T[:, ::-1]]))
    for b, logits in enumerate([LOGITS.T, LOGITS.T[:, ::-1]]):
        expected = softmax_reference(logits, axis=0)
        np.testing.assert_allclose(batched[b], expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f(logits), expected, rtol=1e-6, atol=1e-7)


def test_safe_softmax_errors():
    with pytest.raises(TypeError, match=r"safe_softmax: expected `logits` of a floating dtype"):
        jaxops.safe_softmax(np.arange(3))
    with pytest.raises(ValueError, match=r"safe_softmax: expected axis in \[-ndim, ndim\)"):
        jaxops.safe_softmax(LOGITS, axis=2)
    with pytest.raises(ValueError, match=r"safe_softmax: expected distinct axes"):
        jaxops.safe_softmax(LOGITS, axis=(1, -1))
