import gc
import os
import sys
import tempfile

import pytest

# Tests import their helpers as ``support.*``; the package under test is the
# installed one (pytest runs with --import-mode=importlib, so the source tree
# is not put on sys.path).
sys.path.insert(0, os.path.dirname(__file__))

from selproxy import _core  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def outside_the_source_tree():
    """Subprocesses the tests start (``python -m selproxy``...) put their
    working directory first on sys.path: run them outside the source tree, so
    that they too import the installed package, whose compiled modules a
    fresh checkout does not have."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="selproxy-tests-") as workdir:
        os.chdir(workdir)
        try:
            yield workdir
        finally:
            os.chdir(previous)


@pytest.fixture(autouse=True)
def no_leaked_core_objects():
    """In a debug build, every client connection, upstream connection and
    exchange a test created must be gone once it is over (uvloop's tearDown
    checks its handles the same way)."""
    yield
    if _core.debug_counts() is None:
        return
    gc.collect()
    assert _core.debug_counts() == {"clients": 0, "upstreams": 0, "exchanges": 0}


@pytest.fixture(autouse=True, scope="session")
def private_cache_directory(tmp_path_factory):
    """The default embedding store is a file under the user's cache directory:
    tests (and the proxies they start) get a fresh one of their own."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
