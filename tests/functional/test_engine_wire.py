"""Wire details: headers, media types, HEAD, routing errors, gzip bodies, concurrency, and the CLI."""
from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from support.engine import engine_in_thread
from support.sync_http import request


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with engine_in_thread() as base:
        yield base


def test_plain_json_without_compat_header(url: str) -> None:
    status, headers, body = request(url, "GET", "/")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-elastic-product"] == "Elasticsearch"
    assert json.loads(body)["version"]["number"]


@pytest.mark.parametrize("major", ["8", "9"])
def test_compatible_media_type_is_echoed(url: str, major: str) -> None:
    accept = f"application/vnd.elasticsearch+json; compatible-with={major}"
    status, headers, _ = request(url, "GET", "/", headers={"Accept": accept})
    assert headers["content-type"] == f"application/vnd.elasticsearch+json;compatible-with={major}"


def test_head_has_no_body_and_errors_carry_product_header(url: str) -> None:
    status, headers, body = request(url, "HEAD", "/")
    assert status == 200 and body == b""
    status, headers, body = request(url, "HEAD", "/no-such-index")
    assert status == 404 and body == b""
    status, headers, body = request(url, "GET", "/no-such-index/_search")
    assert status == 404 and headers["x-elastic-product"] == "Elasticsearch"
    assert json.loads(body)["error"]["type"] == "index_not_found_exception"


def test_routing_errors(url: str) -> None:
    status, _, body = request(url, "GET", "/a/b/c/d/e")
    assert status == 400
    assert json.loads(body) == {"error": "no handler found for uri [/a/b/c/d/e] and method [GET]", "status": 400}
    status, _, body = request(url, "DELETE", "/_search")
    assert status == 405 and "Incorrect HTTP method" in json.loads(body)["error"]


def test_malformed_json_and_bulk_without_newline(url: str) -> None:
    status, _, body = request(url, "POST", "/x/_search", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["type"] == "parsing_exception"
    status, _, body = request(url, "POST", "/_bulk", b'{"index":{"_index":"x"}}\n{"a":1}',
                              {"Content-Type": "application/x-ndjson"})
    assert status == 400 and "terminated by a newline" in json.loads(body)["error"]["reason"]


def test_gzip_request_body_and_pretty(url: str) -> None:
    payload = b'{"index":{"_index":"zipped","_id":"1"}}\n{"t":"compressed body"}\n'
    status, _, body = request(url, "POST", "/_bulk", gzip.compress(payload),
                              {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(body)["errors"] is False
    status, _, body = request(url, "GET", "/zipped/_doc/1?pretty")
    assert status == 200 and body.startswith(b"{\n") and json.loads(body)["_source"] == {"t": "compressed body"}


def test_cat_indices_text_and_json(url: str) -> None:
    request(url, "PUT", "/catme")
    status, headers, body = request(url, "GET", "/_cat/indices?v")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"catme" in body and body.splitlines()[0].split()[0] == b"health"
    status, _, body = request(url, "GET", "/_cat/indices/catme?format=json")
    assert [row["index"] for row in json.loads(body)] == ["catme"]


def test_concurrent_writers_and_readers_on_a_file(tmp_path: Path) -> None:
    errors = []
    with engine_in_thread(str(tmp_path / "c.sqlite3")) as base:
        request(base, "PUT", "/conc", json.dumps({"mappings": {"properties": {"t": {"type": "text"}}}}).encode(),
                {"Content-Type": "application/json"})
        deadline = time.monotonic() + 30

        def writer(w: int) -> None:
            for batch in range(10):
                lines = []
                for i in range(50):
                    lines += [json.dumps({"index": {"_index": "conc", "_id": f"{w}-{batch}-{i}"}}),
                              json.dumps({"t": f"word{i % 5} writer{w}"})]
                status, _, body = request(base, "POST", "/_bulk", ("\n".join(lines) + "\n").encode(),
                                          {"Content-Type": "application/x-ndjson"})
                if status != 200 or json.loads(body)["errors"]:
                    errors.append(body[:200])

        writers_done = threading.Event()

        def reader() -> None:
            seen = 0
            for _ in range(5000):
                if writers_done.is_set() or time.monotonic() > deadline:
                    return
                status, _, body = request(base, "POST", "/conc/_search",
                                          json.dumps({"query": {"match": {"t": "word1"}}}).encode(),
                                          {"Content-Type": "application/json"})
                if status != 200:
                    errors.append(body[:200])
                    return
                total = json.loads(body)["hits"]["total"]["value"]
                if total < seen:
                    errors.append(f"total went backwards: {seen} -> {total}".encode())
                seen = total

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join(40)
        writers_done.set()
        for t in readers:
            t.join(40)
        assert not any(t.is_alive() for t in writers + readers)
        status, _, body = request(base, "GET", "/conc/_count")
        assert json.loads(body)["count"] == 4 * 10 * 50
    assert errors == []


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The real command line, from the installed package.
    proc = subprocess.Popen([sys.executable, "-m", "selproxy", "engine", "--listen", f"127.0.0.1:{port}",
                             "--data", str(tmp_path / "cli.sqlite3"), "--log-level", "warning"])
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, _ = request(base, "GET", "/")
                break
            except OSError:
                assert time.monotonic() < deadline, "engine CLI did not start"
                time.sleep(0.1)
        assert status == 200
        status, _, _ = request(base, "PUT", "/cli-index")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert (tmp_path / "cli.sqlite3").exists()


def test_cli_rejects_bad_listen() -> None:
    from selproxy.engine.cli import main
    assert main(["--listen", "nonsense"]) == 2


def test_a_hostile_compatible_with_value_is_not_echoed():
    import http.client

    from support.engine import engine_in_thread

    with engine_in_thread() as url:
        host, port = url.rsplit("/", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("GET", "/")
        conn.putheader("Accept", "application/vnd.elasticsearch+json; compatible-with=8X-Evil: 1")
        conn.endheaders()
        answer = conn.getresponse()
        answer.read()
        assert answer.getheader("Content-Type") == "application/json"
        assert answer.getheader("X-Evil") is None
        conn.putrequest("GET", "/")
        conn.putheader("Accept", "application/vnd.elasticsearch+json; compatible-with=8")
        conn.endheaders()
        answer = conn.getresponse()
        answer.read()
        assert answer.getheader("Content-Type") == "application/vnd.elasticsearch+json;compatible-with=8"
        conn.close()
