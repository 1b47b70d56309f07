"""expand and expand_gradient against SPEC §4."""

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


def expand_reference(x, shape):
    """NumPy: resolve -1 against x's (left-padded) shape, then broadcast both ways."""
    x = np.asarray(x)
    ndim = max(x.ndim, len(shape))
    x_dims = (1,) * (ndim - x.ndim) + x.shape
    target = (1,) * (ndim - len(shape)) + tuple(shape)
    target = tuple(a if b == -1 else b for a, b in zip(x_dims, target, strict=True))
    return np.broadcast_to(x.reshape(x_dims), np.broadcast_shapes(x_dims, target))


def sum_to_size_reference(g, x_shape):
    g = np.asarray(g, dtype=np.float64)
    lead = g.ndim - len(x_shape)
    g = g.sum(axis=tuple(range(lead)))
    for axis, d in enumerate(x_shape):
        if d == 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


CASES = [
    ((3, 1), (1, 4), (3, 4)),
    ((4,), (3, 1), (3, 4)),
    ((2, 3), (2, 3), (2, 3)),
    ((2, 3), (), (2, 3)),
    ((), (2, 3), (2, 3)),
    ((2, 1, 3), (4, -1, 5, -1), (4, 2, 5, 3)),
    ((5, 1), (-1, 0), (5, 0)),
    ((1,), (-1, -1), (1, 1)),
    ((2, 3), (1,), (2, 3)),
]


@pytest.mark.parametrize(("x_shape", "shape", "out_shape"), CASES)
def test_shapes_match_spec(x_shape, shape, out_shape):
    x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape)
    out = jaxops.expand(x, shape)
    assert out.shape == out_shape
    np.testing.assert_array_equal(out, expand_reference(x, shape))


@pytest.mark.parametrize("dtype", helpers.DATA_DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtypes_are_kept(dtype):
    with helpers.x64_for(dtype):
        x = helpers.random_data(np.random.default_rng(0), (3, 1), dtype)
        out = jaxops.expand(x, (2, 1, 4))
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, expand_reference(x, (2, 1, 4)))


@st.composite
def broadcastable(draw):
    ndim = draw(st.integers(0, 4))
    x_shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    extra = draw(st.integers(0, 2))
    shape = [draw(st.integers(1, 3)) for _ in range(extra)]
    for d in x_shape:
        shape.append(draw(st.sampled_from([d, 1, -1] if d != 1 else [1, -1, 2, 3])))
    if draw(st.booleans()) and shape:  # a shorter target is fine too
        shape = shape[draw(st.integers(0, len(shape))) :]
    return x_shape, tuple(shape)


@given(broadcastable())
def test_random_shapes_match_reference_and_gradient(shapes):
    x_shape, shape = shapes
    x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape)
    out = jaxops.expand(x, shape)
    np.testing.assert_array_equal(out, expand_reference(x, shape))
    g = np.arange(out.size, dtype=np.float32).reshape(out.shape)
    grad = jax.vjp(lambda v: jaxops.expand(v, shape), jnp.asarray(x))[1](jnp.asarray(g))[0]
    np.testing.assert_allclose(grad, sum_to_size_reference(g, x_shape))
    np.testing.assert_allclose(
        jaxops.expand_gradient(g, x_shape), sum_to_size_reference(g, x_shape)
    )


def test_gradient_matches_autodiff_of_broadcast_to_and_numerical_check():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 1, 2)))
        weights = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3, 5, 2)))
        ours = jax.grad(lambda v: jnp.sum(jaxops.expand(v, (4, 1, 5, -1)) * weights))(x)
        naive = jax.grad(lambda v: jnp.sum(jnp.broadcast_to(v, (4, 3, 5, 2)) * weights))(x)
        np.testing.assert_allclose(ours, naive, rtol=1e-12)
        check_grads(lambda v: jaxops.expand(v, (4, 1, 5, -1)), (x,), 2, ["rev"])


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_gradient_keeps_dtype_and_accumulates_16_bit_in_float32(dtype):
    with helpers.x64_for(dtype):
        x = jnp.ones((1,), dtype)
        # 4096 ones: float16 and bfloat16 sums would stall at 2048 / 256 without float32
        grad = jax.grad(lambda v: jaxops.expand(v, (4096,)).astype(jnp.float32).sum())(x)
        assert grad.dtype == dtype
        assert float(grad[0]) == 4096.0
        assert jaxops.expand_gradient(jnp.ones((4096,), dtype), (1,)).dtype == dtype


def test_expand_gradient_of_integer_and_bool():
    np.testing.assert_array_equal(
        jaxops.expand_gradient(np.arange(6, dtype=np.int32).reshape(2, 3), (3,)), [3, 5, 7]
    )
    out = jaxops.expand_gradient(np.array([[True, False], [False, False]]), (1, 2))
    np.testing.assert_array_equal(out, [[True, False]])


def test_vmap_and_jit_without_retracing():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x):
        return jaxops.expand(x, (2, -1, 3))

    x = jnp.arange(12.0).reshape(4, 3, 1)
    batched = jax.vmap(f)(x)
    for b in range(4):
        np.testing.assert_array_equal(batched[b], expand_reference(x[b], (2, -1, 3)))
    jax.vmap(f)(x + 1)
    grads = jax.jit(jax.vmap(jax.grad(lambda v: f(v).sum())))(x)
    np.testing.assert_array_equal(grads, np.full((4, 3, 1), 6.0))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: jaxops.expand(jnp.ones((2, 3)), (4,)),
            ValueError,
            r"expand: expected x.shape \(2, 3\) and shape \(4,\) to broadcast, "
            r"got size 3 against 4 at output axis 1\.",
        ),
        (
            lambda: jaxops.expand(jnp.ones((2, 3)), (5, 3, 3)),
            ValueError,
            r"got size 2 against 3 at output axis 1",
        ),
        (
            lambda: jaxops.expand(jnp.ones(2), (-2, 2)),
            ValueError,
            r"expand: expected shape\[0\] >= -1, got shape=\(-2, 2\)",
        ),
        (
            lambda: jaxops.expand(jnp.ones(2), 2),
            TypeError,
            r"expand: expected `shape` to be a static tuple of ints, got shape=2",
        ),
        (
            lambda: jaxops.expand(jnp.ones(2), (2.0,)),
            TypeError,
            r"expand: expected `shape\[0\]` to be a Python int, got shape\[0\]=2.0",
        ),
        (
            lambda: jax.jit(lambda s: jaxops.expand(jnp.ones(2), s))(jnp.array([2])),
            TypeError,
            r"expand: expected `shape` to be a static tuple of ints",
        ),
        (
            lambda: jaxops.expand(jnp.ones(2, jnp.complex64), (2,)),
            TypeError,
            r"expand: expected `x` of a numeric or bool dtype, got dtype complex64",
        ),
        (
            lambda: jaxops.expand_gradient(jnp.ones((2, 3)), (2,)),
            ValueError,
            r"expand_gradient: expected g.shape to be an expansion of x_shape \(2,\), "
            r"got g.shape \(2, 3\)",
        ),
        (
            lambda: jaxops.expand_gradient(jnp.ones(3), (1, 3)),
            ValueError,
            r"expand_gradient: expected g.shape to be an expansion",
        ),
        (
            lambda: jaxops.expand_gradient(jnp.ones(3), (-1,)),
            ValueError,
            r"expand_gradient: expected x_shape\[0\] >= 0, got x_shape=\(-1,\)",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
