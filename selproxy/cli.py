"""The ``selproxy`` command: flags map onto :class:`selproxy.config.Config`.

Every mistake the command can see is reported as one line on stderr,
``PROG: error: WHAT (WHAT TO DO)``, never as a traceback, with the exit
status saying which kind of mistake it is (the subcommands do the same):

* 2 -- the command as given cannot run: a bad flag or value, an unknown
  ranker, a wrong ranker option, or an extra the chosen ranker or
  subcommand needs is not installed.  Change the command or install.
* 1 -- the command is right but running it failed: the address is in use,
  a file cannot be read, the ranker's model fails to load, a service answers
  with an error.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import ssl
import sys
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence
from urllib.parse import urlsplit

from ._version import __version__
from ._logs import ACCESS_LOGGER, AccessLineHandler, JsonFormatter
from ._settings import SettingsError, render_toml, resolve, settings_of
from .config import Config, parse_listen, parse_upstream

__all__ = ("main", "CommandLineParser", "CommandLineError", "EXIT_USAGE", "EXIT_FAILURE")

SUBCOMMANDS = ("engine", "eval", "demo", "embed", "serve-ranker")

#: The command as given cannot run (argparse's own code for usage errors).
EXIT_USAGE = 2
#: The command is right, but running it failed.
EXIT_FAILURE = 1

#: The extra each subcommand needs, and the modules that tell it is installed.
SUBCOMMAND_EXTRAS = {
    "engine": ("engine", ("starlette", "uvicorn")),
    "eval": ("eval", ("aiohttp",)),
    "demo": ("demo", ("starlette", "uvicorn", "aiohttp")),
    "serve-ranker": ("serve-ranker", ("uvicorn", "prometheus_client")),
}


class CommandLineError(Exception):
    """A mistake to report as ``PROG: error: MESSAGE``, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class CommandLineParser(argparse.ArgumentParser):
    """argparse, with an error as one line (``PROG: error: MESSAGE``, exit 2)
    instead of the usage block and then the error; ``--help`` has the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def report(prog: str, error: CommandLineError) -> int:
    """Print ``error`` the one way every selproxy command does; its code."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return error.code


def run_command(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv`` and ``run`` it: every selproxy command's entry point,
    with a :class:`CommandLineError` reported the one way (:func:`report`)."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CommandLineError as error:
        return report(prog, error)


def missing_module(modules: Sequence[str]) -> Optional[str]:
    """The first of ``modules`` that is not installed, or None.  Looks at
    import specs only, so nothing is imported (or started) yet."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def needs_extra(what: str, extra: str, module: str) -> CommandLineError:
    return CommandLineError(f"{what} needs the {extra!r} extra ({module} is not installed): "
                            f"pip install 'selproxy[{extra}]'")


def require_extra(what: str, extra: str, modules: Sequence[str]) -> None:
    """Raise a :class:`CommandLineError` naming ``extra`` if it is missing."""
    missing = missing_module(modules)
    if missing is not None:
        raise needs_extra(what, extra, missing)


def build_parser() -> argparse.ArgumentParser:
    from .search import SearchConfig
    # Defaults come from the dataclasses, so the flags cannot drift from them.
    defaults = Config(upstream="http://127.0.0.1:9200")
    sdefaults = SearchConfig()
    p = CommandLineParser(
        prog="selproxy",
        description="A URL-selective reverse proxy that reranks search results. "
                    "Subcommands: 'selproxy engine', 'selproxy eval', 'selproxy demo', "
                    "'selproxy embed', 'selproxy serve-ranker' "
                    "(each has its own --help).")
    p.add_argument("--version", action="version", version=f"selproxy {__version__}")
    p.add_argument("--config", metavar="FILE",
                   help="read settings from this TOML file: keys are the long flags without "
                        "their dashes (rank-deadline = 0.25); flags and SELPROXY_* variables "
                        "override it (see the README)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration as TOML, secrets redacted, and exit")
    p.add_argument("--listen", default=defaults.listen, metavar="HOST:PORT",
                   help="address to listen on (default %(default)s)")
    # Required, but it may come from SELPROXY_UPSTREAM or the file: checked
    # once they are read.
    p.add_argument("--upstream", metavar="URL",
                   help="the search engine: http[s]://HOST:PORT")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes sharing the port (default 1)")

    tls = p.add_argument_group("TLS to the upstream")
    tls.add_argument("--upstream-ca-file", metavar="PATH",
                     help="CA bundle to verify the upstream's certificate")
    tls.add_argument("--upstream-insecure", action="store_true",
                     help="do not verify the upstream's certificate")

    limits = p.add_argument_group("limits")
    limits.add_argument("--max-request-line", type=int, default=defaults.max_request_line,
                        metavar="BYTES", help="414 beyond it (default %(default)s)")
    limits.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes,
                        metavar="BYTES", help="431 beyond it (default %(default)s)")
    limits.add_argument("--max-buffered-body", type=int, default=defaults.max_buffered_body,
                        metavar="BYTES",
                        help="413 beyond it, for requests the proxy claims (default %(default)s)")
    limits.add_argument("--max-upstream-connections", type=int,
                        default=defaults.max_upstream_connections, metavar="N",
                        help="per worker (default %(default)s)")
    limits.add_argument("--max-upstream-waiters", type=int,
                        default=defaults.max_upstream_waiters, metavar="N",
                        help="requests waiting for an upstream connection, per worker; "
                             "503 beyond it (default %(default)s)")
    limits.add_argument("--max-buffered-bodies", type=int, default=defaults.max_buffered_bodies,
                        metavar="BYTES",
                        help="claimed bodies buffered at once, per worker; 503 beyond it "
                             "(default %(default)s)")
    limits.add_argument("--request-buffer-size", type=int, default=defaults.request_buffer_size,
                        metavar="BYTES",
                        help="passthrough bodies are read up to this size before "
                             "an upstream connection is taken (default %(default)s)")
    limits.add_argument("--min-body-rate", type=int, default=defaults.min_body_rate,
                        metavar="BYTES", help="per second, over each --body-timeout window; "
                                              "408 below it (default %(default)s)")

    timeouts = p.add_argument_group("timeouts (seconds)")
    for flag, field in (("--header-timeout", "header_timeout"),
                        ("--idle-timeout", "idle_timeout"),
                        ("--connect-timeout", "connect_timeout"),
                        ("--response-timeout", "response_timeout"),
                        ("--body-timeout", "body_timeout"),
                        ("--send-timeout", "send_timeout"),
                        ("--upstream-queue-timeout", "upstream_queue_timeout")):
        timeouts.add_argument(flag, type=float, default=getattr(defaults, field),
                              metavar="S", help="default %(default)s")
    timeouts.add_argument("--shutdown-delay", type=float, default=defaults.shutdown_delay, metavar="S",
                          help="after SIGTERM, keep accepting this long (readiness says 503) so that "
                               "load balancers stop sending, then drain; SIGINT skips it "
                               "(default %(default)s)")
    timeouts.add_argument("--shutdown-grace", type=float, default=defaults.shutdown_grace, metavar="S",
                          help="how long requests in flight may take to finish when stopping "
                               "(default %(default)s)")

    search = p.add_argument_group("reranked search")
    search.add_argument("--ranker", metavar="NAME|pkg.mod:Class",
                        help="rerank claimed searches with this ranker: a registered "
                             "name (default, minilm, bi-encoder, bm25, identity, ...) or a class; "
                             "'default' is the neural ranker, which runs without --ranker (when its "
                             "packages are missing the proxy says so and passes everything through); "
                             "'none' claims nothing but /_selproxy/status")
    search.add_argument("--embedding-store", default="default", metavar="PATH|default|engine|:memory:",
                        help="where a bi-encoder keeps document embeddings: 'default' is a file per "
                             "model under ~/.cache/selproxy (shared by workers and restarts), "
                             "'engine' a sidecar index of the upstream, ':memory:' none "
                             "(default %(default)s)")
    search.add_argument("--ranker-option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the ranker (repeatable)")
    search.add_argument("--model-dir", metavar="DIR",
                        help="for rankers that load a model from a directory (cross-encoder, bi-encoder, "
                             "sentence-transformers): "
                             "a local model directory")
    search.add_argument("--url", action="append", metavar="URL",
                        help="for --ranker remote: a rerank endpoint (Cohere, Jina, TEI, Elasticsearch "
                             "_inference, NIM, selproxy serve-ranker); repeat for several")
    search.add_argument("--topn", type=int, default=sdefaults.topn, metavar="N",
                        help="hits asked of the engine and reranked (default %(default)s)")
    search.add_argument("--max-topn", type=int, default=sdefaults.max_topn, metavar="N",
                        help="cap on a per-request topn override (default %(default)s)")
    search.add_argument("--rank-deadline", type=float, default=sdefaults.rank_deadline, metavar="S",
                        help="past it the engine's order is returned (default %(default)s)")
    search.add_argument("--text-field", action="append", default=[], metavar="SPEC",
                        help="document text from this field instead of all of _source "
                             "(repeatable; see the README)")
    search.add_argument("--max-field-chars", type=int, default=sdefaults.max_field_chars, metavar="N",
                        help="truncate each field to N characters (default %(default)s)")
    search.add_argument("--include-index", action="append", default=[], metavar="PATTERN",
                        help="rerank only these indices (repeatable; default all)")
    search.add_argument("--exclude-index", action="append", default=[], metavar="PATTERN",
                        help="never rerank these indices (repeatable; default .*)")
    search.add_argument("--solr", action="store_true",
                        help="also claim Solr's /solr/<core>/select")
    search.add_argument("--ranker-threads", type=int, default=sdefaults.ranker_threads, metavar="N",
                        help="threads for synchronous rankers (default %(default)s)")
    search.add_argument("--max-pending-ranks", type=int, default=sdefaults.max_pending_ranks, metavar="N",
                        help="past it searches fall back at once (default %(default)s)")

    relevance = p.add_argument_group("relevance operations (see the README)")
    relevance.add_argument("--interleave", metavar="A,B",
                           help="team-draft interleave two arms on every claimed _search: ranker names, "
                                "or 'engine' for the engine's order; clicks go to POST /_selproxy/click")
    relevance.add_argument("--interleave-max-open", type=int, default=10000, metavar="N",
                           help="result sets whose clicks are added up, per worker (default %(default)s)")
    relevance.add_argument("--interleave-ttl", type=float, default=1800.0, metavar="S",
                           help="seconds a result-set id takes clicks (default %(default)s)")
    relevance.add_argument("--interleave-seed", type=int, metavar="N",
                           help="seed the interleaving's coin flips (default: unpredictable)")
    relevance.add_argument("--capture", metavar="FILE",
                           help="write a sample of claimed searches, and every click, as JSON lines "
                                "(with --workers, one FILE per worker: {pid} is put before the extension)")
    relevance.add_argument("--capture-rate", type=float, default=0.01, metavar="0..1",
                           help="share of searches captured (default %(default)s)")
    relevance.add_argument("--capture-max-bytes", type=int, default=64 << 20, metavar="BYTES",
                           help="rotate the file past this size (default %(default)s)")
    relevance.add_argument("--capture-backups", type=int, default=4, metavar="N",
                           help="rotated files kept, FILE.1..FILE.N (default %(default)s)")
    relevance.add_argument("--capture-texts", action="store_true",
                           help="also store the documents' texts (default: only their hashes)")
    relevance.add_argument("--capture-seed", type=int, metavar="N",
                           help="seed the sampling (default: unpredictable)")
    cache = p.add_argument_group("window cache (later pages of a reranked search)")
    cache.add_argument("--no-window-cache", dest="window_cache", action="store_false",
                       help="rerank every page anew instead of cutting later pages from the kept window")
    cache.add_argument("--cache-entries", type=int, default=sdefaults.cache_entries, metavar="N",
                       help="windows kept per worker (default %(default)s)")
    cache.add_argument("--cache-bytes", type=int, default=sdefaults.cache_bytes, metavar="BYTES",
                       help="bytes of windows kept per worker (default %(default)s)")
    cache.add_argument("--cache-ttl", type=float, default=sdefaults.cache_ttl, metavar="S",
                       help="seconds a window is served; writes that bypass the proxy show after it "
                            "(default %(default)s)")
    cache.add_argument("--cache-settle", type=float, default=sdefaults.cache_settle, metavar="S",
                       help="seconds a write through the proxy takes to show (the engine's refresh "
                            "interval); windows begun sooner are not kept (default %(default)s)")
    cache.add_argument("--cache-invalidation", choices=("all", "index"),
                       default=sdefaults.cache_invalidation,
                       help="a write through the proxy drops every window ('all', safe with aliases) "
                            "or those of its index (default %(default)s)")
    cache.add_argument("--cache-first-page", action="store_true",
                       help="serve a repeated first page from the window too")
    shadow = p.add_argument_group("shadow mode")
    shadow.add_argument("--shadow", action="store_true",
                        help="answer every search in the engine's order, byte for byte, and rerank it "
                             "after the answer, recording both orders on the status page")
    shadow.add_argument("--shadow-ring", type=int, default=sdefaults.shadow_ring, metavar="N",
                        help="shadow records the status page keeps (default %(default)s)")
    shadow.add_argument("--shadow-concurrency", type=int, default=sdefaults.shadow_concurrency, metavar="N",
                        help="shadow reranks at once (default %(default)s)")
    shadow.add_argument("--shadow-queue", type=int, default=sdefaults.shadow_queue, metavar="N",
                        help="shadow reranks running or waiting; past it they are dropped "
                             "(default %(default)s)")
    shadow.add_argument("--shadow-record-queries", action="store_true",
                        help="keep each shadowed query's text in its record (else a hash)")

    p.add_argument("--forwarded-headers", action="store_true",
                   help="add X-Forwarded-For and X-Forwarded-Proto to requests")
    logs = p.add_argument_group("logs")
    logs.add_argument("--access-log", nargs="?", const="-", metavar="PATH|-",
                      help="one line per request, to this file or (- or no value) standard output")
    logs.add_argument("--access-log-redact-query", action="store_true",
                      help="log request targets without their query string")
    logs.add_argument("--log-format", default=defaults.log_format, choices=("text", "json"),
                      help="access and error lines as text or JSON lines (default %(default)s)")
    logs.add_argument("--log-level", default="INFO",
                      choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--admin-listen", metavar="HOST:PORT",
                   help="also serve the status page, metrics and probes here (and only they)")
    p.add_argument("--readyz-upstream", action="store_true",
                   help="GET /_selproxy/readyz also requires the upstream to accept connections")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        upstream=args.upstream, listen=args.listen, workers=args.workers,
        upstream_ca_file=args.upstream_ca_file, upstream_verify=not args.upstream_insecure,
        max_request_line=args.max_request_line, max_header_bytes=args.max_header_bytes,
        max_buffered_body=args.max_buffered_body,
        max_upstream_connections=args.max_upstream_connections,
        header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout, response_timeout=args.response_timeout,
        body_timeout=args.body_timeout,
        send_timeout=args.send_timeout, upstream_queue_timeout=args.upstream_queue_timeout,
        max_upstream_waiters=args.max_upstream_waiters,
        max_buffered_bodies=args.max_buffered_bodies,
        request_buffer_size=args.request_buffer_size, min_body_rate=args.min_body_rate,
        shutdown_grace=args.shutdown_grace, shutdown_delay=args.shutdown_delay,
        forwarded_headers=args.forwarded_headers,
        access_log=args.access_log is not None, log_format=args.log_format,
        access_log_redact_query=args.access_log_redact_query,
        readyz_upstream=args.readyz_upstream, admin_listen=args.admin_listen,
    )


def search_from_args(args: argparse.Namespace) -> Any:
    from .search import SearchConfig, solr_routes
    fields: Dict[str, Any] = dict(
        topn=args.topn, max_topn=args.max_topn, rank_deadline=args.rank_deadline,
        text_fields=tuple(args.text_field), max_field_chars=args.max_field_chars,
        ranker_threads=args.ranker_threads, max_pending_ranks=args.max_pending_ranks,
        window_cache=args.window_cache, cache_entries=args.cache_entries, cache_bytes=args.cache_bytes,
        cache_ttl=args.cache_ttl, cache_settle=args.cache_settle,
        cache_invalidation=args.cache_invalidation, cache_first_page=args.cache_first_page,
        shadow=args.shadow, shadow_ring=args.shadow_ring, shadow_concurrency=args.shadow_concurrency,
        shadow_queue=args.shadow_queue, shadow_record_queries=args.shadow_record_queries)
    if args.include_index:
        fields["include_indices"] = tuple(args.include_index)
    if args.exclude_index:
        fields["exclude_indices"] = tuple(args.exclude_index)
    if args.solr:
        fields["extra_routes"] = tuple(solr_routes())
    if args.interleave:
        from .search.interleave import InterleaveConfig
        arms = tuple(arm.strip() for arm in args.interleave.split(","))
        if len(arms) != 2:
            raise ValueError(f"--interleave takes two arms, A,B, not {args.interleave!r}")
        fields["interleave"] = InterleaveConfig(
            arms=(arms[0], arms[1]), primary=args.ranker, max_open=args.interleave_max_open,
            ttl=args.interleave_ttl, seed=args.interleave_seed)
    if args.capture:
        from .search.capture import CaptureConfig
        path = args.capture
        if args.workers > 1 and "{pid}" not in path:
            root, ext = os.path.splitext(path)
            path = f"{root}.{{pid}}{ext}"
        fields["capture"] = CaptureConfig(
            path=path, rate=args.capture_rate, max_bytes=args.capture_max_bytes,
            backups=args.capture_backups, texts=args.capture_texts, seed=args.capture_seed)
    return SearchConfig(**fields)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = resolve_args(parser, argv, os.environ)
        if args.print_config:
            _check_settings(args)
            print(render_toml(settings_of(parser), args), end="")
            return 0
        return _run(args, argv)
    except CommandLineError as error:
        return report("selproxy", error)


def resolve_args(parser: argparse.ArgumentParser, argv: Sequence[str],
                 environ: Mapping[str, str]) -> argparse.Namespace:
    """The flags, then the ``SELPROXY_*`` variables, then the ``--config``
    file, then the defaults (:mod:`selproxy._settings`)."""
    try:
        args = resolve(parser, argv, environ)
    except SettingsError as exc:
        raise CommandLineError(str(exc), exc.code) from None
    if args.upstream is None:
        raise CommandLineError("the following arguments are required: --upstream")
    return args


#: Messages of Config's checks name its fields; the user typed flags.
_FIELD_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "workers", "max_request_line", "max_header_bytes", "max_buffered_body", "max_upstream_connections",
    "header_timeout", "idle_timeout", "connect_timeout", "response_timeout", "body_timeout",
    "shutdown_grace", "shutdown_delay", "topn", "max_topn", "rank_deadline", "max_field_chars",
    "ranker_threads", "max_pending_ranks", "capture_rate", "capture_max_bytes", "capture_backups",
    "interleave_max_open", "interleave_ttl", "interleave")}


def _usage_error(exc: Exception) -> CommandLineError:
    message = str(exc)
    name = message.split(" ", 1)[0]
    if name in _FIELD_FLAGS:
        message = _FIELD_FLAGS[name] + message[len(name):]
    return CommandLineError(message)


def _check_addresses(args: argparse.Namespace) -> None:
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise CommandLineError(f"--listen: {exc}") from None
    try:
        parse_upstream(args.upstream)
    except ValueError as exc:
        hint = ""
        if "://" not in args.upstream and "@" not in args.upstream:
            hint = f"; did you mean --upstream http://{args.upstream}?"
        raise CommandLineError(f"--upstream: {exc}{hint}") from None


def _check_upstream_tls(config: Config) -> None:
    """The CA bundle is read as the proxy starts: a path that is not there,
    or a file that holds no certificate, is one line now instead."""
    try:
        config.upstream_ssl_context()
    except ssl.SSLError as exc:  # before OSError, which it is: its errno is OpenSSL's
        raise CommandLineError(f"--upstream-ca-file {config.upstream_ca_file}: not a PEM CA bundle "
                               f"({exc.reason or exc})", EXIT_FAILURE) from None
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise CommandLineError(f"--upstream-ca-file {config.upstream_ca_file}: {reason}", EXIT_FAILURE) from None


def _ranker_options(args: argparse.Namespace, ranker: Optional[str]) -> Dict[str, Any]:
    from .rankers.registry import parse_ranker_options
    try:
        options = parse_ranker_options(args.ranker_option)
    except ValueError as exc:
        raise CommandLineError(f"--ranker-option: {exc}") from None
    given = [flag for flag, value in (("--model-dir", args.model_dir), ("--url", args.url),
                                      ("--ranker-option", args.ranker_option)) if value]
    if given and not ranker:
        raise CommandLineError(f"{', '.join(given)} needs --ranker NAME")
    if ranker and "embedding_store" not in options:
        from .rankers.registry import ranker_parameters, store_options
        for key, value in store_options(ranker_parameters(ranker), args.embedding_store, args.upstream,
                                        args.upstream_ca_file, not args.upstream_insecure).items():
            options.setdefault(key, value)
    if args.model_dir:
        options["model_dir"] = args.model_dir
    for url in args.url or ():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandLineError(f"--url: expected http[s]://HOST[:PORT]/PATH, got {url!r}")
    if args.url:
        options["url"] = args.url[0] if len(args.url) == 1 else list(args.url)
    return options


def _put_cwd_on_path() -> None:
    """``python -m selproxy`` finds ``--ranker mymodule:Class`` in the current
    directory because ``-m`` puts it first on sys.path; the ``selproxy``
    script gets its own directory there instead.  Both are the same command."""
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _chosen_ranker(name: Optional[str]) -> Optional[str]:
    """The ranker to build: ``none`` means none; no ``--ranker`` the default
    neural ranker when its extra is installed, else none, said in one line
    (``--ranker default`` names it: a missing extra is then an error)."""
    if name == "none":
        return None
    if name is not None:
        return name
    from .rankers.registry import default_ranker_missing
    missing = default_ranker_missing()
    if missing is None:
        return "default"
    logging.getLogger("selproxy").warning(
        "reranking is off: the default neural ranker needs %s (pip install 'selproxy[neural]'); "
        "--ranker none says passthrough only", missing)
    return None


def _check_settings(args: argparse.Namespace) -> None:
    """What can be checked without starting anything: the addresses and
    the values (for --print-config, and before every start)."""
    _check_addresses(args)
    try:
        config_from_args(args)
    except ValueError as exc:
        raise _usage_error(exc) from None


def configure_logging(args: argparse.Namespace) -> None:
    """Error lines on stderr, as text or JSON lines; access lines (when on)
    to their file or standard output, one formatted line each."""
    formatter = (JsonFormatter() if args.log_format == "json"
                 else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    access.propagate = args.access_log is None
    if args.access_log is None:
        return
    try:
        target = (AccessLineHandler(sys.stdout) if args.access_log == "-"
                  else AccessLineHandler(open(args.access_log, "a", encoding="utf-8"), owned=True))
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise CommandLineError(f"--access-log {args.access_log}: {reason}", EXIT_FAILURE) from None
    access.addHandler(target)
    access.setLevel(logging.INFO)


def build_proxy(args: argparse.Namespace) -> Any:
    """The proxy the settings describe, checked as far as can be without
    serving: addresses, values, the CA bundle, the ranker's name, class and
    options.  Raises :class:`CommandLineError`."""
    _check_addresses(args)
    if args.interleave and args.ranker is None:
        # The proxy's own ranker is the first arm that is one (no default
        # neural model loads for an experiment that does not use it).
        args.ranker = next((arm.strip() for arm in args.interleave.split(",")
                            if arm.strip() not in ("engine", "ranker")), None)
    ranker = _chosen_ranker(args.ranker)
    if (args.interleave or args.capture) and not ranker:
        raise CommandLineError("--interleave and --capture need a ranker (not --ranker none)")
    try:
        config = config_from_args(args)
        search = search_from_args(args) if ranker else None
    except ValueError as exc:
        raise _usage_error(exc) from None
    _check_upstream_tls(config)
    from .rankers.registry import RankerSpecError
    from .server import Proxy
    if ranker and ":" in ranker:
        _put_cwd_on_path()
    options = _ranker_options(args, ranker)
    try:
        if search is not None and search.interleave is not None:
            from .rankers.registry import check_ranker
            for arm in search.interleave.arms:
                if arm not in ("engine", "ranker", ranker):
                    check_ranker(arm)
        return Proxy(config=config, ranker=ranker, ranker_options=options or None, search=search)
    except RankerSpecError as exc:
        raise CommandLineError(str(exc)) from None


def _reloader(argv: Sequence[str]) -> Callable[[], Any]:
    """SIGHUP's way to the configuration as it is now: the same flags, the
    environment and the file read again."""

    def reload() -> Any:
        args = resolve_args(build_parser(), argv, os.environ)
        proxy = build_proxy(args)
        # A file that cannot be opened refuses the reload before any fork;
        # the workers open their own.
        if args.access_log not in (None, "-"):
            try:
                open(args.access_log, "a").close()
            except OSError as exc:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise CommandLineError(f"--access-log {args.access_log}: {reason}") from None
        proxy.setup_logging = lambda: configure_logging(args)
        return proxy

    return reload


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    configure_logging(args)
    from .rankers.registry import RankerSpecError, RankerUnavailable
    from .server import ListenError, StartFailed
    proxy = build_proxy(args)
    proxy.reloader = _reloader(argv)
    try:
        proxy.run()
    except RankerSpecError as exc:
        raise CommandLineError(str(exc)) from None
    except RankerUnavailable as exc:
        # The model loads as the proxy starts (in each worker, after the fork).
        raise CommandLineError(str(exc), EXIT_FAILURE) from None
    except ListenError as exc:
        raise CommandLineError(f"{exc}; stop it or choose another --listen"
                               if exc.errno == errno.EADDRINUSE else f"{exc}; choose another --listen",
                               EXIT_FAILURE) from None
    except StartFailed as exc:  # a worker's own bind (after the master's claim): rare
        hint = "; choose another --listen" if str(exc).startswith("cannot listen on") else ""
        raise CommandLineError(f"{exc}{hint}", EXIT_FAILURE) from None
    return 0


def _subcommand(name: str, argv: List[str]) -> int:
    prog = f"selproxy {name}"
    # ``embed`` needs only the neural ranker's packages, which come with selproxy.
    if name in SUBCOMMAND_EXTRAS and not any(flag in ("-h", "--help") for flag in argv):
        extra, modules = SUBCOMMAND_EXTRAS[name]
        try:
            require_extra("this command", extra, modules)
        except CommandLineError as error:
            return report(prog, error)
    if name == "engine":
        try:
            from .engine.cli import main as engine_main
        except ModuleNotFoundError as exc:  # the engine package needs its extra even for --help
            return report(prog, needs_extra("this command", "engine", (exc.name or "").partition(".")[0]))
        return engine_main(argv)
    if name == "eval":
        from .evaluation.cli import main as eval_main
        return eval_main(argv)
    if name == "embed":
        from .embed import main as embed_main
        return embed_main(argv)
    if name == "serve-ranker":
        from .serve_ranker import main as serve_ranker_main
        return serve_ranker_main(argv)
    from .demo.cli import main as demo_main
    return demo_main(argv)
