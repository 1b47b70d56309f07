"""Data-parallel ragged batches: ``shard_ragged`` lays out one self-contained block per device.

A flat ragged layout cannot be split across devices without a cross-device
prefix sum and an all-gather of the rows. ``shard_ragged`` instead assigns
whole sequences to ``num_shards`` blocks on the host, so that inside
``jax.shard_map`` every device holds a complete local :class:`Ragged` and the
operators need no communication.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

from jaxops._src import checks
from jaxops._src.ragged import Ragged


class ShardedRagged(NamedTuple):
    """The output of :func:`shard_ragged`.

    Attributes:
      ragged: a :class:`Ragged` of NumPy arrays: ``values [num_shards *
        rows_per_shard, F...]`` and ``lengths [num_shards * seqs_per_shard]``,
        block ``d`` at rows ``[d * rows_per_shard, (d + 1) * rows_per_shard)``
        and sequence slots ``[d * seqs_per_shard, (d + 1) * seqs_per_shard)``.
      order: ``[num_shards * seqs_per_shard]`` int32, the input index of the
        sequence in each slot (-1 for an empty slot, whose length is 0).

    Examples:
      >>> import numpy as np, jaxops
      >>> out = jaxops.shard_ragged(np.arange(6.0), np.array([1, 3, 2]), num_shards=2,
      ...                           rows_per_shard=4, seqs_per_shard=2)
      >>> out.order, out.ragged.lengths
      (array([ 1, -1,  0,  2], dtype=int32), array([3, 0, 1, 2], dtype=int32))
    """

    ragged: Ragged
    order: np.ndarray


def shard_ragged(
    values: ArrayLike,
    lengths: ArrayLike,
    *,
    num_shards: int,
    rows_per_shard: int,
    seqs_per_shard: int,
) -> ShardedRagged:
    """Assigns whole sequences to ``num_shards`` equal-capacity blocks, one per device.

    Host side and deterministic (NumPy in, NumPy out): longest sequence first
    to the least-filled block (by rows; ties to the lower block, and among
    equal lengths the lower input index goes first), so the blocks' row
    totals are as even as this greedy rule makes them. Inside a block, the
    sequences keep their input order. Put the result on a mesh with
    ``jax.device_put(out.ragged, NamedSharding(mesh, P("data")))``: each
    device then holds one block, a self-contained ``Ragged`` inside
    ``jax.shard_map``. Per-sequence arrays (labels) follow with
    ``np.take(labels, out.order)`` (mask the ``-1`` slots).

    Args:
      values: ``[M, F...]`` host array, the sequences back to back (rows past
        ``sum(lengths)`` are ignored).
      lengths: ``[N]`` integer host array.
      num_shards: static int ``D >= 1``, the number of blocks (devices).
      rows_per_shard: static int, the row capacity of each block.
      seqs_per_shard: static int, the sequence slots of each block.

    Returns:
      ``ShardedRagged(ragged, order)``.

    Raises:
      TypeError: ``lengths`` not integer or ``values`` of an unsupported dtype.
      ValueError: wrong ranks; invalid lengths (negative, or summing past
        ``M``); ``seqs_per_shard`` or ``rows_per_shard`` too small for the
        greedy assignment (the message says how many would be needed).

    Examples:
      >>> import numpy as np, jaxops
      >>> lengths = np.array([5, 1, 4, 2])
      >>> out = jaxops.shard_ragged(np.arange(12.0), lengths, num_shards=2,
      ...                           rows_per_shard=6, seqs_per_shard=2)
      >>> out.order  # block 0 holds sequences 0 and 1, block 1 sequences 2 and 3
      array([0, 1, 2, 3], dtype=int32)
      >>> out.ragged.values.reshape(2, 6)
      array([[ 0.,  1.,  2.,  3.,  4.,  5.],
             [ 6.,  7.,  8.,  9., 10., 11.]])
    """
    op = "shard_ragged"
    values = np.asarray(values)
    # The dtype check on an empty array of the same dtype: values stay on the host.
    checks.as_array(op, "values", np.zeros((0,), values.dtype), "data")
    if values.ndim < 1:
        raise checks.value_error(op, "`values` of rank >= 1", f"shape {values.shape}")
    lengths_np = np.asarray(lengths)
    checks.as_lengths(op, lengths_np)
    checks.check_lengths(op, lengths_np, total=values.shape[0], total_name="values.shape[0]")
    num_shards = checks.static_int(op, "num_shards", num_shards, minimum=1)
    rows_per_shard = checks.static_int(op, "rows_per_shard", rows_per_shard, minimum=0)
    seqs_per_shard = checks.static_int(op, "seqs_per_shard", seqs_per_shard, minimum=0)
    lens = lengths_np.astype(np.int64)
    num = lens.shape[0]
    needed_seqs = -(-num // num_shards)
    if needed_seqs > seqs_per_shard:
        raise checks.value_error(
            op,
            f"seqs_per_shard >= {needed_seqs} for {num} sequences on {num_shards} shards",
            f"seqs_per_shard={seqs_per_shard}",
        )
    rows = np.zeros(num_shards, np.int64)
    slots: list[list[int]] = [[] for _ in range(num_shards)]
    for n in sorted(range(num), key=lambda i: (-lens[i], i)):
        open_blocks = [d for d in range(num_shards) if len(slots[d]) < seqs_per_shard]
        block = min(open_blocks, key=lambda d: (rows[d], d))
        slots[block].append(n)
        rows[block] += lens[n]
    if num and rows.max() > rows_per_shard:
        raise checks.value_error(
            op,
            f"rows_per_shard >= {int(rows.max())}, the fullest block of this assignment",
            f"rows_per_shard={rows_per_shard}",
        )
    checks.check_output_size(
        op, f"rows_per_shard={rows_per_shard}", (num_shards * rows_per_shard, *values.shape[1:])
    )
    offsets = np.concatenate([[0], np.cumsum(lens)])
    out_values = np.zeros((num_shards * rows_per_shard, *values.shape[1:]), values.dtype)
    out_lengths = np.zeros(num_shards * seqs_per_shard, np.int32)
    order = np.full(num_shards * seqs_per_shard, -1, np.int32)
    for d, members in enumerate(slots):
        row = d * rows_per_shard
        for j, n in enumerate(sorted(members)):
            slot = d * seqs_per_shard + j
            out_values[row : row + lens[n]] = values[offsets[n] : offsets[n + 1]]
            out_lengths[slot], order[slot] = lens[n], n
            row += lens[n]
    return ShardedRagged(Ragged._make(out_values, out_lengths), order)
