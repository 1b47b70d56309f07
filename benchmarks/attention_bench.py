"""Benchmark cases for pack_sequences, unpack_sequences, attention_mask and safe_softmax(where=).

``python benchmarks/run.py --only pack_sequences --only unpack_sequences --only
attention_mask --only safe_softmax`` times them like every other operator
(``jaxops``, ``naive``, ``torch:*``, ``copy``; ``fwd`` and ``fwd+bwd``):

* ``pack_sequences``: ``N`` sequences of lengths uniform in ``[1, T]`` into
  rows of ``L = 4T`` slots, ``R`` = the rows next-fit needs. ``naive`` is what
  a user writes without jaxops: a Python/NumPy next-fit placement on the host
  (untimed: its per-token destinations are inputs of the jitted program) and a
  ``.at[row, col].set`` scatter into ``[R, L, F]``, differentiated by
  autodiff; ``naive:host placement`` is the same with the host placement (and
  the transfer of its indices, segment ids and positions) inside the timer.
  ``jaxops:pack_rnn_sequence`` moves the same values into the padded
  ``[T, N, F]`` batch (``pack_rnn_sequence``): packing's cost against padding's.
  ``torch:index_copy`` is the naive scatter in PyTorch (placement untimed).
* ``unpack_sequences``: the inverse, against the gather at host-computed slots
  (``naive``, ``naive:host placement``), ``unpack_rnn_sequence`` from the
  padded batch and ``torch:index_select``.
* ``attention_mask`` (``fwd`` only: a bool mask): ``[B, T, T]`` from packed
  segment ids and positions (rows of ``T`` filled next-fit with sequences of
  lengths uniform in ``[1, T / 4]``), causal, against the hand-written
  broadcast comparisons ``(ids[:, :, None] == ids[:, None, :]) & (ids[:, :,
  None] >= 0) & (pos[:, None, :] <= pos[:, :, None])`` in JAX (``naive``) and
  in PyTorch.
* ``safe_softmax`` (``where=``): logits ``[B, H, T, T]`` with that mask as
  ``where=mask[:, None]``; ``naive`` is ``jax.nn.softmax(where=)``, the speed
  peer (the rows are compared where a query has a key);
  ``torch:softmax(masked_fill)`` is ``softmax(x.masked_fill(~mask, -inf))``,
  NaN on fully masked rows: the cost floor, not an equivalent.

Sizes map ``run.SIZES`` (``n``, ``t``, ``f``): ``F = f / 4`` features and
``L = 4t``; ``large`` is 256 sequences of lengths in ``[1, 512]``, ``F = 64``,
rows of 2048, and masks ``[8, 2048, 2048]`` (logits ``[8, 2, 2048, 2048]``);
``2N`` doubles the sequences and the mask batch, ``2T`` the lengths and ``T``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from harness import Case, random_lengths

import jaxops

OPS = ("pack_sequences", "unpack_sequences", "attention_mask")
HEADS = 2  # safe_softmax(where=): logits [B, HEADS, T, T] against a [B, 1, T, T] mask
PAD = -1.0  # pack_sequences' pad_value


def packing_dims(dims):
    """``(N, T, F, L)``: sequences, length bound, features, row length."""
    return dims["n"], dims["t"], max(1, dims["f"] // 4), 4 * dims["t"]


def mask_dims(dims):
    """``(B, T)`` of the attention masks: ``[8, 2048, 2048]`` at ``large``."""
    batch = 8 * dims["n"] // 256 if dims["f"] == 256 else min(8, dims["n"])
    return batch, 4 * dims["t"]


# --------------------------------------------------------------------------- #
# What a user writes without jaxops: next-fit on the host, then scatter / gather
# --------------------------------------------------------------------------- #


def host_next_fit(lengths, row_length):
    """The row and column of each sequence (Python loop, next-fit in input order)."""
    row = col = 0
    rows, cols = [], []
    for n in lengths.tolist():
        if n > row_length - col:
            row, col = row + 1, 0
        rows.append(row)
        cols.append(col)
        col += n
    return np.asarray(rows, np.int32), np.asarray(cols, np.int32)


def host_placement(lengths, num_rows, row_length):
    """Per token (``[M]``): its row and column; per slot (``[R, L]``): segment ids, positions."""
    seq_row, seq_col = host_next_fit(lengths, row_length)
    seq = np.repeat(np.arange(lengths.shape[0], dtype=np.int32), lengths)
    t = np.arange(seq.shape[0], dtype=np.int32) - (np.cumsum(lengths) - lengths)[seq]
    row, col = seq_row[seq], seq_col[seq] + t
    ids = np.full((num_rows, row_length), -1, np.int32)
    pos = np.full((num_rows, row_length), -1, np.int32)
    ids[row, col] = seq
    pos[row, col] = t
    return row.astype(np.int32), col.astype(np.int32), ids, pos


def naive_pack(values, row, col, *, num_rows, row_length):
    out = jnp.full((num_rows, row_length, *values.shape[1:]), PAD, values.dtype)
    return out.at[row, col].set(values)


def naive_unpack(rows, row, col):
    return rows[row, col]


def naive_attention_mask(ids, pos):
    return (
        (ids[:, :, None] == ids[:, None, :])
        & (ids[:, :, None] >= 0)
        & (pos[:, None, :] <= pos[:, :, None])
    )


def _packed_batch(rng, lengths_bound, batch, row_length):
    """Segment ids and positions ``[B, L]``: random sequences next-fit into ``B`` rows."""
    lengths = rng.integers(1, lengths_bound + 1, size=4 * batch * row_length // lengths_bound)
    rows, _ = host_next_fit(lengths.astype(np.int32), row_length)
    lengths = lengths[rows < batch].astype(np.int32)
    _, _, ids, pos = host_placement(lengths, batch, row_length)
    return ids, pos


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


def _rows_needed(lengths, row_length):
    return int(host_next_fit(lengths, row_length)[0][-1]) + 1


def build_pack_sequences(rng, size, dims, torch):
    n, t, f, row_length = packing_dims(dims)
    lengths = random_lengths(rng, n, t)
    m, tmax = int(lengths.sum()), int(lengths.max())
    num_rows = _rows_needed(lengths, row_length)
    values = rng.standard_normal((m, f), dtype=np.float32)
    row, col, _, _ = host_placement(lengths, num_rows, row_length)
    out_bytes = num_rows * row_length * (f + 2) * 4  # values, segment ids, positions
    static = {"num_rows": num_rows, "row_length": row_length}

    def place():
        return host_placement(lengths, num_rows, row_length)

    def scatter_with_ids(v, r, c, ids, pos):
        return naive_pack(v, r, c, **static), ids, pos

    case = Case(
        "pack_sequences",
        "",
        size,
        f"values [{m}, {f}] -> [{num_rows}, {row_length}, {f}] ({n} sequences <= {t};"
        f" padded [{tmax}, {n}, {f}])",
        (jnp.asarray(values), jnp.asarray(lengths), jnp.asarray(row), jnp.asarray(col)),
        {
            "jaxops": lambda v, ls, _r, _c: tuple(
                jaxops.pack_sequences(v, ls, **static, pad_value=PAD)
            ),
            "naive": lambda v, _ls, r, c: naive_pack(v, r, c, **static),
            "jaxops:pack_rnn_sequence": lambda v, ls, _r, _c: jaxops.pack_rnn_sequence(
                v, ls, max_length=tmax, pad_value=PAD
            ),
        },
        values.nbytes + out_bytes,
        values.nbytes + num_rows * row_length * f * 4,
        host_variants={"naive:host placement": (place, scatter_with_ids)},
    )
    if torch is not None:
        slot = torch.from_numpy((row.astype(np.int64) * row_length + col).astype(np.int64))

        def torch_pack(v):
            out = torch.full((num_rows * row_length, f), PAD)
            return out.index_copy(0, slot, v).reshape(num_rows, row_length, f)

        case.torch_variants = {"torch:index_copy": torch_pack}
        case.torch_args = (torch.from_numpy(values),)
    return case


def build_unpack_sequences(rng, size, dims, torch):
    n, t, f, row_length = packing_dims(dims)
    lengths = random_lengths(rng, n, t)
    m, tmax = int(lengths.sum()), int(lengths.max())
    num_rows = _rows_needed(lengths, row_length)
    rows = rng.standard_normal((num_rows, row_length, f), dtype=np.float32)
    padded = rng.standard_normal((tmax, n, f), dtype=np.float32)
    row, col, _, _ = host_placement(lengths, num_rows, row_length)

    def place():
        return host_placement(lengths, num_rows, row_length)[:2]

    case = Case(
        "unpack_sequences",
        "",
        size,
        f"rows [{num_rows}, {row_length}, {f}] -> [{m}, {f}] (padded [{tmax}, {n}, {f}])",
        (jnp.asarray(rows), jnp.asarray(lengths), jnp.asarray(row), jnp.asarray(col)),
        {
            "jaxops": lambda r, ls, _r, _c: jaxops.unpack_sequences(r, ls, total_length=m),
            "naive": lambda r, _ls, rr, cc: naive_unpack(r, rr, cc),
            "jaxops:unpack_rnn_sequence": lambda p, ls: jaxops.unpack_rnn_sequence(
                p, ls, total_length=m
            ),
        },
        2 * m * f * 4,  # padding slots need not be read
        m * f * 4 + rows.nbytes,
        host_variants={"naive:host placement": (place, naive_unpack)},
        variant_args={"jaxops:unpack_rnn_sequence": (jnp.asarray(padded), jnp.asarray(lengths))},
    )
    if torch is not None:
        slot = torch.from_numpy((row.astype(np.int64) * row_length + col).astype(np.int64))
        case.torch_variants = {
            "torch:index_select": lambda r: r.reshape(-1, f).index_select(0, slot)
        }
        case.torch_args = (torch.from_numpy(rows),)
    return case


def build_attention_mask(rng, size, dims, torch):
    batch, length = mask_dims(dims)
    ids, pos = _packed_batch(rng, dims["t"], batch, length)
    case = Case(
        "attention_mask",
        "packed, causal",
        size,
        f"segment_ids, positions [{batch}, {length}] -> [{batch}, {length}, {length}] bool",
        (jnp.asarray(ids), jnp.asarray(pos)),
        {
            "jaxops": lambda i, p: jaxops.attention_mask(segment_ids=i, positions=p, causal=True),
            "naive": naive_attention_mask,
        },
        batch * length * length + ids.nbytes + pos.nbytes,
        0,
    )
    if torch is not None:
        case.torch_variants = {
            "torch:broadcast compare": lambda i, p: (
                (i[:, :, None] == i[:, None, :])
                & (i[:, :, None] >= 0)
                & (p[:, None, :] <= p[:, :, None])
            )
        }
        case.torch_args = (torch.from_numpy(ids), torch.from_numpy(pos))
    return case


def _compare_softmax(got, want, mask):
    """Equal where a query has a key; jaxops is 0 on the rest (the peer's value is free)."""
    got, want = np.asarray(got), np.asarray(want)
    live = np.broadcast_to(np.asarray(mask).any(axis=-1, keepdims=True), got.shape)
    np.testing.assert_allclose(got[live], want[live], rtol=1e-5, atol=1e-6)
    assert not np.any(got[~live]), "safe_softmax: fully masked rows must be 0"


def build_safe_softmax_where(rng, size, dims, torch):
    batch, length = mask_dims(dims)
    ids, pos = _packed_batch(rng, dims["t"], batch, length)
    mask = np.asarray(naive_attention_mask(ids, pos))
    x = rng.standard_normal((batch, HEADS, length, length), dtype=np.float32)
    case = Case(
        "safe_softmax",
        "where=packed causal mask",
        size,
        f"logits [{batch}, {HEADS}, {length}, {length}], where [{batch}, 1, {length}, {length}]",
        (jnp.asarray(x), jnp.asarray(mask)),
        {
            "jaxops": lambda x, w: jaxops.safe_softmax(x, where=w[:, None]),
            "naive": lambda x, w: jax.nn.softmax(x, where=w[:, None]),
        },
        2 * x.nbytes + mask.nbytes,
        3 * x.nbytes,
        compare=lambda got, want: _compare_softmax(got, want, mask[:, None]),
    )
    if torch is not None:
        case.torch_variants = {
            "torch:softmax(masked_fill)": lambda x, w: torch.softmax(
                x.masked_fill(~w[:, None], -float("inf")), dim=-1
            )
        }
        case.torch_args = (torch.from_numpy(x), torch.from_numpy(mask))
    return case


BUILDERS = {
    "pack_sequences": [build_pack_sequences],
    "unpack_sequences": [build_unpack_sequences],
    "attention_mask": [build_attention_mask],
}
SAFE_SOFTMAX_BUILDERS = [build_safe_softmax_where]


# --------------------------------------------------------------------------- #
# Report section: every variant's time, not only the ratios
# --------------------------------------------------------------------------- #

SECTION_OPS = ("pack_sequences", "unpack_sequences", "attention_mask", "safe_softmax")


def section(rows: list[dict]) -> list[str]:
    """A table of absolute times (ms) and same-run ratios for the packed-sequence cases."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") != "result" or r["op"] not in SECTION_OPS:
            continue
        if r["op"] == "safe_softmax" and not r["params"].startswith("where="):
            continue
        key = (r["allocator"], r["op"], r["params"], r["size"], r["pass"])
        groups.setdefault(key, {})[r["variant"]] = r
    if not groups:
        return []
    sizes = {s: i for i, s in enumerate(("tiny", "small", "large", "large-2N", "large-2T"))}
    lines = [
        "| op | size | pass | variant | ms | jaxops / variant |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(
        groups, key=lambda k: (k[0], SECTION_OPS.index(k[1]), sizes.get(k[3], 9), k[4] != "fwd")
    ):
        _, op, params, size, pass_ = key
        v = groups[key]
        j = v["jaxops"]["median_ms"]
        label = op + (f" ({params})" if params else "")
        order = sorted(v, key=lambda n: (n != "jaxops", n == "copy", n))
        for name in order:
            ms = v[name]["median_ms"]
            one = " (1 call)" if v[name].get("warmup_only") else ""
            lines.append(
                f"| {label} | {size} | {pass_} | {name}{one} | {ms:.3g} |"
                f" {'' if name == 'jaxops' else f'{j / ms:.3g}'} |"
            )
    return lines
