"""README.md's commands stay true: CI runs exactly the test command it gives."""

import pathlib
import re

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
