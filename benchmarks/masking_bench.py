"""Benchmark: boolean_mask and sequence_mask against naive JAX, PyTorch and a copy.

Run ``python benchmarks/masking_bench.py`` (``--tiny`` for a smoke run). Forward
(``fwd``) and forward+backward (``fwd+bwd``: ``jax.value_and_grad`` of
``sum(out * ct)`` w.r.t. the data, with a fixed cotangent ``ct``) are timed for

* ``boolean_mask`` on ``[M, 128]`` float32 rows, half of them selected:
  ``jaxops`` (``boolean_mask(x, m, size=S)``), ``naive`` (``jnp.nonzero(m,
  size=S)`` + ``jnp.take``, autodiff) and ``torch`` (``x[mask]`` + ``backward``);
* ``sequence_mask`` on ``[B, T, T]`` float32 logits, ``"sequence"`` mode with
  per-row key lengths and the causal ``"upper"`` mode: ``jaxops``, ``naive``
  (``jnp.where`` with a broadcast ``iota`` comparison, autodiff) and ``torch``
  (``masked_fill`` + ``backward``);
* ``copy``: a jitted copy moving the bytes the forward pass must read and
  write (the copy limit), when ``harness.time_copy`` exists.

Ratios are against ``naive`` of the same case and pass; quote ratios, not
absolute times (shared, noisy machine).
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

FEATURES = 128


def _mask_case(tiny: bool):
    rows = 64 if tiny else 65_536
    rng = np.random.default_rng(0)
    mask = np.zeros(rows, bool)
    mask[rng.permutation(rows)[: rows // 2]] = True  # exactly half selected
    data = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    ct = rng.standard_normal((rows // 2, FEATURES)).astype(np.float32)
    return f"M={rows}x{FEATURES} half", data, mask, ct


def _logits_case(tiny: bool):
    batch, time = (2, 8) if tiny else (256, 512)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((batch, time, time)).astype(np.float32)
    key_lengths = rng.integers(1, time + 1, size=batch).astype(np.int32)
    lengths = np.repeat(key_lengths, time)  # one entry per flattened [B * T] row
    ct = rng.random((batch, time, time)).astype(np.float32)
    return f"[{batch},{time},{time}]", logits, lengths, ct


def _naive_mask(x, m, size):
    (rows,) = jnp.nonzero(m, size=size, fill_value=0)
    return jnp.take(x, rows, axis=0)


def _naive_sequence(x, lengths, mode):
    batch, time, _ = x.shape
    i = jax.lax.broadcasted_iota(jnp.int32, (1, time, time), 1)
    j = jax.lax.broadcasted_iota(jnp.int32, (1, time, time), 2)
    masked = j >= lengths.reshape(batch, time, 1) if mode == "sequence" else j > i
    return jnp.where(masked, -jnp.inf, x)


def _jax_passes(fn):
    """``fwd`` and ``fwd+bwd`` of ``fn(x, aux)``: value_and_grad of ``sum(out * ct)``."""
    loss = lambda x, aux, ct: jnp.sum(fn(x, aux) * ct)
    return {
        "fwd": lambda x, aux, ct: fn(x, aux),
        "fwd+bwd": jax.value_and_grad(loss),
    }


def _time_variants(op, size, variants, x, aux, ct, repeats):
    results = []
    for variant, fn in variants.items():
        for name, f in _jax_passes(fn).items():
            timing = harness.time_jax(f, x, aux, ct, repeats=repeats)
            row = {"op": op, "size": size, "variant": variant, "pass": name}
            results.append({**row, **timing})
    return results


def bench_boolean_mask(tiny: bool, repeats: int) -> list[dict]:
    """boolean_mask vs ``jnp.nonzero(size=) + take`` (forward and forward+backward)."""
    size, data, mask, ct = _mask_case(tiny)
    selected = int(mask.sum())
    variants = {
        "jaxops": lambda x, m: jaxops.boolean_mask(x, m, size=selected).values,
        "naive": lambda x, m: _naive_mask(x, m, selected),
    }
    args = (jnp.asarray(data), jnp.asarray(mask), jnp.asarray(ct))
    return _time_variants("boolean_mask", size, variants, *args, repeats)


def bench_sequence_mask(tiny: bool, repeats: int) -> list[dict]:
    """sequence_mask ("sequence" and causal "upper") vs ``jnp.where`` with a comparison."""
    size, logits, lengths, ct = _logits_case(tiny)
    args = (jnp.asarray(logits), jnp.asarray(lengths), jnp.asarray(ct))
    results = []
    for mode in ("sequence", "upper"):
        if mode == "sequence":
            ours = lambda x, n: jaxops.sequence_mask(x, n, axis=2)
        else:
            ours = lambda x, n: jaxops.sequence_mask(x, mode="upper", axis=2, batch=0)
        variants = {"jaxops": ours, "naive": lambda x, n, mode=mode: _naive_sequence(x, n, mode)}
        op = f"sequence_mask {mode}"
        results += _time_variants(op, size, variants, *args, repeats)
    return results


def bench_copy(tiny: bool, repeats: int) -> list[dict]:
    """The copy limit of each forward pass: read and write the bytes it must move."""
    time_copy = getattr(harness, "time_copy", None)
    mask_size, data, mask, _ = _mask_case(tiny)
    logits_size, logits, _, _ = _logits_case(tiny)
    moved = {
        ("boolean_mask", mask_size): 2 * int(mask.sum()) * FEATURES * data.itemsize,
        ("sequence_mask sequence", logits_size): 2 * logits.nbytes,
        ("sequence_mask upper", logits_size): 2 * logits.nbytes,
    }
    results = []
    for (op, size), nbytes in moved.items():
        row = {"op": op, "size": size, "variant": "copy", "pass": "fwd"}
        if time_copy is None:
            results.append({**row, "note": "skipped (harness.time_copy missing)"})
        else:
            results.append({**row, **time_copy(nbytes, repeats=repeats)})
    return results


def bench_torch(tiny: bool, repeats: int) -> list[dict]:
    """PyTorch ``x[mask]`` and ``masked_fill`` (+ ``backward``); 'skipped' without torch."""
    torch = harness.import_torch()
    mask_size, data, mask, mask_ct = _mask_case(tiny)
    logits_size, logits, lengths, logits_ct = _logits_case(tiny)
    cases = [("boolean_mask", mask_size), ("sequence_mask sequence", logits_size)]
    cases.append(("sequence_mask upper", logits_size))
    results = []
    for op, size in cases:
        for name in ("fwd", "fwd+bwd"):
            row = {"op": op, "size": size, "variant": "torch", "pass": name}
            if torch is None:
                results.append({**row, "note": "skipped (torch not importable)"})
                continue
            grad = name == "fwd+bwd"
            if op == "boolean_mask":
                x_np, ct, aux = data, torch.from_numpy(mask_ct), torch.from_numpy(mask)
                forward = lambda x, aux=aux: x[aux]
            else:
                x_np, ct = logits, torch.from_numpy(logits_ct)
                batch, time, _ = logits.shape
                j = torch.arange(time).view(1, 1, time)
                if op.endswith("sequence"):
                    aux = j >= torch.from_numpy(lengths).view(batch, time, 1)
                else:
                    aux = j > torch.arange(time).view(1, time, 1)
                forward = lambda x, aux=aux: x.masked_fill(aux, float("-inf"))

            def run(x_np=x_np, forward=forward, ct=ct, grad=grad):
                x = torch.from_numpy(x_np).requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    out = forward(x)
                    if grad:
                        (out * ct).sum().backward()
                        return x.grad
                return out

            results.append({**row, **harness.time_python(run, repeats=repeats)})
    return results


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds ``ratio``: median time over the ``naive`` median of the same op, size and pass."""
    base = {
        (r["op"], r["size"], r["pass"]): r["median_ms"] for r in rows if r["variant"] == "naive"
    }
    out = []
    for r in rows:
        ref = base.get((r["op"], r["size"], r["pass"]))
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
    rows = (
        bench_boolean_mask(args.tiny, repeats)
        + bench_sequence_mask(args.tiny, repeats)
        + bench_torch(args.tiny, repeats)
        + bench_copy(args.tiny, repeats)
    )
    rows = with_ratios(rows)
    order = {"jaxops": 0, "naive": 1, "torch": 2, "copy": 3}
    rows.sort(key=lambda r: (r["op"], r["size"], r["pass"], order[r["variant"]]))
    print(harness.machine())
    columns = ["op", "size", "pass", "variant", "median_ms", "ratio", "temp_bytes", "note"]
    print(harness.markdown_table(rows, columns))
    if args.json:
        harness.write_jsonl(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
