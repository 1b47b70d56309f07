"""Smoke test: benchmarks/run.py runs every operator at tiny sizes (torch optional)."""

import importlib.util
import json
import pathlib
import sys

import numpy as np

HAS_TORCH = importlib.util.find_spec("torch") is not None  # the optional bench extra
ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# The converters and length_mask (convert_bench.py): integer and bool outputs.
CONVERTERS = {
    "lengths_to_segment_ids",
    "lengths_range_fill",
    "segment_ids_to_lengths",
    "lengths_to_offsets",
    "length_mask",
}
OPERATORS = {
    "pack_rnn_sequence",
    "unpack_rnn_sequence",
    "lengths_top_k",
    "expand",
    "boolean_mask",
    "boolean_unmask",
    "boolean_mask_lengths",
    "sequence_mask",
    "safe_softmax",
    "segment_top_k",
    "segment_softmax",
    "Ragged.to_padded",
    "pack_sequences",
    "unpack_sequences",
    "attention_mask",
    *CONVERTERS,
}
FWD_ONLY = {"boolean_mask_lengths", "attention_mask", *CONVERTERS}  # integer / bool outputs
# Peers (op, params, variant) the report's best peer must weigh.
NAIVE_PEERS = {
    ("boolean_unmask", "2 streams", "naive:gather"),
    ("boolean_mask_lengths", "", "naive:cumsum"),
    ("sequence_mask", "sequence, repeat_from_axis=2", "naive:bias"),
}
TORCH_PEERS = {
    ("pack_rnn_sequence", "", "torch:out[mask]=v"),
    ("lengths_top_k", "k=8", "torch:mask+topk"),
    ("lengths_top_k", "k=64", "torch:mask+topk"),
    ("boolean_mask", "half selected", "torch:x[mask]"),
    ("boolean_mask", "half selected", "torch:index_select(nonzero)"),
    ("boolean_mask_lengths", "", "torch:segment_reduce"),
    ("sequence_mask", "sequence, repeat_from_axis=2", "torch:bias"),
    ("Ragged.to_padded", "", "torch:out[mask]=v"),
}
# PyTorch variants that are not jaxops' forward output (benchmarks/run.py says why).
TORCH_NOT_EQUAL = {
    "torch:pack_padded_sequence",  # the same rows, in PackedSequence's (time-major) order
    "torch:softmax (unsafe)",  # NaN on fully masked rows
    "torch:softmax(masked_fill)",
}


def _load(script):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import harness/run as top-level modules
    try:
        name = f"jaxops_bench_{script}"
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_tiny_run_covers_every_operator(tmp_path):
    run = _load("run")
    assert set(run.OPS) == OPERATORS
    out, jsonl = tmp_path / "RESULTS.md", tmp_path / "results.jsonl"
    argv = ["--tiny", "--quiet", "--no-eager", "--out", str(out), "--jsonl", str(jsonl)]
    assert run.main(argv) == 0

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    results = [r for r in rows if r["kind"] == "result"]
    assert any(r["kind"] == "machine" for r in rows)
    seen = {(r["op"], r["params"], r["variant"], r["pass"]) for r in results}
    assert {r["op"] for r in results} == OPERATORS
    assert {r["params"] for r in results if r["op"] == "lengths_top_k"} == {"k=8", "k=64"}
    assert {r["params"] for r in results if r["op"] == "segment_top_k"} == {"k=8", "k=64"}
    for op, params, _, _ in seen:
        passes = ["fwd"] if op in FWD_ONLY else ["fwd", "fwd+bwd"]
        for variant in ("jaxops", "naive", "copy", "jaxops:unchecked"):
            for pass_ in passes:
                assert (op, params, variant, pass_) in seen, (op, params, variant, pass_)
    for op, params, variant in NAIVE_PEERS | (TORCH_PEERS if HAS_TORCH else set()):
        assert (op, params, variant, "fwd") in seen, (op, params, variant)
    for r in results:
        assert r["size"] == "tiny" and r["repeats"] == 1
        assert r["median_ms"] > 0
        if r["variant"] in ("jaxops", "naive"):
            assert r["compile_s"] > 0 and "temp_bytes" in r

    report = out.read_text()
    assert "| op |" in report and "jaxops/best peer" in report
    for column in ("compile s jaxops", "compile s naive", "compile jaxops/naive"):
        assert f"| {column} |" in report
    for op in OPERATORS:
        assert op in report
    # Small sizes, checks off: jaxops and jaxops:unchecked against naive, per op and pass
    checks_off = report.split("## Small sizes, checks off")[1].split("\n## ")[0]
    assert "| op | size | pass | jaxops/naive | unchecked/naive |" in checks_off
    assert "| sequence_mask (sequence, repeat_from_axis=2) | tiny | fwd+bwd |" in checks_off

    for pass_ in ("fwd", "fwd+bwd"):  # the masks are also timed with their input donated
        assert ("sequence_mask", "sequence, repeat_from_axis=2", "jaxops:donated", pass_) in seen
        assert ("safe_softmax", "axis=-1, masked rows", "jaxops:donated", pass_) in seen
        # Ragged.to_padded is also timed as the pack_rnn_sequence it wraps
        assert ("Ragged.to_padded", "", "jaxops:pack_rnn_sequence", pass_) in seen
    assert "Ragged.to_padded tiny fwd: jaxops:pack_rnn_sequence" in report

    # Packed sequences (attention_bench.py): the padded-batch peers, the naive formulation
    # with its host placement timed, PyTorch, and safe_softmax(where=) beside the plain one.
    for op, peer in (
        ("pack_sequences", "jaxops:pack_rnn_sequence"),
        ("unpack_sequences", "jaxops:unpack_rnn_sequence"),
    ):
        for pass_ in ("fwd", "fwd+bwd"):
            for variant in (peer, "naive:host placement"):
                assert (op, "", variant, pass_) in seen, (op, variant, pass_)
            if HAS_TORCH:
                assert any(v.startswith("torch:") for o, _, v, p in seen if (o, p) == (op, pass_))
    assert {r["params"] for r in results if r["op"] == "safe_softmax"} == {
        "axis=-1, masked rows",
        "where=packed causal mask",
    }
    if HAS_TORCH:
        assert ("attention_mask", "packed, causal", "torch:broadcast compare", "fwd") in seen
    assert "## Packed sequences and attention masks: every variant" in report
    assert "| pack_sequences | tiny | fwd+bwd | naive:host placement |" in report

    # segment_top_k's temporary memory: balanced lengths and one long segment, same M and N
    memory = [r for r in rows if r["kind"] == "memory"]
    assert {(r["layout"], r["variant"], r["pass"]) for r in memory} == {
        (layout, variant, pass_)
        for layout in ("balanced", "one long segment")
        for variant in ("jaxops", "naive")
        for pass_ in ("fwd", "fwd+bwd")
    }
    assert len({(r["rows"], r["segments"]) for r in memory}) == 1
    longest = {r["layout"]: r["max_length"] for r in memory}
    assert longest["one long segment"] > longest["balanced"]
    assert all(r["temp_bytes"] >= 0 for r in memory)
    assert "## segment_top_k temporary memory" in report


def test_tiny_profile_reports_every_section(tmp_path):
    profile = _load("profile")
    out = tmp_path / "PROFILE.md"
    assert profile.main(["--tiny", "--out", str(out)]) == 0
    report = out.read_text()
    for heading in ("## Programs", "## Dispatch cost", "## Threads", "## safe_softmax"):
        assert heading in report
    for op in ("pack_rnn_sequence", "lengths_top_k", "boolean_mask", "safe_softmax"):
        assert f"**{op}**" in report


def test_best_peer_weighs_naive_forms_but_not_host_work():
    run = _load("run")

    case = {"kind": "result", "allocator": "glibc", "op": "pack_sequences", "params": ""}
    case |= {"size": "tiny", "pass": "fwd", "shapes": ""}

    def row(variant, ms, **extra):
        return {**case, "variant": variant, "median_ms": ms, **extra}

    rows = [row("jaxops", 2.0), row("naive", 4.0), row("copy", 0.1)]
    rows += [row("naive:host placement", 0.5, host_work=True), row("torch:index_copy", 3.0)]
    (line,) = run.summarize(rows)
    assert line["best peer"] == "torch:index_copy" and line["jaxops/best peer"] == 2 / 3
    (line,) = run.summarize([*rows, row("naive:scatter", 1.0), row("jaxops:unchecked", 1.5)])
    assert line["best peer"] == "naive:scatter" and line["unchecked/naive"] == 1.5 / 4
    assert "jaxops:unchecked" not in line["extra"]  # its own section


def test_eager_flags():
    run = _load("run")
    assert run.parse_args(["--tiny"]).eager
    assert not run.parse_args(["--tiny", "--no-eager"]).eager
    eager_only = run.parse_args(["--only", "eager"])
    assert eager_only.eager and eager_only.only == []
    assert not run.parse_args(["--only", "expand"]).eager


def test_torch_peers_give_jaxops_forward_output():
    # Without torch (CI: it is the optional bench extra) every case builds and runs
    # with no PyTorch peer; with torch, every peer gives jaxops' forward output.
    run = _load("run")
    torch = run.harness.import_torch()
    assert (torch is not None) == HAS_TORCH
    for op in OPERATORS:
        for build in run.BUILDERS[op]:
            case = build(np.random.default_rng(0), "tiny", run.SIZES["tiny"], torch)
            want = np.asarray(run._primary(case.variants["jaxops"](*case.args)))
            assert want.size > 0, op
            if torch is None:
                assert not case.torch_variants, op
                continue
            for name, fn in case.torch_variants.items():
                if name in TORCH_NOT_EQUAL:
                    continue
                with torch.no_grad():
                    got = run._primary(fn(*case.torch_args)).numpy()
                np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{op} {name}")


def test_eager_bench_plain_expressions_match_jaxops():
    eager = _load("eager_bench")
    for op in eager.CASES:
        eager.check(op, tiny=True)


def test_eager_bench_fresh_processes_and_report(tmp_path):
    eager, run = _load("eager_bench"), _load("run")
    ops = ["boolean_mask", "Ragged.from_list"]
    rows = eager.run(ops, tiny=True, log=lambda _: None)
    assert [(r["op"], r["impl"]) for r in rows] == [
        (op, impl) for op in ops for impl in ("jaxops", "plain")
    ]
    for r in rows:
        assert "error" not in r, r
        assert r["first_s"] > 0 and r["calls_s"] > 0 and r["calls"] == 5
        assert r["compiles_calls"] >= 0
    plain_mask = rows[1]
    assert plain_mask["compiles_first"] > 0  # a fresh process: x[m] compiles its gather
    failed = eager._worker("boolean_mask", "no such impl", True, 60)
    assert failed["op"] == "boolean_mask" and "error" in failed

    text = run.report([{"kind": "machine", **run.harness.machine()}, *rows], "run.py")
    section = text.split("## Eager calls (no jit)")[1]
    assert "| op | first s jaxops | first s plain | first jaxops/plain |" in section
    assert "| boolean_mask |" in section and "plain: `x[m]`" in section


def test_merge_keeps_the_rows_of_the_operators_not_rerun(tmp_path):
    run = _load("run")

    def tiny(op, jsonl, *merge):
        argv = ["--tiny", "--quiet", "--no-eager", "--only", op, "--jsonl", str(jsonl)]
        assert run.main([*argv, "--out", str(tmp_path / "R.md"), *merge]) == 0
        return [json.loads(line) for line in jsonl.read_text().splitlines()]

    first = tiny("expand", tmp_path / "first.jsonl")
    merged = tiny(
        "length_mask", tmp_path / "merged.jsonl", "--merge", str(tmp_path / "first.jsonl")
    )
    again = tiny("expand", tmp_path / "again.jsonl", "--merge", str(tmp_path / "merged.jsonl"))

    def results(rows, op):
        return [r for r in rows if r["kind"] == "result" and r["op"] == op]

    machines = [r for r in first if r["kind"] == "machine"]
    assert [r for r in merged if r["kind"] == "machine"] == machines  # the earlier header
    assert results(merged, "expand") == results(first, "expand")
    assert results(merged, "length_mask")
    # Re-running an operator replaces its rows rather than adding to them.
    assert len(results(again, "expand")) == len(results(first, "expand"))
    assert results(again, "length_mask") == results(merged, "length_mask")
    assert "length_mask" in (tmp_path / "R.md").read_text()
