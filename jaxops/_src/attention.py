"""Packed sequences and attention masks: ``pack_sequences``, ``unpack_sequences``,
``length_mask`` and ``attention_mask``.

Packing places whole sequences into fixed rows with segment ids and positions,
the standard input of transformer training; ``attention_mask`` turns those
(or plain lengths) into the ``[..., Tq, Tk]`` bool mask that
``jax.nn.dot_product_attention(mask=)`` and ``safe_softmax(where=)`` take.
The placement is integer bookkeeping over ``lengths``; the data moves in one
gather each way, and each direction is the other's gradient, as for
``pack_rnn_sequence``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from jaxops._src import checks

# --------------------------------------------------------------------------- #
# pack_sequences / unpack_sequences
# --------------------------------------------------------------------------- #


class PackedRows(NamedTuple):
    """The output of :func:`pack_sequences`: three ``[R, L]``-leading arrays.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> packed = jaxops.pack_sequences(jnp.arange(5), jnp.array([3, 2]), num_rows=1, row_length=6)
      >>> packed.segment_ids
      Array([[ 0,  0,  0,  1,  1, -1]], dtype=int32)
    """

    values: jax.Array
    """``[R, L, F...]``: the sequences' rows, ``pad_value`` on padding slots."""
    segment_ids: jax.Array
    """``[R, L]`` int32: the index ``n`` of the sequence in each slot, -1 on padding."""
    positions: jax.Array
    """``[R, L]`` int32: the position ``t`` within the sequence, -1 on padding."""


jax.export.register_namedtuple_serialization(PackedRows, serialized_name="jaxops.PackedRows")


def _next_fit(lengths: jax.Array, row_length: int) -> tuple[jax.Array, jax.Array]:
    """The next-fit row and column of each sequence (int32 ``[N]`` each), rows uncapped.

    ``lengths`` are non-negative int32. A sequence goes into the current row if
    it fits, else it starts the next row. One longer than ``row_length`` fits
    nowhere: it gets the current cursor and leaves it unchanged (it is dropped).
    """

    def step(cursor, length):
        row, col = cursor
        too_long = length > row_length
        stay = too_long | (length <= row_length - col)  # no overflow: col <= row_length
        row = jnp.where(stay, row, row + 1)
        col = jnp.where(stay, col, 0)
        return (row, jnp.where(too_long, col, col + length)), (row, col)

    zero = jnp.zeros((), jnp.int32)
    return lax.scan(step, (zero, zero), lengths)[1]


def _placement(lengths, total_rows, num_rows, row_length):
    """Where each sequence's rows are in the flat values and in the flat slots.

    Returns ``(offsets, held, starts)``, int32 ``[N]``: the sequences' offsets
    in ``values`` (of ``total_rows`` rows, from :func:`checks.segments`), the
    number of rows each places (its effective length, 0 when dropped), and the
    first flat slot of each (non-decreasing, ``starts[0] == 0``). A sequence is
    dropped when it is longer than ``row_length`` or needs a row past
    ``num_rows``; for valid lengths ``held == lengths``.
    """
    offsets, effective = checks.segments(lengths, total_rows)
    row, col = _next_fit(effective, row_length)
    fits = (row < num_rows) & (effective <= row_length)
    held = jnp.where(fits, effective, 0)
    # Rows at or past num_rows start at the end of the grid (keeps starts sorted); the
    # minimum keeps the unselected product inside int32.
    starts = jnp.where(
        row < num_rows, jnp.minimum(row, num_rows - 1) * row_length + col, num_rows * row_length
    )
    return offsets, held, starts


def _rows_needed(lengths: jax.Array, row_length: int) -> jax.Array:
    """How many rows next-fit uses for the placeable sequences (int32 scalar)."""
    row, _ = _next_fit(lengths, row_length)
    used = (lengths > 0) & (lengths <= row_length)
    return jnp.max(jnp.where(used, row + 1, 0), initial=0)


_rows_needed_jit = jax.jit(_rows_needed, static_argnums=1)
# Up to this many concrete lengths, the fit check loops in Python (about 1 ms
# per 2,000 sequences) rather than compiling a program per number of sequences.
_HOST_FIT_MAX = 4096


def _rows_needed_host(lengths: np.ndarray, row_length: int) -> int:
    """:func:`_rows_needed` of concrete non-negative lengths, in Python."""
    rows, col = 0, row_length  # no open row yet
    for length in lengths.tolist():
        if length <= row_length:  # zero lengths leave the cursor as it is
            if length > row_length - col:
                rows, col = rows + 1, 0
            col += length
    return rows


def _check_fit(op, lengths, num_rows, row_length):
    """The value check that every sequence fits in the rows (next-fit)."""
    if lengths.shape[0] == 0 or checks.checks_off():
        return
    values = checks.concrete_values(lengths)
    if values is not None:
        clipped = np.clip(values[0].astype(np.int64), 0, row_length + 1).astype(np.int32)
        if clipped.shape[0] <= _HOST_FIT_MAX:
            needed = np.asarray(_rows_needed_host(clipped, row_length))
        else:
            needed = np.asarray(_rows_needed_jit(jax.device_put(clipped), row_length))
    else:
        needed = _rows_needed(
            checks.to_int32(checks.replicated(lengths), 0, row_length + 1), row_length
        )
    checks.check_values(
        op,
        needed <= num_rows,
        f"the sequences to fit in num_rows = {num_rows} rows of row_length = {row_length}"
        " (next-fit, in input order)",
        "lengths that need {} rows",
        needed,
    )


def _slots(lengths, total_rows, num_rows, row_length):
    """For each of the ``R * L`` slots: the source row, its segment, its position, valid."""
    offsets, held, starts = _placement(lengths, total_rows, num_rows, row_length)
    seg, pos, valid = checks.row_segments(starts, held, num_rows * row_length)
    source = jnp.where(valid, offsets[seg] + pos, 0)
    return source, seg, pos, valid


def _pack(values, lengths, num_rows, row_length, pad_value):
    """The forward numerics of ``pack_sequences`` (a gather and a select)."""
    shape = (num_rows, row_length, *values.shape[1:])
    pad = checks.full_like_dtype(pad_value, values.dtype)
    if values.shape[0] == 0 or lengths.shape[0] == 0 or num_rows * row_length == 0:
        return jnp.broadcast_to(pad, shape)
    source, _, _, valid = _slots(lengths, values.shape[0], num_rows, row_length)
    gathered = jnp.take(values, source, axis=0, mode="clip")
    out = jnp.where(checks.broadcast_rows(valid, gathered.ndim), gathered, pad)
    return out.reshape(shape)


def _unpack(rows, lengths, total_length):
    """The forward numerics of ``unpack_sequences`` (a gather and a select)."""
    num_rows, row_length, *features = rows.shape
    if total_length == 0 or lengths.shape[0] == 0 or num_rows * row_length == 0:
        return jnp.zeros((total_length, *features), rows.dtype)
    offsets, held, starts = _placement(lengths, total_length, num_rows, row_length)
    seg, pos, valid = checks.row_segments(offsets, held, total_length)
    slot = jnp.where(valid, starts[seg] + pos, 0)
    gathered = jnp.take(rows.reshape(-1, *features), slot, axis=0, mode="clip")
    zero = jnp.zeros((), rows.dtype)
    return jnp.where(checks.broadcast_rows(valid, gathered.ndim), gathered, zero)


def _ids_and_positions(lengths, total_rows, num_rows, row_length):
    grid = (num_rows, row_length)
    if total_rows == 0 or lengths.shape[0] == 0 or num_rows * row_length == 0:
        empty = jnp.full(grid, -1, jnp.int32)
        return empty, empty
    _, seg, pos, valid = _slots(lengths, total_rows, num_rows, row_length)
    return jnp.where(valid, seg, -1).reshape(grid), jnp.where(valid, pos, -1).reshape(grid)


def _check_packing(op, lengths, total, total_name, num_rows, row_length, row_name):
    checks.check_lengths(
        op, lengths, total=total, total_name=total_name, max_length=row_length, max_name=row_name
    )
    _check_fit(op, lengths, num_rows, row_length)


def pack_sequences(
    values: ArrayLike,
    lengths: ArrayLike,
    *,
    num_rows: int,
    row_length: int,
    pad_value: bool | int | float = 0,
) -> PackedRows:
    """Packs whole sequences into ``num_rows`` rows of ``row_length`` slots, next-fit.

    Document packing for transformer training: in input order, a sequence goes
    into the current row if it fits, else it starts the next row (next-fit),
    so several short sequences share a row instead of each padding one.
    Sequence ``n`` (rows ``off[n] .. off[n] + lengths[n] - 1`` of ``values``)
    lands whole in one row. The placement depends on ``lengths``, ``R`` and
    ``L`` only (O(N) bookkeeping, then one gather moves the data), so
    :func:`unpack_sequences` recomputes it. Feed ``segment_ids`` and
    ``positions`` to :func:`attention_mask` so that no sequence attends to
    another in its row.

    Args:
      values: ``[M, F...]`` array (rank >= 1) of any numeric or bool dtype: the
        sequences concatenated along axis 0. Rows past ``sum(lengths)`` are ignored.
      lengths: ``[N]`` integer array (any width), the length of each sequence.
      num_rows: static int ``R``, the number of packed rows.
      row_length: static int ``L``, the slots per row.
      pad_value: static Python scalar written to the padding slots of ``values``.

    Returns:
      :class:`PackedRows` ``(values [R, L, F...] of values.dtype,
      segment_ids [R, L] int32, positions [R, L] int32)``: ``segment_ids``
      holds ``n`` and ``positions`` holds ``t`` in the slot of
      ``values[off[n] + t]``, both -1 on padding.

    Raises:
      TypeError: non-integer ``lengths``, unsupported ``values`` dtype, or a
        ``pad_value`` not representable in it.
      ValueError: wrong ranks or sizes; and the value checks ``lengths >= 0``,
        ``sum(lengths) <= M``, ``max(lengths) <= L`` and that next-fit places
        every sequence within the ``R`` rows (raised when ``lengths`` is
        concrete, else ``checkify`` checks). Without checkify, lengths are
        clipped as in :func:`pack_rnn_sequence`, a sequence longer than ``L``
        is skipped, and the sequence that would open row ``R + 1`` and all
        after it are dropped: a dropped sequence's id appears nowhere.

    Gradients:
      Reverse-mode w.r.t. floating ``values``:
      ``unpack_sequences(g.values, lengths, total_length=M)`` (the cotangents of
      padding slots are dropped; ``segment_ids`` and ``positions`` carry none).
      The only residual is ``lengths``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> packed = jaxops.pack_sequences(
      ...     jnp.arange(1, 8), jnp.array([3, 2, 2]), num_rows=2, row_length=4, pad_value=-1)
      >>> packed.values
      Array([[ 1,  2,  3, -1],
             [ 4,  5,  6,  7]], dtype=int32)
      >>> packed.segment_ids
      Array([[ 0,  0,  0, -1],
             [ 1,  1,  2,  2]], dtype=int32)
      >>> packed.positions
      Array([[ 0,  1,  2, -1],
             [ 0,  1,  0,  1]], dtype=int32)

    Beyond Caffe2 (no Caffe2 operator; MaxText and seqio pack this way).
    """
    op = "pack_sequences"
    values = checks.as_array(op, "values", values, "data")
    checks.check_ndim(op, "values", values, min_ndim=1)
    lengths_arr = checks.as_lengths(op, lengths)
    num_rows = checks.static_int(op, "num_rows", num_rows, minimum=0)
    row_length = checks.static_int(op, "row_length", row_length, minimum=0)
    pad_value = checks.static_scalar(op, "pad_value", pad_value, values.dtype)
    checks.check_output_size(
        op,
        f"num_rows={num_rows}, row_length={row_length}",
        (num_rows, row_length, *values.shape[1:]),
    )
    _check_packing(
        op, lengths, values.shape[0], "values.shape[0]", num_rows, row_length, "row_length"
    )
    # Data-dependent gathers: replicated on Explicit meshes.
    values, lengths_arr = checks.replicated(values), checks.replicated(lengths_arr)
    if checks.is_eager(values, lengths_arr):
        values = checks.pad_to_bucket(values)  # rows past sum(lengths) are never read
    return _pack_sequences_jit(num_rows, row_length, pad_value, values, lengths_arr)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _pack_rule(num_rows, row_length, pad_value, values, lengths):
    return _pack(values, lengths, num_rows, row_length, pad_value)


def _pack_rule_fwd(num_rows, row_length, pad_value, values, lengths):
    return _pack_rule(num_rows, row_length, pad_value, values, lengths), (lengths, values.shape[0])


def _pack_rule_bwd(num_rows, row_length, pad_value, residuals, g):
    del num_rows, row_length, pad_value
    lengths, total_rows = residuals
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _unpack(g, lengths, total_rows), None


_pack_rule.defvjp(_pack_rule_fwd, _pack_rule_bwd)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _pack_sequences_jit(num_rows, row_length, pad_value, values, lengths):
    """All of ``pack_sequences``' outputs, one program (an eager call compiles it once)."""
    return PackedRows(
        _pack_rule(num_rows, row_length, pad_value, values, lengths),
        *_ids_and_positions(lengths, values.shape[0], num_rows, row_length),
    )


def unpack_sequences(
    rows: ArrayLike, lengths: ArrayLike, *, total_length: int | None = None
) -> jax.Array:
    """The inverse of :func:`pack_sequences`: packed rows back to the flat layout.

    ``out[off[n] + t]`` is the slot where :func:`pack_sequences` put row ``t``
    of sequence ``n`` (the same next-fit placement, recomputed from
    ``lengths``); rows at or past ``sum(lengths)`` are 0. Padding slots are
    never read. Round trip:
    ``unpack_sequences(pack_sequences(v, l, ...).values, l) == v[:sum(l)]``.

    Args:
      rows: ``[R, L, F...]`` array (rank >= 2) of any numeric or bool dtype.
      lengths: ``[N]`` integer array (any width).
      total_length: static int, the number of output rows. Defaults to
        ``sum(lengths)`` when ``lengths`` is concrete; required when traced.

    Returns:
      ``[total_length, F...]`` array of ``rows.dtype``.

    Raises:
      TypeError: non-integer ``lengths`` or unsupported ``rows`` dtype.
      ValueError: ``rows`` of rank < 2; ``total_length`` missing under tracing
        or too large; and the value checks ``lengths >= 0``,
        ``max(lengths) <= L``, ``sum(lengths) <= total_length`` and that
        next-fit places every sequence within the ``R`` rows. Without
        checkify, the rows of a sequence that :func:`pack_sequences` would
        drop are 0.

    Gradients:
      Reverse-mode w.r.t. floating ``rows``:
      ``pack_sequences(g, lengths, num_rows=R, row_length=L).values`` (padding
      slots get 0). The only residual is ``lengths``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> rows = jnp.array([[1, 2, 3, 0], [4, 5, 6, 7]])
      >>> jaxops.unpack_sequences(rows, jnp.array([3, 2, 2]))
      Array([1, 2, 3, 4, 5, 6, 7], dtype=int32)

    Beyond Caffe2 (no Caffe2 operator).
    """
    op = "unpack_sequences"
    rows = checks.as_array(op, "rows", rows, "data")
    checks.check_ndim(op, "rows", rows, min_ndim=2)
    lengths_arr = checks.as_lengths(op, lengths)
    exact = checks.static_total(op, "total_length", total_length, lengths)
    checks.check_output_size(op, f"total_length={exact}", (exact, *rows.shape[2:]))
    num_rows, row_length = rows.shape[:2]
    _check_packing(op, lengths, exact, "total_length", num_rows, row_length, "rows.shape[1]")
    # Data-dependent gathers: replicated on Explicit meshes.
    rows, lengths_arr = checks.replicated(rows), checks.replicated(lengths_arr)
    if total_length is not None or not checks.is_eager(rows, lengths_arr):
        return _unpack_jit(exact, rows, lengths_arr)
    bucketed = checks.bucket(exact, num_rows * row_length)
    return checks.trim(_unpack_jit(bucketed, rows, lengths_arr), exact)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unpack_rule(total_length, rows, lengths):
    return _unpack(rows, lengths, total_length)


def _unpack_rule_fwd(total_length, rows, lengths):
    return _unpack_rule(total_length, rows, lengths), (lengths, rows.shape[:2])


def _unpack_rule_bwd(total_length, residuals, g):
    del total_length
    lengths, (num_rows, row_length) = residuals
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _pack(g, lengths, num_rows, row_length, 0), None


_unpack_rule.defvjp(_unpack_rule_fwd, _unpack_rule_bwd)
_unpack_jit = jax.jit(_unpack_rule, static_argnums=0)


# --------------------------------------------------------------------------- #
# length_mask / attention_mask
# --------------------------------------------------------------------------- #


def length_mask(lengths: ArrayLike, max_length: int, *, dtype: DTypeLike = bool) -> jax.Array:
    """``tf.sequence_mask``: ``out[..., t] = t < lengths[...]`` for ``t < max_length``.

    One length per sequence, whatever the leading shape (unlike
    :func:`sequence_mask`, which wants one length per flattened row).
    Lengths are compared exactly in their own dtype: a negative length gives
    an all-False row and one past ``max_length`` an all-True row, as in
    TensorFlow (no value checks).

    Args:
      lengths: integer array of any shape ``[...]`` and width.
      max_length: static int ``T >= 0``, the size of the new last axis.
      dtype: static output dtype (bool, integer or floating: 1 / 0).

    Returns:
      ``[..., T]`` array of ``dtype``.

    Raises:
      TypeError: non-integer ``lengths`` or an unsupported ``dtype``.
      ValueError: a negative or non-int ``max_length``, or an output too large.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.length_mask(jnp.array([1, 3, 0]), 4)
      Array([[ True, False, False, False],
             [ True,  True,  True, False],
             [False, False, False, False]], dtype=bool)

    Beyond Caffe2 (``tf.sequence_mask``; Caffe2's ``SequenceMask`` masks data).
    """
    op = "length_mask"
    lengths = checks.as_array(op, "lengths", lengths, "integer")
    max_length = checks.static_int(op, "max_length", max_length, minimum=0)
    out_dtype = _mask_dtype(op, dtype)
    checks.check_output_size(op, f"max_length={max_length}", (*lengths.shape, max_length))
    return _length_mask(lengths, max_length).astype(out_dtype)


def _mask_dtype(op, dtype):
    try:
        out = np.dtype(jnp.dtype(dtype))
    except TypeError as e:
        raise checks.type_error(op, "a dtype", f"dtype={dtype!r}") from e
    if not (out == np.bool_ or np.issubdtype(out, np.integer) or jnp.issubdtype(out, jnp.floating)):
        raise checks.type_error(op, "a bool, integer or floating dtype", f"dtype={out.name}")
    return out


def _length_mask(lengths, size):
    """``[..., size]`` bool ``t < lengths``, comparing in int32 after an exact clip."""
    bound = checks.to_int32(lengths, 0, size)
    t = lax.broadcasted_iota(jnp.int32, (*lengths.shape, size), lengths.ndim)
    return t < bound[..., None]


_INT32 = np.iinfo(np.int32)


def _as_int32(op, name, x):
    """An integer array as int32; values outside int32 are a value error (never wrapped)."""
    x = checks.as_array(op, name, x, "integer")
    info = np.iinfo(x.dtype)
    if info.min < _INT32.min or info.max > _INT32.max:
        values = checks.concrete_values(x)
        xp, v = (np, values[0]) if values is not None else (jnp, x)
        if v.size:
            inside = (v >= xp.asarray(_INT32.min, v.dtype)) if info.min < 0 else True
            inside = inside & (v <= xp.asarray(_INT32.max, v.dtype))
            bad, where = checks.first_failure(xp, ~inside.reshape(-1))
            checks.check_values(
                op,
                ~bad,
                f"`{name}` within the int32 range",
                f"{name}.flat[{{}}] = {{}}",
                where,
                checks.pick(xp, v.reshape(-1), where),
            )
    return checks.to_int32(x, int(_INT32.min), int(_INT32.max))


class _Side(NamedTuple):
    """One side (queries or keys) of an attention mask, validated, before broadcasting."""

    ids: jax.Array | None  # [..., T] int32, -1 = padding
    lengths: jax.Array | None  # [...] integer: ids 0 before the length, -1 after
    positions: jax.Array | None  # [..., T] int32; None = arange(T)
    length: int  # T


def _side(op, names, segment_ids, positions, lengths, size):
    """Validates one side's arguments (``names`` maps each to what the caller passed)."""
    if segment_ids is not None and lengths is not None:
        raise checks.value_error(
            op,
            f"at most one of `{names['segment_ids']}` and `{names['lengths']}`",
            "both",
            "Lengths are the shortcut for one sequence per row.",
        )
    arrays = {}
    for key, value in (("segment_ids", segment_ids), ("positions", positions)):
        if value is not None:
            arrays[key] = _as_int32(op, names[key], value)
            checks.check_ndim(op, names[key], arrays[key], min_ndim=1)
    sizes = {f"`{names[k]}`.shape[-1]": a.shape[-1] for k, a in arrays.items()}
    if size is not None:
        sizes[names["len"]] = checks.static_int(op, names["len"], size, minimum=0)
    if not sizes:
        raise checks.value_error(
            op,
            "the number of tokens of each side",
            f"none of `{names['segment_ids']}`, `{names['positions']}`, `{names['len']}`",
            f"Pass {names['len']}=<int> with lengths.",
        )
    if len(set(sizes.values())) != 1:
        got = ", ".join(f"{k} = {v}" for k, v in sizes.items())
        raise checks.value_error(
            op, "one length per side", got, "Every kv_* argument defaults to the query's."
        )
    if lengths is not None:
        lengths = checks.as_array(op, names["lengths"], lengths, "integer")
    return _Side(arrays.get("segment_ids"), lengths, arrays.get("positions"), sizes.popitem()[1])


# The widest difference of two int32 positions: a window side this wide bounds nothing.
_SPAN = 2**32 - 1


def _window(op, window):
    """``(left, right)`` static ints, or None for a side that bounds nothing."""
    if window is None:
        return None
    pair = window if isinstance(window, (tuple, list)) else (window, window)
    if len(pair) != 2:
        raise checks.value_error(op, "window=int or (left, right)", f"window={window!r}")
    bounds = tuple(checks.static_int(op, "window", w, minimum=0) for w in pair)
    return tuple(None if w >= _SPAN else w for w in bounds)


def _shifted(x, delta):
    """``x + delta`` for ``|delta| < 2**32`` in two steps whose constants fit int32."""
    half = delta // 2
    return (x + half) + (delta - half)


def _between(q, k, left, right):
    """``q - left <= k <= q + right`` for int32 ``q``, ``k`` without overflow.

    The shifted bound wraps only where the first term has already decided.
    """
    allowed = jnp.ones(jnp.broadcast_shapes(q.shape, k.shape), bool)
    if left is not None:
        allowed = allowed & ((q < int(_INT32.min) + left) | (k >= _shifted(q, -left)))
    if right is not None:
        allowed = allowed & ((q > int(_INT32.max) - right) | (k <= _shifted(q, right)))
    return allowed


def attention_mask(
    *,
    segment_ids: ArrayLike | None = None,
    kv_segment_ids: ArrayLike | None = None,
    positions: ArrayLike | None = None,
    kv_positions: ArrayLike | None = None,
    lengths: ArrayLike | None = None,
    kv_lengths: ArrayLike | None = None,
    q_len: int | None = None,
    kv_len: int | None = None,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
) -> jax.Array:
    """The bool ``[..., Tq, Tk]`` mask of which query may attend which key.

    True where query ``i`` may attend key ``j``: both belong to the same
    segment and neither is padding (segment id ``-1``); with ``causal``,
    ``kv_pos <= q_pos``; with ``window``, ``q_pos - left <= kv_pos <= q_pos +
    right``. Ready for ``jax.nn.dot_product_attention(mask=...)`` and
    :func:`safe_softmax` ``(where=...)``: add a heads axis with ``[:, None]``.
    This is the per-matrix API for attention; :func:`sequence_mask` keeps
    Caffe2's flattened-row semantics. Only the bool result is materialised
    (no float bias, no ``[Tq, Tk]`` intermediate of another dtype).

    Each side is described by segment ids ``[..., T]`` (from
    :func:`pack_sequences`, -1 = padding) or ``lengths [...]`` (the shortcut
    for one sequence per row, padding after ``lengths``; needs ``q_len`` /
    ``kv_len`` unless ``positions`` gives ``T``) or neither (every token
    valid, one sequence), and by positions ``[..., T]`` (default
    ``arange(T)``; use the packed ``positions`` so that causality and windows
    hold within each document). Every ``kv_*`` argument defaults to its query
    counterpart, except that ``positions`` and ``q_len`` do not stand in for
    keys whose own arguments give another length (key positions are then
    ``arange(Tk)``, as for decoding against a cache). Leading dims of all
    arrays broadcast as in NumPy.

    Args:
      segment_ids: ``[..., Tq]`` integer query segment ids (-1 = padding).
      kv_segment_ids: ``[..., Tk]`` key segment ids.
      positions: ``[..., Tq]`` integer query positions.
      kv_positions: ``[..., Tk]`` key positions.
      lengths: ``[...]`` integer, valid queries per row (instead of segment ids).
      kv_lengths: ``[...]`` integer, valid keys per row.
      q_len: static int ``Tq`` when no query array has it.
      kv_len: static int ``Tk`` when no key array has it.
      causal: static bool, keys at later positions are masked.
      window: static int ``w`` (the same as ``(w, w)``) or ``(left, right)``
        of non-negative ints: keys farther than that from the query's position
        are masked. ``(w, 0)`` with ``causal`` is sliding-window attention.

    Returns:
      ``[..., Tq, Tk]`` bool array.

    Raises:
      TypeError: a non-integer ids, positions or lengths array.
      ValueError: both ids and lengths on a side; a side's length missing or
        inconsistent; leading dims that do not broadcast; a bad ``window``; an
        output too large; ids or positions outside the int32 range (a value
        check: raised when concrete, else a ``checkify`` check).

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> ids = jnp.array([[0, 0, 1, -1]])
      >>> jaxops.attention_mask(segment_ids=ids, positions=jnp.array([[0, 1, 0, -1]]),
      ...                       causal=True).astype(int)
      Array([[[1, 0, 0, 0],
              [1, 1, 0, 0],
              [0, 0, 1, 0],
              [0, 0, 0, 0]]], dtype=int32)
      >>> jaxops.attention_mask(lengths=jnp.array([2]), q_len=3).astype(int)
      Array([[[1, 1, 0],
              [1, 1, 0],
              [0, 0, 0]]], dtype=int32)

    Beyond Caffe2 (no Caffe2 operator).
    """
    op = "attention_mask"
    causal = checks.static_bool(op, "causal", causal)
    bounds = _window(op, window)
    query_names = {"segment_ids": "segment_ids", "positions": "positions", "lengths": "lengths"}
    q = _side(op, {**query_names, "len": "q_len"}, segment_ids, positions, lengths, q_len)
    key_names = {k: f"kv_{k}" for k in ("segment_ids", "positions", "lengths", "len")}
    if kv_segment_ids is None and kv_lengths is None:
        kv_segment_ids, kv_lengths = segment_ids, lengths
        key_names.update(segment_ids="segment_ids", lengths="lengths")
    # positions and q_len stand in for the keys' only when those give no other length
    own = {
        jnp.shape(a)[-1] for a in (kv_segment_ids, kv_positions) if a is not None and jnp.ndim(a)
    }
    own |= {kv_len} if kv_len is not None else set()
    if kv_positions is None and (not own or own == {q.length}):
        kv_positions, key_names["positions"] = positions, "positions"
    if kv_len is None and (not own or own == {q.length}):
        kv_len, key_names["len"] = q_len, "q_len"
    k = _side(op, key_names, kv_segment_ids, kv_positions, kv_lengths, kv_len)
    leading = [a.shape[:-1] for s in (q, k) for a in (s.ids, s.positions) if a is not None]
    leading += [s.lengths.shape for s in (q, k) if s.lengths is not None]
    try:
        batch = np.broadcast_shapes(*leading)
    except ValueError as e:
        raise checks.value_error(
            op, "leading dims that broadcast", f"leading shapes {', '.join(map(str, leading))}"
        ) from e
    checks.check_output_size(
        op, f"{q.length} queries and {k.length} keys", (*batch, q.length, k.length)
    )
    return _attention_mask_jit(batch, causal, bounds, q.length, k.length, *q[:3], *k[:3])


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _attention_mask_jit(batch, causal, bounds, q_len, k_len, *sides):
    def grid(side, length, axis):
        """The side's ids and positions as [*batch, Tq, 1] or [*batch, 1, Tk]."""
        ids, lengths, positions = side
        if lengths is not None:
            ids = jnp.where(_length_mask(lengths, length), 0, -1)
        if positions is None:
            positions = lax.broadcasted_iota(jnp.int32, (length,), 0)
        expand = lambda x: jnp.expand_dims(jnp.broadcast_to(x, (*batch, length)), axis)
        return None if ids is None else expand(ids), expand(positions)

    (qi, qp), (ki, kp) = grid(sides[:3], q_len, -1), grid(sides[3:], k_len, -2)
    allowed = jnp.ones((*batch, q_len, k_len), bool)
    if ki is not None:  # queries have ids only if keys do (kv_* default to the query's)
        allowed = allowed & (ki >= 0)
        if qi is not None:
            allowed = allowed & (qi == ki)  # so padding queries (-1) attend nothing
    if causal:
        allowed = allowed & (kp <= qp)
    if bounds is not None:
        allowed = allowed & _between(qp, kp, *bounds)
    return allowed
