"""The engine-backed embedding store reaches an https engine with the proxy's
own TLS settings (``--upstream-ca-file``, ``--upstream-insecure``): a stand-in
https engine on loopback, with a throwaway CA, answers the store's ``_mget``."""
from __future__ import annotations

import http.server
import json
import threading
from typing import Iterator, List, Tuple

import pytest
from support.tls import make_ca_and_server, server_context

from selproxy.rankers.engine_store import EngineVectorStore

KEYS = [("books", "1", "h1")]


@pytest.fixture
def https_engine(tmp_path) -> Iterator[Tuple[str, str, List[str]]]:
    ca, cert, key = make_ca_and_server(str(tmp_path))
    paths: List[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            body = json.dumps({"docs": [{"_id": "books/1", "found": False}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context(cert, key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca, paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_store_verifies_the_engine_with_the_given_ca(https_engine):
    url, ca, paths = https_engine
    store = EngineVectorStore(url, "minilm", "identity", ca_file=ca)
    assert store.get_many(KEYS) == [None] and store.errors == 0
    assert paths == [f"/{store.index}/_mget"]
    store.close()


def test_without_the_ca_the_store_refuses_the_engine_and_misses(https_engine):
    url, _ca, paths = https_engine
    store = EngineVectorStore(url, "minilm", "identity")
    assert store.get_many(KEYS) == [None] and store.errors == 1
    assert paths == []
    store.close()
    insecure = EngineVectorStore(url, "minilm", "identity", verify=False)
    assert insecure.get_many(KEYS) == [None] and insecure.errors == 0
    insecure.close()


def test_the_command_line_hands_the_upstream_tls_settings_to_the_store(https_engine, tmp_path):
    import argparse

    from selproxy.cli import _ranker_options
    url, ca, _paths = https_engine
    args = argparse.Namespace(ranker_option=[], model_dir=None, url=None, embedding_store="engine",
                              upstream=url, upstream_ca_file=ca, upstream_insecure=False)
    options = _ranker_options(args, "minilm")
    assert (options["store_upstream"], options["store_ca_file"], options["store_verify"]) == (url, ca, True)
