"""Benchmark cases for the masks (boolean_mask*, boolean_unmask, sequence_mask) and safe_softmax.

``python benchmarks/masking_bench.py`` runs them through ``run.py`` (its flags
apply, e.g. ``--sizes small,large --no-scaling --repeats 3``); ``run.py``
times them like every other operator (``fwd`` and ``fwd+bwd``). The peers,
written as their users write them:

* ``boolean_mask`` (half the rows selected): ``naive`` is
  ``x[jnp.nonzero(mask, size=S)[0]]``; ``torch:x[mask]`` and
  ``torch:index_select(nonzero)`` (``x.index_select(0, mask.nonzero().squeeze(1))``).
* ``boolean_unmask`` (two complementary streams): ``naive`` scatters each
  stream at ``jnp.nonzero(mask, size=)`` (``.at[].set``); ``naive:gather``
  gathers each output row instead (``where(m, v[cumsum(m) - 1], out)``);
  ``torch:out[mask]=v``.
* ``boolean_mask_lengths``: ``naive`` is ``segment_sum`` over
  ``jnp.repeat(arange(N), lengths, total_repeat_length=M)``; ``naive:cumsum``
  differences the mask's running count at the segment ends;
  ``torch:bincount(repeat_interleave[mask])`` and ``torch:segment_reduce``.
* ``sequence_mask`` (``[B, T, D]``, lengths on axis 1, repeated along axis
  2): ``naive`` is ``jnp.where(iota < lengths, x, -inf)``; ``naive:bias``
  the additive mask ``x + bias[:, :, None]`` with ``bias [B, T]`` 0 / -inf
  built by ``jnp.where``; ``torch:masked_fill`` and ``torch:bias``. The
  additive forms equal jaxops forward (``x`` is finite); their gradient
  passes the cotangent through at the masked slots (jaxops gives 0 there),
  which the softmax that follows a mask zeroes anyway.
* ``safe_softmax`` (``[B, T, T]`` logits with masked keys and fully masked
  query rows): ``naive`` is ``jax.nn.softmax`` + ``where`` on the empty rows;
  ``torch:softmax (unsafe)`` returns NaN rows: the cost floor, not an
  equivalent. ``safe_softmax(where=)`` is in ``attention_bench.py``.

Sizes map ``run.SIZES``: at ``large`` the masks act on ``[65536, 128]`` rows
and the logits are ``[256, 512, 512]``; ``2N`` doubles the rows / the batch,
``2T`` the row length / ``T``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from harness import Case, random_lengths
from jax import lax

import jaxops

OPS = ("boolean_mask", "boolean_unmask", "boolean_mask_lengths", "sequence_mask", "safe_softmax")


def _nbytes(*arrays) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays))


# --------------------------------------------------------------------------- #
# Naive JAX formulations: what a user writes without jaxops (autodiff gradients)
# --------------------------------------------------------------------------- #


def naive_boolean_mask(data, mask, *, size):
    (indices,) = jnp.nonzero(mask, size=size)
    return data[indices], indices


def naive_boolean_unmask(values, masks):
    """Each stream scattered at its mask's true positions; the first mask wins."""
    out = jnp.zeros((masks[0].shape[0], *values[0].shape[1:]), values[0].dtype)
    taken = jnp.zeros(masks[0].shape, jnp.bool_)
    for v, m in zip(values, masks, strict=True):
        wins = m & ~taken
        (indices,) = jnp.nonzero(wins, size=v.shape[0], fill_value=m.shape[0])
        out = out.at[indices].set(v, mode="drop")
        taken = taken | m
    return out


def naive_gather_unmask(values, masks):
    """Each output row gathers its value, ``v[cumsum(m) - 1]``; the first mask wins."""
    out = jnp.zeros((masks[0].shape[0], *values[0].shape[1:]), values[0].dtype)
    taken = jnp.zeros(masks[0].shape, jnp.bool_)
    for v, m in zip(values, masks, strict=True):
        rank = jnp.cumsum(m, dtype=jnp.int32) - 1
        out = jnp.where((m & ~taken)[:, None], v[rank], out)
        taken = taken | m
    return out


def naive_boolean_mask_lengths(lengths, mask):
    segment = jnp.repeat(
        jnp.arange(lengths.shape[0], dtype=jnp.int32), lengths, total_repeat_length=mask.shape[0]
    )
    return jax.ops.segment_sum(mask.astype(jnp.int32), segment, num_segments=lengths.shape[0])


def naive_cumsum_mask_lengths(lengths, mask):
    """The mask's running count, differenced at the segment ends."""
    count = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(mask, dtype=jnp.int32)])
    ends = jnp.cumsum(lengths, dtype=jnp.int32)
    return count[ends] - count[ends - lengths]


def naive_sequence_mask(x, lengths):
    t = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    return jnp.where(t < lengths[:, None, None], x, -jnp.inf)


def naive_bias_sequence_mask(x, lengths):
    """The additive mask: ``bias [B, T]`` is 0 before each length, -inf after."""
    t = lax.broadcasted_iota(jnp.int32, x.shape[:2], 1)
    bias = jnp.where(t < lengths[:, None], 0, -jnp.inf).astype(x.dtype)
    return x + bias[:, :, None]


def naive_safe_softmax(x):
    empty = jnp.max(x, axis=-1, keepdims=True) == -jnp.inf
    return jnp.where(empty, 0, jax.nn.softmax(x, axis=-1))


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


def _mask_shape(dims):
    if dims["f"] == 256:  # large: 65,536 x 128; 2N doubles the rows, 2T the row length
        return 65536 * dims["n"] // 256, 128 * dims["t"] // 512
    return dims["n"] * dims["t"], dims["f"]


def _half_mask(rng, rows):
    mask = np.zeros(rows, np.bool_)
    mask[rng.permutation(rows)[: rows // 2]] = True
    return mask


def build_boolean_mask(rng, size, dims, torch):
    rows, f = _mask_shape(dims)
    data = rng.standard_normal((rows, f), dtype=np.float32)
    mask = _half_mask(rng, rows)
    s = int(mask.sum())
    out_bytes = s * f * 4 + s * 4
    case = Case(
        "boolean_mask",
        "half selected",
        size,
        f"data [{rows}, {f}] -> [{s}, {f}]",
        (jnp.asarray(data), jnp.asarray(mask)),
        {
            "jaxops": lambda d, m: tuple(jaxops.boolean_mask(d, m, size=s)),
            "naive": lambda d, m: naive_boolean_mask(d, m, size=s),
        },
        s * f * 4 + mask.nbytes + out_bytes,
        s * f * 4 + data.nbytes + mask.nbytes,
    )
    if torch is not None:
        tm = torch.from_numpy(mask)
        case.torch_variants = {
            "torch:x[mask]": lambda d: d[tm],
            "torch:index_select(nonzero)": lambda d: d.index_select(0, tm.nonzero().squeeze(1)),
        }
        case.torch_args = (torch.from_numpy(data),)
    return case


def build_boolean_unmask(rng, size, dims, torch):
    rows, f = _mask_shape(dims)
    mask = _half_mask(rng, rows)
    masks = (mask, ~mask)
    values = tuple(rng.standard_normal((int(m.sum()), f), dtype=np.float32) for m in masks)
    out_bytes = rows * f * 4
    case = Case(
        "boolean_unmask",
        "2 streams",
        size,
        f"[{values[0].shape[0]}, {f}] + [{values[1].shape[0]}, {f}] -> [{rows}, {f}]",
        (tuple(jnp.asarray(v) for v in values), tuple(jnp.asarray(m) for m in masks)),
        {
            "jaxops": lambda v, m: jaxops.boolean_unmask(list(m), list(v)),
            "naive": naive_boolean_unmask,
            "naive:gather": naive_gather_unmask,
        },
        _nbytes(*values, *masks) + out_bytes,
        out_bytes + _nbytes(*values, *masks),
    )
    if torch is not None:
        tm = tuple(torch.from_numpy(m) for m in masks)

        def torch_unmask(v):
            out = torch.zeros(rows, f)
            out[tm[0]] = v[0]
            out[tm[1]] = v[1]
            return out

        case.torch_variants = {"torch:out[mask]=v": torch_unmask}
        case.torch_args = (tuple(torch.from_numpy(v) for v in values),)
    return case


def build_boolean_mask_lengths(rng, size, dims, torch):
    # [256, 512, 512]-scale: N * T segments (e.g. 256 x 512 sentences) of up to T tokens.
    n = dims["n"] * (dims["t"] if dims["f"] == 256 else 1)
    lengths = random_lengths(rng, n, dims["t"])
    m = int(lengths.sum())
    mask = rng.random(m) < 0.5
    case = Case(
        "boolean_mask_lengths",
        "",
        size,
        f"lengths [{n}] <= {int(lengths.max())}, mask [{m}]",
        (jnp.asarray(lengths), jnp.asarray(mask)),
        {
            "jaxops": jaxops.boolean_mask_lengths,
            "naive": naive_boolean_mask_lengths,
            "naive:cumsum": naive_cumsum_mask_lengths,
        },
        mask.nbytes + 2 * lengths.nbytes,
        0,
    )
    if torch is not None:
        tl = torch.from_numpy(lengths.astype(np.int64))
        segment_ids = torch.arange(n)

        def torch_lengths(lengths, mask):
            segment = torch.repeat_interleave(segment_ids, lengths)
            return torch.bincount(segment[mask], minlength=n)

        case.torch_variants = {
            "torch:bincount(repeat_interleave[mask])": torch_lengths,
            "torch:segment_reduce": lambda lengths, mask: torch.segment_reduce(
                mask.to(torch.float32), "sum", lengths=lengths
            ).to(torch.int64),
        }
        case.torch_args = (tl, torch.from_numpy(mask))
    return case


def _attention_shape(dims):
    if dims["f"] == 256:  # large: [256, 512, 512]; 2N doubles the batch, 2T the length
        return dims["n"], dims["t"], 512
    return dims["n"], dims["t"], dims["f"]


def build_sequence_mask(rng, size, dims, torch):
    b, t, d = _attention_shape(dims)
    lengths = random_lengths(rng, b, t)
    x = rng.standard_normal((b, t, d), dtype=np.float32)
    case = Case(
        "sequence_mask",
        "sequence, repeat_from_axis=2",
        size,
        f"x [{b}, {t}, {d}], lengths [{b}]",
        (jnp.asarray(x), jnp.asarray(lengths)),
        {
            "jaxops": lambda x, lens: jaxops.sequence_mask(x, lens, axis=1, repeat_from_axis=2),
            "naive": naive_sequence_mask,
            "naive:bias": naive_bias_sequence_mask,
        },
        2 * x.nbytes,
        2 * x.nbytes,
        donate=True,
    )
    if torch is not None:

        def padding(x, tl):
            return torch.arange(x.shape[1])[None, :] >= tl[:, None]

        case.torch_variants = {
            "torch:masked_fill": lambda x, tl: x.masked_fill(
                padding(x, tl)[:, :, None], -float("inf")
            ),
            "torch:bias": lambda x, tl: (
                x + torch.where(padding(x, tl), -float("inf"), 0.0)[:, :, None]
            ),
        }
        case.torch_args = (torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64)))
    return case


def build_safe_softmax(rng, size, dims, torch):
    b, t, d = _attention_shape(dims)
    if dims["f"] == 256 and dims["t"] == 1024:  # 2T: keys doubled, queries as in large
        t, d = 512, 1024
    lengths = random_lengths(rng, b, min(t, d))
    x = rng.standard_normal((b, t, d), dtype=np.float32)
    # Padded keys are -inf; padded queries' rows are all -inf (softmax would give NaN).
    key_pad = np.arange(d)[None, None, :] >= lengths[:, None, None]
    query_pad = np.arange(t)[None, :, None] >= lengths[:, None, None]
    x[key_pad | query_pad] = -np.inf
    case = Case(
        "safe_softmax",
        "axis=-1, masked rows",
        size,
        f"logits [{b}, {t}, {d}]",
        (jnp.asarray(x),),
        {"jaxops": lambda x: jaxops.safe_softmax(x, axis=-1), "naive": naive_safe_softmax},
        2 * x.nbytes,
        3 * x.nbytes,
        donate=True,
    )
    if torch is not None:
        # torch.softmax is not safe (NaN rows): the cost floor, not an equivalent.
        case.torch_variants = {"torch:softmax (unsafe)": lambda x: torch.softmax(x, dim=-1)}
        case.torch_args = (torch.from_numpy(x),)
    return case


BUILDERS = {
    "boolean_mask": [build_boolean_mask],
    "boolean_unmask": [build_boolean_unmask],
    "boolean_mask_lengths": [build_boolean_mask_lengths],
    "sequence_mask": [build_sequence_mask],
    "safe_softmax": [build_safe_softmax],  # run.py adds attention_bench's where= case
}


def main(argv=None) -> int:
    """``run.py --only <each op above>`` with the other flags passed through."""
    import run

    only = [arg for op in OPS for arg in ("--only", op)]
    return run.main([*only, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
