"""Ragged batches: the segment-id converters, ``Ragged``, ``segment_top_k`` and ``segment_softmax``.

JAX users hold variable-length data as ``lengths [N]`` (Caffe2), offsets
``[N+1]``, segment ids ``[M]`` (``-1`` = a row of no segment) or padded
``[N, T, F...]``. The converters move between them inside ``jit`` with static
sizes; :class:`Ragged` is the value type over ``values [M, F...]`` and
``lengths [N]``. This layer calls the operator families (pack/unpack, top-k,
masks) and ``jax.ops.segment_*`` rather than repeating their numerics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxops._src import checks
from jaxops._src.attention import length_mask
from jaxops._src.masking import boolean_mask, boolean_mask_lengths
from jaxops._src.sequence import pack_rnn_sequence, unpack_rnn_sequence
from jaxops._src.topk import TopK, ascending_keys, lengths_top_k

# --------------------------------------------------------------------------- #
# Converters
# --------------------------------------------------------------------------- #


def _row_segments(op, lengths, total_length):
    """For each row: its segment (or -1) and its position in it (or -1), after the checks.

    ``total_length`` rows (default ``sum(lengths)``; eagerly, a bucketed size
    trimmed on the host: see :func:`checks.bucket`).
    """
    lengths_arr = checks.as_lengths(op, lengths)
    size = checks.static_total(op, "total_length", total_length, lengths)
    checks.check_output_size(op, f"total_length={size}", (size,))
    checks.check_lengths(op, lengths, total=size, total_name="total_length")
    lengths_arr = checks.replicated(lengths_arr)
    if total_length is not None or not checks.is_eager(lengths_arr):
        return _row_segments_jit(lengths_arr, size)
    seg, pos = _row_segments_jit(lengths_arr, checks.bucket(size, checks.INT32_MAX))
    return checks.trim(seg, size), checks.trim(pos, size)


@functools.partial(jax.jit, static_argnums=1)
def _row_segments_jit(lengths, size):
    if size == 0 or lengths.shape[0] == 0:
        empty = jnp.full((size,), -1, jnp.int32)
        return empty, empty
    seg, pos, valid = checks.row_segments(*checks.segments(lengths, size), size)
    return jnp.where(valid, seg, -1), jnp.where(valid, pos, -1)


def lengths_to_offsets(lengths: ArrayLike) -> jax.Array:
    """Exclusive-then-total cumulative sum of ``lengths``: ``[0, off[1], ..., sum]``.

    ``out[n] = lengths[0] + ... + lengths[n-1]`` for ``n`` in ``[0, N]``, the
    row splits of ``tf.RaggedTensor`` and the ``offsets`` of
    ``torch.nested``'s jagged layout.

    Args:
      lengths: ``[N]`` integer array (any width).

    Returns:
      ``[N+1]`` int32 array.

    Raises:
      TypeError: ``lengths`` not integer.
      ValueError: ``lengths`` not rank 1; the value checks ``lengths >= 0`` and
        ``sum(lengths) <= 2**31 - 1`` (raised when ``lengths`` is concrete, else
        ``checkify`` checks; without checkify negative lengths count as 0 and
        the sums saturate at ``2**31 - 1``).

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.lengths_to_offsets(jnp.array([2, 0, 3]))
      Array([0, 2, 2, 5], dtype=int32)

    Caffe2: ``LengthsToOffsets`` (with the total appended).
    """
    op = "lengths_to_offsets"
    lengths_arr = checks.as_lengths(op, lengths)
    checks.check_lengths(op, lengths, total=checks.INT32_MAX, total_name="2**31 - 1")
    return _offsets(checks.replicated(lengths_arr))


@jax.jit  # one program, not a dispatch per op, for eager calls
def _offsets(lengths):
    ends = checks.saturating_cumsum(
        checks.clip_lengths(lengths, checks.INT32_MAX), checks.INT32_MAX
    )
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), ends])


def lengths_to_segment_ids(lengths: ArrayLike, *, total_length: int | None = None) -> jax.Array:
    """The segment of each row: ``n`` for ``off[n] <= r < off[n+1]``, ``-1`` past the sum.

    Args:
      lengths: ``[N]`` integer array.
      total_length: static int ``L``, the number of rows. Defaults to
        ``sum(lengths)`` when ``lengths`` is concrete; required when traced.

    Returns:
      ``[L]`` int32 array.

    Raises:
      TypeError: ``lengths`` not integer.
      ValueError: ``lengths`` not rank 1; ``total_length`` missing under
        tracing or too large; the value checks ``lengths >= 0`` and
        ``sum(lengths) <= L`` (without checkify, lengths are clipped to the rows).

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.lengths_to_segment_ids(jnp.array([2, 0, 3]), total_length=6)
      Array([ 0,  0,  2,  2,  2, -1], dtype=int32)

    Caffe2: ``LengthsToSegmentIds``.
    """
    return _row_segments("lengths_to_segment_ids", lengths, total_length)[0]


def lengths_range_fill(lengths: ArrayLike, *, total_length: int | None = None) -> jax.Array:
    """Each row's position inside its segment, ``-1`` past the sum.

    For packed rows this is a transformer's ``positions`` input.

    Args:
      lengths: ``[N]`` integer array.
      total_length: static int ``L``, the number of rows. Defaults to
        ``sum(lengths)`` when ``lengths`` is concrete; required when traced.

    Returns:
      ``[L]`` int32 array.

    Raises:
      TypeError: ``lengths`` not integer.
      ValueError: as :func:`lengths_to_segment_ids`.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.lengths_range_fill(jnp.array([2, 0, 3]), total_length=6)
      Array([ 0,  1,  0,  1,  2, -1], dtype=int32)

    Caffe2: ``LengthsRangeFill``.
    """
    return _row_segments("lengths_range_fill", lengths, total_length)[1]


def _as_segment_ids(op, segment_ids, rows=None):
    ids = checks.as_array(op, "segment_ids", segment_ids, "integer")
    checks.check_ndim(op, "segment_ids", ids, 1)
    if rows is not None and ids.shape[0] != rows:
        raise checks.value_error(
            op, f"len(segment_ids) == {rows} rows", f"segment_ids.shape = {tuple(ids.shape)}"
        )
    return ids


def _bucket(ids, num_segments):
    """int32 ids with every id outside ``[0, num_segments)`` mapped to ``num_segments``."""
    clipped = checks.to_int32(ids, -1, num_segments)
    return jnp.where(clipped < 0, num_segments, clipped)


def _counts(ids, num_segments):
    """How many rows hold each id in ``[0, num_segments)`` (int32), others ignored."""
    bucket = _bucket(ids, num_segments)
    return jnp.zeros((num_segments,), jnp.int32).at[bucket].add(1, mode="drop")


_counts_jit = jax.jit(_counts, static_argnums=1)


def _num_segments(ids: np.ndarray) -> int:
    """``max(ids) + 1`` of concrete ids (0 when none is non-negative), any integer dtype."""
    return max(int(ids.max()) + 1, 0) if ids.size else 0


def segment_ids_to_lengths(segment_ids: ArrayLike, *, num_segments: int | None = None) -> jax.Array:
    """How many rows hold each segment id (ids need not be sorted).

    Ids outside ``[0, num_segments)`` (such as the ``-1`` of padding rows) are
    ignored, unlike ``jnp.bincount``, which counts negative ids as 0.

    Args:
      segment_ids: ``[M]`` integer array.
      num_segments: static int ``N``. Defaults to ``max(segment_ids) + 1``
        (0 when there is no non-negative id) when ``segment_ids`` is
        concrete; required when traced.

    Returns:
      ``[N]`` int32 array.

    Raises:
      TypeError: ``segment_ids`` not integer.
      ValueError: ``segment_ids`` not rank 1, ``num_segments`` missing under
        tracing, negative or too large.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.segment_ids_to_lengths(jnp.array([0, 0, 2, -1, 2, 2]))
      Array([2, 0, 3], dtype=int32)

    Caffe2: ``SegmentIdsToLengths`` (here unsorted ids and padding allowed).
    """
    op = "segment_ids_to_lengths"
    ids_np = checks.concrete_values(segment_ids)
    ids = _as_segment_ids(op, segment_ids)
    exact = checks.static_size(
        op,
        "num_segments",
        num_segments,
        "segment_ids",
        ids_np is None,
        lambda: _num_segments(ids_np[0]),  # type: ignore[index]
    )
    checks.check_output_size(op, f"num_segments={exact}", (exact,))
    ids = checks.replicated(ids)
    if not checks.is_eager(ids):
        return _counts_jit(ids, exact)
    if np.issubdtype(ids.dtype, np.signedinteger):
        ids = checks.pad_to_bucket(ids, value=-1)  # -1: no segment
    if num_segments is not None:
        return _counts_jit(ids, exact)
    return checks.trim(_counts_jit(ids, checks.bucket(exact, checks.INT32_MAX)), exact)


# --------------------------------------------------------------------------- #
# Rows grouped by segment id
# --------------------------------------------------------------------------- #


def _group(ids, num_segments):
    """``(order, lengths)``: a stable sort of the rows by id (out-of-range ids last)
    and the count of each id."""
    order = jnp.argsort(_bucket(ids, num_segments), stable=True).astype(jnp.int32)
    return order, _counts(ids, num_segments)


def _check_sorted(op, segment_ids):
    """The value check behind ``indices_are_sorted=True``: ascending ids."""
    ids_np = checks.concrete_values(segment_ids)
    xp, iv = (np, ids_np[0]) if ids_np is not None else (jnp, jnp.asarray(segment_ids))
    if iv.shape[0] < 2:
        return
    unsorted, first = checks.first_failure(xp, iv[1:] < iv[:-1])
    checks.check_values(
        op,
        xp.logical_not(unsorted),
        "sorted segment_ids with indices_are_sorted=True",
        "segment_ids[{}] = {} after segment_ids[{}] = {}",
        first + 1,
        checks.pick(xp, iv, first + 1),
        first,
        checks.pick(xp, iv, first),
    )


def _segment_top_k_impl(data, ids, k, num_segments, indices_are_sorted, max_length):
    if data.shape[0] == 0 or num_segments == 0:  # no gather from an empty axis
        shape = (num_segments, k)
        return jnp.zeros(shape, data.dtype), jnp.full(shape, -1, jnp.int32)
    lengths = _counts(ids, num_segments)
    starts, _ = checks.segments(lengths, data.shape[0])
    if indices_are_sorted or max_length is not None:
        # Group the rows (sorted ids: shift out the leading negative ids; else a
        # stable sort by id), then lengths_top_k over the groups.
        if indices_are_sorted:
            skipped = jnp.sum(checks.to_int32(ids, -1, 0) < 0, dtype=jnp.int32)
            row = lax.broadcasted_iota(jnp.int32, ids.shape, 0)
            order = jnp.minimum(row + skipped, data.shape[0] - 1)
        else:
            order, _ = _group(ids, num_segments)
        grouped = jnp.take(data, order, mode="clip")
        _, within = lengths_top_k(lax.stop_gradient(grouped), lengths, k=k, max_length=max_length)
        keep = within >= 0
        slot = jnp.where(keep, starts[:, None] + within, 0)
    else:
        # Unsorted ids must be sorted anyway: one sort by (segment, rank key)
        # orders every segment's rows best first (stable: ties by position),
        # and the top k of segment n are the k rows from its offset.
        bucket = _bucket(ids, num_segments)
        row = lax.broadcasted_iota(jnp.int32, ids.shape, 0)
        _, _, order = lax.sort((bucket, ascending_keys(data), row), num_keys=2, is_stable=True)
        j = lax.broadcasted_iota(jnp.int32, (num_segments, k), 1)
        keep = j < lengths[:, None]
        slot = jnp.where(keep, starts[:, None] + j, 0)
    positions = jnp.take(order, slot, mode="clip")  # the selected rows' positions in data
    values = jnp.where(keep, jnp.take(data, positions, mode="clip"), jnp.zeros((), data.dtype))
    return values, jnp.where(keep, positions, -1)


def segment_top_k(
    data: ArrayLike,
    segment_ids: ArrayLike,
    *,
    k: int,
    num_segments: int,
    indices_are_sorted: bool = False,
    max_length: int | None = None,
) -> TopK:
    """The ``k`` largest entries of each segment, keyed by segment ids, and their positions.

    Segment ``n`` is the rows of ``data`` whose id is ``n``, in any order
    (``indices_are_sorted=True`` promises sorted ids and skips the sort). The
    order is :func:`lengths_top_k`'s: descending, ties by ascending position,
    ``-0.0 == +0.0``, NaN above ``+inf``. Ids outside ``[0, num_segments)``
    (such as the ``-1`` of padding) are ignored.

    Args:
      data: ``[M]`` array of a real dtype.
      segment_ids: ``[M]`` integer array.
      k: static Python int ``>= 1``.
      num_segments: static Python int ``N >= 0``.
      indices_are_sorted: static bool; ``True`` promises ascending ids.
      max_length: optional static int, an upper bound on the rows of any one
        segment (a speed hint, as in :func:`lengths_top_k`: with it the rows
        are grouped by a sort on the ids alone and padded to ``[N,
        max_length]`` for one ``lax.top_k``; without it, one sort by id and
        value, whose cost and memory never grow with ``N * max_length``).
        Results are identical; a segment longer than ``max_length`` is a
        value error.

    Returns:
      ``TopK(values, indices)``: ``values [N, k]`` of ``data.dtype`` (then 0)
      and ``indices [N, k]`` int32, **positions in** ``data`` (then -1).

    Raises:
      TypeError: ``data`` not real or ``segment_ids`` not integer.
      ValueError: ranks or lengths that differ, ``k < 1``, ``num_segments <
        0``, outputs too large; the value checks (eager errors, ``checkify``
        checks when traced): with ``indices_are_sorted=True`` the ids are
        sorted, with ``max_length`` no segment is longer.

    Gradients:
      Reverse-mode w.r.t. floating ``data``: ``g[n, j]`` lands at
      ``indices[n, j]`` (one scatter with unique indices). The residual is
      ``indices``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> data = jnp.array([5.0, 1.0, 7.0, 3.0, 9.0])
      >>> out = jaxops.segment_top_k(data, jnp.array([1, 0, 1, -1, 0]), k=2, num_segments=2)
      >>> out.values
      Array([[9., 1.],
             [7., 5.]], dtype=float32)
      >>> out.indices
      Array([[4, 1],
             [2, 0]], dtype=int32)

    Beyond Caffe2 (the per-segment top-k that ott-jax#237 asks for).
    """
    op = "segment_top_k"
    data = checks.as_array(op, "data", data, "real")
    checks.check_ndim(op, "data", data, 1)
    ids = _as_segment_ids(op, segment_ids, data.shape[0])
    k = checks.static_int(op, "k", k, minimum=1)
    num_segments = checks.static_int(op, "num_segments", num_segments, minimum=0)
    indices_are_sorted = checks.static_bool(op, "indices_are_sorted", indices_are_sorted)
    checks.check_output_size(op, f"k={k} and num_segments={num_segments}", (num_segments, k))
    if max_length is not None:
        max_length = checks.static_int(op, "max_length", max_length, minimum=0)
    # Value checks outside the custom rule (STYLE pitfall).
    if indices_are_sorted:
        _check_sorted(op, segment_ids)
    if max_length is not None:
        counts = _counts_jit(ids, num_segments)
        counts = counts if checks.is_traced(ids) else np.asarray(counts)
        checks.check_lengths(op, counts, max_length=max_length, name="segment lengths")
    # A sort, scatters and data-dependent gathers: replicated on Explicit meshes.
    data, ids = checks.replicated(data), checks.replicated(ids)
    if checks.is_eager(data, ids) and np.iinfo(ids.dtype).max >= num_segments:
        # Padding rows with an id past every segment (sorted, ignored): one
        # program for eager calls whose row counts change.
        data = checks.pad_to_bucket(data)
        ids = checks.pad_to_bucket(ids, value=np.iinfo(ids.dtype).max)
    return TopK(*_segment_top_k_jit(k, num_segments, indices_are_sorted, max_length, data, ids))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _segment_top_k_rule(k, num_segments, indices_are_sorted, max_length, data, ids):
    return _segment_top_k_impl(data, ids, k, num_segments, indices_are_sorted, max_length)


def _segment_top_k_rule_fwd(k, num_segments, indices_are_sorted, max_length, data, ids):
    out = _segment_top_k_rule(k, num_segments, indices_are_sorted, max_length, data, ids)
    return out, (out[1], data.shape[0])


def _segment_top_k_rule_bwd(k, num_segments, indices_are_sorted, max_length, residuals, cotangents):
    del k, num_segments, indices_are_sorted, max_length
    indices, rows = residuals
    g = cotangents[0]
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    target = jnp.where(indices >= 0, indices, rows).reshape(-1)  # -1 slots: dropped
    out = jnp.zeros((rows,), g.dtype)
    return out.at[target].set(g.reshape(-1), mode="drop", unique_indices=True), None


_segment_top_k_rule.defvjp(_segment_top_k_rule_fwd, _segment_top_k_rule_bwd)
_segment_top_k_jit = jax.jit(_segment_top_k_rule, static_argnums=(0, 1, 2, 3))


def segment_softmax(
    logits: ArrayLike,
    segment_ids: ArrayLike,
    *,
    num_segments: int,
    indices_are_sorted: bool = False,
) -> jax.Array:
    """Softmax over the rows of each segment, per feature column (graph attention).

    ``out[r] = exp(logits[r] - max_s) / sum_{r' in s} exp(logits[r'] - max_s)``
    for the segment ``s`` of row ``r``. Rows whose id lies outside
    ``[0, num_segments)`` and segments whose entries are all ``-inf`` give 0
    (never NaN). 16-bit inputs are computed in float32.

    Args:
      logits: ``[M]`` or ``[M, F...]`` array of a floating dtype.
      segment_ids: ``[M]`` integer array (need not be sorted).
      num_segments: static Python int ``N >= 0``.
      indices_are_sorted: static bool, a hint passed to ``jax.ops``.

    Returns:
      Array of ``logits``' shape and dtype.

    Raises:
      TypeError: ``logits`` not floating or ``segment_ids`` not integer.
      ValueError: ``logits`` of rank 0, ids of another length, ``num_segments < 0``.

    Gradients:
      Reverse-mode w.r.t. ``logits``: ``y * (g - segment_sum(g * y)[ids])``
      with the output ``y`` as the residual; finite everywhere and 0 where
      the output is 0.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> logits = jnp.array([0.0, 0.0, 1.0, 5.0])
      >>> jaxops.segment_softmax(logits, jnp.array([0, 1, 0, -1]), num_segments=2)
      Array([0.26894143, 1.        , 0.7310586 , 0.        ], dtype=float32)

    Beyond Caffe2 (``torch_geometric.utils.softmax``, ``tf.math.unsorted_segment`` ops).
    """
    op = "segment_softmax"
    logits = checks.as_array(op, "logits", logits, "floating")
    checks.check_ndim(op, "logits", logits, min_ndim=1)
    ids = _as_segment_ids(op, segment_ids, logits.shape[0])
    num_segments = checks.static_int(op, "num_segments", num_segments, minimum=0)
    indices_are_sorted = checks.static_bool(op, "indices_are_sorted", indices_are_sorted)
    checks.check_output_size(
        op, f"num_segments={num_segments}", (num_segments + 1, *logits.shape[1:])
    )
    # Segment reductions and gathers: replicated on Explicit meshes.
    logits, ids = checks.replicated(logits), checks.replicated(ids)
    return _segment_softmax_rule(num_segments, indices_are_sorted, logits, ids)


def _compute_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _in_range(ids, num_segments):
    """``(clipped, safe, valid)``: int32 ids in ``[-1, num_segments]`` (the ends out of
    range, so the segment reductions drop them), the same with 0 where out of
    range (a gather index), and whether each row is in range."""
    clipped = checks.to_int32(ids, -1, num_segments)
    valid = (clipped >= 0) & (clipped < num_segments)
    return clipped, jnp.where(valid, clipped, 0), valid


def _segment_softmax(logits, ids, num_segments, sorted_ids):
    if logits.size == 0 or num_segments == 0:
        return jnp.zeros_like(logits)
    x = logits.astype(_compute_dtype(logits.dtype))
    clipped, safe, valid = _in_range(ids, num_segments)
    # Per-segment tables ([N, F...]), each gathered once per row: the shift is
    # +inf for all -inf segments, so exp gives 0 there, and an empty sum gives
    # the factor 0 (a NaN sum stays NaN, as in softmax). Out-of-range rows are
    # dropped by the reductions and give 0 (a padding bucket N made this op
    # 1.4x slower than the naive one at 1M rows on XLA CPU).
    top = jax.ops.segment_max(x, clipped, num_segments, indices_are_sorted=sorted_ids)
    shift = jnp.where(top > -jnp.inf, top, jnp.inf)
    e = jnp.exp(x - checks.take_in_bounds(shift, safe))
    total = jax.ops.segment_sum(e, clipped, num_segments, indices_are_sorted=sorted_ids)
    scale = 1 / jnp.where(total == 0, jnp.inf, total)
    y = e * checks.take_in_bounds(scale, safe)
    return jnp.where(checks.broadcast_rows(valid, x.ndim), y, 0).astype(logits.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _segment_softmax_rule(num_segments, sorted_ids, logits, ids):
    return _segment_softmax(logits, ids, num_segments, sorted_ids)


def _segment_softmax_rule_fwd(num_segments, sorted_ids, logits, ids):
    y = _segment_softmax_rule(num_segments, sorted_ids, logits, ids)
    return y, (y, ids)


def _segment_softmax_rule_bwd(num_segments, sorted_ids, residuals, g):
    y, ids = residuals
    dtype = _compute_dtype(y.dtype)
    y32, g32 = y.astype(dtype), g.astype(dtype)
    if y.size == 0 or num_segments == 0:
        return jnp.zeros_like(y), None
    clipped, safe, _ = _in_range(ids, num_segments)
    dot = jax.ops.segment_sum(g32 * y32, clipped, num_segments, indices_are_sorted=sorted_ids)
    back = checks.take_in_bounds(dot, safe)  # y is 0 where out of range
    return (y32 * (g32 - back)).astype(y.dtype), None


_segment_softmax_rule.defvjp(_segment_softmax_rule_fwd, _segment_softmax_rule_bwd)


# --------------------------------------------------------------------------- #
# Ragged
# --------------------------------------------------------------------------- #


class Ragged:
    """A batch of variable-length sequences as one value: ``values [M, F...]`` and ``lengths [N]``.

    Segment ``n`` is ``values[off[n] : off[n] + lengths[n]]``; ``M`` is a
    static row capacity and rows past ``sum(lengths)`` are padding that no
    method reads. Both arrays are pytree leaves (keys ``values`` and
    ``lengths``), so a ``Ragged`` passes through ``jit``, ``vmap`` (batch axis
    on both leaves), ``grad`` (the cotangent is a ``Ragged`` whose ``values``
    holds the gradient), ``shard_map``, ``device_put`` and ``jax.export``.
    Construction validates like :func:`pack_rnn_sequence` (``lengths >= 0``,
    ``sum(lengths) <= M``: eager errors, ``checkify`` checks when traced).

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> r = jaxops.Ragged.from_list([jnp.array([1.0, 2.0]), jnp.array([3.0])], capacity=4)
      >>> r
      Ragged(values=float32[4], lengths=int32[2])
      >>> r.to_padded()
      Array([[1., 2.],
             [3., 0.]], dtype=float32)
      >>> r.segment_sum()
      Array([3., 3.], dtype=float32)
    """

    __slots__ = ("_lengths", "_values")
    _values: jax.Array
    _lengths: jax.Array

    def __init__(self, values: ArrayLike, lengths: ArrayLike) -> None:
        op = "Ragged"
        values_arr = checks.as_array(op, "values", values, "data")
        checks.check_ndim(op, "values", values_arr, min_ndim=1)
        lengths_arr = checks.as_lengths(op, lengths)
        checks.check_lengths(op, lengths, total=values_arr.shape[0], total_name="values.shape[0]")
        object.__setattr__(self, "_values", values_arr)
        object.__setattr__(self, "_lengths", lengths_arr)

    @classmethod
    def _make(cls, values: Any, lengths: Any) -> Ragged:
        """Without validation: for unflattening (JAX passes placeholders) and trusted results."""
        out = object.__new__(cls)
        object.__setattr__(out, "_values", values)
        object.__setattr__(out, "_lengths", lengths)
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Ragged is immutable")

    @property
    def values(self) -> jax.Array:
        """``[M, F...]``: the segments' rows back to back, then padding rows."""
        return self._values

    @property
    def lengths(self) -> jax.Array:
        """``[N]`` integer: the length of each segment."""
        return self._lengths

    def __repr__(self) -> str:
        def describe(x):
            dtype = getattr(x, "dtype", None)
            shape = getattr(x, "shape", None)
            if dtype is None or shape is None:
                return repr(x)
            return f"{np.dtype(dtype).name}{list(shape)}"

        return f"Ragged(values={describe(self._values)}, lengths={describe(self._lengths)})"

    # ----------------------------------------------------------------- build

    @classmethod
    def from_list(cls, arrays: Sequence[ArrayLike], *, capacity: int | None = None) -> Ragged:
        """Concatenates host arrays ``[L_i, F...]`` (eager) and pads to ``capacity`` rows.

        Args:
          arrays: a non-empty list or tuple of arrays with one trailing
            shape and dtype (an empty list needs no dtype: it gives float32
            rank-1 values).
          capacity: static int ``M >= sum(L_i)``; defaults to the sum.

        Raises:
          TypeError: not a list or tuple; arrays of different dtypes.
          ValueError: arrays of rank 0 or different trailing shapes;
            ``capacity`` below the total.
        """
        op = "Ragged.from_list"
        if not isinstance(arrays, (list, tuple)):
            raise checks.type_error(op, "`arrays` to be a list or tuple", type(arrays).__name__)
        host = [np.asarray(a) for a in arrays]
        for i, a in enumerate(host):
            if a.ndim == 0:
                raise checks.value_error(op, f"`arrays[{i}]` of rank >= 1", "shape ()")
            if a.shape[1:] != host[0].shape[1:]:
                raise checks.value_error(
                    op,
                    f"arrays with common trailing shape {host[0].shape[1:]}",
                    f"arrays[{i}].shape = {a.shape}",
                )
            if a.dtype != host[0].dtype:
                raise checks.type_error(
                    op, f"arrays of one dtype, {host[0].dtype}", f"arrays[{i}].dtype = {a.dtype}"
                )
        lengths = np.asarray([a.shape[0] for a in host], np.int32)
        total = int(lengths.sum())
        if capacity is None:
            capacity = total
        capacity = checks.static_int(op, "capacity", capacity, minimum=0)
        if capacity < total:
            raise checks.value_error(
                op, f"capacity >= the total length {total}", f"capacity={capacity}"
            )
        tail = host[0].shape[1:] if host else ()
        dtype = host[0].dtype if host else np.dtype(np.float32)
        checks.check_output_size(op, f"capacity={capacity}", (capacity, *tail))
        values = np.zeros((capacity, *tail), dtype)
        if total:
            values[:total] = np.concatenate(host)
        return cls(values, lengths)

    @classmethod
    def from_padded(
        cls,
        padded: ArrayLike,
        lengths: ArrayLike,
        *,
        time_major: bool = False,
        capacity: int | None = None,
    ) -> Ragged:
        """From a padded ``[N, T, F...]`` (or ``[T, N, F...]``) array and its lengths.

        ``unpack_rnn_sequence`` with ``total_length=capacity`` (default: the
        sum of the lengths when they are concrete; required when traced).
        Differentiable w.r.t. ``padded``.
        """
        op = "Ragged.from_padded"
        size = checks.static_total(op, "capacity", capacity, lengths)
        # capacity=None with concrete lengths: unpack_rnn_sequence's own default,
        # bucketed for eager calls.
        total_length = None if capacity is None else size
        values = unpack_rnn_sequence(
            padded, lengths, total_length=total_length, time_major=time_major
        )
        return cls._make(values, checks.as_lengths(op, lengths))

    @classmethod
    def from_segment_ids(
        cls, values: ArrayLike, segment_ids: ArrayLike, *, num_segments: int
    ) -> Ragged:
        """Groups the rows of ``values [M, F...]`` by segment id (stable; padding rows last).

        Rows whose id is outside ``[0, num_segments)`` become padding. A
        gather, so differentiable w.r.t. ``values``. Capacity stays ``M``.
        """
        op = "Ragged.from_segment_ids"
        values = checks.as_array(op, "values", values, "data")
        checks.check_ndim(op, "values", values, min_ndim=1)
        ids = _as_segment_ids(op, segment_ids, values.shape[0])
        num_segments = checks.static_int(op, "num_segments", num_segments, minimum=0)
        order, lengths = _group(ids, num_segments)
        return cls._make(jnp.take(values, order, axis=0, mode="clip"), lengths)

    # ------------------------------------------------------------------ read

    @property
    def capacity(self) -> int:
        """The static row capacity ``M``."""
        return self._values.shape[0]

    @property
    def num_segments(self) -> int:
        """The static number of segments ``N``."""
        return self._lengths.shape[0]

    def offsets(self) -> jax.Array:
        """``[N+1]`` int32 row splits (:func:`lengths_to_offsets`)."""
        return lengths_to_offsets(self._lengths)

    def segment_ids(self) -> jax.Array:
        """``[M]`` int32: each row's segment, ``-1`` for padding rows."""
        return lengths_to_segment_ids(self._lengths, total_length=self.capacity)

    def positions(self) -> jax.Array:
        """``[M]`` int32: each row's position in its segment, ``-1`` for padding rows."""
        return lengths_range_fill(self._lengths, total_length=self.capacity)

    def row_mask(self) -> jax.Array:
        """``[M]`` bool: the row holds data (is not padding)."""
        return self.segment_ids() >= 0

    def to_padded(
        self,
        *,
        max_length: int | None = None,
        pad_value: bool | int | float = 0,
        time_major: bool = False,
    ) -> jax.Array:
        """``[N, T, F...]`` (batch-major by default): :func:`pack_rnn_sequence`."""
        return pack_rnn_sequence(
            self._values,
            self._lengths,
            max_length=max_length,
            pad_value=pad_value,
            time_major=time_major,
        )

    def length_mask(self, max_length: int) -> jax.Array:
        """``[N, max_length]`` bool: ``t < lengths[n]``."""
        max_length = checks.static_int("Ragged.length_mask", "max_length", max_length, minimum=0)
        return length_mask(self._lengths, max_length)

    def to_list(self) -> list[np.ndarray]:
        """The segments as host NumPy arrays (eager)."""
        values, lengths = np.asarray(self._values), np.asarray(self._lengths).astype(np.int64)
        ends = np.cumsum(lengths)
        return [values[e - n : e] for e, n in zip(ends, lengths, strict=True)]

    # --------------------------------------------------------------- compute

    def top_k(self, k: int, *, max_length: int | None = None) -> TopK:
        """Per-segment top-k of rank-1 values (:func:`lengths_top_k`)."""
        return lengths_top_k(self._values, self._lengths, k=k, max_length=max_length)

    def boolean_mask(self, mask: ArrayLike) -> Ragged:
        """Keeps the rows of each segment where ``mask [M]`` is true (same capacity).

        :func:`boolean_mask` on the values and :func:`boolean_mask_lengths`
        for the new lengths (padding rows, as one extra segment, are dropped).
        """
        op = "Ragged.boolean_mask"
        mask = checks.as_array(op, "mask", mask, "bool")
        if mask.shape != (self.capacity,):
            raise checks.value_error(
                op, f"mask of shape ({self.capacity},)", f"mask.shape = {tuple(mask.shape)}"
            )
        keep = mask & self.row_mask()
        values = boolean_mask(self._values, keep, size=self.capacity).values
        used = checks.clip_lengths(self._lengths, self.capacity)
        padding = jnp.maximum(self.capacity - jnp.sum(used), 0)[None]
        lengths = boolean_mask_lengths(jnp.concatenate([used, padding]), keep)[:-1]
        return Ragged._make(values, lengths.astype(self._lengths.dtype))

    def map(self, fn: Callable[[jax.Array], jax.Array]) -> Ragged:
        """``Ragged(fn(values), lengths)`` for a row-wise ``fn`` (it must keep ``M`` rows)."""
        values = fn(self._values)
        if getattr(values, "shape", (None,))[0] != self.capacity:
            raise checks.value_error(
                "Ragged.map",
                f"fn to keep the {self.capacity} rows",
                f"shape {getattr(values, 'shape', None)}",
            )
        return Ragged._make(values, self._lengths)

    def _reduce(self, reducer, values=None):
        values = checks.replicated(self._values if values is None else values)
        ids = self.segment_ids()
        return reducer(values, ids, self.num_segments, indices_are_sorted=False)

    def segment_sum(self) -> jax.Array:
        """``[N, F...]`` sums (``jax.ops.segment_sum``; 16-bit floats accumulate in float32)."""
        dtype = self._values.dtype
        wide = jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32
        values = self._values.astype(jnp.float32) if wide else self._values
        return self._reduce(jax.ops.segment_sum, values).astype(dtype)

    def segment_mean(self) -> jax.Array:
        """``[N, F...]`` means of floating values (an empty segment gives 0)."""
        counts = jnp.maximum(checks.clip_lengths(self._lengths, self.capacity), 1)
        total = self.segment_sum()
        denom = checks.broadcast_rows(counts, total.ndim).astype(total.dtype)
        return total / denom

    def segment_max(self) -> jax.Array:
        """``[N, F...]`` maxima (empty segment: the dtype's lowest value, as ``jax.ops``)."""
        return self._reduce(jax.ops.segment_max)

    def softmax(self) -> Ragged:
        """Softmax over the rows of each segment (:func:`segment_softmax`); padding rows 0."""
        ids = self.segment_ids()
        return Ragged._make(
            segment_softmax(self._values, ids, num_segments=self.num_segments),
            self._lengths,
        )


def _ragged_flatten_with_keys(r: Ragged):
    keys = (jax.tree_util.GetAttrKey("values"), jax.tree_util.GetAttrKey("lengths"))
    return list(zip(keys, (r._values, r._lengths), strict=True)), None


def _ragged_flatten(r: Ragged):
    return (r._values, r._lengths), None


def _ragged_unflatten(aux, children) -> Ragged:
    del aux
    return Ragged._make(*children)


jax.tree_util.register_pytree_with_keys(
    Ragged, _ragged_flatten_with_keys, _ragged_unflatten, _ragged_flatten
)
jax.export.register_pytree_node_serialization(
    Ragged,
    serialized_name="jaxops.Ragged",
    serialize_auxdata=lambda aux: b"",
    deserialize_auxdata=lambda data: None,
)
