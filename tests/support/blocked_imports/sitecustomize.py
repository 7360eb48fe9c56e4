"""A test double for an extra that is not installed.

Put this directory first on PYTHONPATH and name top-level modules in
``SELPROXY_TEST_BLOCKED_IMPORTS`` (comma-separated): Python imports this file
at start-up, and from then on those modules cannot be found or imported,
exactly as if their distribution were not installed.  Nothing is uninstalled,
so the tests can run on a machine that has every extra.
"""
import importlib.abc
import os
import sys

BLOCKED = frozenset(filter(None, os.environ.get("SELPROXY_TEST_BLOCKED_IMPORTS", "").split(",")))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


if BLOCKED:
    sys.meta_path.insert(0, _NotInstalled())
