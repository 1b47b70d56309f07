"""The documentation site stays complete and true (``mkdocs build --strict`` checks the rest).

- every public name has a ``::: jaxops.<name>`` reference entry, and every entry
  is a public name;
- every page is in the nav, and the nav lists only pages that exist;
- the repository points to no file it does not contain: no mention of the
  project's out-of-tree specification, and README's relative links resolve;
- the getting-started page gives README's two commands verbatim;
- the Python snippets of every page run, in order, under the suite's strict
  promotion rules;
- the benchmark plot's parser reads ``benchmarks/RESULTS.md``.
"""

import importlib.util
import math
import pathlib
import re

import jax
import numpy as np
import pytest

import jaxops

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
ENTRY = re.compile(r"^::: jaxops\.(\S+)\s*$", flags=re.M)


def page_id(page: pathlib.Path) -> str:
    return page.relative_to(DOCS).as_posix()


def reference_entries() -> list[str]:
    return [name for page in PAGES for name in ENTRY.findall(page.read_text(encoding="utf-8"))]


def test_every_public_name_has_a_reference_entry():
    missing = sorted(set(jaxops.__all__) - set(reference_entries()))
    assert not missing, f"public names without a `::: jaxops.<name>` entry in docs/: {missing}"


def test_every_reference_entry_is_a_public_name_documented_once():
    entries = reference_entries()
    unknown = sorted(set(entries) - set(jaxops.__all__))
    assert not unknown, f"reference entries that are not in jaxops.__all__: {unknown}"
    repeated = sorted({name for name in entries if entries.count(name) > 1})
    assert not repeated, f"names with more than one reference entry: {repeated}"


def test_the_nav_lists_exactly_the_pages():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") : config.index("\nplugins:")]
    listed = re.findall(r"([\w./-]+\.md)\s*$", nav, flags=re.M)
    assert sorted(listed) == sorted(set(listed)), "a page is listed twice in the nav"
    assert sorted(listed) == sorted(page_id(p) for p in PAGES)


# The files a reader of this repository meets; tests may name the specification
# they are checked against, the shipped files may not.
def shipped_files() -> list[pathlib.Path]:
    files = [ROOT / name for name in ("README.md", "CHANGELOG.md", "mkdocs.yml", "pyproject.toml")]
    for folder in ("docs", "jaxops", "examples", "benchmarks"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".md", ".py")]
    return [p for p in files if p.is_file()]


def test_no_pointer_to_the_out_of_tree_specification():
    spec = re.compile(r"SPEC\.md|\bSPEC\b")
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in shipped_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spec.search(line)
    ]
    assert not hits, "the repository does not contain the specification:\n" + "\n".join(hits)


def test_readme_relative_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files the repository does not contain: {missing}"


def test_getting_started_gives_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)][:2]
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert len(commands) == 2
    for command in commands:
        assert f"```bash\n{command}\n```" in page


def python_blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


SNIPPET_PAGES = [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=page_id)
def test_snippets_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # snippets may write checkpoints
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    check = SNIPPET_CHECKS.get(page_id(page))
    if check is not None:
        check(namespace, capsys.readouterr().out)


def _getting_started(ns, out):
    assert "expected a static `max_length=`" in out
    assert "expected sum(lengths) <= values.shape[0] = 5, got sum(lengths) = 8." in out
    assert np.isnan(jax.nn.softmax(ns["masked"])[1, 2]).all()
    np.testing.assert_array_equal(jaxops.safe_softmax(ns["masked"])[1, 2], np.zeros(4))
    np.testing.assert_array_equal(ns["best"].indices, [[4, 1], [2, 0]])
    assert ns["state"]["step"] == 1 and math.isfinite(float(ns["value"]))


def _packed_sequences(ns, out):
    del out
    packed = ns["packed"]
    np.testing.assert_array_equal(packed.segment_ids[0], [0, 0, 0, 0, 0, 1, 1, 1, -1, -1])
    real = np.asarray(packed.segment_ids) >= 0
    np.testing.assert_allclose(np.asarray(ns["out"])[real], np.asarray(ns["ref"])[real], atol=1e-5)
    weights = np.asarray(ns["weights"]).transpose(0, 2, 1, 3)  # [R, L, H, L]
    np.testing.assert_array_equal(weights[~real], 0)  # padding queries attend nothing
    assert np.all(np.asarray(ns["logits3"]) == 0)  # the caution's example input
    unbatched = np.asarray(jaxops.sequence_mask(ns["logits3"], mode="upper", axis=2))
    assert np.isneginf(unbatched[0]).any() and not np.isneginf(unbatched[1]).any()


def _ragged_layouts(ns, out):
    del out
    np.testing.assert_array_equal(ns["grads"].values, [12, 12, 12, 18, 18, 0])
    np.testing.assert_array_equal(ns["batched"], [[6, 0, 9], [2, 4, 6]])


def _value_checks(ns, out):
    del ns
    assert "pack_rnn_sequence: expected lengths >= 0, got lengths[1] = -1." in out


def _performance(ns, out):
    assert len(set(ns["sizes"])) == 5
    assert str(ns["sizes"]) in out


SNIPPET_CHECKS = {
    "guides/performance.md": _performance,
    "getting-started.md": _getting_started,
    "guides/packed-sequences.md": _packed_sequences,
    "guides/ragged-layouts.md": _ragged_layouts,
    "guides/value-checks.md": _value_checks,
}


def test_benchmark_plot_reads_the_results():
    spec = importlib.util.spec_from_file_location("plot_benchmarks", DOCS / "plot_benchmarks.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    rows = plot.select(plot.read_tables(text))
    ops = {row["op"] for row in rows}
    assert {"pack_rnn_sequence", "expand", "segment_softmax (8 heads)"} <= ops
    assert all(float(row[plot.RATIO]) > 0 for row in rows)
    assert (DOCS / "benchmarks.png").is_file()
