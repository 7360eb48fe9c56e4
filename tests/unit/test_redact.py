"""selproxy._redact: what reaches a log line, an error message or a body."""
import pytest

from selproxy._redact import EXCERPT_CHARS, excerpt, redact_url


@pytest.mark.parametrize("url, shown", [
    ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
    ("https://es.example:443/prefix/", "https://es.example:443/prefix/"),
    ("http://elastic:changeme@es:9200", "http://***@es:9200"),
    ("http://es:9200/?api_key=abc&x=1", "http://es:9200/?***"),
    ("http://u:p@es:9200/path?token=t#frag", "http://***@es:9200/path?***"),
    ("https://a@b@host/x", "https://***@host/x"),
    ("elastic:changeme@es:9200", "***@es:9200"),  # no scheme: still found
    ("es:9200/x?key=1", "es:9200/x?***"),
    ("http://host/a@b", "http://host/a@b"),  # an @ in the path is not userinfo
    ("http://h\r\nSet-Cookie: x", "http://h  Set-Cookie: x"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_excerpt_redacts_known_secrets_and_common_credential_shapes():
    text = ('{"error": "key sk-live-123456 rejected", "Authorization": "Bearer abc.def-ghi", '
            '"api_key": "k1", "x-api-key": "k2", "password": "hunter2", '
            'see https://user:pw@svc.example/v1?token=zz} Basic dXNlcjpwdw== apikey=k3')
    out = excerpt(text, ["sk-live-123456"], limit=1000)
    for secret in ("sk-live-123456", "abc.def-ghi", "k1", "k2", "hunter2", "user:pw", "zz",
                   "dXNlcjpwdw==", "k3"):
        assert secret not in out, (secret, out)
    assert "https://***@svc.example/v1?***" in out and '"error": "key *** rejected"' in out


def test_excerpt_is_bounded_and_one_line():
    out = excerpt("line one\r\nline two\x00" + "x" * 10_000)
    assert "\n" not in out and "\r" not in out and "\x00" not in out
    assert out.startswith("line one  line two ")
    assert out.endswith("... (10019 chars)") and len(out) <= EXCERPT_CHARS + 20


def test_a_secret_across_the_cut_is_still_redacted():
    secret = "s" * 50 + "-very-long-secret"
    text = "a" * (EXCERPT_CHARS - 10) + secret + "tail"
    out = excerpt(text, [secret])
    assert "s" * 11 not in out


def test_short_or_empty_secrets_are_not_used():
    # Redacting "a" everywhere would make every message unreadable.
    assert excerpt("a bad answer", ["a", "", None]) == "a bad answer"


@pytest.mark.parametrize("upstream", ["http://u:hunter2@es:9200/path?api_key=q-secret",
                                      "gopher://u:hunter2@es?api_key=q-secret",
                                      "http://es:9200?api_key=q-secret"])
def test_config_errors_quote_the_upstream_redacted(upstream):
    from selproxy.config import Config

    with pytest.raises(ValueError) as error:
        Config(upstream=upstream)
    assert "es" in str(error.value) and "***" in str(error.value)
    assert "hunter2" not in str(error.value) and "q-secret" not in str(error.value)
