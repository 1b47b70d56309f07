"""Benchmark cases for the converters and ``length_mask`` (integer and bool outputs: ``fwd`` only).

``python benchmarks/run.py --only lengths_to_segment_ids --only ...`` times
them like every other operator. Each takes ``lengths`` (or segment ids) of
the segment-id cases' sizes (``ragged_bench.segment_dims``: ``large`` is
4,096 segments of lengths uniform in ``[1, 256]``) and is compared with what
a user writes without jaxops:

* ``lengths_to_segment_ids``: ``jnp.repeat(arange(N), lengths,
  total_repeat_length=M)``; ``torch:repeat_interleave``;
* ``lengths_range_fill``: ``arange(M) - repeat(offsets, lengths)``;
  ``torch:arange-repeat_interleave``;
* ``segment_ids_to_lengths`` (shuffled ids, 5% ``-1``):
  ``jax.ops.segment_sum(ones, ids, N)``; ``torch:bincount`` of the valid ids;
* ``lengths_to_offsets``: ``concatenate([0], cumsum(lengths))``;
  ``torch:cumsum``;
* ``length_mask`` (``[N, T]`` bool): ``arange(T) < lengths[:, None]``;
  ``torch:arange<lengths``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from harness import Case, offsets, random_lengths
from ragged_bench import segment_dims, shuffled_segment_ids

import jaxops

OPS = (
    "lengths_to_segment_ids",
    "lengths_range_fill",
    "segment_ids_to_lengths",
    "lengths_to_offsets",
    "length_mask",
)


def _case(op, size, shapes, args, jaxops_fn, naive_fn, out_bytes):
    in_bytes = int(sum(np.asarray(a).nbytes for a in args))
    return Case(
        op,
        "",
        size,
        shapes,
        args,
        {"jaxops": jaxops_fn, "naive": naive_fn},
        in_bytes + out_bytes,
        0,
    )


def build_segment_ids(rng, size, dims, torch):
    n, t = segment_dims(dims)
    lengths = random_lengths(rng, n, t)
    m = int(lengths.sum())
    case = _case(
        "lengths_to_segment_ids",
        size,
        f"lengths [{n}] -> [{m}]",
        (jnp.asarray(lengths),),
        lambda ls: jaxops.lengths_to_segment_ids(ls, total_length=m),
        lambda ls: jnp.repeat(jnp.arange(n, dtype=jnp.int32), ls, total_repeat_length=m),
        4 * m,
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        case.torch_variants = {
            "torch:repeat_interleave": lambda: torch.repeat_interleave(torch.arange(n), tl)
        }
    return case


def build_range_fill(rng, size, dims, torch):
    n, t = segment_dims(dims)
    lengths = random_lengths(rng, n, t)
    m = int(lengths.sum())

    def naive(ls):
        starts = jnp.repeat(offsets(ls), ls, total_repeat_length=m)
        return jnp.arange(m, dtype=jnp.int32) - starts

    case = _case(
        "lengths_range_fill",
        size,
        f"lengths [{n}] -> [{m}]",
        (jnp.asarray(lengths),),
        lambda ls: jaxops.lengths_range_fill(ls, total_length=m),
        naive,
        4 * m,
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        starts = torch.cumsum(tl, 0) - tl
        case.torch_variants = {
            "torch:arange-repeat_interleave": lambda: (
                torch.arange(m) - torch.repeat_interleave(starts, tl)
            )
        }
    return case


def build_ids_to_lengths(rng, size, dims, torch):
    n, t = segment_dims(dims)
    ids = shuffled_segment_ids(rng, random_lengths(rng, n, t))
    case = _case(
        "segment_ids_to_lengths",
        size,
        f"ids [{ids.shape[0]}] (5% -1) -> [{n}]",
        (jnp.asarray(ids),),
        lambda s: jaxops.segment_ids_to_lengths(s, num_segments=n),
        lambda s: jax.ops.segment_sum(jnp.ones_like(s), s, n),
        4 * n,
    )
    if torch is not None:
        ti = torch.from_numpy(ids.astype(np.int64))
        case.torch_variants = {"torch:bincount": lambda: torch.bincount(ti[ti >= 0], minlength=n)}
    return case


def build_offsets(rng, size, dims, torch):
    n, t = segment_dims(dims)
    lengths = random_lengths(rng, n, t)
    case = _case(
        "lengths_to_offsets",
        size,
        f"lengths [{n}] -> [{n + 1}]",
        (jnp.asarray(lengths),),
        jaxops.lengths_to_offsets,
        lambda ls: jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(ls, dtype=jnp.int32)]),
        4 * (n + 1),
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        case.torch_variants = {
            "torch:cumsum": lambda: torch.cat([torch.zeros(1, dtype=tl.dtype), tl.cumsum(0)])
        }
    return case


def build_length_mask(rng, size, dims, torch):
    n, t = segment_dims(dims)
    lengths = random_lengths(rng, n, t)
    case = _case(
        "length_mask",
        size,
        f"lengths [{n}] -> [{n}, {t}] bool",
        (jnp.asarray(lengths),),
        lambda ls: jaxops.length_mask(ls, t),
        lambda ls: jnp.arange(t, dtype=jnp.int32)[None, :] < ls[:, None],
        n * t,
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        case.torch_variants = {
            "torch:arange<lengths": lambda: torch.arange(t)[None, :] < tl[:, None]
        }
    return case


BUILDERS = {
    "lengths_to_segment_ids": [build_segment_ids],
    "lengths_range_fill": [build_range_fill],
    "segment_ids_to_lengths": [build_ids_to_lengths],
    "lengths_to_offsets": [build_offsets],
    "length_mask": [build_length_mask],
}
