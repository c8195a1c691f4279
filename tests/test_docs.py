"""The user docs stay true: links resolve, the README's API example runs, CI finds the test command."""
import os
import re
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs"))

import check_links  # noqa: E402


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_every_relative_link_and_named_path_resolves():
    assert check_links.problems() == []


def test_link_checker_reports_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("[ok](docs/a.md) [gone](docs/missing.md) `experiments/nope.py`\n")
    (tmp_path / "docs" / "a.md").write_text("![](../README.md)\n")
    found = check_links.problems(str(tmp_path))
    assert found == ["README.md: broken link docs/missing.md", "README.md: names a missing path experiments/nope.py"]


def test_readme_api_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert blocks, "README.md has no ```python block"
    script = tmp_path / "readme_api.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)                         # the example writes codes.pt
    runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "codes.pt").exists()


def test_ci_finds_the_test_command():
    """.ci/run extracts the command between the test-command markers; it must be one pip + pytest line."""
    out = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md"
                       " | grep -v '^<!--' | grep -v '^```' | sed '/^\\s*$/d'"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert len(out) == 1 and "pip install" in out[0] and "pytest" in out[0]
