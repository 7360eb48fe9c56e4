"""Source-quality checks run as tests, so CI catches style errors, type errors
and stubs that drift from the compiled modules."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_flake8():
    pytest.importorskip("flake8")
    result = _run("flake8", "selproxy", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict():
    pytest.importorskip("mypy")
    result = _run("mypy", "--strict", "--config-file", "pyproject.toml", "-p", "selproxy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_match_the_compiled_modules():
    pytest.importorskip("mypy")
    # From outside the tree, so the compiled modules are the installed ones.
    result = _run("mypy.stubtest", "--mypy-config-file", os.path.join(ROOT, "pyproject.toml"),
                  "selproxy._core", "selproxy._http", "selproxy._routes", "selproxy._upstream",
                  "selproxy._worker", cwd=os.getcwd())
    assert result.returncode == 0, result.stdout + result.stderr
