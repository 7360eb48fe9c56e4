"""The package imports with no source tree beside it, and its compiled
modules are the installed ones."""
import json
import os
import subprocess
import sys
import tempfile


def test_imports_from_outside_the_source_tree():
    modules = ["_core", "_http", "_routes", "_writer", "_worker", "_upstream", "_client"]
    code = ("import importlib, json, selproxy;"
            f"print(json.dumps([selproxy.__version__] + [importlib.import_module('selproxy.' + m).__file__"
            f" for m in {modules!r}]))")
    with tempfile.TemporaryDirectory() as empty:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    version, *files = json.loads(out)
    assert version
    for path in files:
        assert path.endswith(".so") or path.endswith(".pyd"), path
        assert os.path.exists(path)


def test_command_line_entry_points():
    out = subprocess.run([sys.executable, "-m", "selproxy", "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.startswith("selproxy ")
