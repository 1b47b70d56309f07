"""Benchmark cases for lengths_top_k (k = 8 and k = 64).

``python benchmarks/topk_bench.py`` runs them through ``run.py`` (its flags
apply, e.g. ``--sizes small,large --no-scaling --repeats 3``); ``run.py``
times them like every other operator (``fwd`` and ``fwd+bwd``):

* ``jaxops``: ``lengths_top_k(data, lengths, k=k, max_length=T)``, the static
  bound the peers need too; ``jaxops:no_max_length`` is the chunked path
  (no bound under ``jit``, cost independent of ``N * T``);
* ``naive``: pad to ``[N, max(T, k)]`` with ``-inf`` by a gather and
  ``jnp.where``, ``lax.top_k``, then 0 / -1 past each length (autodiff
  gradient). Padding by scatter (``jnp.full(...).at[segment, position].set``)
  is slower on CPU (measured at ``large``: 1.2-1.4x), so it is not a variant;
* ``torch:mask+topk``: the same in PyTorch with one mask assignment
  (``p = full((N, W), -inf); p[t < lengths] = data; torch.topk``), as its
  users write it. It replaced ``pad_sequence(split(data, lengths))``, slower
  everywhere (measured at ``large``: 1.1-1.5x forward, 8-16x with the
  backward pass).

Sizes are ``run.SIZES``: ``N`` segments of lengths uniform in ``[1, T]``.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
from harness import Case, offsets, random_lengths, torch_pad
from jax import lax

import jaxops

OPS = ("lengths_top_k",)


def naive_top_k(data, lengths, *, k, max_length):
    """Pad with -inf by a gather, ``lax.top_k``, then 0 / -1 past each length."""
    width = max(max_length, k)
    t = lax.broadcasted_iota(jnp.int32, (lengths.shape[0], width), 1)
    valid = t < lengths[:, None]
    rows = jnp.where(valid, offsets(lengths)[:, None] + t, 0)
    padded = jnp.where(valid, data[rows], -jnp.inf)
    values, indices = lax.top_k(padded, k)
    keep = lax.broadcasted_iota(jnp.int32, values.shape, 1) < lengths[:, None]
    return jnp.where(keep, values, 0), jnp.where(keep, indices, -1)


def build_top_k(rng, size, dims, torch, k):
    n, t = dims["n"], dims["t"]
    lengths = random_lengths(rng, n, t)
    m, tmax = int(lengths.sum()), int(lengths.max())
    data = rng.standard_normal(m, dtype=np.float32)
    out_bytes = n * k * 8
    case = Case(
        "lengths_top_k",
        f"k={k}",
        size,
        f"data [{m}], lengths [{n}] <= {tmax} -> [{n}, {k}]",
        (jnp.asarray(data), jnp.asarray(lengths)),
        {
            "jaxops": lambda d, lens: tuple(jaxops.lengths_top_k(d, lens, k=k, max_length=tmax)),
            "naive": lambda d, lens: naive_top_k(d, lens, k=k, max_length=tmax),
            # No max_length under jit: the chunked formulation, cost independent of N * T.
            "jaxops:no_max_length": lambda d, lens: tuple(jaxops.lengths_top_k(d, lens, k=k)),
        },
        data.nbytes + lengths.nbytes + out_bytes,
        out_bytes // 2 + data.nbytes + lengths.nbytes,
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        width = max(tmax, k)

        def torch_top_k(d):
            padded = torch_pad(torch, d, tl, width, -float("inf"))
            values, indices = torch.topk(padded, k, dim=1)
            keep = torch.arange(k)[None, :] < tl[:, None]
            return values.masked_fill(~keep, 0.0), indices.masked_fill(~keep, -1)

        case.torch_variants = {"torch:mask+topk": torch_top_k}
        case.torch_args = (torch.from_numpy(data),)
    return case


BUILDERS = {
    "lengths_top_k": [
        lambda *a: build_top_k(*a, k=8),
        lambda *a: build_top_k(*a, k=64),
    ],
}


def main(argv=None) -> int:
    """``run.py --only lengths_top_k`` with the other flags passed through."""
    import run

    only = [arg for op in OPS for arg in ("--only", op)]
    return run.main([*only, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
