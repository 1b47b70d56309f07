"""The checks layer (SPEC §1 rules 6-8): integer widths, overflow, huge static sizes.

Each test is one of the measured failures of the reliability sweep, written
as the call a user made; ``sweep_test.py`` walks every op through the same
classes of bad input.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops._src import checks

NARROW = [jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.uint32]


def _anchored(op, text):
    return rf"^{re.escape(op)}: expected {text}\Z"


# --------------------------------------------------------------------------- #
# 1. Narrow lengths dtypes compute like int32
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("jit", [False, True])
def test_narrow_lengths_with_more_rows_than_the_dtype_holds(dtype, jit):
    values = jnp.arange(300.0)
    lengths = jnp.array([100, 100, 100], dtype)
    pack = lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=100)
    unpack = lambda p, n: jaxops.unpack_rnn_sequence(p, n, total_length=300)
    topk = lambda d, n: jaxops.lengths_top_k(d, n, k=2)
    if jit:
        pack, unpack, topk = jax.jit(pack), jax.jit(unpack), jax.jit(topk)
    packed = pack(values, lengths)
    np.testing.assert_array_equal(packed[:3, 1], [100, 101, 102])
    np.testing.assert_array_equal(packed[:, 2], np.arange(200, 300))
    np.testing.assert_array_equal(unpack(packed, lengths), values)
    top = topk(values, lengths)
    np.testing.assert_array_equal(top.values, [[99, 98], [199, 198], [299, 298]])
    np.testing.assert_array_equal(top.indices, [[99, 98], [99, 98], [99, 98]])
    grad = jaxops.lengths_top_k_gradient(lengths, top.indices, top.values, data_length=300)
    np.testing.assert_array_equal(np.nonzero(np.asarray(grad))[0], [98, 99, 198, 199, 298, 299])


@pytest.mark.parametrize("dtype", NARROW, ids=lambda d: np.dtype(d).name)
def test_boolean_mask_lengths_in_a_narrow_dtype(dtype):
    big = min(int(np.iinfo(dtype).max), 40_000)
    lengths = jnp.array([big, 3], dtype)
    mask = jnp.ones(big + 3, bool).at[big + 1].set(False)
    for fn in (jaxops.boolean_mask_lengths, jax.jit(jaxops.boolean_mask_lengths)):
        out = fn(lengths, mask)
        assert out.dtype == lengths.dtype
        np.testing.assert_array_equal(out, [big, 2])


def test_sequence_mask_with_narrow_lengths_and_wide_rows():
    x = jnp.zeros((2, 300))
    out = jaxops.sequence_mask(x, jnp.array([200, 255], jnp.uint8), fill_value=1.0)
    np.testing.assert_array_equal(out.sum(axis=1), [100, 45])


# --------------------------------------------------------------------------- #
# 2. Sums that overflow are reported, never wrapped
# --------------------------------------------------------------------------- #


def test_int32_sum_overflow_is_reported_under_checkify():
    topk = jax.jit(lambda d, n: jaxops.lengths_top_k(d, n, k=2))
    match = _anchored("lengths_top_k", r"sum\(lengths\) <= data.shape\[0\] = 5, got .*")
    with pytest.raises(ValueError, match=match):
        jaxops.checked(topk)(jnp.arange(5.0), jnp.array([2**31 - 1, 1], jnp.int32))
    with pytest.raises(ValueError, match=r"got sum\(lengths\) = 2147483648\.\Z"):
        jaxops.lengths_top_k(jnp.arange(5.0), jnp.array([2**31 - 1, 1], jnp.int32), k=2)
    lengths = jnp.array([2**31 - 1, 2**31 - 1, 8], jnp.int32)
    mask = jnp.ones(6, bool)
    with pytest.raises(ValueError, match=r"sum\(lengths\) == len\(mask\) = 6, got .*2\*\*31"):
        jaxops.checked(jax.jit(jaxops.boolean_mask_lengths))(lengths, mask)
    with pytest.raises(ValueError, match=r"got sum\(lengths\) = 4294967302\.\Z"):
        jaxops.boolean_mask_lengths(lengths, mask)


def test_sum_that_fits_is_quoted_exactly_under_checkify():
    pack = jax.jit(lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=3))
    with pytest.raises(ValueError, match=r"got sum\(lengths\) = 6\.\Z"):
        jaxops.checked(pack)(jnp.arange(5.0), jnp.array([2, 3, 1], jnp.uint8))


def test_x64_sums_and_values_are_quoted_exactly():
    with jax.enable_x64(True):
        values = jnp.arange(5.0)
        with pytest.raises(ValueError, match=r"got sum\(lengths\) = 9223372036854775810\.\Z"):
            jaxops.pack_rnn_sequence(values, np.array([2**62, 2**62, 2], np.int64), max_length=3)
        with pytest.raises(ValueError, match=r"got sum\(lengths\) = 18446744073709551615\.\Z"):
            jaxops.pack_rnn_sequence(values, np.array([2**64 - 1], np.uint64), max_length=3)
        with pytest.raises(ValueError, match=r"lengths <= max_length = 3, got lengths\[1\] = 7"):
            jaxops.pack_rnn_sequence(jnp.arange(9.0), np.array([1, 7], np.uint64), max_length=3)
        pack = jax.jit(lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=3))
        with pytest.raises(ValueError, match=r"sum\(lengths\) <= values.shape\[0\] = 5, got"):
            jaxops.checked(pack)(values, np.array([2**64 - 1], np.uint64))
        with pytest.raises(ValueError, match=r"got lengths\[1\] = -9223372036854775808\.\Z"):
            jaxops.checked(pack)(values, np.array([1, -(2**63)], np.int64))


# --------------------------------------------------------------------------- #
# 3. Offsets saturate past 2**31
# --------------------------------------------------------------------------- #


def test_offsets_past_int32_give_the_safe_result():
    lengths = jnp.full((4100,), 2**20, jnp.int32)  # sum 4.3e9 wraps int32
    values = jnp.arange(1.0, 9.0)
    packed = jax.jit(lambda v, n: jaxops.pack_rnn_sequence(v, n, max_length=4))(values, lengths)
    expected = np.zeros((4, 4100))
    expected[:, 0] = [1, 2, 3, 4]  # the first sequence takes every row; the rest are empty
    np.testing.assert_array_equal(packed, expected)
    unpack = jax.jit(lambda p, n: jaxops.unpack_rnn_sequence(p, n, total_length=8))
    unpacked = unpack(jnp.arange(1.0, 4100 * 4 + 1).reshape(4, 4100), lengths)
    np.testing.assert_array_equal(unpacked, [1, 4101, 8201, 12301, 0, 0, 0, 0])
    topk = jax.jit(lambda d, n: jaxops.lengths_top_k(d, n, k=1))(values, lengths)
    assert topk.values[0, 0] == 8 and np.all(topk.indices[1:] == -1)
    offsets, effective = checks.segments(lengths, 8)
    assert int(offsets.min()) == 0 and int(offsets.max()) == 8
    assert int(effective.sum()) == 8


# --------------------------------------------------------------------------- #
# 4. Top-k gradient indices: range-checked before any narrowing
# --------------------------------------------------------------------------- #


def test_topk_gradient_drops_int64_index_past_int32():
    with jax.enable_x64(True):
        fn = jax.jit(lambda n, i, g: jaxops.lengths_top_k_gradient(n, i, g, data_length=4))
        indices = jnp.array([[2**32 + 1, 0]], jnp.int64)
        out = fn(jnp.array([4]), indices, jnp.array([[5.0, 7.0]]))
        np.testing.assert_array_equal(out, [7, 0, 0, 0])
        match = r"got indices\[0, 0\] = 4294967297 with lengths\[0\] = 4\.\Z"
        with pytest.raises(ValueError, match=match):
            jaxops.checked(fn)(jnp.array([4]), indices, jnp.array([[5.0, 7.0]]))
        with pytest.raises(ValueError, match=match):
            jaxops.lengths_top_k_gradient(
                jnp.array([4]), indices, jnp.array([[5.0, 7.0]]), data_length=4
            )


def test_topk_gradient_with_different_lengths_and_indices_dtypes():
    g = jnp.array([[5.0, 7.0]])
    for lengths_dtype, indices_dtype in [(jnp.int8, jnp.int32), (jnp.uint16, jnp.int8)]:
        lengths = jnp.array([4], lengths_dtype)
        indices = jnp.array([[3, -1]], indices_dtype)
        for fn in (
            jaxops.lengths_top_k_gradient,
            jax.jit(jaxops.lengths_top_k_gradient, static_argnames="data_length"),
        ):
            np.testing.assert_array_equal(fn(lengths, indices, g, data_length=4), [0, 0, 0, 5])


# --------------------------------------------------------------------------- #
# 5. Static sizes are range-checked before anything is allocated
# --------------------------------------------------------------------------- #

HUGE = 2**40


@pytest.mark.parametrize(
    ("name", "call", "argument"),
    [
        (
            "lengths_top_k",
            lambda: jaxops.lengths_top_k(jnp.arange(5.0), jnp.array([5]), k=HUGE),
            "k",
        ),
        (
            "pack_rnn_sequence",
            lambda: jaxops.pack_rnn_sequence(jnp.arange(5.0), jnp.array([5]), max_length=HUGE),
            "max_length",
        ),
        (
            "unpack_rnn_sequence",
            lambda: jaxops.unpack_rnn_sequence(jnp.ones((5, 1)), jnp.array([5]), total_length=HUGE),
            "total_length",
        ),
        (
            "boolean_mask",
            lambda: jaxops.boolean_mask(jnp.ones(5), jnp.ones(5, bool), size=HUGE),
            "size",
        ),
        ("expand", lambda: jaxops.expand(jnp.ones(5), (HUGE, 1)), "shape"),
        (
            "lengths_top_k_gradient",
            lambda: jaxops.lengths_top_k_gradient(
                jnp.array([1]), jnp.array([[0]]), jnp.ones((1, 1)), data_length=HUGE
            ),
            "data_length",
        ),
        (
            "lengths_top_k",
            lambda: jaxops.lengths_top_k(jnp.ones(2**16), jnp.ones(2**16, jnp.int32), k=2**15),
            "k",
        ),
    ],
)
def test_huge_static_sizes_are_value_errors(name, call, argument):
    match = _anchored(
        name, rf"an output of at most 2\*\*31 - 1 elements, got shape .* from {argument}=.*"
    )
    with pytest.raises(ValueError, match=match):
        call()


def test_inputs_past_int32_are_value_errors_at_trace_time():
    huge = jax.ShapeDtypeStruct((2**31,), jnp.int8)
    fn = lambda d: jaxops.expand(d, (1,))
    with pytest.raises(ValueError) as info:
        jax.eval_shape(fn, huge)
    first_line = str(info.value).splitlines()[0]  # JAX appends a traceback note
    expected = "expand: expected `x` of at most 2**31 - 1 elements, got shape (2147483648,)."
    assert first_line == expected


# --------------------------------------------------------------------------- #
# 6. pad_value / fill_value must be representable
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (jnp.int8, 300),
        (jnp.uint8, -1),
        (jnp.int8, 1.5),
        (jnp.float16, 1e10),
        (jnp.bool_, 2),
        (jnp.int32, float("nan")),
        (jnp.int16, float("inf")),
        (jnp.float32, 10**400),
    ],
)
def test_unrepresentable_pad_and_fill_values(dtype, value):
    name = np.dtype(dtype).name
    data = jnp.ones(4, dtype)
    match = lambda op, arg: _anchored(op, rf"`{arg}` representable in {name}, got {arg}=.*\.")
    with pytest.raises(ValueError, match=match("pack_rnn_sequence", "pad_value")):
        jaxops.pack_rnn_sequence(data, jnp.array([4]), pad_value=value)
    with pytest.raises(ValueError, match=match("boolean_mask", "fill_value")):
        jaxops.boolean_mask(data, jnp.ones(4, bool), fill_value=value)
    with pytest.raises(ValueError, match=match("boolean_unmask", "fill_value")):
        jaxops.boolean_unmask([jnp.ones(4, bool)], [data], fill_value=value)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (jnp.int8, -128),
        (jnp.uint8, 255),
        (jnp.float16, 65504.0),
        (jnp.float16, float("-inf")),
        (jnp.bfloat16, 1e38),
        (jnp.bool_, True),
        (jnp.int32, 7.0),
        (jnp.float32, 0.1),
    ],
)
def test_representable_pad_values_are_written_as_given(dtype, value):
    out = jaxops.pack_rnn_sequence(jnp.ones(1, dtype), jnp.array([1, 0]), pad_value=value)
    assert out[0, 1] == np.asarray(value).astype(dtype)
