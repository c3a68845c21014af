"""The README's promises: its library snippet runs, and .ci/run executes its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_library_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python snippet"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    marker = README.index("<!-- ci: the next bash block")
    command = re.search(r"```bash\n(.*?)\n```", README[marker:], flags=re.S).group(1).strip()
    assert "pytest" in command and "ruff check" in command.split("pytest")[0]  # the lint first, then the tests
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert "<!-- ci: the next bash block" in ci_script  # .ci/run reads the command from the README
