"""Sequence packing: ``pack_rnn_sequence`` and ``unpack_rnn_sequence``.

Both directions are written as one gather each (XLA CPU gathers are 2-3x
faster than scatters), and each is the other's gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxops._src import checks


def _pack(values, lengths, max_length, pad_value, time_major):
    """The forward numerics of ``pack_rnn_sequence`` (a gather and a select)."""
    num_seqs = lengths.shape[0]
    grid = (max_length, num_seqs) if time_major else (num_seqs, max_length)
    shape = grid + values.shape[1:]
    pad = checks.full_like_dtype(pad_value, values.dtype)
    if values.shape[0] == 0 or max_length == 0 or num_seqs == 0:
        return jnp.broadcast_to(pad, shape)
    offsets, effective = checks.segments(lengths, values.shape[0], max_length)
    seq_axis = 1 if time_major else 0
    t = lax.broadcasted_iota(jnp.int32, grid, 1 - seq_axis)
    offsets = jnp.expand_dims(offsets, 1 - seq_axis)
    valid = t < jnp.expand_dims(effective, 1 - seq_axis)
    rows = jnp.where(valid, offsets + t, 0)
    gathered = jnp.take(values, rows, axis=0, mode="clip")
    return jnp.where(checks.broadcast_rows(valid, len(shape)), gathered, pad)


def _unpack(packed, lengths, total_length, time_major):
    """The forward numerics of ``unpack_rnn_sequence`` (a gather and a select)."""
    seq_axis = 1 if time_major else 0
    max_length, num_seqs = packed.shape[1 - seq_axis], packed.shape[seq_axis]
    features = packed.shape[2:]
    if total_length == 0 or max_length == 0 or num_seqs == 0:
        return jnp.zeros((total_length, *features), packed.dtype)
    offsets, effective = checks.segments(lengths, total_length, max_length)
    seq, t, valid = checks.row_segments(offsets, effective, total_length)
    flat = t * num_seqs + seq if time_major else seq * max_length + t
    flat = jnp.where(valid, flat, 0)
    gathered = jnp.take(packed.reshape(-1, *features), flat, axis=0, mode="clip")
    zero = jnp.zeros((), packed.dtype)
    return jnp.where(checks.broadcast_rows(valid, 1 + len(features)), gathered, zero)


def pack_rnn_sequence(
    values: ArrayLike,
    lengths: ArrayLike,
    *,
    max_length: int | None = None,
    pad_value: bool | int | float = 0,
    time_major: bool = True,
) -> jax.Array:
    """Packs a flat batch of variable-length sequences into a padded ``[T, N, F...]`` array.

    ``out[t, n] = values[off[n] + t]`` for ``t < lengths[n]`` and ``pad_value``
    elsewhere, where ``off[n] = lengths[0] + ... + lengths[n-1]``. This is the
    inverse of :func:`unpack_rnn_sequence`, and the jittable equivalent of
    ``torch.nn.utils.rnn.pad_sequence(torch.split(values, lengths))``.

    Args:
      values: ``[M, F...]`` array (rank >= 1) of any numeric or bool dtype: the
        sequences concatenated along axis 0. Rows past ``sum(lengths)`` are ignored.
      lengths: ``[N]`` integer array, the length of each sequence.
      max_length: static int ``T``, the padded length. Defaults to
        ``max(lengths)`` (0 when ``N == 0``) when ``lengths`` is concrete;
        required when it is traced.
      pad_value: static Python scalar written to the padding slots.
      time_major: static bool; ``False`` returns ``[N, T, F...]``.

    Returns:
      ``[T, N, F...]`` (or ``[N, T, F...]``) array of ``values.dtype``.

    Raises:
      TypeError: non-integer ``lengths``, unsupported ``values`` dtype, or a
        non-scalar ``pad_value``.
      ValueError: wrong ranks; ``max_length`` missing under tracing; and the
        value checks ``lengths >= 0``, ``sum(lengths) <= M`` and
        ``max(lengths) <= T`` (raised when ``lengths`` is concrete, else
        ``checkify`` checks; without checkify the lengths are clipped).

    Gradients:
      Reverse-mode w.r.t. floating ``values``:
      ``unpack_rnn_sequence(g, lengths, total_length=M)``. The only residual is
      ``lengths``. ``lengths`` gets no cotangent.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.pack_rnn_sequence(jnp.arange(1, 6), jnp.array([3, 2]))
      Array([[1, 4],
             [2, 5],
             [3, 0]], dtype=int32)

    Caffe2: ``PackRNNSequence`` (here also rank-1 ``values``, ``pad_value``
    and ``time_major``).
    """
    op = "pack_rnn_sequence"
    lengths_np = checks.concrete_values(lengths)
    values = checks.as_array(op, "values", values, "data")
    checks.check_ndim(op, "values", values, min_ndim=1)
    lengths_arr = checks.as_lengths(op, lengths)
    time_major = checks.static_bool(op, "time_major", time_major)
    pad_value = checks.static_scalar(op, "pad_value", pad_value, values.dtype)
    exact = checks.static_size(
        op,
        "max_length",
        max_length,
        "lengths",
        lengths_np is None,
        lambda: max(int(np.max(lengths_np[0], initial=0)), 0),  # type: ignore[index]
    )
    checks.check_lengths(
        op, lengths, total=values.shape[0], total_name="values.shape[0]", max_length=exact
    )
    checks.check_output_size(
        op, f"max_length={exact}", (exact, lengths_arr.shape[0], *values.shape[1:])
    )
    # Data-dependent gathers: replicated on Explicit meshes.
    values, lengths_arr = checks.replicated(values), checks.replicated(lengths_arr)
    if not checks.is_eager(values, lengths_arr):
        return _pack_jit(values.shape[0], exact, pad_value, time_major, values, lengths_arr)
    values = checks.pad_to_bucket(values)  # rows past sum(lengths) are never read
    if max_length is not None:
        return _pack_jit(values.shape[0], exact, pad_value, time_major, values, lengths_arr)
    bucketed = checks.bucket(exact, values.shape[0])
    out = _pack_jit(values.shape[0], bucketed, pad_value, time_major, values, lengths_arr)
    return checks.trim(out, exact, axis=0 if time_major else 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _pack_rule(num_rows, max_length, pad_value, time_major, values, lengths):
    del num_rows  # values.shape[0]; the backward pass needs it statically
    return _pack(values, lengths, max_length, pad_value, time_major)


def _pack_rule_fwd(num_rows, max_length, pad_value, time_major, values, lengths):
    out = _pack_rule(num_rows, max_length, pad_value, time_major, values, lengths)
    return out, lengths


def _pack_rule_bwd(num_rows, max_length, pad_value, time_major, lengths, g):
    del max_length, pad_value
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _unpack(g, lengths, num_rows, time_major), None


_pack_rule.defvjp(_pack_rule_fwd, _pack_rule_bwd)
# Jitted, so that an eager call compiles one program instead of dispatching op by op.
_pack_jit = jax.jit(_pack_rule, static_argnums=(0, 1, 2, 3))


def unpack_rnn_sequence(
    packed: ArrayLike,
    lengths: ArrayLike,
    *,
    total_length: int | None = None,
    time_major: bool = True,
) -> jax.Array:
    """Unpacks a padded ``[T, N, F...]`` array into the flat ``[L, F...]`` layout.

    ``out[off[n] + t] = packed[t, n]`` for ``t < lengths[n]``; rows at or past
    ``sum(lengths)`` are 0. Padding slots of ``packed`` are never read, so they
    need not hold any particular value. Inverse of :func:`pack_rnn_sequence`.

    Args:
      packed: ``[T, N, F...]`` (or ``[N, T, F...]`` when ``time_major=False``)
        array of any numeric or bool dtype.
      lengths: ``[N]`` integer array.
      total_length: static int ``L``, the number of output rows. Defaults to
        ``sum(lengths)`` when ``lengths`` is concrete; required when traced.
      time_major: static bool, the layout of ``packed``.

    Returns:
      ``[L, F...]`` array of ``packed.dtype``.

    Raises:
      TypeError: non-integer ``lengths`` or unsupported ``packed`` dtype.
      ValueError: ``packed`` of rank < 2 or whose sequence axis is not ``N``;
        ``total_length`` missing under tracing; and the value checks
        ``lengths >= 0``, ``max(lengths) <= T``, ``sum(lengths) <= L``.

    Gradients:
      Reverse-mode w.r.t. floating ``packed``:
      ``pack_rnn_sequence(g, lengths, max_length=T)`` (padding slots get 0).
      The only residual is ``lengths``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> packed = jnp.array([[1, 4], [2, 5], [3, 0]])
      >>> jaxops.unpack_rnn_sequence(packed, jnp.array([3, 2]))
      Array([1, 2, 3, 4, 5], dtype=int32)

    Caffe2: ``UnpackRNNSequence``.
    """
    op = "unpack_rnn_sequence"
    packed = checks.as_array(op, "packed", packed, "data")
    checks.check_ndim(op, "packed", packed, min_ndim=2)
    lengths_arr = checks.as_lengths(op, lengths)
    time_major = checks.static_bool(op, "time_major", time_major)
    seq_axis = 1 if time_major else 0
    if packed.shape[seq_axis] != lengths_arr.shape[0]:
        raise checks.value_error(
            op,
            f"packed.shape[{seq_axis}] == len(lengths) = {lengths_arr.shape[0]}",
            f"packed.shape = {tuple(packed.shape)}",
        )
    exact = checks.static_total(op, "total_length", total_length, lengths)
    checks.check_output_size(op, f"total_length={exact}", (exact, *packed.shape[2:]))
    checks.check_lengths(
        op,
        lengths,
        total=exact,
        total_name="total_length",
        max_length=packed.shape[1 - seq_axis],
        max_name=f"packed.shape[{1 - seq_axis}]",
    )
    max_length = packed.shape[1 - seq_axis]
    # Data-dependent gathers: replicated on Explicit meshes.
    packed, lengths_arr = checks.replicated(packed), checks.replicated(lengths_arr)
    if not checks.is_eager(packed, lengths_arr):
        return _unpack_jit(exact, max_length, time_major, packed, lengths_arr)
    packed = checks.pad_to_bucket(packed, axis=1 - seq_axis)  # steps past a length: unread
    max_length = packed.shape[1 - seq_axis]
    if total_length is not None:
        return _unpack_jit(exact, max_length, time_major, packed, lengths_arr)
    bucketed = checks.bucket(exact, packed.shape[0] * packed.shape[1])
    return checks.trim(_unpack_jit(bucketed, max_length, time_major, packed, lengths_arr), exact)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _unpack_rule(total_length, max_length, time_major, packed, lengths):
    del max_length  # packed's time axis; the backward pass needs it statically
    return _unpack(packed, lengths, total_length, time_major)


def _unpack_rule_fwd(total_length, max_length, time_major, packed, lengths):
    return _unpack_rule(total_length, max_length, time_major, packed, lengths), lengths


def _unpack_rule_bwd(total_length, max_length, time_major, lengths, g):
    del total_length
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _pack(g, lengths, max_length, 0, time_major), None


_unpack_rule.defvjp(_unpack_rule_fwd, _unpack_rule_bwd)
_unpack_jit = jax.jit(_unpack_rule, static_argnums=(0, 1, 2))
