"""Benchmark: lengths_top_k against padding + lax.top_k and PyTorch (pad + torch.topk).

Run ``python benchmarks/topk_bench.py`` (``--tiny`` for a smoke run). Forward
and forward+backward (gradient w.r.t. ``data`` of ``sum(values * w)``) are
timed for

* ``jaxops fast``: ``lengths_top_k(..., max_length=T)`` (padded formulation);
* ``jaxops robust``: traced lengths without ``max_length`` (chunked formulation);
* ``pad+lax.top_k``: pad the segments with ``-inf`` to ``[N, T]`` and call
  ``jax.lax.top_k`` (autodiff gradient; -0.0/+0.0 not normalised);
* ``torch``: ``pad_sequence(split(x, lengths), -inf)`` + ``torch.topk`` (+ ``backward``).

Ratios are against ``pad+lax.top_k`` of the same case and pass; quote ratios,
not absolute times (shared, noisy machine).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

import jaxops


def _cases(tiny: bool):
    """``(name, data, lengths, T, k)``: uniform lengths for k in {8, 64}, and one long segment."""
    rng = np.random.default_rng(0)
    num, max_len, long, num_short = (8, 64, 200, 7) if tiny else (256, 512, 100_000, 255)
    lengths = rng.integers(1, max_len + 1, size=num).astype(np.int32)
    data = rng.standard_normal(int(lengths.sum())).astype(np.float32)
    skew_lengths = np.concatenate([[long], np.ones(num_short)]).astype(np.int32)
    skew_data = rng.standard_normal(int(skew_lengths.sum())).astype(np.float32)
    cases = []
    for k in (8, 64):
        cases.append((f"N={num} len~U[1,{max_len}] k={k}", data, lengths, max_len, k))
    cases.append((f"skewed 1x{long}+{num_short}x1 k=8", skew_data, skew_lengths, long, 8))
    return cases


def _padded_lax_top_k(data, lengths, max_len, k):
    """The baseline: pad with -inf to [N, max_len], then lax.top_k."""
    offsets = jnp.cumsum(lengths) - lengths
    t = jnp.arange(max_len, dtype=lengths.dtype)
    valid = t[None, :] < lengths[:, None]
    rows = jnp.where(valid, offsets[:, None] + t[None, :], 0)
    padded = jnp.where(valid, data[rows], -jnp.inf)
    values, indices = jax.lax.top_k(padded, k)
    return values, indices


def _jax_variants(max_len, k):
    return {
        "jaxops fast": lambda d, ls: jaxops.lengths_top_k(d, ls, k=k, max_length=max_len),
        "jaxops robust": lambda d, ls: jaxops.lengths_top_k(d, ls, k=k),
        "pad+lax.top_k": lambda d, ls: _padded_lax_top_k(d, ls, max_len, k),
    }


def bench_jax(tiny: bool, repeats: int) -> list[dict]:
    """Forward and forward+backward of the JAX variants on every case."""
    results = []
    for size, data, lengths, max_len, k in _cases(tiny):
        data_j, lengths_j = jnp.asarray(data), jnp.asarray(lengths)
        weights = jnp.asarray(np.random.default_rng(1).random((len(lengths), k)), jnp.float32)
        for variant, fn in _jax_variants(max_len, k).items():
            loss = lambda d, ls, w, fn=fn: jnp.sum(fn(d, ls)[0] * w)
            passes = {
                "fwd": (lambda d, ls, w, fn=fn: fn(d, ls)),
                "fwd+bwd": jax.grad(loss),
            }
            for name, f in passes.items():
                timing = harness.time_jax(f, data_j, lengths_j, weights, repeats=repeats)
                results.append({"op": "lengths_top_k", "size": size, "variant": variant,
                                "pass": name, **timing})  # fmt: skip
    return results


def bench_torch(tiny: bool, repeats: int) -> list[dict]:
    """PyTorch: pad_sequence(split) + torch.topk, and its backward; 'skipped' without torch."""
    torch = harness.import_torch()
    results = []
    for size, data, lengths, _, k in _cases(tiny):
        for name in ("fwd", "fwd+bwd"):
            row = {"op": "lengths_top_k", "size": size, "variant": "torch", "pass": name}
            if torch is None:
                results.append({**row, "note": "skipped (torch not importable)"})
                continue
            split = [int(n) for n in lengths]
            weights = torch.from_numpy(np.random.default_rng(1).random((len(lengths), k)))
            weights = weights.to(torch.float32)

            def run(name=name, split=split, weights=weights, k=k, data=data):
                x = torch.from_numpy(data).requires_grad_(name == "fwd+bwd")
                with torch.set_grad_enabled(name == "fwd+bwd"):
                    seqs = torch.split(x, split)
                    padded = torch.nn.utils.rnn.pad_sequence(
                        seqs, batch_first=True, padding_value=float("-inf")
                    )
                    values, indices = torch.topk(padded, min(k, padded.shape[1]), dim=1)
                    if name == "fwd+bwd":
                        (values * weights[:, : values.shape[1]]).sum().backward()
                        return x.grad
                return values, indices

            results.append({**row, **harness.time_python(run, repeats=repeats)})
    return results


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds ``ratio``: median time over the pad+lax.top_k median of the same case and pass."""
    base = {(r["size"], r["pass"]): r["median_ms"] for r in rows if r["variant"] == "pad+lax.top_k"}
    out = []
    for r in rows:
        ref = base.get((r["size"], r["pass"]))
        ratio = r["median_ms"] / ref if ref and "median_ms" in r else None
        out.append({**r, "ratio": ratio})
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 1 timed call")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="append the results to this JSONL file")
    args = parser.parse_args(argv)
    repeats = 1 if args.tiny else args.repeats
    rows = with_ratios(bench_jax(args.tiny, repeats) + bench_torch(args.tiny, repeats))
    rows.sort(key=lambda r: (r["size"], r["pass"]))
    print(harness.machine())
    columns = ["size", "pass", "variant", "median_ms", "ratio", "temp_bytes", "note"]
    print(harness.markdown_table(rows, columns))
    if args.json:
        harness.write_jsonl(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
