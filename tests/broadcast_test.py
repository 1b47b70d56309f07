"""expand and expand_gradient against SPEC §4 (and SPEC §1.3 for every public function)."""

import inspect
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxops
from jaxops._src import broadcast
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


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=lambda d: np.dtype(d).name)
def test_16_bit_gradient_sums_match_float64_rounded(dtype):
    # 4096 16-bit terms in [0.5, 1.5]: every partial sum is exact in float32 (at most 24
    # significant bits), so float32 accumulation gives exactly the float64 sum rounded to
    # 16 bits, in any order. A 16-bit accumulation misses it.
    rng = np.random.default_rng(3)
    g = rng.uniform(0.5, 1.5, size=(2, 4096)).astype(dtype)
    expected = np.asarray(g, np.float64).sum(axis=1, keepdims=True).astype(dtype)
    naive = helpers.sequential_sum_16(g, dtype, axis=1)
    assert helpers.ulp_distance(naive, expected, dtype).min() > 1  # the check discriminates
    out = jaxops.expand_gradient(g, (2, 1))
    assert out.dtype == dtype and out.shape == (2, 1)
    np.testing.assert_array_equal(out, expected)
    _, vjp = jax.vjp(lambda x: jaxops.expand(x, (2, 4096)), jnp.zeros((2, 1), dtype))
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], expected)
    # summing over a leading axis x lacks
    np.testing.assert_array_equal(jaxops.expand_gradient(g.T, (2,)), expected[:, 0])


def test_expand_gradient_of_integer_and_bool():
    np.testing.assert_array_equal(
        jaxops.expand_gradient(np.arange(6, dtype=np.int32).reshape(2, 3), (3,)), [3, 5, 7]
    )
    out = jaxops.expand_gradient(np.array([[True, False], [False, False]]), (1, 2))
    np.testing.assert_array_equal(out, [[True, False]])


# A 0 in x's shape is a size like any other, not a broadcastable 1 (SPEC §4).
ZERO_SIZE_CASES = [
    ((1,), (0,), (0,)),
    ((0, 1), (0, 4), (0, 4)),
    ((0,), (1,), (0,)),
    ((0,), (-1,), (0,)),
    ((0,), (), (0,)),
    ((), (0,), (0,)),
    ((2, 0), (3, 1, 1), (3, 2, 0)),
    ((1, 3), (0, -1), (0, 3)),
    ((0, 3), (5, 1, 3), (5, 0, 3)),
]


@pytest.mark.parametrize(("x_shape", "shape", "out_shape"), ZERO_SIZE_CASES)
def test_zero_size_dims(x_shape, shape, out_shape):
    x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape) + 1
    out, vjp = jax.vjp(lambda v: jaxops.expand(v, shape), x)
    assert out.shape == out_shape == expand_reference(x, shape).shape
    g = np.ones(out_shape, np.float32)
    expected = sum_to_size_reference(g, x_shape)  # zeros where x's entry was never used
    (grad,) = vjp(g)
    assert grad.shape == x_shape
    np.testing.assert_array_equal(grad, expected)
    np.testing.assert_array_equal(jaxops.expand_gradient(g, x_shape), expected)


def re_tuple(dims):
    return re.escape(str(tuple(dims)))


@pytest.mark.parametrize(
    ("x_shape", "shape", "axis", "a", "b"),
    [
        ((0,), (3,), 0, 0, 3),
        ((2,), (0,), 0, 2, 0),
        ((0, 2), (4, 2), 0, 0, 4),
        ((3, 0), (5,), 1, 0, 5),
        ((3, 0), (2, 3, 7), 2, 0, 7),
    ],
)
def test_zero_size_dims_do_not_broadcast(x_shape, shape, axis, a, b):
    with pytest.raises(ValueError) as excinfo:
        jaxops.expand(np.zeros(x_shape, np.float32), shape)
    helpers.assert_message(
        excinfo,
        "expand",
        rf"expected x.shape {re_tuple(x_shape)} and shape {re_tuple(shape)} to broadcast, "
        rf"got size {a} against {b} at output axis {axis}\. "
        r"Sizes broadcast when equal or when one of them is 1\.",
    )


def test_expand_gradient_zero_size_dims():
    np.testing.assert_array_equal(jaxops.expand_gradient(np.ones((0,), np.float32), (1,)), [0.0])
    out = jaxops.expand_gradient(np.ones((3, 0), np.float32), (0,))
    assert out.shape == (0,)
    with pytest.raises(ValueError, match=r"expected g.shape to be an expansion of x_shape \(0,\)"):
        jaxops.expand_gradient(np.ones((3,), np.float32), (0,))


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_], ids=lambda d: np.dtype(d).name)
def test_integer_and_bool_data_vjp_returns_a_float0_cotangent(dtype):
    x = helpers.random_data(np.random.default_rng(4), (3, 1), dtype)
    out, vjp = jax.vjp(lambda v: jaxops.expand(v, (2, -1, 4)), x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expand_reference(x, (2, -1, 4)))
    (ct,) = vjp(_float0_like(out))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == x.shape
    # a float loss that reaches x only through the integer data path: no gradient from it
    loss = lambda v: (
        jnp.sum(jaxops.expand(v.astype(dtype), (2, 3, 4)).astype(jnp.float32)) + jnp.sum(v)
    )
    grad = jax.grad(loss)(np.ones((3, 1), np.float32))
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.ones((3, 1), np.float32))


def test_backward_rule_returns_no_cotangent_for_non_float_data():
    # JAX never runs a custom_vjp's backward pass when no input is floating (jax.vjp,
    # jit(vjp), linearize and grad(allow_int=True) all short-circuit), so the rule's
    # non-floating branch is reachable only directly.
    g = _float0_like(np.zeros((2, 3)))
    assert broadcast._expand_rule.bwd((2, 3), (3,), None, g) == (None,)


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


# --------------------------------------------------------------------------- #
# Every public function: static arguments are keyword-only (SPEC §1.3)
# --------------------------------------------------------------------------- #

STATIC_ARGUMENTS = {
    "max_length", "pad_value", "time_major", "total_length", "k", "data_length", "size",
    "fill_value", "mode", "axis", "batch", "repeat_from_axis", "radius",
}  # fmt: skip
# What SPEC gives each op (at least); expand and expand_gradient take the shape positionally.
SPEC_STATIC = {
    "pack_rnn_sequence": {"max_length", "pad_value", "time_major"},
    "unpack_rnn_sequence": {"total_length", "time_major"},
    "lengths_top_k": {"k", "max_length"},
    "lengths_top_k_gradient": {"data_length"},
    "boolean_mask": {"size", "fill_value"},
    "boolean_unmask": {"fill_value"},
    "sequence_mask": {"mode", "axis", "batch", "repeat_from_axis", "radius", "fill_value"},
    "safe_softmax": {"axis"},
}
POSITIONAL_SHAPES = {"expand": "shape", "expand_gradient": "x_shape"}
# SPEC §7 writes these Ragged methods with their one static argument positional.
POSITIONAL_BY_SPEC = {
    ("Ragged.top_k", "k"),
    ("Ragged.length_mask", "max_length"),
    ("length_mask", "max_length"),
}


def _public_callables():
    """Every public function, class constructor and public method, by qualified name."""
    for name in jaxops.__all__:
        obj = getattr(jaxops, name)
        yield name, obj
        if inspect.isclass(obj):
            for attr in vars(obj):
                member = getattr(obj, attr)
                if not attr.startswith("_") and callable(member):
                    yield f"{name}.{attr}", member


def test_static_arguments_are_keyword_only():
    seen: dict[str, set[str]] = {}
    for name, fn in _public_callables():
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature
            continue
        for param in params:
            if param.name in STATIC_ARGUMENTS and (name, param.name) not in POSITIONAL_BY_SPEC:
                assert param.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {param}"
                seen.setdefault(name, set()).add(param.name)
    for name, static in SPEC_STATIC.items():
        assert static <= seen.get(name, set()), (name, static, seen.get(name))
    for name, shape in POSITIONAL_SHAPES.items():
        params = list(inspect.signature(getattr(jaxops, name)).parameters.values())
        assert [p.name for p in params] == [params[0].name, shape]
        assert params[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


_X, _L = np.arange(4.0, dtype=np.float32), np.array([2, 2], np.int32)
_MASK = np.array([True, False, True, False])


@pytest.mark.parametrize(
    "call",
    [
        lambda: jaxops.lengths_top_k(_X, _L, 2),
        lambda: jaxops.lengths_top_k(_X, _L, 2, 2),
        lambda: jaxops.lengths_top_k_gradient(_L, np.zeros((2, 1), np.int32), _X[:2, None], 4),
        lambda: jaxops.pack_rnn_sequence(_X, _L, 2),
        lambda: jaxops.unpack_rnn_sequence(_X.reshape(2, 2), _L, 4),
        lambda: jaxops.boolean_mask(_X, _MASK, 2),
        lambda: jaxops.boolean_unmask([_MASK, ~_MASK], [_X[:2], _X[:2]], 0),
        lambda: jaxops.sequence_mask(_X.reshape(2, 2), _L, "sequence"),
        lambda: jaxops.safe_softmax(_X, -1),
    ],
)
def test_static_arguments_passed_positionally_raise_type_error(call):
    with pytest.raises(TypeError, match=r"positional argument"):
        call()
