"""Benchmark cases for segment_top_k, segment_softmax and Ragged.to_padded.

``python benchmarks/run.py --only segment_top_k --only segment_softmax --only
Ragged.to_padded`` times them like every other operator (``jaxops``, ``naive``,
``torch:*``, ``copy``; ``fwd`` and ``fwd+bwd``):

* ``segment_top_k``: ``jaxops`` is given ``max_length`` (the same static
  bound the naive formulation needs), ``jaxops:no_max_length`` is the
  memory-bounded one-sort path. ``naive`` is what a user writes without jaxops: a stable
  ``jnp.argsort`` of the rows by segment id, a scatter into ``[N, T]`` filled
  with ``-inf`` (``T`` = the longest segment, static), ``lax.top_k``, and the
  indices mapped back to positions in ``data``. ``torch:sort+pad+topk`` is the
  same formulation in PyTorch (it has no segment top-k).
* ``segment_softmax``: ``naive`` is the graph-attention formulation
  (``torch_geometric.utils.softmax``): ``segment_max`` (no gradient) + ``exp``
  + ``segment_sum`` + gather; ``torch:scatter_reduce`` is the same with
  ``scatter_reduce(amax)`` and ``index_add``.
* ``Ragged.to_padded``: ``naive`` is the gather-and-``where`` pad,
  ``torch:pad_sequence`` (``pad_sequence(split(values, lengths))``) and
  ``torch:out[mask]=v`` (one mask assignment into ``zeros(N, T, F)``) the
  PyTorch ones; the other jaxops path
  ``jaxops:pack_rnn_sequence`` (``time_major=False``, the same arrays) must
  cost the same: ``Ragged`` is a thin layer.

The segment ids are unsorted, with 5% padding rows (id ``-1``). Sizes map
``run.SIZES`` onto segments: ``large`` is ``N = 4096`` segments of lengths
uniform in ``[1, 256]`` (``M`` about 550,000 rows); ``2N`` doubles ``N``,
``2T`` the lengths. ``Ragged.to_padded`` uses ``pack_rnn_sequence``'s shapes.

:func:`memory_rows` compiles ``segment_top_k`` for two inputs with the same
``M`` and ``N``, balanced lengths and one segment holding half the rows, and
records XLA's temporary memory (``memory_analysis().temp_size_in_bytes``) of
jaxops and of the naive padded formulation (compiled, never run: at ``large``
its ``[N, T]`` buffer is several GiB).
"""

from __future__ import annotations

import harness
import jax
import jax.numpy as jnp
import numpy as np
from harness import Case, offsets, random_lengths, torch_pad
from jax import lax

import jaxops

OPS = ("segment_top_k", "segment_softmax", "Ragged.to_padded")
PAD_FRACTION = 0.05  # rows with id -1
HEADS = 8  # segment_softmax feature columns (graph-attention heads)
MEMORY_SIZES = ("tiny", "small", "large")
MEMORY_K = 8


def segment_dims(dims):
    """``(N, T)``: segment count and length bound for the segment-id cases."""
    if dims["f"] == 256:  # large: 4096 x U[1, 256]; 2N doubles N, 2T doubles T
        return 16 * dims["n"], dims["t"] // 2
    return dims["n"], dims["t"]


def shuffled_segment_ids(rng, lengths):
    """Shuffled ids: ``lengths[n]`` rows of id ``n`` and 5% rows of id -1."""
    total = int(lengths.sum())
    pad = max(1, int(PAD_FRACTION * total))
    n = lengths.shape[0]
    ids = np.concatenate([np.repeat(np.arange(n), lengths), np.full(pad, -1)]).astype(np.int32)
    return ids[rng.permutation(ids.shape[0])]


def _layout(rng, n, t):
    lengths = random_lengths(rng, n, t)
    return lengths, shuffled_segment_ids(rng, lengths)


def _skewed(lengths):
    """Same ``N`` and total: every segment but the first halved, the first takes the rest."""
    out = np.maximum(lengths // 2, 1)
    out[0] = lengths.sum() - out[1:].sum()
    return out.astype(np.int32)


# --------------------------------------------------------------------------- #
# Naive JAX formulations (autodiff gradients)
# --------------------------------------------------------------------------- #


def naive_segment_top_k(data, ids, *, k, num_segments, max_length):
    """Stable sort by id, scatter-pad to ``[N, max(T, k)]`` with -inf, ``lax.top_k``."""
    m, width = data.shape[0], max(max_length, k)
    bucket = jnp.where((ids >= 0) & (ids < num_segments), ids, num_segments)
    order = jnp.argsort(bucket, stable=True)
    seg = bucket[order]
    counts = jnp.zeros((num_segments + 1,), jnp.int32).at[bucket].add(1)
    starts = jnp.cumsum(counts, dtype=jnp.int32) - counts
    pos = jnp.arange(m, dtype=jnp.int32) - starts[seg]
    padded = jnp.full((num_segments, width), -jnp.inf, data.dtype)
    padded = padded.at[seg, pos].set(data[order], mode="drop")  # padding rows: seg == N
    values, within = lax.top_k(padded, k)
    keep = lax.broadcasted_iota(jnp.int32, values.shape, 1) < counts[:num_segments, None]
    positions = order[jnp.minimum(starts[:num_segments, None] + within, m - 1)]
    return jnp.where(keep, values, 0), jnp.where(keep, positions, -1)


def naive_segment_softmax(x, ids, *, num_segments):
    """``segment_max`` + ``exp`` + ``segment_sum`` + gather; padding rows 0."""
    valid = (ids >= 0) & (ids < num_segments)
    safe = jnp.where(valid, ids, 0)
    top = lax.stop_gradient(jax.ops.segment_max(x, ids, num_segments))
    e = jnp.exp(x - top[safe])
    total = jax.ops.segment_sum(e, ids, num_segments)
    return jnp.where(valid[:, None], e / total[safe], 0)


def naive_pad(values, lengths, *, max_length, time_major=False):
    """Gather each segment's rows into ``[N, T, F]`` (or ``[T, N, F]``), ``where`` past its length.

    Also ``run.py``'s naive ``pack_rnn_sequence`` (time-major).
    """
    axis = 0 if time_major else 1  # the time axis
    n = lengths.shape[0]
    t = lax.broadcasted_iota(jnp.int32, (max_length, n) if time_major else (n, max_length), axis)
    valid = t < jnp.expand_dims(lengths, axis)
    rows = jnp.where(valid, jnp.expand_dims(offsets(lengths), axis) + t, 0)
    return jnp.where(valid[:, :, None], values[rows], 0)


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


def _torch_bucket(torch, ids, num_segments):
    valid = (ids >= 0) & (ids < num_segments)
    return torch.where(valid, ids, num_segments), valid


def build_segment_top_k(rng, size, dims, torch, k):
    n, t = segment_dims(dims)
    lengths, ids = _layout(rng, n, t)
    m, tmax = ids.shape[0], int(lengths.max())
    data = rng.standard_normal(m, dtype=np.float32)
    out_bytes = n * k * 8
    case = Case(
        "segment_top_k",
        f"k={k}",
        size,
        f"data [{m}], {n} unsorted ids (5% -1), lengths <= {tmax} -> [{n}, {k}]",
        (jnp.asarray(data), jnp.asarray(ids)),
        {
            "jaxops": lambda d, i: tuple(
                jaxops.segment_top_k(d, i, k=k, num_segments=n, max_length=tmax)
            ),
            "jaxops:no_max_length": lambda d, i: tuple(
                jaxops.segment_top_k(d, i, k=k, num_segments=n)
            ),
            "naive": lambda d, i: naive_segment_top_k(d, i, k=k, num_segments=n, max_length=tmax),
        },
        data.nbytes + ids.nbytes + out_bytes,
        out_bytes // 2 + data.nbytes,
    )
    if torch is not None:
        width = max(tmax, k)

        def torch_top_k(d, ids):
            bucket, _ = _torch_bucket(torch, ids, n)
            order = torch.argsort(bucket, stable=True)
            seg = bucket[order]
            counts = torch.bincount(bucket, minlength=n + 1)
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(m) - starts[seg]
            keep = seg < n
            padded = torch.full((n, width), -float("inf"))
            padded = padded.index_put((seg[keep], pos[keep]), d[order][keep])
            values, within = torch.topk(padded, k, dim=1)
            real = torch.arange(k)[None, :] < counts[:n, None]
            positions = order[(starts[:n, None] + within).clamp(max=m - 1)]
            return values.masked_fill(~real, 0.0), positions.masked_fill(~real, -1)

        case.torch_variants = {"torch:sort+pad+topk": torch_top_k}
        case.torch_args = (torch.from_numpy(data), torch.from_numpy(ids.astype(np.int64)))
    return case


def build_segment_softmax(rng, size, dims, torch):
    n, t = segment_dims(dims)
    _, ids = _layout(rng, n, t)
    m = ids.shape[0]
    x = rng.standard_normal((m, HEADS), dtype=np.float32)
    case = Case(
        "segment_softmax",
        f"{HEADS} heads",
        size,
        f"logits [{m}, {HEADS}], {n} unsorted ids (5% -1)",
        (jnp.asarray(x), jnp.asarray(ids)),
        {
            "jaxops": lambda x, i: jaxops.segment_softmax(x, i, num_segments=n),
            "naive": lambda x, i: naive_segment_softmax(x, i, num_segments=n),
        },
        2 * x.nbytes + ids.nbytes,
        3 * x.nbytes + ids.nbytes,
    )
    if torch is not None:

        def torch_softmax(x, ids):
            bucket, valid = _torch_bucket(torch, ids, n)
            index = bucket[:, None].expand_as(x)
            top = torch.full((n + 1, HEADS), -float("inf"))
            top = top.scatter_reduce(0, index, x.detach(), "amax", include_self=True)
            e = (x - top[bucket]).exp()
            total = torch.zeros(n + 1, HEADS).index_add(0, bucket, e)
            return torch.where(valid[:, None], e / total[bucket], 0.0)

        case.torch_variants = {"torch:scatter_reduce": torch_softmax}
        case.torch_args = (torch.from_numpy(x), torch.from_numpy(ids.astype(np.int64)))
    return case


def build_to_padded(rng, size, dims, torch):
    n, t, f = dims["n"], dims["t"], dims["f"]
    lengths = random_lengths(rng, n, t)
    total, tmax = int(lengths.sum()), int(lengths.max())
    m = total + max(1, int(PAD_FRACTION * total))  # a capacity with padding rows
    values = rng.standard_normal((m, f), dtype=np.float32)
    out_bytes = n * tmax * f * 4
    case = Case(
        "Ragged.to_padded",
        "",
        size,
        f"values [{m}, {f}] -> [{n}, {tmax}, {f}]",
        (jnp.asarray(values), jnp.asarray(lengths)),
        {
            "jaxops": lambda v, ls: jaxops.Ragged(v, ls).to_padded(max_length=tmax),
            "naive": lambda v, ls: naive_pad(v, ls, max_length=tmax),
            "jaxops:pack_rnn_sequence": lambda v, ls: jaxops.pack_rnn_sequence(
                v, ls, max_length=tmax, time_major=False
            ),
        },
        total * f * 4 + out_bytes,
        total * f * 4 + out_bytes,
    )
    if torch is not None:
        split = [int(v) for v in lengths]
        pad = torch.nn.utils.rnn.pad_sequence
        tl = torch.from_numpy(lengths.astype(np.int64))
        case.torch_variants = {
            "torch:pad_sequence": lambda v: pad(torch.split(v[:total], split), batch_first=True),
            "torch:out[mask]=v": lambda v: torch_pad(torch, v[:total], tl, tmax),
        }
        case.torch_args = (torch.from_numpy(values),)
    return case


BUILDERS = {
    "segment_top_k": [
        lambda *a: build_segment_top_k(*a, k=8),
        lambda *a: build_segment_top_k(*a, k=64),
    ],
    "segment_softmax": [build_segment_softmax],
    "Ragged.to_padded": [build_to_padded],
}


# --------------------------------------------------------------------------- #
# Temporary memory: balanced lengths against one long segment
# --------------------------------------------------------------------------- #


def _temp_bytes(fn, *args) -> int:
    memory = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0


def _with_grad(fn, ct):
    def loss(d, i):
        return jnp.sum(fn(d, i)[0] * ct)

    return jax.value_and_grad(loss)


def memory_rows(size, dims, *, alloc, repeats, log) -> list[dict]:
    """``kind: "memory"`` rows: ``segment_top_k`` temp bytes, balanced and skewed lengths.

    Both layouts have the same ``M`` and ``N``. jaxops is also timed (``fwd``);
    the naive padded formulation is only compiled.
    """
    if size not in MEMORY_SIZES:
        return []
    rng = np.random.default_rng(0)
    n, t = segment_dims(dims)
    balanced = random_lengths(rng, n, t)
    data = jnp.asarray(
        rng.standard_normal(shuffled_segment_ids(rng, balanced).shape[0], np.float32)
    )
    ct = jnp.asarray(rng.standard_normal((n, MEMORY_K), np.float32))
    rows = []
    for layout, lengths in (("balanced", balanced), ("one long segment", _skewed(balanced))):
        ids = jnp.asarray(shuffled_segment_ids(rng, lengths))
        tmax = int(lengths.max())
        variants = {
            "jaxops": lambda d, i: tuple(jaxops.segment_top_k(d, i, k=MEMORY_K, num_segments=n)),
            "naive": lambda d, i, tmax=tmax: naive_segment_top_k(
                d, i, k=MEMORY_K, num_segments=n, max_length=tmax
            ),
        }
        for variant, fn in variants.items():
            for pass_, f in (("fwd", fn), ("fwd+bwd", _with_grad(fn, ct))):
                row = {
                    "kind": "memory",
                    "op": "segment_top_k",
                    "size": size,
                    "allocator": alloc,
                    "layout": layout,
                    "rows": int(data.shape[0]),
                    "segments": n,
                    "max_length": tmax,
                    "k": MEMORY_K,
                    "padded_bytes": n * max(tmax, MEMORY_K) * 4,
                    "variant": variant,
                    "pass": pass_,
                    "repeats": repeats,
                }
                if variant == "jaxops" and pass_ == "fwd":
                    timing = harness.time_jax(f, data, ids, repeats=repeats)
                    row["median_ms"] = timing["median_ms"]
                    row["temp_bytes"] = timing.get("temp_bytes", 0)
                else:
                    row["temp_bytes"] = _temp_bytes(f, data, ids)
                rows.append(row)
                log(
                    f"  segment_top_k memory {size:9s} {layout:17s} {variant:7s} {pass_:8s}"
                    f" temp {row['temp_bytes'] / (1 << 20):10.2f} MiB"
                )
    return rows


def memory_section(rows: list[dict]) -> list[str]:
    """The report's lines for the ``memory`` rows (none: no lines)."""
    memory = [r for r in rows if r.get("kind") == "memory"]
    if not memory:
        return []
    mib = 1 << 20
    table: dict[tuple, dict] = {}
    for r in memory:  # temp bytes do not depend on the allocator: the first run's rows
        line = table.setdefault(
            (r["size"], r["layout"], r["pass"]),
            {
                "size": r["size"],
                "layout": r["layout"],
                "M": r["rows"],
                "N": r["segments"],
                "max length": r["max_length"],
                "N x T MiB": r["padded_bytes"] / mib,
                "pass": r["pass"],
            },
        )
        line.setdefault(f"temp MiB {r['variant']}", r["temp_bytes"] / mib)
        if "median_ms" in r:
            line.setdefault("jaxops ms", r["median_ms"])
    columns = ["size", "layout", "M", "N", "max length", "N x T MiB", "pass"]
    columns += ["temp MiB jaxops", "temp MiB naive", "jaxops ms"]
    return [
        f"## segment_top_k temporary memory (k={MEMORY_K})",
        "",
        "XLA's temporary memory of the compiled program (`memory_analysis()`) for two",
        "inputs with the same rows `M` and segments `N`: balanced lengths, and one",
        "segment holding about half the rows. `N x T` is the padded `[N, T]` float32",
        "buffer the naive formulation needs (`T` = the longest segment). The naive",
        "programs are compiled, not run; jaxops `fwd` is also timed on both inputs.",
        "",
        harness.markdown_table(list(table.values()), columns),
        "",
    ]
