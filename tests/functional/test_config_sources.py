"""Where settings come from: flags, then SELPROXY_* variables, then the
--config TOML file, then defaults; --print-config shows the result, redacted,
as a file --config reads back; a wrong key or type is one line, exit 2."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from support.proxy import LoggedProxy
from support.thread_upstream import echo_upstream

from selproxy._settings import tomllib


def selproxy(*args: str, env=None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SELPROXY_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "selproxy", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=environ)


def printed(*args: str, env=None) -> dict:
    done = selproxy("--print-config", *args, env=env)
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def test_flags_then_environment_then_file_then_defaults(tmp_path):
    config = tmp_path / "selproxy.toml"
    config.write_text('upstream = "http://127.0.0.1:9200"\n'
                      "topn = 11\nmax-topn = 90\nrank_deadline = 0.5\nworkers = 3\n"
                      'include-index = ["books", "films"]\nsolr = true\n')
    env = {"SELPROXY_CONFIG": str(config), "SELPROXY_MAX_TOPN": "80", "SELPROXY_RANK_DEADLINE": "0.4",
           "SELPROXY_EXCLUDE_INDEX": "logs-*, .kibana", "SELPROXY_FORWARDED_HEADERS": "yes",
           "SELPROXY_SERVICE_HOST": "10.0.0.1"}   # not a setting (Kubernetes sets it): ignored
    shown = printed("--rank-deadline", "0.3", "--include-index", "music", env=env)
    assert shown["rank-deadline"] == 0.3                     # flag over environment and file
    assert shown["include-index"] == ["music"]               # a flag's list replaces the file's
    assert shown["max-topn"] == 80                           # environment over file
    assert shown["exclude-index"] == ["logs-*", ".kibana"]   # comma-separated
    assert shown["forwarded-headers"] is True
    assert shown["topn"] == 11 and shown["workers"] == 3 and shown["solr"] is True  # the file
    assert shown["upstream"] == "http://127.0.0.1:9200"
    assert shown["header-timeout"] == 10.0 and shown["max-field-chars"] == 2000     # defaults
    # An empty variable is unset: the file's value shows through.
    assert printed(env=dict(env, SELPROXY_MAX_TOPN=""))["max-topn"] == 90


def test_print_config_redacts_secrets_and_reads_back(tmp_path):
    first = selproxy("--print-config", "--upstream", "http://127.0.0.1:9200", "--ranker", "remote",
                     "--url", "https://user:pw-1@rerank.example/v1/rerank?key=url-key-2",
                     "--ranker-option", "api_key=opt-key-3", "--ranker-option", "model=rerank-v3",
                     env={"SELPROXY_RANKER_OPTION": "token=env-tok-4"})
    assert first.returncode == 0, first.stderr
    for secret in ("pw-1", "url-key-2", "opt-key-3", "env-tok-4"):
        assert secret not in first.stdout
    shown = tomllib.loads(first.stdout)
    assert shown["url"] == ["https://***@rerank.example/v1/rerank?***"]   # --url repeats
    assert shown["ranker-option"] == ["api_key=***", "model=rerank-v3"]
    # What it prints is a file --config takes, and it prints the same again.
    saved = tmp_path / "printed.toml"
    saved.write_text(first.stdout)
    again = selproxy("--print-config", "--config", str(saved))
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == shown


@pytest.mark.parametrize("content,line", [
    ("workrs = 2\n", "{path}: unknown key 'workrs' (did you mean 'workers'?)"),
    ("[search]\ntopn = 3\n", "{path}: unknown key 'search' (did you mean"),
    ("workers = 2\nrank-deadline = 0.2\nrank_deadline = 0.3\n",
     "{path}: 'rank_deadline' and 'rank-deadline' are the same key"),
    ('workers = "2"\n', '{path}: workers: expected an integer, got "2"'),
    ("topn = 1.5\n", "{path}: topn: expected an integer, got 1.5"),
    ('include-index = ["books", 3]\n',
     '{path}: include-index: expected a string or an array of strings, got ["books", 3]'),
    ('solr = "yes"\n', '{path}: solr: expected true or false, got "yes"'),
    ('log-format = "xml"\n', "{path}: log-format: expected one of text, json, got 'xml'"),
    ("workers = \n", "--config {path}: not TOML"),
])
def test_a_bad_file_is_one_line_and_exit_2(tmp_path, content, line):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    done = selproxy("--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("selproxy: error: " + line.format(path=path)), done.stderr


@pytest.mark.parametrize("name,value,line", [
    ("SELPROXY_WORKERS", "two", "SELPROXY_WORKERS: expected an integer, got 'two'"),
    ("SELPROXY_RANK_DEADLINE", "soon", "SELPROXY_RANK_DEADLINE: expected a number, got 'soon'"),
    ("SELPROXY_SOLR", "maybe", "SELPROXY_SOLR: expected 1/0/true/false/yes/no, got 'maybe'"),
    ("SELPROXY_WORKERS", "0", "--workers must be at least 1"),
])
def test_a_bad_variable_is_one_line_and_exit_2(name, value, line):
    done = selproxy("--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", env={name: value})
    assert done.returncode == 2
    assert done.stderr == f"selproxy: error: {line}\n"


def test_a_missing_file_is_exit_1(tmp_path):
    done = selproxy("--upstream", "http://127.0.0.1:9", "--config", str(tmp_path / "none.toml"))
    assert done.returncode == 1
    assert done.stderr == f"selproxy: error: --config {tmp_path / 'none.toml'}: no such file or directory\n"


def test_the_upstream_may_come_from_the_environment_or_the_file(tmp_path):
    assert printed(env={"SELPROXY_UPSTREAM": "http://127.0.0.1:9300"})["upstream"] == "http://127.0.0.1:9300"
    done = selproxy("--print-config")
    assert done.returncode == 2
    assert done.stderr == "selproxy: error: the following arguments are required: --upstream\n"


def test_a_running_proxy_takes_its_settings_from_all_three(tmp_path):
    config = tmp_path / "selproxy.toml"
    config.write_text("idle-timeout = 33.0\nshutdown-grace = 4.0\nheader-timeout = 6.0\n")
    with echo_upstream() as up:
        with LoggedProxy(["--config", str(config), "--header-timeout", "5.0"], tmp_path,
                         env={"SELPROXY_UPSTREAM": up.url, "SELPROXY_SHUTDOWN_GRACE": "3.0"}) as proxy:
            with urllib.request.urlopen(f"{proxy.url}/_selproxy/status", timeout=10) as res:
                page = json.loads(res.read())
    assert page["config"]["upstream"] == up.url
    assert page["config"]["header_timeout"] == 5.0     # flag
    assert page["config"]["shutdown_grace"] == 3.0     # environment
    assert page["config"]["idle_timeout"] == 33.0      # file
    assert page["config"]["send_timeout"] == 60.0      # default


def test_a_switch_that_turns_something_off_is_named_for_what_it_turns_off(tmp_path):
    # --no-window-cache is `window-cache = false` in a file and
    # SELPROXY_WINDOW_CACHE=false in the environment, and prints so.
    base = ("--upstream", "http://127.0.0.1:9200")
    assert printed(*base)["window-cache"] is True
    assert printed(*base, "--no-window-cache")["window-cache"] is False
    assert printed(*base, env={"SELPROXY_WINDOW_CACHE": "false"})["window-cache"] is False
    config = tmp_path / "selproxy.toml"
    config.write_text("window-cache = false\n")
    assert printed(*base, "--config", str(config))["window-cache"] is False
    config.write_text("no-window-cache = true\n")
    done = selproxy(*base, "--print-config", "--config", str(config))
    assert done.returncode == 2 and "unknown key 'no-window-cache'" in done.stderr, done.stderr


def test_a_repeatable_flag_given_once_in_a_file_may_be_a_plain_string(tmp_path):
    # url = "..." reads as url = ["..."], as the Helm chart's model tier writes it.
    config = tmp_path / "selproxy.toml"
    config.write_text('upstream = "http://127.0.0.1:9200"\nranker = "remote"\n'
                      'url = "http://ranker:8080/rerank"\ninclude-index = "books"\n')
    shown = printed("--config", str(config))
    assert shown["url"] == ["http://ranker:8080/rerank"] and shown["include-index"] == ["books"]
