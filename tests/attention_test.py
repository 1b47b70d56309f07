"""pack_sequences, unpack_sequences, length_mask, attention_mask and safe_softmax(where=)."""

import re

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
from tests import helpers

# --------------------------------------------------------------------------- #
# NumPy references: loops, obviously correct
# --------------------------------------------------------------------------- #


def next_fit_reference(lengths, num_rows, row_length):
    """(row, column) of each sequence, or None when it is not placed; rows needed."""
    places, row, col = [], 0, 0
    for length in map(int, lengths):
        if length > row_length:
            places.append(None)
            continue
        if length > row_length - col:
            row, col = row + 1, 0
        places.append((row, col) if row < num_rows else None)
        col += length
    needed = max([r + 1 for (r, _), n in zip_places(places, lengths) if n > 0], default=0)
    return places, needed


def zip_places(places, lengths):
    return [(p, int(n)) for p, n in zip(places, lengths, strict=True) if p is not None]


def pack_reference(values, lengths, num_rows, row_length, pad_value=0):
    values = np.asarray(values)
    out = np.full((num_rows, row_length, *values.shape[1:]), pad_value, values.dtype)
    ids = np.full((num_rows, row_length), -1, np.int32)
    pos = np.full((num_rows, row_length), -1, np.int32)
    places, _ = next_fit_reference(lengths, num_rows, row_length)
    for n, (place, start, length) in enumerate(
        zip(places, helpers.offsets(lengths), lengths, strict=True)
    ):
        if place is None:
            continue
        r, c = place
        out[r, c : c + length] = values[start : start + length]
        ids[r, c : c + length] = n
        pos[r, c : c + length] = np.arange(length)
    return out, ids, pos


def attention_reference(q_ids, k_ids, q_pos, k_pos, causal=False, window=None):
    """[..., Tq, Tk] by a loop over (i, j) on 2-D (un-batched) inputs."""
    out = np.zeros((len(q_ids), len(k_ids)), bool)
    for i in range(len(q_ids)):
        for j in range(len(k_ids)):
            ok = q_ids[i] >= 0 and k_ids[j] >= 0 and q_ids[i] == k_ids[j]
            if causal:
                ok = ok and k_pos[j] <= q_pos[i]
            if window is not None:
                left, right = window
                ok = ok and q_pos[i] - left <= k_pos[j] <= q_pos[i] + right
            out[i, j] = ok
    return out


LENGTHS = np.array([3, 2, 0, 4, 1, 2], np.int32)


@st.composite
def packing_inputs(draw):
    """Eight lengths (zeros included) with rows of 6 or 9 slots; 8 rows always suffice.

    Fixed shapes, so the hypothesis examples share one compiled program per row length.
    """
    lengths = draw(st.lists(st.integers(0, 6), min_size=8, max_size=8))
    return np.asarray(lengths, np.int32), 8, draw(st.sampled_from([6, 9]))


# --------------------------------------------------------------------------- #
# pack_sequences / unpack_sequences: values
# --------------------------------------------------------------------------- #


def test_next_fit_places_whole_sequences_in_input_order():
    values = np.arange(1, 13)
    out = jaxops.pack_sequences(values, LENGTHS, num_rows=3, row_length=5, pad_value=-1)
    # next-fit: [0 0 0 1 1] [2(empty) 3 3 3 3 4] -> 4 does not fit row 1 -> row 2 [4 5 5]
    np.testing.assert_array_equal(
        out.segment_ids, [[0, 0, 0, 1, 1], [3, 3, 3, 3, 4], [5, 5, -1, -1, -1]]
    )
    np.testing.assert_array_equal(
        out.positions, [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0], [0, 1, -1, -1, -1]]
    )
    np.testing.assert_array_equal(
        out.values, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, -1, -1, -1]]
    )
    assert isinstance(out, jaxops.PackedRows) and out.segment_ids.dtype == jnp.int32


def test_next_fit_does_not_go_back_to_an_earlier_row():
    # first-fit would put the 1 into row 0; next-fit opens row 1 for the 3 and stays there
    out = jaxops.pack_sequences(np.arange(8), np.array([2, 3, 1]), num_rows=2, row_length=4)
    np.testing.assert_array_equal(out.segment_ids, [[0, 0, -1, -1], [1, 1, 1, 2]])


@given(packing_inputs())
def test_pack_and_unpack_match_the_reference_and_round_trip(inputs):
    lengths, num_rows, row_length = inputs
    total = int(lengths.sum())
    values = np.arange(1, 51, dtype=np.float32)[:, None] * np.array([1, -1], np.float32)
    out = jaxops.pack_sequences(values, lengths, num_rows=num_rows, row_length=row_length)
    expected = pack_reference(values, lengths, num_rows, row_length)
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    back = jaxops.unpack_sequences(out.values, lengths, total_length=50)
    np.testing.assert_array_equal(back[:total], values[:total])
    np.testing.assert_array_equal(back[total:], 0)  # rows past the sum are 0


@pytest.mark.parametrize("dtype", helpers.DATA_DTYPES)
def test_every_data_dtype_is_moved_exactly(dtype):
    rng = np.random.default_rng(0)
    values = helpers.random_data(rng, (12, 2), dtype)
    pad = False if dtype == jnp.bool_ else 7
    with helpers.x64_for(dtype):
        out = jaxops.pack_sequences(values, LENGTHS, num_rows=3, row_length=5, pad_value=pad)
        assert out.values.dtype == dtype
        expected = pack_reference(values, LENGTHS, 3, 5, pad)[0]
        np.testing.assert_array_equal(np.asarray(out.values), expected)
        back = jaxops.unpack_sequences(out.values, LENGTHS)
        assert back.dtype == dtype
        np.testing.assert_array_equal(np.asarray(back), values)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.int64])
def test_narrow_and_wide_integer_lengths_give_the_int32_result(dtype):
    values = np.arange(12.0, dtype=np.float32)
    with helpers.x64_for(dtype):
        expected = jaxops.pack_sequences(values, LENGTHS, num_rows=3, row_length=5)
        got = jaxops.pack_sequences(values, LENGTHS.astype(dtype), num_rows=3, row_length=5)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        back = jaxops.unpack_sequences(got.values, LENGTHS.astype(dtype))
        np.testing.assert_array_equal(back, values)


def test_padding_slots_are_never_read_by_unpack():
    rows = jaxops.pack_sequences(np.arange(12.0), LENGTHS, num_rows=3, row_length=5, pad_value=0)
    poisoned = jnp.where(rows.segment_ids >= 0, rows.values, jnp.nan)
    back = jaxops.unpack_sequences(poisoned, LENGTHS)
    np.testing.assert_array_equal(back, np.arange(12.0))


def test_empty_inputs():
    empty = jaxops.pack_sequences(np.zeros((0, 3)), np.zeros(0, np.int32), num_rows=2, row_length=3)
    assert empty.values.shape == (2, 3, 3)
    np.testing.assert_array_equal(empty.segment_ids, -1)
    np.testing.assert_array_equal(empty.positions, -1)
    zeros = jaxops.pack_sequences(np.ones(4), np.zeros(3, np.int32), num_rows=1, row_length=2)
    np.testing.assert_array_equal(zeros.segment_ids, -1)
    no_rows = jaxops.pack_sequences(np.ones(4), np.zeros(3, np.int32), num_rows=0, row_length=2)
    assert no_rows.values.shape == (0, 2)
    back = jaxops.unpack_sequences(np.ones((2, 3)), np.zeros(0, np.int32))
    assert back.shape == (0,)
    back = jaxops.unpack_sequences(np.ones((2, 3)), np.zeros(0, np.int32), total_length=2)
    np.testing.assert_array_equal(back, [0.0, 0.0])


def test_the_placement_depends_on_lengths_only():
    lengths = jnp.asarray(LENGTHS)
    a = jaxops.pack_sequences(jnp.zeros((12, 2)), lengths, num_rows=3, row_length=5)
    b = jaxops.pack_sequences(jnp.arange(12), lengths, num_rows=3, row_length=5, pad_value=9)
    np.testing.assert_array_equal(a.segment_ids, b.segment_ids)
    np.testing.assert_array_equal(a.positions, b.positions)


def all_eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations' params."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from all_eqns(inner)


def _gathers_over(fn, *args, rows):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [
        e
        for e in all_eqns(jaxpr.jaxpr)
        if e.primitive.name in ("gather", "scatter", "scatter-add", "scatter_add")
        and e.invars[0].aval.shape[:1] == (rows,)
    ]


def test_one_gather_moves_the_data_each_way():
    values, lengths = jnp.ones((13, 3)), jnp.asarray(LENGTHS)
    pack = lambda v, n: jaxops.pack_sequences(v, n, num_rows=3, row_length=5).values
    moves = _gathers_over(pack, values, lengths, rows=13)
    assert [e.primitive.name for e in moves] == ["gather"]
    unpack = lambda r, n: jaxops.unpack_sequences(r, n, total_length=13)
    moves = _gathers_over(unpack, jnp.ones((3, 5, 3)), lengths, rows=15)
    assert [e.primitive.name for e in moves] == ["gather"]


# --------------------------------------------------------------------------- #
# Value checks and the safe result under tracing
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("lengths", "num_rows", "row_length", "match"),
    [
        ([2, -1, 3], 3, 4, r"expected lengths >= 0, got lengths\[1\] = -1\."),
        ([2, 5, 3], 3, 4, r"expected lengths <= row_length = 4, got lengths\[1\] = 5\."),
        (
            [3, 3, 3],
            2,
            4,
            r"expected the sequences to fit in num_rows = 2 rows of row_length = 4 "
            r"\(next-fit, in input order\), got lengths that need 3 rows\.",
        ),
        ([4, 4, 4, 4], 4, 4, r"expected sum\(lengths\) <= values.shape\[0\] = 12, got .*"),
    ],
)
def test_pack_value_checks(lengths, num_rows, row_length, match):
    lengths = np.asarray(lengths, np.int32)
    helpers.raises_eager_and_checkified(
        lambda v, n: jaxops.pack_sequences(v, n, num_rows=num_rows, row_length=row_length),
        (np.arange(12.0), lengths),
        match,
        op="pack_sequences",
    )


@pytest.mark.parametrize(
    ("lengths", "total", "match"),
    [
        ([2, -1, 3], 6, r"expected lengths >= 0, got lengths\[1\] = -1\."),
        ([2, 5, 3], 12, r"expected lengths <= rows.shape\[1\] = 4, got lengths\[1\] = 5\."),
        ([3, 3, 3], 9, r"expected the sequences to fit in num_rows = 2 rows .* need 3 rows\."),
        ([2, 2, 2], 5, r"expected sum\(lengths\) <= total_length = 5, got .*"),
    ],
)
def test_unpack_value_checks(lengths, total, match):
    helpers.raises_eager_and_checkified(
        lambda r, n: jaxops.unpack_sequences(r, n, total_length=total),
        (np.ones((2, 4)), np.asarray(lengths, np.int32)),
        match,
        op="unpack_sequences",
    )


def test_under_tracing_a_sequence_that_does_not_fit_is_dropped():
    values = jnp.arange(1.0, 13.0)
    pack = jax.jit(lambda n: jaxops.pack_sequences(values, n, num_rows=2, row_length=4))
    # 3 | 3 | 3 -> the third sequence would open row 3: it is dropped
    out = pack(jnp.array([3, 3, 3]))
    np.testing.assert_array_equal(out.segment_ids, [[0, 0, 0, -1], [1, 1, 1, -1]])
    assert 2 not in np.asarray(out.segment_ids)
    np.testing.assert_array_equal(out.values[:, 3], [0, 0])
    # a sequence longer than a row fits nowhere: dropped, the others are placed
    out = pack(jnp.array([2, 5, 2]))
    np.testing.assert_array_equal(out.segment_ids, [[0, 0, 2, 2], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(out.values[0], [1, 2, 8, 9])
    out = pack(jnp.array([2, 2, 5]))  # the too-long one last: it must not spill into row 1
    np.testing.assert_array_equal(out.segment_ids, [[0, 0, 1, 1], [-1, -1, -1, -1]])
    # negative lengths count as 0; lengths past the values are truncated to the rows there
    out = pack(jnp.array([-4, 3, 12]))
    assert set(np.unique(out.segment_ids)) <= {-1, 1, 2}
    assert np.isfinite(out.values).all()
    # unpack: the rows of a dropped sequence are 0
    unpack = jax.jit(lambda r, n: jaxops.unpack_sequences(r, n, total_length=9))
    back = unpack(jnp.arange(1.0, 9.0).reshape(2, 4), jnp.array([3, 3, 3]))
    np.testing.assert_array_equal(back, [1, 2, 3, 5, 6, 7, 0, 0, 0])


def test_traced_sizes_must_be_static():
    with helpers.raises_message(ValueError, "unpack_sequences", r"expected a static .*"):
        jax.jit(lambda r, n: jaxops.unpack_sequences(r, n))(jnp.ones((2, 3)), jnp.array([1]))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: jaxops.pack_sequences(np.ones(3), np.ones(1), num_rows=1, row_length=3), TypeError,
         r"expected `lengths` of an integer dtype, got dtype float\d+\."),
        (lambda: jaxops.pack_sequences(np.ones(()), [1], num_rows=1, row_length=3), ValueError,
         r"expected `values` of rank >= 1, got shape \(\)\."),
        (lambda: jaxops.pack_sequences(np.ones(3), [1], num_rows=-1, row_length=3), ValueError,
         r"expected num_rows >= 0, got num_rows=-1\."),
        (lambda: jaxops.pack_sequences(np.ones(3), [1], num_rows=1, row_length=1.5), TypeError,
         r"expected `row_length` to be a Python int, got row_length=1.5\."),
        (lambda: jaxops.pack_sequences(np.ones(3, np.int8), [1], num_rows=1, row_length=3,
                                       pad_value=300), ValueError,
         r"expected `pad_value` representable in int8, got pad_value=300\."),
        (lambda: jaxops.pack_sequences(np.ones(3), [1], num_rows=2**16, row_length=2**16),
         ValueError, r"expected an output of at most 2\*\*31 - 1 elements, got .*"),
        (lambda: jaxops.unpack_sequences(np.ones(3), [1]), ValueError,
         r"expected `rows` of rank >= 2, got shape \(3,\)\."),
    ],
)  # fmt: skip
def test_type_shape_and_static_errors(call, error, match):
    with pytest.raises(error) as excinfo:
        call()
    message = str(excinfo.value)
    assert message.split(":")[0] in ("pack_sequences", "unpack_sequences")
    assert re.fullmatch(rf"\w+: {match}", message), message


# --------------------------------------------------------------------------- #
# Gradients, jit, vmap
# --------------------------------------------------------------------------- #


def test_gradients_are_each_other():
    lengths = jnp.asarray(LENGTHS)
    values = jnp.arange(14.0)
    g = jnp.arange(15.0).reshape(3, 5) + 100
    pack = lambda v: jaxops.pack_sequences(v, lengths, num_rows=3, row_length=5).values
    _, vjp = jax.vjp(pack, values)
    np.testing.assert_array_equal(vjp(g)[0], jaxops.unpack_sequences(g, lengths, total_length=14))
    unpack = lambda r: jaxops.unpack_sequences(r, lengths, total_length=14)
    _, vjp = jax.vjp(unpack, g)
    expected = jaxops.pack_sequences(values, lengths, num_rows=3, row_length=5).values
    np.testing.assert_array_equal(vjp(values)[0], expected)
    assert vjp(values)[0][2, 2:].tolist() == [0, 0, 0]  # padding slots get 0


def test_gradients_match_autodiff_of_the_reference_in_float64():
    with jax.enable_x64(True):
        lengths = jnp.asarray(LENGTHS)
        values = jnp.asarray(np.random.default_rng(1).normal(size=(13, 2)))
        pack = lambda v: jaxops.pack_sequences(v, lengths, num_rows=3, row_length=5).values
        check_grads(pack, (values,), order=2, modes=["rev"])
        unpack = lambda r: jaxops.unpack_sequences(r, lengths, total_length=13)
        check_grads(unpack, (pack(values),), order=2, modes=["rev"])

        def naive(v):  # a user's scatter with the placement taken from the reference
            out = jnp.zeros((3, 5, 2), v.dtype)
            places, _ = next_fit_reference(LENGTHS, 3, 5)
            for (r, c), start, n in zip(places, helpers.offsets(LENGTHS), LENGTHS, strict=True):
                out = out.at[r, c : c + n].set(v[start : start + n])
            return out

        w = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 2)))
        np.testing.assert_allclose(
            jax.grad(lambda v: jnp.sum(pack(v) * w))(values),
            jax.grad(lambda v: jnp.sum(naive(v) * w))(values),
        )


def test_integer_and_bool_values_get_no_gradient_path():
    out = jaxops.pack_sequences(np.arange(12), LENGTHS, num_rows=3, row_length=5)
    assert out.values.dtype == jnp.int32
    grad = jax.grad(
        lambda v: jnp.sum(jaxops.pack_sequences(v, LENGTHS, num_rows=3, row_length=5).values)
    )(jnp.ones(12, jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16


def test_vmap_matches_a_loop_and_jit_does_not_retrace():
    rng = np.random.default_rng(3)
    lengths = np.array([[3, 2, 4], [1, 1, 5], [0, 6, 2]], np.int32)
    values = rng.normal(size=(3, 10, 2)).astype(np.float32)
    pack = lambda v, n: jaxops.pack_sequences(v, n, num_rows=3, row_length=6)
    got = jax.vmap(pack)(values, lengths)
    for i in range(3):
        for a, b in zip(got, pack(values[i], lengths[i]), strict=True):
            np.testing.assert_array_equal(a[i], b)
    unpack = lambda r, n: jaxops.unpack_sequences(r, n, total_length=10)
    back = jax.vmap(unpack)(got.values, lengths)
    for i in range(3):
        np.testing.assert_array_equal(back[i], unpack(got.values[i], lengths[i]))
    traced = chex.assert_max_traces(n=1)(lambda v, n: pack(v, n))
    jitted = jax.jit(traced)
    jitted(values[0], lengths[0])
    jitted(values[1], lengths[1])


# --------------------------------------------------------------------------- #
# length_mask
# --------------------------------------------------------------------------- #


def test_length_mask_is_tf_sequence_mask_over_any_leading_shape():
    lengths = np.array([[0, 3], [5, -2]], np.int32)
    out = jaxops.length_mask(lengths, 4)
    assert out.shape == (2, 2, 4) and out.dtype == jnp.bool_
    np.testing.assert_array_equal(out, np.arange(4) < lengths[..., None])
    assert jaxops.length_mask(np.int32(2), 3).tolist() == [True, True, False]
    floats = jaxops.length_mask(lengths, 4, dtype=jnp.float32)
    assert floats.dtype == jnp.float32
    np.testing.assert_array_equal(floats, (np.arange(4) < lengths[..., None]).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint32, np.int64])
def test_length_mask_compares_narrow_lengths_exactly(dtype):
    info = np.iinfo(dtype)
    lengths = np.array([info.min, 0, 1, info.max], dtype)
    with helpers.x64_for(dtype):
        out = jaxops.length_mask(lengths, 300)
    expected = np.arange(300) < lengths.astype(np.int64)[:, None]
    np.testing.assert_array_equal(out, expected)


def test_length_mask_errors_and_transforms():
    with helpers.raises_message(TypeError, "length_mask", r"expected `lengths` of .*"):
        jaxops.length_mask(np.ones(2), 3)
    with helpers.raises_message(ValueError, "length_mask", r"expected max_length >= 0, .*"):
        jaxops.length_mask(np.ones(2, np.int32), -1)
    with helpers.raises_message(TypeError, "length_mask", r"expected a bool, integer .*"):
        jaxops.length_mask(np.ones(2, np.int32), 3, dtype=jnp.complex64)
    lengths = jnp.array([[1, 2], [3, 0]])
    np.testing.assert_array_equal(
        jax.vmap(lambda n: jaxops.length_mask(n, 3))(lengths), jaxops.length_mask(lengths, 3)
    )
    np.testing.assert_array_equal(
        jax.jit(lambda n: jaxops.length_mask(n, 3))(lengths), jaxops.length_mask(lengths, 3)
    )


def test_ragged_length_mask_is_length_mask():
    ragged = jaxops.Ragged(jnp.ones(6), jnp.array([2, 0, 4], jnp.int8))
    np.testing.assert_array_equal(
        ragged.length_mask(5), jaxops.length_mask(jnp.array([2, 0, 4]), 5)
    )


# --------------------------------------------------------------------------- #
# attention_mask
# --------------------------------------------------------------------------- #


@st.composite
def packed_rows(draw):
    lengths, num_rows, row_length = draw(packing_inputs())
    packed = jaxops.pack_sequences(
        np.zeros(48, np.float32), lengths, num_rows=num_rows, row_length=row_length
    )
    return np.asarray(packed.segment_ids), np.asarray(packed.positions)


@given(
    packed_rows(),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3))),
)
def test_attention_mask_matches_the_reference(rows, causal, window):
    ids, pos = rows
    out = jaxops.attention_mask(segment_ids=ids, positions=pos, causal=causal, window=window)
    assert out.shape == (*ids.shape, ids.shape[-1]) and out.dtype == jnp.bool_
    pair = (window, window) if isinstance(window, int) else window
    for r in range(ids.shape[0]):
        expected = attention_reference(ids[r], ids[r], pos[r], pos[r], causal, pair)
        np.testing.assert_array_equal(out[r], expected)


def test_no_token_attends_another_document():
    packed = jaxops.pack_sequences(np.arange(9.0), np.array([4, 2, 3]), num_rows=1, row_length=10)
    mask = jaxops.attention_mask(
        segment_ids=packed.segment_ids, positions=packed.positions, causal=True
    )[0]
    ids = np.asarray(packed.segment_ids[0])
    cross = ids[:, None] != ids[None, :]
    assert not np.asarray(mask)[cross].any()
    assert not np.asarray(mask)[ids < 0].any() and not np.asarray(mask)[:, ids < 0].any()
    # causal within each document, by the document's own positions
    np.testing.assert_array_equal(mask[4:6, 4:6], [[True, False], [True, True]])


def test_positions_default_to_arange_and_lengths_are_one_sequence_per_row():
    lengths = np.array([3, 1], np.int32)
    out = jaxops.attention_mask(lengths=lengths, q_len=4, causal=True)
    for b, n in enumerate(lengths):
        ids = np.where(np.arange(4) < n, 0, -1)
        expected = attention_reference(ids, ids, np.arange(4), np.arange(4), causal=True)
        np.testing.assert_array_equal(out[b], expected)
    # no description at all: every token valid, one sequence
    np.testing.assert_array_equal(
        jaxops.attention_mask(q_len=3, causal=True), np.tril(np.ones((3, 3), bool))
    )


def test_kv_arguments_default_to_the_query_ones_and_can_differ():
    ids = np.array([[0, 0, 1, 1, -1]])
    pos = np.array([[0, 1, 0, 1, -1]])
    same = jaxops.attention_mask(
        segment_ids=ids, kv_segment_ids=ids, positions=pos, kv_positions=pos, causal=True
    )
    np.testing.assert_array_equal(
        jaxops.attention_mask(segment_ids=ids, positions=pos, causal=True), same
    )
    # cross attention: 2 queries, 5 keys
    out = jaxops.attention_mask(
        segment_ids=np.array([[1, 0]]), kv_segment_ids=ids, kv_positions=pos
    )
    assert out.shape == (1, 2, 5)
    np.testing.assert_array_equal(out[0], [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    # q_len does not stand in for keys whose ids give their own length
    out = jaxops.attention_mask(lengths=np.array(2), q_len=2, kv_segment_ids=np.array([0, 0, -1]))
    np.testing.assert_array_equal(out, [[1, 1, 0], [1, 1, 0]])
    # decoding with lengths: query at position 3 of a 6-key cache holding 4 keys
    out = jaxops.attention_mask(
        positions=np.array([3]), kv_lengths=np.array(4), kv_len=6, causal=True
    )
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 0, 0]])


def test_leading_dims_broadcast():
    ids = np.array([[0, 0, 1], [0, 1, 1]])  # [2, 3]
    pos = np.array([0, 1, 2])  # [3]: shared by both rows
    out = jaxops.attention_mask(segment_ids=ids[:, None], positions=pos, causal=True)
    assert out.shape == (2, 1, 3, 3)
    for b in range(2):
        expected = attention_reference(ids[b], ids[b], pos, pos, causal=True)
        np.testing.assert_array_equal(out[b, 0], expected)
    lengths = np.array([[1, 2, 3]])  # [1, 3] against ids [2, 3]? only with matching dims
    out = jaxops.attention_mask(lengths=lengths, q_len=2)
    assert out.shape == (1, 3, 2, 2)


def test_window_int_and_pair():
    band = jaxops.attention_mask(q_len=6, window=1)
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(band, np.abs(i - j) <= 1)
    sliding = jaxops.attention_mask(q_len=6, causal=True, window=(2, 0))
    np.testing.assert_array_equal(sliding, (j <= i) & (j >= i - 2))
    lopsided = jaxops.attention_mask(q_len=6, window=(0, 2))
    np.testing.assert_array_equal(lopsided, (j >= i) & (j <= i + 2))


def test_window_near_the_int32_limits_does_not_wrap():
    top = np.iinfo(np.int32).max
    pos = np.array([top - 1, top, -top - 1, -top])
    out = jaxops.attention_mask(positions=pos, window=(3, 3))
    expected = np.abs(pos.astype(np.int64)[:, None] - pos.astype(np.int64)[None, :]) <= 3
    np.testing.assert_array_equal(out, expected)


def test_windows_at_and_past_the_int32_span():
    pos = np.array([np.iinfo(np.int32).min, -1, 0, np.iinfo(np.int32).max], np.int32)
    diff = pos.astype(np.int64)[None, :] - pos.astype(np.int64)[:, None]  # kv - q
    for window in (2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1, 2**40):
        np.testing.assert_array_equal(
            jaxops.attention_mask(positions=pos, window=window), np.abs(diff) <= window
        )
    np.testing.assert_array_equal(
        jaxops.attention_mask(positions=pos, window=(2**40, 2**31)), diff <= 2**31
    )
    np.testing.assert_array_equal(
        jaxops.attention_mask(positions=pos, window=(2**32 - 2, 0)),
        (diff <= 0) & (diff >= -(2**32 - 2)),
    )


def test_ids_and_positions_outside_int32_are_value_errors():
    with jax.enable_x64(True):
        big = np.array([0, 2**40], np.int64)
        helpers.raises_eager_and_checkified(
            lambda p: jaxops.attention_mask(positions=p, causal=True),
            (big,),
            r"expected `positions` within the int32 range, "
            r"got positions.flat\[1\] = 1099511627776\.",
            op="attention_mask",
        )


def test_attention_mask_narrow_ids_compare_exactly():
    ids = np.array([[0, 0, 1, -1]], np.int8)
    np.testing.assert_array_equal(
        jaxops.attention_mask(segment_ids=ids),
        jaxops.attention_mask(segment_ids=ids.astype(np.int32)),
    )
    with helpers.x64_for(np.uint64):
        ids = np.array([0, 0, 1], np.uint64)
        np.testing.assert_array_equal(
            jaxops.attention_mask(segment_ids=ids),
            [[1, 1, 0], [1, 1, 0], [0, 0, 1]],
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"segment_ids": np.zeros((1, 3), np.int32), "lengths": np.ones(1, np.int32)}, ValueError,
         r"expected at most one of `segment_ids` and `lengths`, got both\. .*"),
        ({"lengths": np.ones(2, np.int32)}, ValueError,
         r"expected the number of tokens of each side, got none of .*"),
        ({"segment_ids": np.zeros(3, np.int32), "positions": np.arange(4)}, ValueError,
         r"expected one length per side, got `segment_ids`.shape\[-1\] = 3, "
         r"`positions`.shape\[-1\] = 4\. .*"),
        ({"segment_ids": np.zeros(3, np.int32), "kv_segment_ids": np.zeros(4, np.int32),
          "kv_positions": np.arange(3)}, ValueError,
         r"expected one length per side, got `kv_segment_ids`.shape\[-1\] = 4, "
         r"`kv_positions`.shape\[-1\] = 3\. Every kv_\* argument defaults to the query's\."),
        ({"segment_ids": np.zeros(3, np.int32), "kv_len": 4}, ValueError,
         r"expected one length per side, got `segment_ids`.shape\[-1\] = 3, kv_len = 4\. .*"),
        ({"segment_ids": np.zeros(3)}, TypeError, r"expected `segment_ids` of .*"),
        ({"segment_ids": np.zeros((2, 3), np.int32), "positions": np.zeros((3, 3), np.int32)},
         ValueError, r"expected leading dims that broadcast, got .*"),
        ({"q_len": 3, "window": -1}, ValueError, r"expected window >= 0, got window=-1\."),
        ({"q_len": 3, "window": (1, 2, 3)}, ValueError, r"expected window=int or .*"),
        ({"q_len": 3, "causal": "yes"}, TypeError,
         r"expected `causal` to be a Python bool, got causal='yes'\."),
        ({"q_len": 2**16, "kv_len": 2**16}, ValueError, r"expected an output of at most .*"),
        ({"segment_ids": np.int32(0)}, ValueError, r"expected `segment_ids` of rank >= 1, .*"),
    ],
)  # fmt: skip
def test_attention_mask_errors(kwargs, error, match):
    with helpers.raises_message(error, "attention_mask", match):
        jaxops.attention_mask(**kwargs)


def test_attention_mask_materialises_no_float_mask():
    ids, pos = jnp.zeros((2, 8), jnp.int32), jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(
        lambda i, p: jaxops.attention_mask(segment_ids=i, positions=p, causal=True, window=3)
    )(ids, pos)
    square = [
        v.aval for e in all_eqns(jaxpr.jaxpr) for v in e.outvars if v.aval.shape[-2:] == (8, 8)
    ]
    assert square and all(a.dtype == jnp.bool_ for a in square)


def test_attention_mask_under_jit_and_vmap():
    ids = jnp.array([[0, 0, 1, -1], [0, 1, 1, 1]])
    pos = jnp.array([[0, 1, 0, -1], [0, 0, 1, 2]])
    fn = lambda i, p: jaxops.attention_mask(segment_ids=i, positions=p, causal=True)
    expected = fn(ids, pos)
    np.testing.assert_array_equal(jax.jit(fn)(ids, pos), expected)
    np.testing.assert_array_equal(jax.vmap(fn)(ids, pos), expected)


def test_attention_mask_drives_dot_product_attention():
    """Packed attention equals attention run on each document alone."""
    rng = np.random.default_rng(4)
    lengths = np.array([3, 4, 2], np.int32)
    q, k, v = (rng.normal(size=(9, 2, 4)).astype(np.float32) for _ in range(3))
    pack = lambda x: jaxops.pack_sequences(x, lengths, num_rows=1, row_length=10)
    packed = pack(q)
    mask = jaxops.attention_mask(
        segment_ids=packed.segment_ids, positions=packed.positions, causal=True
    )
    out = jax.nn.dot_product_attention(
        packed.values, pack(k).values, pack(v).values, mask=mask[:, None]
    )
    flat = jaxops.unpack_sequences(out, lengths)
    for start, n in zip(helpers.offsets(lengths), lengths, strict=True):
        alone = jax.nn.dot_product_attention(
            q[None, start : start + n], k[None, start : start + n], v[None, start : start + n],
            is_causal=True,
        )[0]  # fmt: skip
        np.testing.assert_allclose(flat[start : start + n], alone, rtol=1e-5, atol=1e-6)


def test_sequence_mask_docstring_opens_with_the_caution():
    first = jaxops.sequence_mask.__doc__.split("Args:")[0]
    assert "all** flattened" in first and "attention_mask" in first
    # the trap it warns about, and the per-matrix API that avoids it
    x = jnp.zeros((3, 4, 4))
    caffe2 = jaxops.sequence_mask(x, mode="upper", axis=2)
    assert int(jnp.sum(jnp.isinf(caffe2))) == 6  # only the first 4 rows of 12
    per_matrix = jaxops.attention_mask(q_len=4, causal=True)
    assert int(jnp.sum(~jnp.broadcast_to(per_matrix, x.shape))) == 18


# --------------------------------------------------------------------------- #
# safe_softmax(where=)
# --------------------------------------------------------------------------- #


def test_where_excludes_entries_as_jax_nn_softmax_does():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 5)).astype(np.float32)
    where = rng.random((3, 5)) < 0.6
    where[0] = False  # a slice with no included entry
    where[1] = True
    out = jaxops.safe_softmax(logits, where=where)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(np.asarray(out)[~where], 0)
    reference = jax.nn.softmax(logits, where=where)
    np.testing.assert_allclose(out[1:], np.where(where[1:], reference[1:], 0), rtol=1e-6)
    np.testing.assert_allclose(np.sum(out[1:], axis=-1), 1, rtol=1e-6)


def test_where_ignores_nan_and_inf_at_excluded_entries():
    logits = jnp.array([[1.0, jnp.nan, jnp.inf, 1.0], [-jnp.inf, 2.0, jnp.nan, 0.0]])
    where = jnp.array([[True, False, False, True], [True, False, False, False]])
    out = jaxops.safe_softmax(logits, where=where)
    np.testing.assert_array_equal(out, [[0.5, 0, 0, 0.5], [0, 0, 0, 0]])


def test_where_gives_zero_at_excluded_entries_beside_an_included_nan():
    logits = jnp.array([[jnp.nan, 1.0, 2.0], [jnp.inf, 1.0, 2.0]])
    where = jnp.array([[True, False, False], [True, True, False]])
    out = jaxops.safe_softmax(logits, where=where)
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(where)], 0)
    grad = jax.grad(lambda x: jnp.sum(jaxops.safe_softmax(x, where=where)))(logits)
    np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(where)], 0)


def test_where_gradient_is_finite_and_zero_at_excluded_entries():
    logits = jnp.array([[1.0, jnp.nan, 3.0], [jnp.inf, 2.0, 1.0], [0.0, 0.0, 0.0]])
    where = jnp.array([[True, False, True], [False, False, False], [True, True, True]])
    w = jnp.array([[1.0, 5.0, -2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    grad = jax.grad(lambda x: jnp.sum(jaxops.safe_softmax(x, where=where) * w))(logits)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(where)], 0)
    # included entries: the softmax gradient of the included slice
    sub = lambda x: jnp.sum(jax.nn.softmax(x) * w[0, ::2])
    np.testing.assert_allclose(grad[0, ::2], jax.grad(sub)(logits[0, ::2]), rtol=1e-6)
    np.testing.assert_allclose(
        grad[2], jax.grad(lambda x: jnp.sum(jax.nn.softmax(x) * w[2]))(logits[2]), rtol=1e-6
    )


def test_where_gradient_matches_autodiff_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        logits = jnp.asarray(rng.normal(size=(2, 3, 4)))
        where = jnp.asarray(rng.random((2, 1, 4)) < 0.7).at[0, 0].set(False)
        fn = lambda x: jaxops.safe_softmax(x, axis=-1, where=where)
        check_grads(fn, (logits,), order=2, modes=["rev"])


def test_where_broadcasts_like_an_attention_mask_over_heads():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 4)).astype(np.float32))  # [B, H, T, T]
    mask = jaxops.attention_mask(lengths=np.array([2, 4]), q_len=4, causal=True)  # [B, T, T]
    out = jaxops.safe_softmax(logits, where=mask[:, None])
    full = jaxops.safe_softmax(logits, where=jnp.broadcast_to(mask[:, None], logits.shape))
    np.testing.assert_array_equal(out, full)
    np.testing.assert_array_equal(out[0, :, 2:], 0)  # padding queries of the first row


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_where_in_16_bit(dtype):
    logits = jnp.array([[1.0, 2.0, 3.0]], dtype)
    out = jaxops.safe_softmax(logits, where=jnp.array([True, False, True]))
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.float32), [[0.1192, 0.0, 0.8808]], rtol=1e-2)


def test_where_errors_and_transforms():
    with helpers.raises_message(TypeError, "safe_softmax", r"expected `where` of dtype bool, .*"):
        jaxops.safe_softmax(jnp.zeros((2, 3)), where=jnp.ones((2, 3)))
    with helpers.raises_message(
        ValueError,
        "safe_softmax",
        r"expected `where` broadcastable to the shape of `logits`, \(2, 3\), got shape \(2, 2\)\.",
    ):
        jaxops.safe_softmax(jnp.zeros((2, 3)), where=jnp.ones((2, 2), bool))
    with helpers.raises_message(ValueError, "safe_softmax", r"expected `where` broadcastable .*"):
        jaxops.safe_softmax(jnp.zeros(3), where=jnp.ones((2, 3), bool))  # would grow the output
    logits = jnp.arange(6.0).reshape(2, 3)
    where = jnp.array([[True, False, True], [False, False, False]])
    fn = lambda x, w: jaxops.safe_softmax(x, where=w)
    np.testing.assert_array_equal(jax.vmap(fn)(logits, where), fn(logits, where))
    np.testing.assert_array_equal(jax.jit(fn)(logits, where), fn(logits, where))
    checkified = checkify.checkify(jax.jit(fn))(logits, where)[1]
    np.testing.assert_array_equal(checkified, fn(logits, where))
