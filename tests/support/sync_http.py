"""Blocking HTTP for tests that drive a proxy or an engine from the test's
own thread: one request on a connection of its own, and JSON POSTs."""
from __future__ import annotations

import http.client
import json
import urllib.request
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit


def request(url: str, method: str, target: str, body: Optional[bytes] = None,
            headers: Optional[Dict[str, str]] = None, timeout: float = 20.0) -> Tuple[int, Dict[str, str], bytes]:
    """One request on a new connection to ``url``'s host and port: the
    status, the headers (names in lower case) and the body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def post_json(url: str, body: Any, timeout: float = 30.0) -> Tuple[Any, Any]:
    """The answer's headers and decoded JSON body; an error status raises."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return res.headers, json.loads(res.read())
