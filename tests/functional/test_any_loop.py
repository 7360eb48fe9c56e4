"""The proxy runs on asyncio's own event loop as well as on uvloop.

On main, ``selproxy.Proxy`` in ``asyncio.run`` (the README's "on your own
loop" example) and ``await selproxy.serve(...)`` dropped every connection:
asyncio's transports call ``data_received`` on a protocol that is not an
``asyncio.BufferedProtocol``, and the core's protocols only had
``get_buffer``/``buffer_updated``.  Each test runs in a subprocess, so the
loop is the one ``asyncio.run`` makes there, with no policy of the suite's.
"""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from support.engine import engine_in_thread
from support.proxy import LISTENING
from support.sync_http import post_json
from support.upstream import RecordingUpstream, echo

import selproxy
from selproxy import server

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")


def readme_own_loop_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", open(README, encoding="utf-8").read(), re.S)
    (example,) = [block for block in blocks if "asyncio.run(main())" in block]
    return example


def index_two_docs(engine_url: str) -> None:
    post_json(f"{engine_url}/docs/_doc/1?refresh=true", {"body": "a long document about wings and lift"})
    post_json(f"{engine_url}/docs/_doc/2?refresh=true", {"body": "wings"})


def test_the_readme_own_loop_example_runs_as_written():
    code = readme_own_loop_example()
    assert "http://127.0.0.1:9200" in code
    with engine_in_thread() as engine_url:
        index_two_docs(engine_url)
        # The one change: the engine under test instead of one on 9200.
        code = code.replace("http://127.0.0.1:9200", engine_url)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), proc.communicate(timeout=5)
            headers, found = post_json(f"{url}/docs/_search", {"query": {"match": {"body": "wings"}}})
            assert headers["X-Selproxy-Rerank"] == "applied"
            assert [hit["_id"] for hit in found["hits"]["hits"]] == ["2", "1"]
            with urllib.request.urlopen(f"{url}/docs/_doc/1", timeout=10) as res:   # passthrough
                assert json.loads(res.read())["_source"]["body"].startswith("a long document")
            assert proc.poll() is None
        finally:
            proc.kill()
            _out, err = proc.communicate(timeout=10)
        assert "Traceback" not in err, err


SERVE_ON_ASYNCIO = """
import asyncio, logging, sys
import selproxy

async def main():
    print(type(asyncio.get_running_loop()).__module__, flush=True)
    await selproxy.serve(sys.argv[1], "127.0.0.1:0", ranker="identity")

logging.basicConfig(level="INFO")
asyncio.run(main())
"""


def test_await_serve_on_asyncios_loop():
    with engine_in_thread() as engine_url:
        index_two_docs(engine_url)
        proc = subprocess.Popen([sys.executable, "-c", SERVE_ON_ASYNCIO, engine_url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        lines = []
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline().strip() == "asyncio.unix_events"
            deadline = time.monotonic() + 20
            url = None
            while url is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                assert line, "".join(lines)
                lines.append(line)
                match = LISTENING.search(line)
                url = match.group(1) if match else None
            assert url is not None, "".join(lines)
            headers, found = post_json(f"{url}/docs/_search", {"query": {"match": {"body": "wings"}}})
            assert headers["X-Selproxy-Rerank"] == "applied"
            assert found["hits"]["total"]["value"] == 2
            with urllib.request.urlopen(f"{url}/docs/_doc/2", timeout=10) as res:
                assert json.loads(res.read())["_source"] == {"body": "wings"}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            lines.extend(proc.stderr.readlines() if proc.stderr else [])
        assert "Traceback" not in "".join(lines), "".join(lines)


def test_big_bodies_both_ways_on_asyncios_loop():
    # Bodies many times the core's read buffer, each way, and keep-alive.
    async def scenario():
        async with RecordingUpstream(echo) as up:
            async with selproxy.Proxy(upstream=up.url, listen="127.0.0.1:0") as proxy:
                reader, writer = await asyncio.open_connection(*proxy.address[:2])
                body = bytes(range(256)) * 8192   # 2 MiB
                for _ in range(2):
                    writer.write(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200"), head
                    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                    assert await reader.readexactly(length) == body
                writer.close()
        return type(asyncio.get_running_loop()).__module__

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == "asyncio.unix_events"


def test_readiness_follows_the_upstream(monkeypatch):
    # A port bound but not listening refuses connections; listen() opens it.
    monkeypatch.setattr(server, "UPSTREAM_CHECK_REUSE", 0.0)

    async def status(url: str) -> dict:
        reader, writer = await asyncio.open_connection(*url.rsplit("/", 1)[-1].split(":"))
        writer.write(b"GET /_selproxy/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
        return json.loads(raw.split(b"\r\n\r\n", 1)[1])

    async def scenario():
        import socket
        with socket.socket() as upstream:
            upstream.bind(("127.0.0.1", 0))
            port = upstream.getsockname()[1]
            async with selproxy.Proxy(upstream=f"http://127.0.0.1:{port}", listen="127.0.0.1:0") as proxy:
                before = await status(proxy.url)
                upstream.listen(8)
                after = await status(proxy.url)
        return before, after

    before, after = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert before["ready"] is False
    assert before["upstream"] == {"reachable": False, "error": "connection refused"}
    assert after["ready"] is True
    assert after["upstream"] == {"reachable": True}
