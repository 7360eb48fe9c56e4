"""The core's limits and timeouts: each flag reaches its Config field, and
nonsense values are refused when the configuration is made."""
import pytest

from selproxy import cli
from selproxy.config import Config

FLAGS = {
    "--max-upstream-waiters": ("max_upstream_waiters", "7", 7),
    "--max-buffered-bodies": ("max_buffered_bodies", "1048576", 1048576),
    "--request-buffer-size": ("request_buffer_size", "0", 0),
    "--min-body-rate": ("min_body_rate", "10", 10),
    "--send-timeout": ("send_timeout", "2.5", 2.5),
    "--upstream-queue-timeout": ("upstream_queue_timeout", "0.5", 0.5),
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_flag_reaches_its_config_field(flag):
    field, text, value = FLAGS[flag]
    args = cli.build_parser().parse_args(["--upstream", "http://127.0.0.1:9200", flag, text])
    config = cli.config_from_args(args)
    assert getattr(config, field) == value
    assert getattr(Config(upstream="http://127.0.0.1:9200"), field) != value


@pytest.mark.parametrize("field,value", [
    ("max_buffered_bodies", 0), ("send_timeout", 0), ("upstream_queue_timeout", -1),
    ("min_body_rate", -1), ("request_buffer_size", -1), ("max_upstream_waiters", -1),
])
def test_nonsense_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Config(upstream="http://127.0.0.1:9200", **{field: value})
