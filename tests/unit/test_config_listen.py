"""parse_listen: one reading of HOST:PORT for the proxy, the engine and the demo."""
import pytest

from selproxy import config
from selproxy.engine import server as engine_server


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9201", ("127.0.0.1", 9201)),
    ("[::1]:9200", ("::1", 9200)),
    (":0", ("127.0.0.1", 0)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_parse_listen(value, expected):
    assert config.parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9200", "host:", "host:port", "host:-1", "host:65536", "[::1]"])
def test_parse_listen_refuses(value):
    with pytest.raises(ValueError):
        config.parse_listen(value)


def test_the_engine_reads_listen_as_the_proxy_does():
    assert engine_server.parse_listen is config.parse_listen
    # A port out of range is refused before anything binds or a loop starts.
    with pytest.raises(ValueError, match="out of range"):
        engine_server.serve("127.0.0.1:65536")
