"""The ``selproxy`` command: flags map onto :class:`selproxy.config.Config`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

from ._version import __version__
from .config import Config

__all__ = ("main",)

SUBCOMMANDS = ("engine", "eval", "demo")


def build_parser() -> argparse.ArgumentParser:
    from .search import SearchConfig
    # Defaults come from the dataclasses, so the flags cannot drift from them.
    defaults = Config(upstream="http://127.0.0.1:9200")
    sdefaults = SearchConfig()
    p = argparse.ArgumentParser(
        prog="selproxy",
        description="A URL-selective reverse proxy that reranks search results. "
                    "Subcommands: 'selproxy engine', 'selproxy eval', 'selproxy demo' "
                    "(each has its own --help).")
    p.add_argument("--version", action="version", version=f"selproxy {__version__}")
    p.add_argument("--listen", default=defaults.listen, metavar="HOST:PORT",
                   help="address to listen on (default %(default)s)")
    p.add_argument("--upstream", required=True, metavar="URL",
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
                        ("--upstream-queue-timeout", "upstream_queue_timeout"),
                        ("--shutdown-grace", "shutdown_grace")):
        timeouts.add_argument(flag, type=float, default=getattr(defaults, field),
                              metavar="S", help="default %(default)s")

    search = p.add_argument_group("reranked search")
    search.add_argument("--ranker", metavar="NAME|pkg.mod:Class",
                        help="rerank claimed searches with this ranker: a registered "
                             "name (identity, bm25, ...) or a class; without it the proxy "
                             "claims nothing but /_selproxy/status")
    search.add_argument("--ranker-option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the ranker (repeatable)")
    search.add_argument("--model-dir", metavar="PATH",
                        help="for --ranker cross-encoder: a local Hugging Face-format model")
    search.add_argument("--url", metavar="URL",
                        help="for --ranker remote: a /rerank endpoint (Cohere, Jina, TEI, Infinity)")
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

    p.add_argument("--forwarded-headers", action="store_true",
                   help="add X-Forwarded-For and X-Forwarded-Proto to requests")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
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
        shutdown_grace=args.shutdown_grace, forwarded_headers=args.forwarded_headers,
        access_log=args.access_log,
    )


def search_from_args(args: argparse.Namespace) -> Any:
    from .search import SearchConfig, solr_routes
    fields: Dict[str, Any] = dict(
        topn=args.topn, max_topn=args.max_topn, rank_deadline=args.rank_deadline,
        text_fields=tuple(args.text_field), max_field_chars=args.max_field_chars,
        ranker_threads=args.ranker_threads, max_pending_ranks=args.max_pending_ranks)
    if args.include_index:
        fields["include_indices"] = tuple(args.include_index)
    if args.exclude_index:
        fields["exclude_indices"] = tuple(args.exclude_index)
    if args.solr:
        fields["extra_routes"] = tuple(solr_routes())
    return SearchConfig(**fields)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    try:
        config = config_from_args(args)
        search = search_from_args(args) if args.ranker else None
    except ValueError as exc:
        parser.error(str(exc))
    from .rankers.registry import RankerUnavailable, parse_ranker_options
    from .server import Proxy
    try:
        options = parse_ranker_options(args.ranker_option)
    except ValueError as exc:
        parser.error(str(exc))
    if args.model_dir:
        options["model_dir"] = args.model_dir
    if args.url:
        options["url"] = args.url
    if options and not args.ranker:
        parser.error("--ranker-option needs --ranker")
    proxy = Proxy(config=config, ranker=args.ranker, ranker_options=options or None, search=search)
    try:
        proxy.run()
    except RankerUnavailable as exc:
        # The model loads as the proxy starts (in each worker, after the fork).
        parser.exit(2, f"selproxy: error: {exc}\n")
    return 0


def _subcommand(name: str, argv: List[str]) -> int:
    if name == "engine":
        from .engine.cli import main as engine_main
        return engine_main(argv)
    if name == "eval":
        from .evaluation.cli import main as eval_main
        return eval_main(argv)
    from .demo.cli import main as demo_main
    return demo_main(argv)
