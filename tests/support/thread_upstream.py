"""An upstream in a thread, for tests whose client code is synchronous (a
loop of requests while the proxy reloads): a ``_search`` is answered with
two hits in Elasticsearch's shape, any other request with ``200`` and a JSON
echo of its method, target and headers (``/echo-id...`` with an
``X-Request-Id`` of the upstream's own too)."""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        seen: List = self.server.seen  # type: ignore[attr-defined]
        seen.append((self.command, self.path, dict(self.headers.items())))
        if "/_search" in self.path:
            hits = [{"_index": "books", "_id": str(n), "_score": 2.0 - n,
                     "_source": {"body": f"book {n}"}} for n in range(2)]
            body = json.dumps({"took": 1, "timed_out": False, "hits": {
                "total": {"value": 2, "relation": "eq"}, "max_score": 2.0, "hits": hits}}).encode()
        else:
            body = json.dumps({"method": self.command, "target": self.path,
                               "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        if self.path.startswith("/echo-id"):
            # An upstream that sets its own X-Request-Id.
            self.send_header("X-Request-Id", f"upstream-{self.headers.get('X-Request-Id')}")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo_upstream() -> Iterator[ThreadingHTTPServer]:
    """``with echo_upstream() as up: up.url, up.seen``"""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
