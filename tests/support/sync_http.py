"""Blocking HTTP for tests that drive a proxy or an engine from the test's
own thread: JSON POSTs."""
from __future__ import annotations

import json
import urllib.request
from typing import Any, Tuple


def post_json(url: str, body: Any, timeout: float = 30.0) -> Tuple[Any, Any]:
    """The answer's headers and decoded JSON body; an error status raises."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return res.headers, json.loads(res.read())
