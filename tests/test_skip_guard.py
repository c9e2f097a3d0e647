"""The skip guard of tests/conftest.py, run on tiny test files in a pytest of their own: under CI=true a
skip fails the run, whether it happens while a test runs or while its module is collected."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
FILES = {
    "test_collection_skip.py": 'import pytest\n\npytest.importorskip("no_such_module_anywhere")\n\n\n'
                               "def test_never_collected():\n    pass\n",
    "test_run_skip.py": "import pytest\n\n\ndef test_skips():\n    pytest.skip('not here')\n\n\n"
                        "@pytest.mark.xfail(reason='expected', strict=True)\ndef test_expected_failure():\n"
                        "    assert False\n",
    "test_plain.py": "def test_passes():\n    pass\n",
}


def run_pytest(folder: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *files],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "conftest.py").write_text(CONFTEST.read_text())
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


def test_a_collection_time_skip_fails_under_ci(folder):
    result = run_pytest(folder, "true", "test_collection_skip.py", "test_plain.py")
    assert result.returncode != 0, result.stdout
    assert "skipped at collection under CI=true" in result.stdout
    assert "no_such_module_anywhere" in result.stdout


def test_a_run_time_skip_fails_under_ci_and_an_expected_failure_does_not(folder):
    result = run_pytest(folder, "true", "test_run_skip.py")
    assert result.returncode != 0, result.stdout
    assert "1 failed" in result.stdout and "1 xfailed" in result.stdout
    assert "skipped under CI=true" in result.stdout


def test_skips_are_skips_outside_ci(folder):
    result = run_pytest(folder, None, *FILES)
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout and "1 passed" in result.stdout and "1 xfailed" in result.stdout
