"""Masks: ``boolean_mask``, ``boolean_mask_gradient``, ``boolean_mask_lengths``,
``boolean_unmask``, ``sequence_mask`` and ``safe_softmax``.

Every data movement here is a gather (XLA CPU gathers are much faster than
scatters and sorts): ``boolean_mask`` finds the source row of each output
slot from ``cumsum(mask)`` (through an int32 histogram, the only scatter,
which touches no data rows); its gradient and ``boolean_unmask`` find the
slot of each row with the same ``cumsum``. The two directions are each
other's gradient. ``sequence_mask`` is a single fused select against
``lax.broadcasted_iota`` comparisons.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxops._src import checks


class Masked(NamedTuple):
    """The output of :func:`boolean_mask`: the selected rows and their positions.

    Attributes:
      values: ``[S, F...]`` the selected rows of ``data`` in order, then fill rows.
      indices: ``[S]`` int32 positions of the selected rows in ``data``, then -1.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> values, indices = jaxops.boolean_mask(jnp.arange(4), jnp.array([1, 0, 1, 0]) > 0)
      >>> values, indices
      (Array([0, 2], dtype=int32), Array([0, 2], dtype=int32))
    """

    values: jax.Array
    indices: jax.Array


jax.export.register_namedtuple_serialization(Masked, serialized_name="jaxops.Masked")


# --------------------------------------------------------------------------- #
# Shared gathers
# --------------------------------------------------------------------------- #


def _select_rows(data, mask, size, fill_value):
    """The forward numerics of ``boolean_mask``: ``(values [S, F...], indices [S])``.

    Output slot ``s`` reads row ``searchsorted(cumsum(mask), s, side="right")``,
    the first row whose inclusive count exceeds ``s``, computed as a cumsum of
    a histogram of ``cumsum(mask)`` (:func:`checks.count_at_most`); slots at or past the
    number of true entries are fill rows with index -1.
    """
    num_rows, features = data.shape[0], data.shape[1:]
    fill = checks.full_like_dtype(fill_value, data.dtype)
    if size == 0 or num_rows == 0:
        return (
            jnp.broadcast_to(fill, (size, *features)),
            jnp.full((size,), -1, jnp.int32),
        )
    counts = checks.cumsum(mask)
    slot = jnp.arange(size, dtype=jnp.int32)
    valid = slot < counts[-1]
    source = checks.count_at_most(counts, size)  # rows with counts <= slot
    source = jnp.where(valid, source, 0)  # in [0, M) where valid; 0 otherwise
    gathered = checks.take_in_bounds(data, source)
    values = jnp.where(checks.broadcast_rows(valid, data.ndim), gathered, fill)
    return values, jnp.where(valid, source, -1)


def _scatter_rows(mask, rows, fill_value):
    """Row ``i`` of the output is ``rows[cumsum(mask)[i] - 1]`` where that exists.

    The gather-only inverse of :func:`_select_rows` (and its transpose):
    ``[M, F...]`` with ``fill_value`` for rows that are unselected or whose
    slot is past ``rows.shape[0]``.
    """
    num_rows, size, features = mask.shape[0], rows.shape[0], rows.shape[1:]
    fill = checks.full_like_dtype(fill_value, rows.dtype)
    if size == 0 or num_rows == 0:
        return jnp.broadcast_to(fill, (num_rows, *features))
    slot = checks.cumsum(mask) - 1
    valid = mask & (slot < size)
    gathered = checks.take_in_bounds(rows, jnp.where(valid, slot, 0))  # in [0, S)
    return jnp.where(checks.broadcast_rows(valid, 1 + len(features)), gathered, fill)


# --------------------------------------------------------------------------- #
# boolean_mask and its gradient
# --------------------------------------------------------------------------- #


def _as_mask(op: str, mask: ArrayLike, name: str = "mask") -> jax.Array:
    out = checks.as_array(op, name, mask, "bool")
    checks.check_ndim(op, name, out, 1)
    return out


def boolean_mask(
    data: ArrayLike,
    mask: ArrayLike,
    *,
    size: int | None = None,
    fill_value: bool | int | float = 0,
) -> Masked:
    """Selects the rows of ``data`` where the 1-D boolean ``mask`` is true.

    Like ``data[mask]`` (NumPy) or ``data[jnp.nonzero(mask, size=size)]``, but
    jittable with a static ``size``, filled with ``fill_value`` rather than
    with copies of row 0, and returning the selected positions too.

    Args:
      data: ``[M, F...]`` array (rank >= 1) of any numeric or bool dtype.
      mask: ``[M]`` bool array.
      size: static int ``S``, the number of output rows. Defaults to the
        number of true entries of ``mask`` when ``mask`` is concrete; required
        when it is traced. When more than ``S`` rows are selected, the first
        ``S`` are kept.
      fill_value: static Python scalar for the rows past the selected ones.

    Returns:
      ``Masked(values, indices)``: ``values`` ``[S, F...]`` of ``data.dtype``
      (the selected rows in order, then ``fill_value`` rows) and ``indices``
      ``[S]`` int32 (their positions in ``data``, then -1).

    Raises:
      TypeError: ``mask`` not bool, unsupported ``data`` dtype, or a
        non-scalar ``fill_value``.
      ValueError: ``data`` of rank 0, ``mask`` not rank 1, ``len(mask) !=
        data.shape[0]``, or ``size`` missing while ``mask`` is traced.

    Gradients:
      Reverse-mode w.r.t. floating ``data``: ``boolean_mask_gradient(mask,
      g)``; cotangents of fill rows are dropped. The only residual is ``mask``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
      >>> mask = jnp.array([True, False, True])
      >>> jaxops.boolean_mask(x, mask).values
      Array([[1., 2.],
             [5., 6.]], dtype=float32)
      >>> f = jax.jit(lambda x, m: jaxops.boolean_mask(x, m, size=3, fill_value=-1))
      >>> f(x, mask)
      Masked(values=Array([[ 1.,  2.],
             [ 5.,  6.],
             [-1., -1.]], dtype=float32), indices=Array([ 0,  2, -1], dtype=int32))

    Caffe2: ``BooleanMask`` (here any rank, with ``size`` and ``fill_value``).
    """
    op = "boolean_mask"
    mask_np = checks.concrete_values(mask)
    data = checks.as_array(op, "data", data, "data")
    checks.check_ndim(op, "data", data, min_ndim=1)
    mask_arr = _as_mask(op, mask)
    if mask_arr.shape[0] != data.shape[0]:
        raise checks.value_error(
            op,
            f"len(mask) == data.shape[0] = {data.shape[0]}",
            f"mask.shape = {tuple(mask_arr.shape)}",
        )
    fill_value = checks.static_scalar(op, "fill_value", fill_value, data.dtype)
    exact = checks.static_size(
        op,
        "size",
        size,
        "mask",
        mask_np is None,
        lambda: np.count_nonzero(mask_np[0]),  # type: ignore[index]
    )
    checks.check_output_size(op, f"size={exact}", (exact, *data.shape[1:]))
    # A prefix sum and data-dependent gathers: replicated on Explicit meshes.
    data, mask_arr = checks.replicated(data), checks.replicated(mask_arr)
    if size is not None or not checks.is_eager(data, mask_arr):
        return Masked(*_boolean_mask_jit(exact, fill_value, data, mask_arr))
    values, indices = _boolean_mask_jit(
        checks.bucket(exact, data.shape[0]), fill_value, data, mask_arr
    )
    return Masked(checks.trim(values, exact), checks.trim(indices, exact))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _boolean_mask_rule(size, fill_value, data, mask):
    return _select_rows(data, mask, size, fill_value)


def _boolean_mask_rule_fwd(size, fill_value, data, mask):
    return _boolean_mask_rule(size, fill_value, data, mask), mask


def _boolean_mask_rule_bwd(size, fill_value, mask, cotangents):
    del size, fill_value
    g, _ = cotangents  # the int32 indices' cotangent is float0
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _boolean_mask_gradient_rule(g.shape[0], g, mask), None


_boolean_mask_rule.defvjp(_boolean_mask_rule_fwd, _boolean_mask_rule_bwd)
# Jitted, so that an eager call compiles one program instead of dispatching op by op.
_boolean_mask_jit = jax.jit(_boolean_mask_rule, static_argnums=(0, 1))


def boolean_mask_gradient(mask: ArrayLike, g: ArrayLike) -> jax.Array:
    """The gradient of :func:`boolean_mask`: scatters output rows back to their source rows.

    Row ``i`` of the result is ``g[k]`` when ``mask[i]`` is the ``k``-th
    (0-based) true entry and ``k < S``, and zero otherwise. Computed as a
    gather: ``k = cumsum(mask)[i] - 1``.

    Args:
      mask: ``[M]`` bool array, the forward mask.
      g: ``[S, F...]`` array (rank >= 1) of any numeric or bool dtype, the
        cotangent of ``boolean_mask(data, mask, size=S).values``. Rows past
        the number of true entries (fill rows) are ignored.

    Returns:
      ``[M, F...]`` array of ``g.dtype``.

    Raises:
      TypeError: ``mask`` not bool or unsupported ``g`` dtype.
      ValueError: ``mask`` not rank 1 or ``g`` of rank 0.

    Gradients:
      Reverse-mode w.r.t. floating ``g``: ``boolean_mask(h, mask,
      size=S).values`` (the operator is linear; the residual is ``mask``).

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> mask = jnp.array([False, True, True, False])
      >>> jaxops.boolean_mask_gradient(mask, jnp.array([10.0, 20.0, 30.0]))
      Array([ 0., 10., 20.,  0.], dtype=float32)

    Caffe2: ``BooleanMaskGradient`` (here row-wise for any rank).
    """
    op = "boolean_mask_gradient"
    mask = _as_mask(op, mask)
    g = checks.as_array(op, "g", g, "data")
    checks.check_ndim(op, "g", g, min_ndim=1)
    return _boolean_mask_gradient_rule(g.shape[0], checks.replicated(g), checks.replicated(mask))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _boolean_mask_gradient_rule(size, g, mask):
    del size  # g.shape[0]; the backward pass needs it statically
    return _scatter_rows(mask, g, 0)


def _boolean_mask_gradient_rule_fwd(size, g, mask):
    return _boolean_mask_gradient_rule(size, g, mask), mask


def _boolean_mask_gradient_rule_bwd(size, mask, h):
    if not jnp.issubdtype(h.dtype, jnp.floating):
        return None, None
    return _select_rows(h, mask, size, 0)[0], None


_boolean_mask_gradient_rule.defvjp(_boolean_mask_gradient_rule_fwd, _boolean_mask_gradient_rule_bwd)


# --------------------------------------------------------------------------- #
# boolean_mask_lengths
# --------------------------------------------------------------------------- #


def boolean_mask_lengths(lengths: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Counts the true entries of ``mask`` inside each segment described by ``lengths``.

    Segment ``n`` covers ``mask[off[n] : off[n] + lengths[n]]`` with ``off[n]
    = lengths[0] + ... + lengths[n-1]``; the result is how many rows of that
    segment ``boolean_mask`` keeps, i.e. the new lengths after masking.

    Args:
      lengths: ``[N]`` integer array.
      mask: ``[M]`` bool array.

    Returns:
      ``[N]`` array of ``lengths.dtype``.

    Raises:
      TypeError: ``lengths`` not integer or ``mask`` not bool.
      ValueError: wrong ranks, and the value checks ``lengths >= 0`` and
        ``sum(lengths) == len(mask)`` (raised when ``lengths`` is concrete,
        else ``checkify`` checks; without checkify lengths are clipped to the
        mask, so the result never counts past its end).

    Gradients:
      None: the output is integer and the inputs are integer and bool.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> mask = jnp.array([True, False, True, True, False, False])
      >>> jaxops.boolean_mask_lengths(jnp.array([2, 3, 1]), mask)
      Array([1, 2, 0], dtype=int32)

    Caffe2: ``BooleanMaskLengths``.
    """
    op = "boolean_mask_lengths"
    lengths_arr = checks.as_lengths(op, lengths)
    mask_arr = _as_mask(op, mask)
    total = mask_arr.shape[0]
    checks.check_lengths(op, lengths, total=total, total_name="len(mask)", equal_total=True)
    mask_arr = checks.replicated(mask_arr)
    if checks.is_eager(lengths_arr, mask_arr):  # false past the segments: never counted
        mask_arr = checks.pad_to_bucket(mask_arr)
    return _mask_lengths(lengths_arr, mask_arr)


@jax.jit  # one program, not a dispatch per op, for eager calls
def _mask_lengths(lengths, mask):
    """The numerics of ``boolean_mask_lengths``."""
    num_segments, total = lengths.shape[0], mask.shape[0]
    if num_segments == 0 or total == 0:
        return jnp.zeros_like(lengths)
    offsets, effective = checks.segments(lengths, total)
    starts = jnp.minimum(offsets, total)
    ends = starts + effective  # <= total: effective is 0 where offsets >= total
    counts = _count_before(mask, jnp.concatenate([starts, ends]))
    return (counts[num_segments:] - counts[:num_segments]).astype(lengths.dtype)


# The block width of _count_before, fastest measured on XLA CPU: with a mask of
# 33.5M entries and 131,072 segments, 17 ms against 62 ms for a full prefix sum.
_COUNT_BLOCK = 32


def _count_before(mask, positions):
    """``sum(mask[:p])`` as int32 for each ``p`` in ``positions`` (``0 <= p <= len(mask)``).

    Without a prefix sum over the whole mask: the true entries of each block of
    ``_COUNT_BLOCK`` (a reduction), a prefix sum over the blocks, and for each
    position the count in its own block before it.
    """
    block = _COUNT_BLOCK
    rows = jnp.pad(mask, (0, -mask.shape[0] % block)).reshape(-1, block)
    per_block = jnp.sum(rows, axis=1, dtype=jnp.int32)
    before = jnp.concatenate([jnp.zeros((1,), jnp.int32), checks.cumsum(per_block)])
    b, r = positions // block, positions % block
    partial = jnp.take(rows, b, axis=0, mode="clip")  # b == len(rows) only where r == 0
    partial = partial & (lax.broadcasted_iota(jnp.int32, partial.shape, 1) < r[:, None])
    return before[b] + jnp.sum(partial, axis=1, dtype=jnp.int32)


# --------------------------------------------------------------------------- #
# boolean_unmask
# --------------------------------------------------------------------------- #


def boolean_unmask(
    masks: Sequence[ArrayLike],
    values: Sequence[ArrayLike],
    *,
    fill_value: bool | int | float = 0,
) -> jax.Array:
    """Merges several masked streams back into one array (the inverse of ``boolean_mask``).

    At each position ``p`` the first mask that is true at ``p`` wins, and the
    output takes that stream's next unused row: stream ``i``'s rows are
    consumed, in order, only at the positions it wins. Extra rows are
    ignored, so padded ``boolean_mask(..., size=)`` outputs merge back:
    ``boolean_unmask([m, ~m], [boolean_mask(x, m, size=n).values,
    boolean_mask(x, ~m, size=n).values]) == x``.

    Args:
      masks: a non-empty list or tuple of ``K`` ``[S]`` bool arrays.
      values: a list or tuple of ``K`` arrays, ``values[i]`` ``[V_i, F...]``,
        with common trailing shape ``F...`` and dtype (any numeric or bool).
      fill_value: static Python scalar for positions that, under tracing, are
        covered by no mask or whose stream has run out of rows.

    Returns:
      ``[S, F...]`` array of the values' dtype.

    Raises:
      TypeError: ``masks``/``values`` not lists or tuples, a mask not bool,
        the values' dtypes differ or are unsupported.
      ValueError: no masks; ``len(masks) != len(values)``; masks of different
        lengths or not rank 1; values of rank 0 or different trailing shapes;
        and the value checks "every position is covered by some mask" and
        "each stream has at least as many rows as positions it wins" (raised
        when the masks are concrete, else ``checkify`` checks; without
        checkify those positions get ``fill_value``).

    Gradients:
      Reverse-mode w.r.t. each floating ``values[i]``: the row consumed at
      position ``p`` gets ``g[p]``; unconsumed rows get 0 (a
      ``boolean_mask`` of ``g`` by the positions stream ``i`` wins). The
      residual is the ``[K, S]`` winner mask. Masks get no cotangent.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> m = jnp.array([True, False, True, False])
      >>> jaxops.boolean_unmask([m, ~m], [jnp.array([1, 3]), jnp.array([2, 4, 99])])
      Array([1, 2, 3, 4], dtype=int32)

    Caffe2: ``BooleanUnmask`` (here with extra rows allowed, trailing
    dimensions, and a gradient).
    """
    op = "boolean_unmask"
    for name, seq in (("masks", masks), ("values", values)):
        if not isinstance(seq, (list, tuple)):
            raise checks.type_error(op, f"`{name}` to be a list or tuple", type(seq).__name__)
    if not masks:
        raise checks.value_error(op, "at least one mask", "masks=[]")
    if len(masks) != len(values):
        raise checks.value_error(
            op, "len(masks) == len(values)", f"{len(masks)} masks and {len(values)} values"
        )
    masks_np = checks.concrete_values(*masks)
    mask_arrs = [_as_mask(op, m, f"masks[{i}]") for i, m in enumerate(masks)]
    value_arrs = [checks.as_array(op, f"values[{i}]", v, "data") for i, v in enumerate(values)]
    positions = mask_arrs[0].shape[0]
    for i, m in enumerate(mask_arrs):
        if m.shape[0] != positions:
            raise checks.value_error(
                op,
                f"every mask of length len(masks[0]) = {positions}",
                f"masks[{i}].shape = {tuple(m.shape)}",
            )
    for i, v in enumerate(value_arrs):
        checks.check_ndim(op, f"values[{i}]", v, min_ndim=1)
        if v.shape[1:] != value_arrs[0].shape[1:]:
            raise checks.value_error(
                op,
                f"values with common trailing shape values[0].shape[1:] = "
                f"{tuple(value_arrs[0].shape[1:])}",
                f"values[{i}].shape = {tuple(v.shape)}",
            )
        if v.dtype != value_arrs[0].dtype:
            raise checks.type_error(
                op,
                f"values of one dtype, values[0].dtype = {value_arrs[0].dtype}",
                f"values[{i}].dtype = {v.dtype}",
            )
    fill_value = checks.static_scalar(op, "fill_value", fill_value, value_arrs[0].dtype)
    rows = tuple(v.shape[0] for v in value_arrs)
    if masks_np is not None:
        _unmask_checks(op, np, np.stack(masks_np).astype(bool), rows)
    else:
        _unmask_checks(
            op, jnp, _winners(checks.replicated(jnp.stack(mask_arrs))), rows, winners_given=True
        )
    value_arrs = [checks.replicated(v) for v in value_arrs]
    if checks.is_eager(*mask_arrs, *value_arrs) and not checks.checks_off():
        # Rows bucketed (zero rows past the wins are never read): one program
        # serves eager calls whose masks select changing numbers of rows.
        # Not unchecked: there a stream short of rows gives fill_value rows.
        rows = tuple(checks.bucket(r, positions) for r in rows)
        value_arrs = [checks.pad_rows(v, r) for v, r in zip(value_arrs, rows, strict=True)]
    return _unmask_jit(rows, fill_value, tuple(mask_arrs), tuple(value_arrs))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _unmask_jit(rows, fill_value, masks, values):
    stacked = checks.replicated(jnp.stack(masks))
    return _boolean_unmask_rule(rows, fill_value, stacked, values)


def _winners(stacked, xp=jnp):
    """``[K, S]``: ``win[i, p]`` is true where mask ``i`` is the first true mask at ``p``."""
    dtype = xp.int32
    return stacked & (xp.cumsum(stacked.astype(dtype), axis=0, dtype=dtype) == 1)


def _unmask_checks(op, xp, stacked, rows, winners_given=False):
    """Coverage and stream-length checks, written as reductions (they run on sharded masks)."""
    win = stacked if winners_given else _winners(stacked, xp)
    if win.shape[1] == 0:
        return
    uncovered, first_uncovered = checks.first_failure(xp, xp.logical_not(xp.any(win, axis=0)))
    checks.check_values(
        op,
        xp.logical_not(uncovered),
        "every position covered by some mask",
        "position {} covered by none",
        first_uncovered,
    )
    wins = xp.sum(win.astype(xp.int32), axis=1)
    rows = np.asarray(rows, np.int32)
    short, worst = checks.first_failure(xp, wins > xp.asarray(rows))
    checks.check_values(
        op,
        xp.logical_not(short),
        "each stream to have at least as many rows as positions it wins",
        "stream {} wins {} positions but values[{}] has {} rows",
        worst,
        checks.pick(xp, wins, worst),
        worst,
        checks.pick(xp, xp.asarray(rows), worst),
    )


def _unmask(stacked, values, fill_value):
    """The forward numerics of ``boolean_unmask``: one gather from the concatenated values."""
    num_streams, positions = stacked.shape
    features = values[0].shape[1:]
    dtype = values[0].dtype
    fill = checks.full_like_dtype(fill_value, dtype)
    rows = np.asarray([v.shape[0] for v in values], np.int32)
    if positions == 0 or rows.sum() == 0:
        return jnp.broadcast_to(fill, (positions, *features))
    win = _winners(stacked)
    slot = checks.cumsum(win, axis=1) - 1  # [K, S]: row used by stream k at p
    limit = jnp.asarray(rows).reshape(num_streams, 1)
    offsets = jnp.asarray((np.cumsum(rows) - rows).astype(np.int32)).reshape(num_streams, 1)
    usable = win & (slot < limit)
    # At most one stream wins each position, so the sums pick its (valid) flat row.
    flat = jnp.sum(jnp.where(usable, offsets + slot, 0), axis=0, dtype=jnp.int32)
    valid = jnp.any(usable, axis=0)
    table = jnp.concatenate(values, axis=0) if num_streams > 1 else values[0]
    gathered = checks.take_in_bounds(table, flat)  # a usable row, or 0
    return jnp.where(checks.broadcast_rows(valid, 1 + len(features)), gathered, fill)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _boolean_unmask_rule(rows, fill_value, stacked, values):
    del rows  # the V_i; the backward pass needs them statically
    return _unmask(stacked, values, fill_value)


def _boolean_unmask_rule_fwd(rows, fill_value, stacked, values):
    return _boolean_unmask_rule(rows, fill_value, stacked, values), _winners(stacked)


def _boolean_unmask_rule_bwd(rows, fill_value, win, g):
    del fill_value
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, tuple(None for _ in rows)
    return None, tuple(_select_rows(g, win[i], size, 0)[0] for i, size in enumerate(rows))


_boolean_unmask_rule.defvjp(_boolean_unmask_rule_fwd, _boolean_unmask_rule_bwd)


# --------------------------------------------------------------------------- #
# sequence_mask
# --------------------------------------------------------------------------- #

_TRIANGULAR = ("upper", "lower", "upperdiag", "lowerdiag")
_MODES = ("sequence", "window", *_TRIANGULAR)
_MAX_RADIUS = 2**30


class _View(NamedTuple):
    """How ``sequence_mask`` views ``x``: ``[rows, cols]`` with ``repeat`` trailing elements.

    ``mask_shape`` is the ``[rows, cols // repeat]`` mask laid out in ``x``'s
    own dimensions (ones outside ``[batch + 1, repeat_from_axis)``), so the
    mask broadcasts against ``x`` without reshaping it: a donated ``x`` is then
    masked in place.
    """

    rows: int
    cols: int
    repeat: int
    mask_shape: tuple[int, ...]


def _axis(op, name, value, ndim):
    value = checks.static_int(op, name, value)
    if not -ndim <= value < ndim:
        raise checks.value_error(
            op, f"{name} in [-ndim, ndim) = [{-ndim}, {ndim})", f"{name}={value}"
        )
    return value % ndim


def _mask_out(lengths, mode, view, radius):
    """The bool mask of elements to replace, broadcastable to ``[B, rows, cols, D]``."""
    rows, cols, repeat = view.rows, view.cols, view.repeat
    shape = (1, rows, cols // repeat if repeat else 0, 1)
    i = lax.broadcasted_iota(jnp.int32, shape, 1)
    j = lax.broadcasted_iota(jnp.int32, shape, 2)
    if mode == "sequence":
        bound = checks.to_int32(lengths[:rows], 0, cols).reshape(1, rows, 1, 1)
        return j >= bound
    if mode == "window":
        center = checks.to_int32(lengths[:rows], -radius - 1, cols + radius).reshape(1, rows, 1, 1)
        return (j < center - radius) | (j > center + radius)
    return {"upper": j > i, "lower": j < i, "upperdiag": j >= i, "lowerdiag": j <= i}[mode]


def sequence_mask(
    x: ArrayLike,
    lengths: ArrayLike | None = None,
    *,
    mode: str = "sequence",
    axis: int = 1,
    batch: int | None = None,
    repeat_from_axis: int | None = None,
    radius: int = 10,
    fill_value: bool | int | float = -np.inf,
) -> jax.Array:
    """Replaces the elements of ``x`` outside a sequence, window or triangle with ``fill_value``.

    Caution:
      ``sequence_mask`` views ``x`` as one matrix over **all** flattened
      leading dims (Caffe2's semantics, kept for conformance): a triangular
      mode on ``[B, T, T]`` without ``batch=0`` masks only the first ``T``
      rows, and ``"sequence"`` wants one length per flattened row, not one
      per batch element. For attention, use :func:`attention_mask` (a
      per-matrix bool mask from lengths or segment ids and positions) with
      :func:`safe_softmax` ``(where=...)`` or ``jax.nn.dot_product_attention``.

    ``x`` is viewed as a matrix ``[rows, cols]`` with ``rows =
    prod(shape[:axis])`` (all leading dims flattened) and ``cols =
    prod(shape[axis:])``; element ``(i, j)`` becomes ``fill_value`` when

    | mode | masked when | ``lengths`` |
    |---|---|---|
    | ``"sequence"`` | ``j >= lengths[i]`` | lengths |
    | ``"window"`` | ``j < c[i] - radius`` or ``j > c[i] + radius`` | centers ``c`` |
    | ``"upper"`` | ``j > i`` (keeps the causal lower triangle) | none |
    | ``"lower"`` | ``j < i`` | none |
    | ``"upperdiag"`` | ``j >= i`` | none |
    | ``"lowerdiag"`` | ``j <= i`` | none |

    The mode names the region masked *out*. ``lengths`` are compared, not
    indexed: lengths ``>= cols`` mask nothing and lengths ``<= 0`` mask the
    whole row (no value check), as ``jnp.arange(cols) >= lengths[:, None]``
    would. Only the first ``rows`` entries are read. :func:`safe_softmax`
    handles the rows it masks entirely.

    Args:
      x: array of a floating dtype, rank >= 1.
      lengths: ``[>= rows]`` integer array: sequence lengths (``"sequence"``)
        or window centers (``"window"``); must be omitted for the
        triangular modes.
      mode: static str, one of the table's modes.
      axis: static int in ``[-ndim, ndim)``, the first column axis.
      batch: static int ``b < axis`` or None: view ``x`` as ``[B, rows,
        cols]`` with ``B = prod(shape[:b+1])`` and ``rows =
        prod(shape[b+1:axis])``; every batch slice gets the same mask.
      repeat_from_axis: static int ``r > axis`` or None (``"sequence"`` only,
        no ``batch``): view ``x`` as ``[rows, cols / D, D]`` with ``D =
        prod(shape[r:])`` and mask ``(i, j, :)`` when ``j >= lengths[i]``.
      radius: static int in ``[0, 2**30]``, the half-width of a window.
      fill_value: static Python scalar written to the masked elements.

    Returns:
      Array of ``x``'s shape and dtype.

    Raises:
      TypeError: ``x`` not floating or ``lengths`` not integer.
      ValueError: an unknown ``mode``; ``lengths`` missing for
        ``"sequence"``/``"window"``, given for a triangular mode, not rank 1
        or with fewer than ``rows`` entries; ``axis``, ``batch`` or
        ``repeat_from_axis`` outside ``[-ndim, ndim)``; ``batch >= axis``;
        ``repeat_from_axis`` with ``batch``, with another mode than
        ``"sequence"``, ``<= axis``, or not dividing into the columns;
        ``radius`` out of range.

    Gradients:
      Reverse-mode w.r.t. ``x``: the cotangent with the masked elements
      replaced by 0 (the mask is rebuilt from the residual ``lengths``).
      ``lengths`` gets no cotangent.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.zeros((3, 4))
      >>> jaxops.sequence_mask(x, jnp.array([1, 4, 2]))
      Array([[  0., -inf, -inf, -inf],
             [  0.,   0.,   0.,   0.],
             [  0.,   0., -inf, -inf]], dtype=float32)
      >>> jaxops.sequence_mask(jnp.zeros((3, 3)), mode="upper", fill_value=1.0)
      Array([[0., 1., 1.],
             [0., 0., 1.],
             [0., 0., 0.]], dtype=float32)

    Caffe2: ``SequenceMask``.
    """
    op = "sequence_mask"
    x = checks.as_array(op, "x", x, "floating")
    ndim = x.ndim
    if not isinstance(mode, str) or mode not in _MODES:
        raise checks.value_error(op, f"mode in {_MODES}", f"mode={mode!r}")
    axis = _axis(op, "axis", axis, ndim)
    shape = x.shape
    if batch is not None:
        batch = _axis(op, "batch", batch, ndim)
        if batch >= axis:
            raise checks.value_error(
                op, f"batch < axis = {axis}", f"batch={batch}", "(both after normalisation)"
            )
    if repeat_from_axis is not None:
        repeat_from_axis = _axis(op, "repeat_from_axis", repeat_from_axis, ndim)
        if batch is not None or mode != "sequence":
            raise checks.value_error(
                op,
                'repeat_from_axis only with mode="sequence" and batch=None',
                f"mode={mode!r}, batch={batch}",
            )
        if repeat_from_axis <= axis:
            raise checks.value_error(
                op, f"repeat_from_axis > axis = {axis}", f"repeat_from_axis={repeat_from_axis}"
            )
    radius = checks.static_int(op, "radius", radius, minimum=0)
    if radius > _MAX_RADIUS:
        raise checks.value_error(op, "radius <= 2**30", f"radius={radius}")
    fill_value = checks.static_scalar(op, "fill_value", fill_value, x.dtype)
    lead = 0 if batch is None else batch + 1
    repeat_from = repeat_from_axis or ndim
    view = _View(
        rows=int(np.prod(shape[lead:axis], dtype=np.int64)),
        cols=int(np.prod(shape[axis:], dtype=np.int64)),
        repeat=int(np.prod(shape[repeat_from:], dtype=np.int64)),
        mask_shape=(1,) * lead + tuple(shape[lead:repeat_from]) + (1,) * (ndim - repeat_from),
    )
    if mode in _TRIANGULAR:
        if lengths is not None:
            raise checks.value_error(
                op, f"no second argument for mode={mode!r}", "lengths", "Omit `lengths`."
            )
        lengths_arr = jnp.zeros((0,), jnp.int32)
    else:
        name = "lengths" if mode == "sequence" else "lengths (window centers)"
        if lengths is None:
            raise checks.value_error(op, f"{name} for mode={mode!r}", "lengths=None")
        lengths_arr = checks.as_lengths(op, lengths)
        if lengths_arr.shape[0] < view.rows:
            raise checks.value_error(
                op,
                f"at least rows = prod(x.shape[{lead}:{axis}]) = {view.rows} {name}",
                f"lengths.shape = {tuple(lengths_arr.shape)}",
            )
    return _sequence_mask_rule(mode, view, radius, fill_value, x, lengths_arr)


def _apply_mask(x, lengths, mode, view, radius, fill_value):
    if x.size == 0:
        return x
    masked = _mask_out(lengths, mode, view, radius).reshape(view.mask_shape)
    fill = checks.full_like_dtype(fill_value, x.dtype)
    return jnp.where(masked, fill, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _sequence_mask_rule(mode, view, radius, fill_value, x, lengths):
    return _apply_mask(x, lengths, mode, view, radius, fill_value)


def _sequence_mask_rule_fwd(mode, view, radius, fill_value, x, lengths):
    return _sequence_mask_rule(mode, view, radius, fill_value, x, lengths), lengths


def _sequence_mask_rule_bwd(mode, view, radius, fill_value, lengths, g):
    del fill_value
    return _apply_mask(g, lengths, mode, view, radius, 0), None


_sequence_mask_rule.defvjp(_sequence_mask_rule_fwd, _sequence_mask_rule_bwd)


# --------------------------------------------------------------------------- #
# safe_softmax
# --------------------------------------------------------------------------- #


def safe_softmax(
    logits: ArrayLike, *, axis: int | tuple[int, ...] = -1, where: ArrayLike | None = None
) -> jax.Array:
    """Softmax that returns zeros, not NaN, on slices with no entry to normalise.

    Elsewhere it equals ``jax.nn.softmax(logits, axis=axis, where=where)`` (a
    slice holding ``+inf`` or NaN at an included entry still gives NaN, as
    there). A slice is empty when all its entries are ``-inf`` or excluded by
    ``where``; it gives all zeros, so fully masked attention rows (padding
    queries) contribute nothing instead of poisoning the batch with NaN.
    ``where`` is the natural partner of :func:`attention_mask`; it also makes
    the logits at excluded entries irrelevant (even NaN there is ignored).

    Args:
      logits: array of a floating dtype.
      axis: static int in ``[-ndim, ndim)`` or tuple of them, the axes to
        normalise over.
      where: optional bool array broadcastable to ``logits.shape`` (e.g. the
        ``[B, 1, Tq, Tk]`` output of :func:`attention_mask` against
        ``[B, H, Tq, Tk]`` logits); False excludes the entry.

    Returns:
      Array of ``logits``' shape and dtype, 0 at excluded entries. 16-bit
      inputs are computed in float32.

    Raises:
      TypeError: ``logits`` not floating; ``where`` not bool.
      ValueError: an axis out of range or repeated; ``where`` not
        broadcastable to ``logits``.

    Gradients:
      Reverse-mode w.r.t. ``logits``: ``y * (g - sum(g * y, axis))`` with the
      output ``y`` as the only residual: finite everywhere, and zero on empty
      slices, at ``-inf`` entries and at excluded entries. ``where`` gets none.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> logits = jnp.array([[0.0, 0.0], [-jnp.inf, -jnp.inf]])
      >>> jaxops.safe_softmax(logits)
      Array([[0.5, 0.5],
             [0. , 0. ]], dtype=float32)
      >>> keep = jnp.array([[True, False], [False, False]])
      >>> jaxops.safe_softmax(jnp.array([[1.0, jnp.nan], [2.0, 3.0]]), where=keep)
      Array([[1., 0.],
             [0., 0.]], dtype=float32)

    Beyond Caffe2 (no Caffe2 operator).
    """
    op = "safe_softmax"
    logits = checks.as_array(op, "logits", logits, "floating")
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = tuple(_axis(op, "axis", a, logits.ndim) for a in axes)
    if len(set(axes)) != len(axes):
        raise checks.value_error(op, "distinct axes", f"axis={axis!r}")
    if where is None:
        return _safe_softmax_jit(axes, logits)
    where = checks.as_array(op, "where", where, "bool")
    checks.check_broadcastable(op, "where", where, logits.shape, "logits")
    return _safe_softmax_where_jit(axes, logits, where)


def _compute_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _softmax(logits, axes, where=None):
    x = logits.astype(_compute_dtype(logits.dtype))
    if x.size == 0:
        return logits
    if where is not None:
        where = jnp.broadcast_to(where, x.shape)
        x = jnp.where(where, x, jnp.array(-jnp.inf, x.dtype))
    # The plain softmax first, in the exact form XLA CPU fuses into one YNNPACK
    # kernel (2x faster than any variant that guards the shift), then zeros on
    # the slices that are all -inf, where it computed -inf - -inf = NaN.
    top = jnp.max(x, axis=axes, keepdims=True)
    e = jnp.exp(x - top)
    y = e / jnp.sum(e, axis=axes, keepdims=True)
    dead = top == -jnp.inf  # the whole slice is -inf
    if where is not None:  # 0 where excluded, even beside an included NaN or +inf
        dead = dead | ~where
    return jnp.where(dead, jnp.zeros((), x.dtype), y).astype(logits.dtype)


def _softmax_bwd(axes, y, g):
    dtype = _compute_dtype(y.dtype)
    y32, g32 = y.astype(dtype), g.astype(dtype)
    dot = jnp.sum(g32 * y32, axis=axes, keepdims=True)
    return (y32 * (g32 - dot)).astype(y.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _safe_softmax_rule(axes, logits):
    return _softmax(logits, axes)


def _safe_softmax_rule_fwd(axes, logits):
    y = _safe_softmax_rule(axes, logits)
    return y, y


def _safe_softmax_rule_bwd(axes, y, g):
    return (_softmax_bwd(axes, y, g),)


_safe_softmax_rule.defvjp(_safe_softmax_rule_fwd, _safe_softmax_rule_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _safe_softmax_where_rule(axes, logits, where):
    return _softmax(logits, axes, where)


def _safe_softmax_where_rule_fwd(axes, logits, where):
    y = _safe_softmax_where_rule(axes, logits, where)
    return y, (y, where)


def _safe_softmax_where_rule_bwd(axes, residuals, g):
    y, where = residuals
    # Excluded entries get 0 even when an included NaN makes the slice's sum NaN.
    zero = jnp.zeros((), y.dtype)
    return jnp.where(where, _softmax_bwd(axes, y, g), zero), None


_safe_softmax_where_rule.defvjp(_safe_softmax_where_rule_fwd, _safe_softmax_where_rule_bwd)
# Jitted: the plain softmax computes -inf - -inf = NaN on dead slices before they
# are zeroed; under jit, jax_debug_nans only sees the (NaN-free) output.
_safe_softmax_jit = jax.jit(_safe_softmax_rule, static_argnums=0)
_safe_softmax_where_jit = jax.jit(_safe_softmax_where_rule, static_argnums=0)
