"""Per-segment top-k: ``lengths_top_k`` and ``lengths_top_k_gradient``.

Exact ordering comes from *sort keys with a total order*: each entry maps to a
key (float32 where that is exact, else a signed integer) in which ``-0.0 ==
+0.0`` and every NaN is one NaN above ``+inf``. ``jax.lax.top_k`` orders float32
keys by their bit patterns and breaks ties by the lower index, so ranking keys
instead of data gives descending values with ties in ascending position.
float32 keys also hit XLA CPU's fast ``TopK`` kernel; other key dtypes lower to
a sort.

Two formulations give identical results:

* padded: gather the segments into ``[N, T]`` (``T`` a static bound on the
  lengths) and run ``lax.top_k`` once. Used when ``T`` is known
  (``max_length=``, or concrete ``lengths``) and ``N * T`` is small.
* chunked: split every segment into chunks of ``W`` entries (at most
  ``N + M // W`` chunks, a static count), keep each chunk's top ``k`` and
  repeat on the survivors until every segment has at most ``W`` candidates,
  then finish with the padded formulation. Its cost depends on ``M``, ``N``
  and ``k`` only, never on ``max(lengths) * N``. Because a chunk's survivors
  stay in position order for equal keys, ties still resolve by position.

Padding slots get the minimum key and sit after a segment's real entries, so
with the lower-index tie rule they never outrank a real entry.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxops._src import checks

# The chunked formulation's chunk width is max(_MIN_CHUNK, _CHUNK_PER_K * k):
# each pass shrinks a long segment's candidates by at least W / k >= 4x.
_MIN_CHUNK = 128
_CHUNK_PER_K = 4
# The padded formulation is used when N * T <= _PAD_RATIO * M (or T <= W).
_PAD_RATIO = 4


class TopK(NamedTuple):
    """The output of :func:`lengths_top_k`: ``values`` and ``indices``, both ``[N, k]``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> out = jaxops.lengths_top_k(jnp.array([2, 7, 5]), jnp.array([3]), k=2)
      >>> out.values, out.indices
      (Array([[7, 5]], dtype=int32), Array([[1, 2]], dtype=int32))
    """

    values: jax.Array
    indices: jax.Array


jax.export.register_namedtuple_serialization(TopK, serialized_name="jaxops.TopK")


# --------------------------------------------------------------------------- #
# Keys and segments
# --------------------------------------------------------------------------- #


def _sort_keys(data: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys whose descending order is ``lengths_top_k``'s documented order, and the padding key.

    float32 keys (16/32-bit floats, 8/16-bit integers: all exact in float32)
    have ``-0.0`` replaced by ``+0.0`` and every NaN by the positive quiet NaN,
    which ``lax.top_k``'s bit-pattern order puts above ``+inf``; padding is
    ``-inf`` (ties resolve by position). float64 maps to int64 keys by the
    same bit trick; wider integers are their own keys (unsigned ones shifted
    into the signed range); padding is the key dtype's minimum.

    The float canonicalisation works on the bit patterns, never on float
    arithmetic: XLA CPU's fused code flushes subnormals to zero, which would
    tie every subnormal with the zeros.
    """
    dtype = data.dtype
    if dtype == jnp.bfloat16:  # its bits are the top half of a float32's
        bits = lax.bitcast_convert_type(data, jnp.uint16).astype(jnp.uint32) << 16
        return _canonical_float_bits(bits, jnp.float32), jnp.full((), -jnp.inf, jnp.float32)
    if (jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize <= 4) or dtype.itemsize <= 2:
        x = data.astype(jnp.float32)  # float16 and small ints are normal float32s: exact
        bits = lax.bitcast_convert_type(x, jnp.uint32)
        return _canonical_float_bits(bits, jnp.float32), jnp.full((), -jnp.inf, jnp.float32)
    if jnp.issubdtype(dtype, jnp.floating):  # float64 (x64 on)
        canonical = _canonical_float_bits(lax.bitcast_convert_type(data, jnp.uint64), None)
        bits = lax.bitcast_convert_type(canonical, jnp.int64)
        flipped = lax.bitwise_xor(bits, jnp.full((), np.iinfo(np.int64).max, jnp.int64))
        return jnp.where(bits < 0, flipped, bits), jnp.full((), np.iinfo(np.int64).min)
    signed = np.dtype(f"int{8 * dtype.itemsize}")
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        top_bit = np.asarray(np.iinfo(dtype).max // 2 + 1, dtype)
        data = lax.bitcast_convert_type(lax.bitwise_xor(data, jnp.asarray(top_bit)), signed)
    return data, jnp.asarray(np.iinfo(signed).min, signed)


def ascending_keys(data: jax.Array) -> jax.Array:
    """Integer keys whose *ascending* order is the documented top-k order.

    Smallest key first: NaN, ``+inf``, ..., ``-inf``; ``-0.0 == +0.0``. Built
    from :func:`_sort_keys` (float32 keys become their order-preserving int32
    bit patterns), then bitwise-inverted, so integer comparisons (a sort, a
    segment minimum) rank exactly like :func:`lengths_top_k`.
    """
    keys, _ = _sort_keys(data)
    if keys.dtype == jnp.float32:
        bits = lax.bitcast_convert_type(keys, jnp.int32)
        flipped = lax.bitwise_xor(bits, jnp.full((), np.iinfo(np.int32).max, jnp.int32))
        keys = jnp.where(bits < 0, flipped, bits)
    return lax.bitwise_not(keys)


def _canonical_float_bits(bits: jax.Array, as_dtype) -> jax.Array:
    """IEEE bits (uint32 or uint64) with ``-0.0`` made ``+0.0`` and every NaN the quiet NaN.

    Returns the bits bitcast to ``as_dtype`` (or the bits when ``None``).
    """
    width = 8 * bits.dtype.itemsize
    exponent_bits = 8 if width == 32 else 11
    magnitude = np.asarray((1 << (width - 1)) - 1, bits.dtype)
    infinity = np.asarray(((1 << exponent_bits) - 1) << (width - 1 - exponent_bits), bits.dtype)
    quiet_nan = np.asarray(int(infinity) | (1 << (width - 2 - exponent_bits)), bits.dtype)
    abs_bits = lax.bitwise_and(bits, jnp.asarray(magnitude))
    bits = jnp.where(abs_bits == 0, jnp.zeros((), bits.dtype), bits)
    bits = jnp.where(abs_bits > jnp.asarray(infinity), jnp.asarray(quiet_nan), bits)
    return bits if as_dtype is None else lax.bitcast_convert_type(bits, as_dtype)


def _gather_rows(keys, pad_key, starts, counts, width):
    """``[R, width]`` keys ``keys[starts[r] + t]`` for ``t < counts[r]``, else ``pad_key``.

    Also returns the (clamped, in-bounds) source positions.
    """
    t = lax.broadcasted_iota(jnp.int32, (starts.shape[0], width), 1)
    valid = t < counts[:, None]
    src = jnp.where(valid, starts[:, None] + t, 0)
    # off[n] + t < off[n] + effective[n] <= len(keys) where valid; 0 elsewhere.
    return jnp.where(valid, checks.take_in_bounds(keys, src), pad_key), src


def _chunk_pass(keys, pos, pad_key, offsets, counts, *, width, k, num_rows):
    """One chunked pass: every segment's chunks of ``width`` keep their top ``k``.

    ``keys``/``pos`` are flat candidate keys and their positions within their
    segment (``pos=None``: the flat data itself, positions are implicit);
    segment ``n`` occupies ``[offsets[n], offsets[n] + counts[n])``. Returns the
    survivors in the same layout, ``num_rows * k`` long.
    """
    num_segments = offsets.shape[0]
    num_chunks = (counts + (width - 1)) // width
    ends = checks.cumsum(num_chunks)
    starts = ends - num_chunks
    row = jnp.arange(num_rows, dtype=jnp.int32)
    seg = checks.count_at_most(ends, num_rows)  # the segment of each row
    in_use = seg < num_segments  # rows past the last chunk hold only padding
    seg = jnp.minimum(seg, num_segments - 1)
    first = (row - starts[seg]) * width
    avail = jnp.where(in_use, jnp.clip(counts[seg] - first, 0, width), 0)
    row_keys, src = _gather_rows(keys, pad_key, offsets[seg] + first, avail, width)
    top_keys, top = lax.top_k(row_keys, k)
    if pos is None:
        top_pos = first[:, None] + top
    else:
        top_pos = jnp.take(pos, jnp.take_along_axis(src, top, axis=1), mode="clip")
    full = jnp.maximum(num_chunks - 1, 0)
    new_counts = full * k + jnp.minimum(counts - full * width, k)
    return top_keys.reshape(-1), top_pos.reshape(-1), starts * k, new_counts


def _plan(num_rows: int, num_segments: int, k: int, bound: int, padded: bool):
    """The static sizes: chunk width, rows of each chunked pass, width of the final top-k.

    ``bound`` is a static upper bound on the (clipped) lengths. ``padded``
    skips the chunked passes: one ``[N, bound]`` top-k.
    """
    width = max(_MIN_CHUNK, _CHUNK_PER_K * k)
    passes = []
    if not padded:
        flat = num_rows
        while bound > width:
            rows = min(num_segments + flat // width, flat)
            passes.append(rows)
            bound = min(bound, -(-bound // width) * k)
            flat = rows * k
    return width, tuple(passes), bound


def _top_k(data, lengths, k, bound, plan):
    """The forward numerics: ``(values, indices)`` of ``lengths_top_k``."""
    num_rows, num_segments = data.shape[0], lengths.shape[0]
    shape = (num_segments, k)
    if num_rows == 0 or num_segments == 0 or bound == 0:
        return jnp.zeros(shape, data.dtype), jnp.full(shape, -1, jnp.int32)
    offsets, effective = checks.segments(lengths, num_rows, bound)
    width, passes, final_width = plan
    keys, pad_key = _sort_keys(data)
    pos, cand_offsets, cand_counts = None, offsets, effective
    for rows in passes:
        keys, pos, cand_offsets, cand_counts = _chunk_pass(
            keys, pos, pad_key, cand_offsets, cand_counts, width=width, k=k, num_rows=rows
        )
    row_keys, src = _gather_rows(keys, pad_key, cand_offsets, cand_counts, final_width)
    kk = min(k, final_width)
    _, top = lax.top_k(row_keys, kk)
    if pos is not None:
        top = jnp.take(pos, jnp.take_along_axis(src, top, axis=1), mode="clip")
    if kk < k:
        top = jnp.pad(top, ((0, 0), (0, k - kk)))
    keep = lax.broadcasted_iota(jnp.int32, shape, 1) < effective[:, None]
    indices = jnp.where(keep, top, -1)
    rows = jnp.where(keep, offsets[:, None] + top, 0)
    values = jnp.where(keep, jnp.take(data, rows, mode="clip"), jnp.zeros((), data.dtype))
    return values, indices


# --------------------------------------------------------------------------- #
# lengths_top_k
# --------------------------------------------------------------------------- #


def lengths_top_k(
    data: ArrayLike, lengths: ArrayLike, *, k: int, max_length: int | None = None
) -> TopK:
    """The ``k`` largest entries of each segment of a flat array, and their positions.

    Segment ``n`` is ``data[off[n] : off[n] + lengths[n]]`` with ``off[n] =
    lengths[0] + ... + lengths[n-1]``. Row ``n`` of ``values`` holds its
    ``min(k, lengths[n])`` largest entries in descending order, then 0; row
    ``n`` of ``indices`` holds their positions *within the segment*, then -1.
    Entries of ``data`` past ``sum(lengths)`` are ignored.

    The order is total and exact: equal entries keep ascending position order,
    ``-0.0`` equals ``+0.0`` (``jax.lax.top_k`` ranks ``+0.0`` higher), and NaN
    ranks above ``+inf``. ``values`` are the stored entries themselves, so a
    selected ``-0.0`` stays ``-0.0`` and NaNs keep their payload.

    Static sizes: with ``max_length`` (or concrete ``lengths``) and little
    padding, the segments are padded to ``[N, max_length]`` for one
    ``lax.top_k``; otherwise (e.g. traced ``lengths`` without ``max_length``,
    or one very long segment) a chunked top-k whose cost depends only on
    ``M``, ``N`` and ``k`` is used. Both give identical results.

    Args:
      data: ``[M]`` array of a real dtype (floating or integer).
      lengths: ``[N]`` integer array, the segment lengths.
      k: static Python int ``>= 1``, the number of entries kept per segment.
      max_length: optional static int, an upper bound on ``lengths`` (a speed
        hint; it does not change the result for valid lengths).

    Returns:
      ``TopK(values, indices)``: ``values`` ``[N, k]`` of ``data.dtype`` and
      ``indices`` ``[N, k]`` int32.

    Raises:
      TypeError: ``data`` not of a real dtype, non-integer ``lengths``, or
        ``k``/``max_length`` not Python ints.
      ValueError: ``data`` not rank 1 or ``lengths`` not rank 1; ``k < 1`` or
        ``max_length < 0``; and the value checks ``lengths >= 0``,
        ``sum(lengths) <= M`` and ``lengths <= max_length`` (raised when
        ``lengths`` is concrete, else ``checkify`` checks; without checkify,
        lengths are clipped to ``[0, max_length]`` and to the entries
        available).

    Gradients:
      Reverse-mode w.r.t. floating ``data``:
      ``lengths_top_k_gradient(lengths, indices, g_values, data_length=M)``,
      i.e. each selected entry gets its value's cotangent and every other
      entry 0. Residuals: ``lengths`` and ``indices``. ``lengths`` and the
      cotangent of ``indices`` are ignored.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> data = jnp.array([1.0, 3.0, 2.0, 3.0, -0.0, 5.0, 0.0])
      >>> values, indices = jaxops.lengths_top_k(data, jnp.array([4, 0, 3]), k=3)
      >>> values
      Array([[ 3.,  3.,  2.],
             [ 0.,  0.,  0.],
             [ 5., -0.,  0.]], dtype=float32)
      >>> indices
      Array([[ 1,  3,  2],
             [-1, -1, -1],
             [ 1,  0,  2]], dtype=int32)

    Caffe2: ``LengthsTopK``.
    """
    op = "lengths_top_k"
    lengths_np = checks.concrete_values(lengths)
    data = checks.as_array(op, "data", data, "real")
    checks.check_ndim(op, "data", data, 1)
    lengths_arr = checks.as_lengths(op, lengths)
    k = checks.static_int(op, "k", k, minimum=1)
    if max_length is not None:
        max_length = checks.static_int(op, "max_length", max_length, minimum=0)
    checks.check_lengths(
        op, lengths, total=data.shape[0], total_name="data.shape[0]", max_length=max_length
    )
    checks.check_output_size(op, f"k={k}", (lengths_arr.shape[0], k))
    eager = checks.is_eager(data, lengths_arr)
    if eager:  # entries past sum(lengths) are ignored
        data = checks.pad_to_bucket(data)
    num_rows, num_segments = data.shape[0], lengths_arr.shape[0]
    bound = max_length
    if bound is None and lengths_np is not None:
        bound = max(int(np.max(lengths_np[0], initial=0)), 0)
        if eager:  # any larger bound gives the same result
            bound = checks.bucket(bound, num_rows)
    if bound is None:
        bound, padded = num_rows, False
    else:
        bound = min(bound, num_rows)
        padded = num_segments * bound <= _PAD_RATIO * num_rows
    plan = _plan(num_rows, num_segments, k, bound, padded)
    # Data-dependent gathers: replicated on Explicit meshes.
    data, lengths_arr = checks.replicated(data), checks.replicated(lengths_arr)
    return TopK(*_top_k_jit(num_rows, k, bound, plan, data, lengths_arr))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _top_k_rule(num_rows, k, bound, plan, data, lengths):
    del num_rows  # data.shape[0]; the backward pass needs it statically
    return _top_k(data, lengths, k, bound, plan)


def _top_k_rule_fwd(num_rows, k, bound, plan, data, lengths):
    values, indices = _top_k_rule(num_rows, k, bound, plan, data, lengths)
    return (values, indices), (lengths, indices)


def _top_k_rule_bwd(num_rows, k, bound, plan, residuals, cotangents):
    del k, plan
    lengths, indices = residuals
    g = cotangents[0]  # the cotangent of the int32 indices (float0) is ignored
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None, None
    return _scatter_gradient(lengths, indices, g, num_rows, bound), None


_top_k_rule.defvjp(_top_k_rule_fwd, _top_k_rule_bwd)
# One compiled program per static configuration, so eager calls dispatch once.
_top_k_jit = jax.jit(_top_k_rule, static_argnums=(0, 1, 2, 3))


# --------------------------------------------------------------------------- #
# lengths_top_k_gradient
# --------------------------------------------------------------------------- #


def _scatter_gradient(lengths, indices, g, data_length, max_length=None):
    """``out[off[n] + indices[n, j]] += g[n, j]`` for in-range ``indices[n, j] >= 0``.

    Slots with ``indices[n, j] < 0`` or ``>= lengths[n]`` (after the clipping
    of :func:`checks.segments`) are dropped, so nothing lands outside its segment.
    """
    if data_length == 0 or indices.size == 0:
        return jnp.zeros((data_length,), g.dtype)
    offsets, effective = checks.segments(lengths, data_length, max_length)
    indices = checks.to_int32(indices, -1, data_length)  # clipped before narrowing: no wrap
    ok = (indices >= 0) & (indices < effective[:, None])
    target = jnp.where(ok, offsets[:, None] + indices, data_length)  # out of bounds: dropped
    out = jnp.zeros((data_length,), g.dtype)
    return out.at[target.reshape(-1)].add(g.reshape(-1), mode="drop")


def lengths_top_k_gradient(
    lengths: ArrayLike, indices: ArrayLike, g: ArrayLike, *, data_length: int
) -> jax.Array:
    """The gradient of :func:`lengths_top_k` w.r.t. ``data``: scatters ``g`` back to the segments.

    Returns a ``[data_length]`` zero vector with ``out[off[n] + indices[n, j]] =
    g[n, j]`` for every ``j`` with ``indices[n, j] >= 0``, where ``off[n] =
    lengths[0] + ... + lengths[n-1]``. Padding slots (``indices == -1``) are
    ignored. Indices are expected to be distinct within a row (as
    :func:`lengths_top_k` returns them); repeated ones accumulate.

    Args:
      lengths: ``[N]`` integer array, the segment lengths.
      indices: ``[N, k]`` integer array, positions within each segment or -1.
      g: ``[N, k]`` array of a real dtype, the cotangent of ``values``.
      data_length: static Python int ``M >= 0``, the length of ``data``.

    Returns:
      ``[data_length]`` array of ``g.dtype``.

    Raises:
      TypeError: ``lengths`` or ``indices`` not integer, ``g`` not real, or
        ``data_length`` not a Python int.
      ValueError: wrong ranks or mismatched shapes; ``data_length < 0``; and
        the value checks ``lengths >= 0``, ``sum(lengths) <= data_length`` and
        ``-1 <= indices[n, j] < lengths[n]`` (raised when the arrays are
        concrete, else ``checkify`` checks; without checkify, out-of-range
        slots are dropped).

    Gradients:
      Not differentiable (it is itself a gradient); use ``jax.grad`` of
      :func:`lengths_top_k` instead.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> indices = jnp.array([[1, 0], [0, -1]])
      >>> g = jnp.array([[10.0, 20.0], [30.0, 40.0]])
      >>> jaxops.lengths_top_k_gradient(jnp.array([3, 1]), indices, g, data_length=5)
      Array([20., 10.,  0., 30.,  0.], dtype=float32)

    Caffe2: ``LengthsTopKGradient``.
    """
    op = "lengths_top_k_gradient"
    concrete = checks.concrete_values(lengths, indices)
    lengths_arr = checks.as_lengths(op, lengths)
    indices_arr = checks.as_array(op, "indices", indices, "integer")
    checks.check_ndim(op, "indices", indices_arr, 2)
    g = checks.as_array(op, "g", g, "real")
    data_length = checks.static_int(op, "data_length", data_length, minimum=0)
    checks.check_output_size(op, f"data_length={data_length}", (data_length,))
    if indices_arr.shape[0] != lengths_arr.shape[0]:
        raise checks.value_error(
            op,
            f"indices.shape[0] == len(lengths) = {lengths_arr.shape[0]}",
            f"indices.shape = {tuple(indices_arr.shape)}",
        )
    if g.shape != indices_arr.shape:
        raise checks.value_error(
            op, f"g.shape == indices.shape = {tuple(indices_arr.shape)}", f"g.shape = {g.shape}"
        )
    checks.check_lengths(op, lengths, total=data_length, total_name="data_length")
    _check_indices(op, concrete, lengths_arr, indices_arr)
    lengths_arr, indices_arr, g = (
        checks.replicated(lengths_arr),
        checks.replicated(indices_arr),
        checks.replicated(g),
    )
    return _scatter_gradient_jit(lengths_arr, indices_arr, g, data_length)


def _check_indices(op, concrete, lengths, indices):
    """The value check ``-1 <= indices[n, j] < lengths[n]``.

    Both sides are clipped in their own dtypes before the int32 comparison (an
    index past int32 stays past every length), and the message quotes the
    caller's values, picked by reductions.
    """
    if indices.size == 0:
        return
    xp, lv, iv = (np, *concrete) if concrete is not None else (jnp, lengths, indices)
    hi = checks.INT32_MAX
    if xp is np:
        ic = checks.clip_in_dtype(iv, -2, hi).astype(np.int64)
        lc = checks.clip_lengths(lv, hi, np)
    else:
        ic, lc = checks.to_int32(iv, -2, hi), checks.to_int32(lv, -1, hi)
    bad = ((ic < -1) | (ic >= lc[:, None])).reshape(-1)
    failed, flat = checks.first_failure(xp, bad)
    n, j = flat // iv.shape[1], flat % iv.shape[1]
    checks.check_values(
        op,
        xp.logical_not(failed),
        "-1 <= indices[n, j] < lengths[n]",
        "indices[{}, {}] = {} with lengths[{}] = {}",
        n,
        j,
        checks.pick(xp, iv.reshape(-1), flat),
        n,
        checks.pick(xp, lv, n),
    )


_scatter_gradient_jit = jax.jit(_scatter_gradient, static_argnums=(3, 4))
