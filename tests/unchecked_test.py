"""jaxops.unchecked (SPEC §1 rule 9): no value checks, no effects, jax.export round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

LENGTHS = np.array([2, 0, 3], np.int32)
VALUES = np.arange(1.0, 7.0, dtype=np.float32)  # one row past the sum


def pack(v, n):
    return jaxops.pack_rnn_sequence(v, n, max_length=3)


def test_unchecked_traces_without_effects():
    assert jax.make_jaxpr(pack)(VALUES, LENGTHS).effects  # the checks are debug_checks
    assert not jax.make_jaxpr(jaxops.unchecked(pack))(VALUES, LENGTHS).effects


def test_unchecked_returns_the_safe_result_eagerly_and_jitted():
    bad = np.array([2, -1, 9], np.int32)
    with pytest.raises(ValueError, match=r"^pack_rnn_sequence: expected lengths >= 0"):
        pack(VALUES, bad)
    expected = np.array([[1, 0, 3], [2, 0, 4], [0, 0, 5]], np.float32)  # clipped to what fits
    np.testing.assert_array_equal(jaxops.unchecked(pack)(VALUES, bad), expected)
    np.testing.assert_array_equal(jax.jit(jaxops.unchecked(pack))(VALUES, bad), expected)
    # Type and shape errors still raise.
    with pytest.raises(TypeError, match=r"^pack_rnn_sequence: expected `lengths` of an integer"):
        jaxops.unchecked(pack)(VALUES, bad.astype(np.float32))


def test_unchecked_is_part_of_the_jit_cache_key():
    bad = np.array([2, -1, 9], np.int32)
    jitted = jax.jit(pack)
    with pytest.raises(ValueError, match=r"^pack_rnn_sequence: expected lengths >= 0"):
        jaxops.checked(jitted)(VALUES, bad)
    jaxops.checked(jaxops.unchecked(jitted))(VALUES, bad)  # traced again, without checks
    with pytest.raises(ValueError, match=r"^pack_rnn_sequence: expected lengths >= 0"):
        jaxops.checked(jitted)(VALUES, bad)  # the checked trace was not replaced
    # The switch is scoped to the call: a later plain call checks again.
    with pytest.raises(ValueError, match=r"^pack_rnn_sequence: expected lengths >= 0"):
        pack(VALUES, bad)


def every_op(values, lengths, mask, ids, scope):
    """A function that uses every public operator (static sizes throughout)."""
    packed = jaxops.pack_rnn_sequence(values, lengths, max_length=3)
    flat = jaxops.unpack_rnn_sequence(packed, lengths, total_length=6)
    top = jaxops.lengths_top_k(values, lengths, k=2)
    top_grad = jaxops.lengths_top_k_gradient(lengths, top.indices, top.values, data_length=6)
    wide = jaxops.expand(values[:, None], (6, 2))
    narrow = jaxops.expand_gradient(wide, (6, 1))
    masked = jaxops.boolean_mask(values, mask, size=4)
    mask_grad = jaxops.boolean_mask_gradient(mask, masked.values)
    kept = jaxops.boolean_mask_lengths(jnp.array([3, 3], jnp.int32), mask)
    merged = jaxops.boolean_unmask([mask, ~mask], [masked.values, values])
    seq = jaxops.sequence_mask(packed, lengths, axis=1, fill_value=0.0)
    soft = jaxops.safe_softmax(packed)
    offsets = jaxops.lengths_to_offsets(lengths)
    seg = jaxops.lengths_to_segment_ids(lengths, total_length=6)
    pos = jaxops.lengths_range_fill(lengths, total_length=6)
    counts = jaxops.segment_ids_to_lengths(ids, num_segments=3)
    seg_top = jaxops.segment_top_k(values, ids, k=2, num_segments=3)
    seg_soft = jaxops.segment_softmax(values, ids, num_segments=3)
    ragged = jaxops.Ragged(values, lengths)
    rows = jaxops.pack_sequences(values, lengths, num_rows=2, row_length=4, pad_value=-1.0)
    unrows = jaxops.unpack_sequences(rows.values, lengths, total_length=6)
    lmask = jaxops.length_mask(lengths, 4, dtype=jnp.float32)
    amask = jaxops.attention_mask(
        segment_ids=rows.segment_ids, positions=rows.positions, causal=True, window=(2, 0)
    )
    scores = jnp.broadcast_to(rows.values[:, None, :], (2, 4, 4))
    attn = jaxops.safe_softmax(scores, where=amask)
    scope = scope.set("w", scope["w"] * jnp.sum(flat))
    arrays = (flat, top_grad, narrow, mask_grad, kept, merged, seq, soft, offsets, seg, pos)
    packed_rows = (unrows, lmask, amask, attn)
    return (
        (*arrays, counts, seg_soft, *packed_rows),
        top,
        masked,
        seg_top,
        scope,
        ragged.softmax(),
        rows,
    )


def test_export_round_trips_a_function_of_every_op():
    args = (
        VALUES,
        LENGTHS,
        np.array([True, False, True, True, False, True]),
        np.array([2, 0, -1, 2, 1, 0], np.int32),
        jaxops.Scope({"w": np.ones(2, np.float32)}),
    )
    fn = jax.jit(jaxops.unchecked(every_op))
    exported = jax.export.export(fn)(*args)
    restored = jax.export.deserialize(exported.serialize())
    got, expected = restored.call(*args), every_op(*args)
    assert isinstance(got[1], jaxops.TopK) and isinstance(got[2], jaxops.Masked)
    assert isinstance(got[4], jaxops.Scope) and isinstance(got[5], jaxops.Ragged)
    assert isinstance(got[6], jaxops.PackedRows)  # serialized as "jaxops.PackedRows"
    got_leaves, got_tree = jax.tree.flatten(got)
    want_leaves, want_tree = jax.tree.flatten(expected)
    assert got_tree == want_tree
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_array_equal(g, w)


def test_packed_ops_run_unchecked_without_effects_and_return_the_safe_result():
    """SPEC §8 under unchecked: no debug_check, and a sequence that does not fit is dropped."""

    def pack(v, n):
        return jaxops.pack_sequences(v, n, num_rows=1, row_length=4)

    def unpack(r, n):
        return jaxops.unpack_sequences(r, n, total_length=6)

    def mask(ids):
        return jaxops.attention_mask(segment_ids=ids, causal=True)

    bad = np.array([3, 2, 1], np.int32)  # next-fit needs 2 rows: sequences 1 and 2 dropped
    rows = np.arange(1.0, 5.0, dtype=np.float32).reshape(1, 4)
    for fn, args in ((pack, (VALUES, bad)), (unpack, (rows, bad))):
        assert jax.make_jaxpr(fn)(*args).effects
        assert not jax.make_jaxpr(jaxops.unchecked(fn))(*args).effects
    with pytest.raises(ValueError, match=r"^pack_sequences: expected the sequences to fit"):
        pack(VALUES, bad)
    got = jax.jit(jaxops.unchecked(pack))(VALUES, bad)
    np.testing.assert_array_equal(got.values, [[1, 2, 3, 0]])
    np.testing.assert_array_equal(got.segment_ids, [[0, 0, 0, -1]])
    np.testing.assert_array_equal(jax.jit(jaxops.unchecked(unpack))(rows, bad), [1, 2, 3, 0, 0, 0])
    # int32 ids have no value check at all: nothing to switch off.
    ids = np.array([[0, 0, 1, -1]], np.int32)
    assert not jax.make_jaxpr(mask)(ids).effects
