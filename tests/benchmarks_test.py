"""Smoke test: benchmarks/run.py runs every operator at tiny sizes (torch optional)."""

import importlib.util
import json
import pathlib
import sys

HAS_TORCH = importlib.util.find_spec("torch") is not None  # the optional bench extra
ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

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
}
FWD_ONLY = {"boolean_mask_lengths", "attention_mask"}  # integer / bool outputs


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
    assert run.main(["--tiny", "--quiet", "--out", str(out), "--jsonl", str(jsonl)]) == 0

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    results = [r for r in rows if r["kind"] == "result"]
    assert any(r["kind"] == "machine" for r in rows)
    seen = {(r["op"], r["params"], r["variant"], r["pass"]) for r in results}
    assert {r["op"] for r in results} == OPERATORS
    assert {r["params"] for r in results if r["op"] == "lengths_top_k"} == {"k=8", "k=64"}
    assert {r["params"] for r in results if r["op"] == "segment_top_k"} == {"k=8", "k=64"}
    for op, params, _, _ in seen:
        passes = ["fwd"] if op in FWD_ONLY else ["fwd", "fwd+bwd"]
        for variant in ("jaxops", "naive", "copy"):
            for pass_ in passes:
                assert (op, params, variant, pass_) in seen, (op, params, variant, pass_)
    for r in results:
        assert r["size"] == "tiny" and r["repeats"] == 1
        assert r["median_ms"] > 0
        if r["variant"] == "jaxops":
            assert r["compile_s"] > 0 and "temp_bytes" in r

    report = out.read_text()
    assert "| op |" in report and "jaxops/best peer" in report
    for op in OPERATORS:
        assert op in report

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
