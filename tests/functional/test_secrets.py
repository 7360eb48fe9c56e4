"""Secrets stay secret: no credential from a URL, and no exception text,
reaches a start-up error, a log line or an error body.

A 500 says what kind of error happened, never its text: an exception's
message may quote paths, SQL, data or credentials.  A URL is quoted without
its userinfo and query.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")

from support.engine import engine_in_thread  # noqa: E402

from selproxy.engine.app import EngineApp  # noqa: E402

LEAKY = "cannot open /var/lib/selproxy/secret.sqlite3 with password=hunter2"


def test_the_engine_answers_an_internal_error_with_its_kind_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: EngineApp, call: object) -> object:
        raise RuntimeError(LEAKY)

    monkeypatch.setattr(EngineApp, "health", broken)
    with engine_in_thread() as url:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{url}/_cluster/health", timeout=10)
        body = answer.value.read().decode()
    assert answer.value.code == 500
    assert "hunter2" not in body and "/var/lib" not in body
    assert json.loads(body)["error"]["reason"] == "internal error: RuntimeError"


@pytest.mark.parametrize("upstream", ["http://elastic:hunter2@127.0.0.1:9200/x?api_key=q-secret-42",
                                      "ftp://elastic:hunter2@127.0.0.1?api_key=q-secret-42",
                                      "http://127.0.0.1:9200/?api_key=q-secret-42"])
def test_a_bad_upstream_url_is_refused_without_echoing_its_secrets(upstream: str) -> None:
    done = subprocess.run([sys.executable, "-m", "selproxy", "--listen", "127.0.0.1:0",
                           "--upstream", upstream],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("selproxy: error: --upstream: upstream must"), done.stderr
    assert "127.0.0.1" in line and "***" in line
    assert "hunter2" not in done.stderr and "q-secret-42" not in done.stderr


def test_the_evaluation_client_quotes_urls_without_credentials() -> None:
    pytest.importorskip("aiohttp")
    from support.aio import run

    from selproxy.evaluation._client import SearchClient, SearchClientError

    async def scenario() -> str:
        # A port nothing listens on: bind one, then close it.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        async with SearchClient(f"http://elastic:hunter2@127.0.0.1:{port}/?api_key=q-secret-42",
                                timeout=5) as client:
            with pytest.raises(SearchClientError) as failed:
                await client.request("GET", "/_search")
        return str(failed.value)

    message = run(scenario(), 20)
    assert message.startswith("GET http://***@127.0.0.1:")
    assert "hunter2" not in message and "q-secret-42" not in message
