"""README.md's commands stay true: CI runs exactly the test command it gives."""

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    commands = readme_commands()
    assert len(commands) >= 2
    assert ci == commands[1], "the last line of .ci/run must be README.md's test command"
    assert "pytest" in ci and "ruff check" in ci and "ruff format --check" in ci


def test_main_job_command_runs_the_example_that_exists():
    main_job = readme_commands()[0]
    script = re.search(r"python (examples/\S+\.py)", main_job)
    assert script is not None, main_job
    assert (ROOT / script.group(1)).is_file()


def test_python_examples_run_in_order(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # the scope example writes a checkpoint
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert "expected lengths >= 0, got lengths[1] = -1." in capsys.readouterr().out
    np.testing.assert_array_equal(namespace["back"], namespace["x"])
    np.testing.assert_array_equal(namespace["top"].indices, [[1, 3], [-1, -1], [1, 0]])
    np.testing.assert_array_equal(namespace["flat"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(namespace["kept"].indices, [0, 2, 3, -1])
    assert namespace["y"].shape == (2, 3, 4) and namespace["g"].shape == (3, 1)
    assert not np.isnan(namespace["weights"]).any()
    assert np.isneginf(namespace["causal"][0, 0, 1]) and namespace["causal"][0, 1, 0] == 0
    packed = namespace["packed"]
    np.testing.assert_array_equal(packed.segment_ids, [[0, 0, 0, 0, 1, 1], [2, 2, 2, -1, -1, -1]])
    np.testing.assert_array_equal(packed.positions, [[0, 1, 2, 3, 0, 1], [0, 1, 2, -1, -1, -1]])
    np.testing.assert_array_equal(namespace["mask"][0, 4:, :4], False)  # no cross-document
    np.testing.assert_array_equal(namespace["attn"][1, 3:], 0)  # padding queries
    assert namespace["attended"].shape == (9, 1) and np.isfinite(namespace["attended"]).all()
