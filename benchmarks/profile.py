"""Profile evidence for the cells of RESULTS.md where jaxops is not ahead of its best peer.

Run ``python benchmarks/profile.py`` (about a minute; ``--tiny`` for a smoke
run). It prints a markdown report (and writes it with ``--out PATH``):

* **programs**: the ops XLA runs (the ``ENTRY`` of the compiled HLO) for the
  jaxops operator and for the naive formulation at the large size, so that
  "same program" and "different program" are facts, not guesses;
* **dispatch**: what a ``checkify.debug_check`` costs a jitted call (its effect
  sends every call down JAX's effects dispatch path), and ``lengths_top_k``
  with and without its value checks;
* **threads**: XLA's ``TopK`` and row gather against ``torch.topk`` and
  ``index_select`` with 1 and with 2 threads;
* **threads** also: XLA's top-8 and the compaction ``boolean_mask`` computes
  (the positions of a mask's true entries) against ``torch.topk`` and
  ``torch.nonzero``;
* **softmax**: the default formulation against a log-sum-exp one that makes
  fewer passes over memory, with a copy of the same bytes;
* **small sizes**: the compiled programs (checks off) of the ops that stay
  behind the naive formulation at the small size.

With ``--out PATH`` the hand-written notes above the marker line of an
existing ``PATH`` are kept (``benchmarks/PROFILE.md`` reads its figures
against ``RESULTS.md``).

Times are medians in one process; quote ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import re

import attention_bench
import harness
import jax
import jax.numpy as jnp
import numpy as np
import ragged_bench
import run as bench

import jaxops
from jaxops._src import checks, topk


def _jit_ms(fn, *args, repeats):
    return harness.time_jax(fn, *args, repeats=repeats)["median_ms"]


def _call_ms(fn, *, repeats):
    return harness.time_python(fn, repeats=repeats)["median_ms"]


def program(fn, *args) -> list[str]:
    """The instructions of the compiled entry computation: ``name shape`` per op."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :].split("\n}")[0].splitlines()[1:]
    ops = []
    for line in entry:
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) (\S+?)\(", line)
        if match and match[3] not in ("parameter", "constant", "get-tuple-element", "tuple"):
            name = re.sub(r"\.\d+$", "", match[1])
            ops.append(f"{name} {match[2].split('{')[0]}")
    return ops


def section_programs(rng, size) -> list[str]:
    dims = bench.SIZES[size]
    lines = ["## Programs (compiled HLO entry ops, jaxops vs naive)", ""]
    cases = [
        bench.build_pack(rng, size, dims, None),
        bench.build_unpack(rng, size, dims, None),
        bench.build_top_k(rng, size, dims, None, k=8),
        bench.build_expand(rng, size, dims, None),
        bench.build_boolean_mask(rng, size, dims, None),
        bench.build_sequence_mask(rng, size, dims, None),
        bench.build_safe_softmax(rng, size, dims, None),
    ]
    for case in cases:
        mine = program(bench._primary_fn(case.variants["jaxops"]), *case.args)
        naive = program(bench._primary_fn(case.variants["naive"]), *case.args)
        lines.append(f"- **{case.op}** ({case.shapes}): jaxops {len(mine)} ops, naive {len(naive)}")
        lines.append(f"  - jaxops: {', '.join(mine)}")
        lines.append(f"  - naive: {', '.join(naive)}")
    return [*lines, ""]


def section_dispatch(rng, size, repeats) -> list[str]:
    overhead_us = 1e3 * bench.effects_overhead_ms(max(repeats, 200))
    case = bench.build_top_k(rng, size, bench.SIZES[size], None, k=8)
    data, lengths = case.args
    bound = int(np.max(np.asarray(lengths)))
    k, rows = 8, data.shape[0]
    plan = topk._plan(rows, lengths.shape[0], k, bound, True)
    public = _jit_ms(case.variants["jaxops"], *case.args, repeats=repeats)
    unchecked = _jit_ms(
        lambda d, n: topk._top_k_jit(rows, k, bound, plan, d, n), *case.args, repeats=repeats
    )
    naive = _jit_ms(case.variants["naive"], *case.args, repeats=repeats)
    return [
        "## Dispatch cost of value checks",
        "",
        f"- one `checkify.debug_check` in a jitted `x * 2` on 16 floats: "
        f"+{overhead_us:.1f} us per call. The check adds nothing to the compiled program; "
        "its effect disables JAX's C++ dispatch fast path for every call of the "
        "enclosing jitted function.",
        f"- lengths_top_k k=8 ({case.shapes}): public op {public:.3f} ms, the same "
        f"numerics without the value checks {unchecked:.3f} ms, naive {naive:.3f} ms "
        f"(public/naive {public / naive:.2f}, unchecked/naive {unchecked / naive:.2f}).",
        "",
    ]


def section_threads(rng, size, repeats, torch) -> list[str]:
    lines = ["## Threads: XLA kernels against PyTorch with 1 and 2 threads", ""]
    if torch is None:
        return [*lines, "- torch not installed: skipped", ""]
    dims = bench.SIZES[size]
    case = bench.build_top_k(rng, size, dims, None, k=64)
    lengths = case.args[1]
    width = int(np.max(np.asarray(lengths)))
    k = min(64, width)
    rows = jnp.asarray(rng.standard_normal((lengths.shape[0], width), dtype=np.float32))
    xla_topk = _jit_ms(lambda r: jax.lax.top_k(r, k), rows, repeats=repeats)
    trows = torch.from_numpy(np.array(rows))
    mask_case = bench.build_boolean_mask(rng, size, dims, None)
    mdata, mask = mask_case.args
    index = jnp.asarray(np.nonzero(np.asarray(mask))[0].astype(np.int32))
    xla_gather = _jit_ms(lambda d, i: jnp.take(d, i, axis=0), mdata, index, repeats=repeats)
    tdata, tindex = torch.from_numpy(np.array(mdata)), torch.from_numpy(np.array(index))
    size_s = int(index.shape[0])
    # The compaction boolean_mask computes before its gather: jaxops' (cumsum + the
    # histogram count of checks.count_at_most) and jnp.nonzero's (cumsum + scatter).
    xla_compact = _jit_ms(
        lambda m: checks.count_at_most(checks.cumsum(m), size_s), mask, repeats=repeats
    )
    xla_nonzero = _jit_ms(lambda m: jnp.nonzero(m, size=size_s)[0], mask, repeats=repeats)
    tmask = torch.from_numpy(np.array(mask))
    rows8, k8 = trows, min(8, width)
    xla_top8 = _jit_ms(lambda r: jax.lax.top_k(r, k8), rows, repeats=repeats)
    torch_ms = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch_ms["topk", threads] = _call_ms(lambda: torch.topk(trows, k, dim=1), repeats=repeats)
        torch_ms["top8", threads] = _call_ms(lambda: torch.topk(rows8, k8, dim=1), repeats=repeats)
        torch_ms["gather", threads] = _call_ms(
            lambda: tdata.index_select(0, tindex), repeats=repeats
        )
        torch_ms["nonzero", threads] = _call_ms(lambda: torch.nonzero(tmask), repeats=repeats)
    torch.set_num_threads(harness.cpu_count())
    return [
        *lines,
        f"- top-{k} of [{rows.shape[0]}, {width}] rows: XLA `TopK` {xla_topk:.3f} ms; "
        f"torch.topk 1 thread {torch_ms['topk', 1]:.3f} ms, 2 threads "
        f"{torch_ms['topk', 2]:.3f} ms (XLA / torch-1-thread "
        f"{xla_topk / torch_ms['topk', 1]:.2f}, XLA / torch-2-threads "
        f"{xla_topk / torch_ms['topk', 2]:.2f}). XLA CPU's TopK custom call runs the "
        "whole batch on one thread.",
        f"- top-{k8} of the same rows: XLA `TopK` {xla_top8:.3f} ms; torch.topk 1 thread "
        f"{torch_ms['top8', 1]:.3f} ms, 2 threads {torch_ms['top8', 2]:.3f} ms.",
        f"- the positions of the {size_s} true entries of a [{mask.shape[0]}] mask: "
        f"jaxops' compaction (cumsum + histogram count) {xla_compact:.3f} ms, "
        f"`jnp.nonzero(size=)` {xla_nonzero:.3f} ms; torch.nonzero 1 thread "
        f"{torch_ms['nonzero', 1]:.3f} ms, 2 threads {torch_ms['nonzero', 2]:.3f} ms. "
        "XLA CPU runs the prefix sum and the scatter (or histogram) on one thread.",
        f"- row gather of {index.shape[0]} x {mdata.shape[1]} float32 rows (indices "
        f"given): XLA {xla_gather:.3f} ms; torch.index_select 1 thread "
        f"{torch_ms['gather', 1]:.3f} ms, 2 threads {torch_ms['gather', 2]:.3f} ms.",
        "",
    ]


def section_small(rng, size) -> list[str]:
    """The compiled programs of the ops that stay behind naive at the small size, checks off."""
    dims = bench.SIZES[size]
    lines = [
        f"## Small sizes: programs (`{size}`, `jaxops.unchecked`)",
        "",
        "At the small size a call costs a few XLA CPU kernels (one per fused op) of a "
        "few microseconds each; the ops below run more kernels than the naive "
        "formulation for what it does not do:",
        "",
    ]
    cases = [
        ragged_bench.build_segment_softmax(rng, size, dims, None),
        attention_bench.build_pack_sequences(rng, size, dims, None),
        attention_bench.build_unpack_sequences(rng, size, dims, None),
    ]
    for case in cases:
        mine = program(jaxops_unchecked(case.variants["jaxops"]), *case.args)
        naive = program(bench._primary_fn(case.variants["naive"]), *case.args)
        lines.append(f"- **{case.op}** ({case.shapes}): jaxops {len(mine)} ops, naive {len(naive)}")
        lines.append(f"  - jaxops: {', '.join(mine)}")
        lines.append(f"  - naive: {', '.join(naive)}")
    return [*lines, ""]


def jaxops_unchecked(fn):
    return jaxops.unchecked(bench._primary_fn(fn))


def section_softmax(rng, size, repeats) -> list[str]:
    case = bench.build_safe_softmax(rng, size, bench.SIZES[size], None)
    (x,) = case.args

    def log_sum_exp(x):  # reads x three times, writes once; exp computed twice
        top = jnp.max(x, axis=-1, keepdims=True)
        dead = top == -jnp.inf
        shift = jnp.where(dead, 0.0, top)
        total = jnp.sum(jnp.exp(x - shift), axis=-1, keepdims=True)
        return jnp.exp(x - (shift + jnp.log(jnp.where(dead, 1.0, total))))

    default = _jit_ms(case.variants["jaxops"], x, repeats=repeats)
    ops_default = ", ".join(program(case.variants["jaxops"], x))
    ops_lse = ", ".join(program(log_sum_exp, x))
    lse = _jit_ms(log_sum_exp, x, repeats=repeats)
    copy = harness.time_copy(case.bytes_fwd, repeats=repeats)["median_ms"]
    return [
        "## safe_softmax",
        "",
        f"- {case.shapes}: jaxops {default:.2f} ms ({ops_default}); "
        f"log-sum-exp formulation {lse:.2f} ms ({ops_lse}); "
        f"copy of the same bytes {copy:.2f} ms. jaxops/copy {default / copy:.2f}.",
        "",
    ]


MARKER = "<!-- Generated by benchmarks/profile.py below this line; the notes above are kept. -->"


def write_keeping_notes(path: str, report: str) -> None:
    """Writes ``report`` after ``MARKER``, keeping the hand-written notes above it in ``path``."""
    notes = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if MARKER in text:
            notes = text[: text.index(MARKER)]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{notes}{MARKER}\n\n{report}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 3 timed calls")
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args(argv)
    size, repeats = ("tiny", 3) if args.tiny else ("large", 20)
    info = harness.machine()
    lines = [
        "# Measurements",
        "",
        f"{info['date']}, {info['cores']} cores, jax {info['jax']}, torch {info['torch']}, "
        f"allocator {info['allocator']}, size `{size}`.",
        "",
    ]
    rng = np.random.default_rng(0)
    lines += section_programs(rng, size)
    lines += section_dispatch(rng, size, repeats)
    lines += section_threads(rng, size, repeats, harness.import_torch())
    lines += section_softmax(rng, size, repeats)
    lines += section_small(rng, "tiny" if args.tiny else "small")
    report = "\n".join(lines)
    print(report)
    if args.out:
        write_keeping_notes(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
