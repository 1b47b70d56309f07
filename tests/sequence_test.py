"""pack_rnn_sequence and unpack_rnn_sequence against SPEC §2."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxops
from jaxops._src import sequence
from tests import helpers

# --------------------------------------------------------------------------- #
# NumPy references: loops over sequences, obviously correct
# --------------------------------------------------------------------------- #


def pack_reference(values, lengths, max_length=None, pad_value=0, time_major=True):
    values, lengths = np.asarray(values), np.asarray(lengths)
    t_len = int(lengths.max(initial=0)) if max_length is None else max_length
    out = np.full((len(lengths), t_len, *values.shape[1:]), pad_value, dtype=values.dtype)
    for n, (start, length) in enumerate(zip(helpers.offsets(lengths), lengths, strict=True)):
        out[n, :length] = values[start : start + length]
    return out.swapaxes(0, 1) if time_major else out


def unpack_reference(packed, lengths, total_length=None, time_major=True):
    packed, lengths = np.asarray(packed), np.asarray(lengths)
    by_seq = packed.swapaxes(0, 1) if time_major else packed
    total = int(lengths.sum()) if total_length is None else total_length
    out = np.zeros((total, *packed.shape[2:]), dtype=packed.dtype)
    for n, (start, length) in enumerate(zip(helpers.offsets(lengths), lengths, strict=True)):
        out[start : start + length] = by_seq[n, :length]
    return out


def naive_pack(values, lengths_np, max_length, time_major=True):
    """What a user would write with concrete lengths: slices and a pad, autodiff."""
    rows = []
    for start, length in zip(helpers.offsets(lengths_np), lengths_np, strict=True):
        seq = values[int(start) : int(start + length)]
        pad = [(0, max_length - int(length))] + [(0, 0)] * (values.ndim - 1)
        rows.append(jnp.pad(seq, pad))
    out = jnp.stack(rows)
    return out.swapaxes(0, 1) if time_major else out


def naive_unpack(packed, lengths_np, time_major=True):
    by_seq = packed.swapaxes(0, 1) if time_major else packed
    return jnp.concatenate([by_seq[n, : int(length)] for n, length in enumerate(lengths_np)])


LENGTHS = np.array([3, 0, 1, 4, 2], np.int32)


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", helpers.DATA_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("time_major", [True, False])
@pytest.mark.parametrize("features", [(), (2, 3)])
def test_pack_and_unpack_match_reference(dtype, time_major, features):
    rng = np.random.default_rng(0)
    with helpers.x64_for(dtype):
        values = helpers.random_data(rng, (12, *features), dtype)  # 2 rows past sum(lengths)
        packed = jaxops.pack_rnn_sequence(values, LENGTHS, time_major=time_major)
        assert packed.dtype == values.dtype
        np.testing.assert_array_equal(
            packed, pack_reference(values, LENGTHS, time_major=time_major)
        )
        unpacked = jaxops.unpack_rnn_sequence(packed, LENGTHS, time_major=time_major)
        assert unpacked.dtype == values.dtype
        np.testing.assert_array_equal(unpacked, values[: LENGTHS.sum()])


@given(lengths=helpers.ragged_lengths(), extra=st.integers(0, 3), time_major=st.booleans())
def test_ragged_inputs_match_reference_and_round_trip(lengths, extra, time_major):
    rng = np.random.default_rng(len(lengths))
    values = rng.standard_normal((int(lengths.sum()) + extra, 2)).astype(np.float32)
    max_length = int(lengths.max(initial=0)) + extra  # extra padding time steps
    packed = jaxops.pack_rnn_sequence(
        values, lengths, max_length=max_length, pad_value=-7.0, time_major=time_major
    )
    expected = pack_reference(values, lengths, max_length, -7.0, time_major)
    np.testing.assert_array_equal(packed, expected)
    total = int(lengths.sum()) + extra
    unpacked = jaxops.unpack_rnn_sequence(
        packed, lengths, total_length=total, time_major=time_major
    )
    np.testing.assert_array_equal(unpacked, unpack_reference(packed, lengths, total, time_major))
    np.testing.assert_array_equal(unpacked[: lengths.sum()], values[: lengths.sum()])
    np.testing.assert_array_equal(unpacked[lengths.sum() :], 0)


def test_default_sizes_are_the_caffe2_sizes():
    values = np.arange(10.0, dtype=np.float32)
    assert jaxops.pack_rnn_sequence(values, LENGTHS).shape == (4, 5)
    assert jaxops.pack_rnn_sequence(values, np.zeros(0, np.int32)).shape == (0, 0)
    assert jaxops.pack_rnn_sequence(values[:0], np.zeros(3, np.int32)).shape == (0, 3)
    packed = np.zeros((4, 5), np.float32)
    assert jaxops.unpack_rnn_sequence(packed, LENGTHS).shape == (10,)


def test_rank1_values_and_python_lists():
    out = jaxops.pack_rnn_sequence([1, 2, 3], [2, 1], time_major=False, pad_value=9)
    np.testing.assert_array_equal(out, [[1, 2], [3, 9]])


def test_padding_slots_of_packed_are_never_read():
    packed = jnp.full((4, 5), jnp.nan, jnp.float32)
    lengths = jnp.zeros(5, jnp.int32)
    np.testing.assert_array_equal(jaxops.unpack_rnn_sequence(packed, lengths, total_length=3), 0)


@pytest.mark.parametrize("time_major", [True, False])
@pytest.mark.parametrize("features", [(), (2,)])
def test_no_rows_and_zero_lengths_pack_to_all_padding(time_major, features):
    # M == 0 rows, T > 0 time steps, N > 0 sequences, all of length 0
    values, lengths = np.zeros((0, *features), np.float32), np.zeros(3, np.int32)
    shape = ((4, 3) if time_major else (3, 4)) + features
    expected = pack_reference(values, lengths, 4, 7.0, time_major)
    np.testing.assert_array_equal(expected, np.full(shape, 7.0, np.float32))

    def pack(v, lens):
        return jaxops.pack_rnn_sequence(v, lens, max_length=4, pad_value=7.0, time_major=time_major)

    np.testing.assert_array_equal(pack(values, lengths), expected)  # eager
    out, vjp = jax.vjp(jax.jit(pack), values, lengths)  # traced lengths
    np.testing.assert_array_equal(out, expected)
    grad = vjp(np.ones(shape, np.float32))[0]
    assert grad.shape == values.shape and grad.dtype == values.dtype
    # and back: T > 0, N > 0, L == 0
    unpacked = jaxops.unpack_rnn_sequence(expected, lengths, time_major=time_major)
    assert unpacked.shape == (0, *features)
    ints = jaxops.pack_rnn_sequence(np.zeros((0,), np.int32), lengths, max_length=2, pad_value=-3)
    np.testing.assert_array_equal(ints, np.full((2, 3), -3, np.int32))


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.int64], ids=lambda d: np.dtype(d).name
)
def test_any_integer_lengths_dtype(dtype):
    with helpers.x64_for(dtype):
        values = np.arange(10.0)
        out = jaxops.pack_rnn_sequence(values, LENGTHS.astype(dtype), max_length=4)
        np.testing.assert_array_equal(out, pack_reference(values, LENGTHS, 4))


def test_x64_enabled_and_disabled_agree():
    values = np.arange(20.0).reshape(10, 2)
    with jax.enable_x64(True):
        wide = jaxops.pack_rnn_sequence(values, LENGTHS.astype(np.int64))
        assert wide.dtype == jnp.float64
    narrow = jaxops.pack_rnn_sequence(values.astype(np.float32), LENGTHS)
    np.testing.assert_array_equal(wide, narrow)
    np.testing.assert_array_equal(narrow, pack_reference(values, LENGTHS))


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("time_major", [True, False])
def test_pack_gradient_matches_autodiff_of_naive_pack(time_major):
    rng = np.random.default_rng(1)
    values = jnp.asarray(rng.standard_normal((12, 3)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((4, 5, 3) if time_major else (5, 4, 3)), jnp.float32)

    def loss(fn):
        return lambda v: jnp.sum(fn(v) * cot)

    ours = jax.grad(loss(lambda v: jaxops.pack_rnn_sequence(v, LENGTHS, time_major=time_major)))
    naive = jax.grad(loss(lambda v: naive_pack(v, LENGTHS, 4, time_major)))
    np.testing.assert_allclose(ours(values), naive(values), rtol=1e-6)
    assert ours(values)[10:].sum() == 0  # rows past sum(lengths) get no gradient


@pytest.mark.parametrize("time_major", [True, False])
def test_unpack_gradient_matches_autodiff_of_naive_unpack(time_major):
    rng = np.random.default_rng(2)
    shape = (4, 5, 3) if time_major else (5, 4, 3)
    packed = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((10, 3)), jnp.float32)

    def ours(p):
        out = jaxops.unpack_rnn_sequence(p, LENGTHS, time_major=time_major)
        return jnp.sum(out * cot)

    def naive(p):
        return jnp.sum(naive_unpack(p, LENGTHS, time_major) * cot)

    grad = jax.grad(ours)(packed)
    np.testing.assert_allclose(grad, jax.grad(naive)(packed), rtol=1e-6)
    assert grad.shape == packed.shape  # exactly T rows, not max(lengths)


def test_gradients_pass_numerical_check_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        values = jnp.asarray(rng.standard_normal((11, 2)))
        packed = jnp.asarray(rng.standard_normal((5, 5, 2)))
        check_grads(
            lambda v: jaxops.pack_rnn_sequence(v, LENGTHS, pad_value=1.5), (values,), 2, ["rev"]
        )
        check_grads(
            lambda p: jaxops.unpack_rnn_sequence(p, LENGTHS, total_length=12), (packed,), 2, ["rev"]
        )


@pytest.mark.parametrize("dtype", helpers.FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_gradients_keep_the_primal_dtype(dtype):
    with helpers.x64_for(dtype):
        values = jnp.ones((10, 2), dtype)
        grad = jax.grad(lambda v: jaxops.pack_rnn_sequence(v, LENGTHS).astype(jnp.float32).sum())
        assert grad(values).dtype == dtype
        np.testing.assert_array_equal(grad(values), 1)
        packed = jnp.ones((4, 5, 2), dtype)
        grad = jax.grad(lambda p: jaxops.unpack_rnn_sequence(p, LENGTHS).astype(jnp.float32).sum())
        assert grad(packed).dtype == dtype


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("time_major", [True, False])
def test_integer_and_bool_data_vjp_returns_float0_cotangents(dtype, time_major):
    values = helpers.random_data(np.random.default_rng(6), (12, 2), dtype)
    kwargs = {"max_length": 5, "time_major": time_major}
    packed, vjp = jax.vjp(
        lambda v: jaxops.pack_rnn_sequence(v, LENGTHS, pad_value=1, **kwargs), values
    )
    np.testing.assert_array_equal(packed, pack_reference(values, LENGTHS, 5, 1, time_major))
    (ct,) = vjp(_float0_like(packed))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == values.shape
    unpack = lambda p: jaxops.unpack_rnn_sequence(
        p, LENGTHS, total_length=12, time_major=time_major
    )
    flat, vjp = jax.vjp(unpack, packed)
    np.testing.assert_array_equal(flat, unpack_reference(packed, LENGTHS, 12, time_major))
    (ct,) = vjp(_float0_like(flat))
    assert ct.dtype == jax.dtypes.float0 and ct.shape == packed.shape

    # a float loss that reaches x only through the integer/bool data path: no gradient from it
    def loss(x):
        out = unpack(jaxops.pack_rnn_sequence(x.astype(dtype), LENGTHS, **kwargs))
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(x)

    grad = jax.grad(loss)(np.ones((12, 2), np.float32))
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.ones((12, 2), np.float32))


def test_backward_rules_return_no_cotangent_for_non_float_data():
    # JAX never runs a custom_vjp's backward pass when no input is floating (jax.vjp,
    # jit(vjp), linearize and grad(allow_int=True) all short-circuit), so the rules'
    # non-floating branches are reachable only directly.
    lengths = jnp.asarray(LENGTHS)
    g = _float0_like(np.zeros((4, 5)))
    assert sequence._pack_rule.bwd(10, 4, 0, True, lengths, g) == (None, None)
    assert sequence._unpack_rule.bwd(10, 4, True, lengths, _float0_like(np.zeros(10))) == (
        None,
        None,
    )


# --------------------------------------------------------------------------- #
# Transformations
# --------------------------------------------------------------------------- #


def test_vmap_over_values_and_lengths_matches_a_loop():
    rng = np.random.default_rng(4)
    values = rng.standard_normal((3, 10, 2)).astype(np.float32)
    lengths = np.array([[3, 0, 1, 4, 2], [1, 1, 1, 1, 1], [0, 0, 5, 0, 5]], np.int32)

    def pack(v, lens):
        return jaxops.pack_rnn_sequence(v, lens, max_length=5)

    def unpack(p, lens):
        return jaxops.unpack_rnn_sequence(p, lens, total_length=10)

    packed = jax.vmap(pack)(values, lengths)
    for b in range(3):
        np.testing.assert_array_equal(packed[b], pack_reference(values[b], lengths[b], 5))
    unpacked = jax.vmap(unpack)(packed, lengths)
    for b in range(3):
        np.testing.assert_array_equal(unpacked[b], unpack_reference(packed[b], lengths[b], 10))
    # only lengths batched; only values batched
    by_lengths = jax.vmap(pack, in_axes=(None, 0))(values[0], lengths)
    for b in range(3):
        np.testing.assert_array_equal(by_lengths[b], pack_reference(values[0], lengths[b], 5))
    by_values = jax.vmap(pack, in_axes=(0, None))(values, lengths[0])
    for b in range(3):
        np.testing.assert_array_equal(by_values[b], pack_reference(values[b], lengths[0], 5))


def test_jit_of_vmap_of_grad_matches_a_loop():
    rng = np.random.default_rng(5)
    values = jnp.asarray(rng.standard_normal((3, 10)), jnp.float32)
    lengths = jnp.array([[3, 0, 1, 4, 2], [2, 2, 2, 2, 2], [0, 0, 0, 0, 10]], jnp.int32)
    weights = jnp.arange(1.0, 11.0, dtype=jnp.float32).reshape(10, 1)

    def loss(v, lens):
        return jnp.sum(jaxops.pack_rnn_sequence(v, lens, max_length=10) * weights)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(values, lengths)
    cotangent = np.broadcast_to(np.asarray(weights), (10, 5))  # d loss / d packed
    for b in range(3):
        expected = unpack_reference(cotangent, lengths[b], total_length=10)
        np.testing.assert_array_equal(batched[b], expected)
        np.testing.assert_array_equal(jax.grad(loss)(values[b], lengths[b]), expected)


def test_jit_matches_eager_and_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def roundtrip(v, lens):
        packed = jaxops.pack_rnn_sequence(v, lens, max_length=4)
        return packed, jaxops.unpack_rnn_sequence(packed, lens, total_length=10)

    values = np.arange(20.0, dtype=np.float32).reshape(10, 2)
    for shift in range(3):
        lengths = np.roll(LENGTHS, shift)
        packed, unpacked = roundtrip(values, lengths)
        expected = pack_reference(values, lengths, max_length=4)
        np.testing.assert_array_equal(packed, expected)
        np.testing.assert_array_equal(jaxops.pack_rnn_sequence(values, lengths), expected)
        np.testing.assert_array_equal(unpacked, values)


def test_concrete_lengths_closed_over_inside_jit_need_no_sizes():
    lengths = jnp.asarray(LENGTHS)
    out = jax.jit(lambda v: jaxops.pack_rnn_sequence(v, lengths))(jnp.arange(10.0))
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, pack_reference(np.arange(10.0, dtype=np.float32), LENGTHS))
    grad = jax.grad(lambda v: jaxops.pack_rnn_sequence(v, lengths).sum())(jnp.arange(10.0))
    np.testing.assert_array_equal(grad, 1)  # eager grad: lengths still concrete


def test_eager_grad_over_values_keeps_numpy_lengths_concrete():
    rng = np.random.default_rng(7)
    values = rng.standard_normal((12, 2)).astype(np.float32)
    cot = rng.standard_normal((4, 5, 2)).astype(np.float32)
    loss = lambda v: jnp.sum(jaxops.pack_rnn_sequence(v, LENGTHS) * cot)  # no max_length
    expected = unpack_reference(cot, LENGTHS, total_length=12)
    np.testing.assert_array_equal(jax.grad(loss)(values), expected)
    np.testing.assert_array_equal(jaxops.checked(jax.jit(jax.grad(loss)))(values), expected)
    # the concrete lengths are checked at once, eagerly and under checked(jit(grad))
    bad = np.array([3, -1, 1, 4, 2], np.int32)
    bad_loss = lambda v: jnp.sum(jaxops.pack_rnn_sequence(v, bad))
    match = r"expected lengths >= 0, got lengths\[1\] = -1\."
    with helpers.raises_message(ValueError, "pack_rnn_sequence", match):
        jax.grad(bad_loss)(values)
    with helpers.raises_message(ValueError, "pack_rnn_sequence", match):
        jaxops.checked(jax.jit(jax.grad(bad_loss)))(values)
    # traced lengths: the same check through checkify
    traced = lambda v, lens: jnp.sum(jaxops.pack_rnn_sequence(v, lens, max_length=4))
    with helpers.raises_message(ValueError, "pack_rnn_sequence", match):
        jaxops.checked(jax.jit(jax.grad(traced)))(values, bad)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_sizes_are_required_under_tracing():
    with pytest.raises(ValueError, match=r"pack_rnn_sequence: expected a static `max_length=`"):
        jax.jit(jaxops.pack_rnn_sequence)(jnp.arange(3.0), jnp.array([3]))
    with pytest.raises(ValueError, match=r"unpack_rnn_sequence: expected a static `total_length=`"):
        jax.vmap(jaxops.unpack_rnn_sequence)(jnp.ones((2, 3, 1)), jnp.ones((2, 1), jnp.int32))


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        ([3, -1, 2], r"expected lengths >= 0, got lengths\[1\] = -1\."),
        ([3, 4, 2], r"expected sum\(lengths\) <= values.shape\[0\] = 8, got sum\(lengths\) = 9\."),
        ([5, 0, 1], r"expected lengths <= max_length = 4, got lengths\[0\] = 5\."),
    ],
)
def test_pack_value_checks_eager_and_checkified(lengths, match):
    args = (jnp.arange(8.0), jnp.array(lengths))
    helpers.raises_eager_and_checkified(
        jaxops.pack_rnn_sequence, args, match, {"max_length": 4}, op="pack_rnn_sequence"
    )


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        ([3, -1, 2], r"expected lengths >= 0, got lengths\[1\] = -1\."),
        ([3, 4, 2], r"expected sum\(lengths\) <= total_length = 8, got sum\(lengths\) = 9\."),
        ([5, 0, 1], r"expected lengths <= packed.shape\[0\] = 4, got lengths\[0\] = 5\."),
    ],
)
def test_unpack_value_checks_eager_and_checkified(lengths, match):
    args = (jnp.zeros((4, 3)), jnp.array(lengths))
    helpers.raises_eager_and_checkified(
        jaxops.unpack_rnn_sequence,
        args,
        match,
        {"total_length": 8},
        op="unpack_rnn_sequence",
    )


def test_checks_survive_checkify_of_grad_and_vmap():
    def loss(v, lens):
        return jaxops.pack_rnn_sequence(v, lens, max_length=4).sum()

    bad = jnp.array([[1, 1], [2, -3]])
    match = r"expected lengths >= 0, got lengths\[1\] = -3\."
    with helpers.raises_message(ValueError, "pack_rnn_sequence", match):
        jaxops.checked(jax.jit(jax.vmap(jax.grad(loss))))(jnp.ones((2, 4)), bad)
    good = jnp.array([[1, 1], [2, 2]])
    grads = jaxops.checked(jax.jit(jax.vmap(jax.grad(loss))))(jnp.ones((2, 4)), good)
    np.testing.assert_array_equal(grads, [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_invalid_lengths_under_jit_give_the_documented_safe_result():
    values = jnp.arange(1.0, 7.0)
    pack = jax.jit(lambda v, lens: jaxops.pack_rnn_sequence(v, lens, max_length=3, pad_value=-1.0))
    # negative: offsets use max(lengths, 0); too long: clipped to T and to the rows left
    out = pack(values, jnp.array([-2, 5, 4]))
    np.testing.assert_array_equal(out.T, [[-1, -1, -1], [1, 2, 3], [6, -1, -1]])
    unpack = jax.jit(lambda p, lens: jaxops.unpack_rnn_sequence(p, lens, total_length=4))
    # sequence 0 spans rows 0..4 but only its 3 time steps exist; sequence 1 starts past L
    flat = unpack(jnp.arange(1.0, 7.0).reshape(3, 2), jnp.array([5, 5]))
    np.testing.assert_array_equal(flat, [1, 3, 5, 0])
    assert not np.isnan(flat).any()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([1.0, 2.0])),
            TypeError,
            r"pack_rnn_sequence: expected `lengths` of an integer dtype, got dtype float32\.",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([True])),
            TypeError,
            r"expected `lengths` of an integer dtype, got dtype bool",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3, jnp.complex64), jnp.array([1])),
            TypeError,
            r"expected `values` of a numeric or bool dtype, got dtype complex64",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(()), jnp.array([1])),
            ValueError,
            r"expected `values` of rank >= 1, got shape \(\)",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([[1]])),
            ValueError,
            r"expected `lengths` of rank 1, got shape \(1, 1\)",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([1]), max_length=-1),
            ValueError,
            r"expected max_length >= 0, got max_length=-1",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([1]), max_length=2.0),
            TypeError,
            r"expected `max_length` to be a Python int, got max_length=2.0",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3, jnp.int32), jnp.array([1]), pad_value=0.5),
            ValueError,
            r"expected `pad_value` representable in int32, got pad_value=0.5",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([1]), pad_value=jnp.ones(2)),
            TypeError,
            r"expected `pad_value` to be a static Python scalar",
        ),
        (
            lambda: jaxops.pack_rnn_sequence(jnp.ones(3), jnp.array([1]), time_major=1),
            TypeError,
            r"expected `time_major` to be a Python bool, got time_major=1",
        ),
        (
            lambda: jaxops.unpack_rnn_sequence(jnp.ones((4, 3)), jnp.array([1, 1])),
            ValueError,
            r"unpack_rnn_sequence: expected packed.shape\[1\] == len\(lengths\) = 2, "
            r"got packed.shape = \(4, 3\)",
        ),
        (
            lambda: jaxops.unpack_rnn_sequence(
                jnp.ones((3, 4)), jnp.array([1, 1]), time_major=False
            ),
            ValueError,
            r"^unpack_rnn_sequence: expected packed.shape\[0\] == len\(lengths\) = 2, "
            r"got packed.shape = \(3, 4\)\.$",
        ),
        (  # batch-major: axis 1 matching len(lengths) does not help
            lambda: jaxops.unpack_rnn_sequence(
                jnp.ones((3, 2)), jnp.array([1, 1]), total_length=2, time_major=False
            ),
            ValueError,
            r"^unpack_rnn_sequence: expected packed.shape\[0\] == len\(lengths\) = 2, "
            r"got packed.shape = \(3, 2\)\.$",
        ),
        (
            lambda: jax.jit(
                lambda p, lens: jaxops.unpack_rnn_sequence(
                    p, lens, total_length=2, time_major=False
                )
            )(jnp.ones((3, 2)), jnp.array([1, 1])),
            ValueError,
            r"^unpack_rnn_sequence: expected packed.shape\[0\] == len\(lengths\) = 2",
        ),
        (
            lambda: jaxops.unpack_rnn_sequence(jnp.ones(4), jnp.array([1])),
            ValueError,
            r"expected `packed` of rank >= 2, got shape \(4,\)",
        ),
    ],
)
def test_type_shape_and_static_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_nan_pad_value_does_not_recompile_eager_calls():
    from jaxops._src import sequence

    values, lengths = jnp.arange(3.0), jnp.array([2, 1])
    jaxops.pack_rnn_sequence(values, lengths, pad_value=float("nan"))
    before = sequence._pack_jit._cache_size()
    for _ in range(3):
        out = jaxops.pack_rnn_sequence(values, lengths, pad_value=float("nan"))
    assert sequence._pack_jit._cache_size() == before
    assert np.isnan(out[1, 1]) and out[0, 1] == 2.0
