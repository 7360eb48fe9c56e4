"""The ``selproxy`` command: flags map onto :class:`selproxy.config.Config`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

from ._version import __version__
from .config import Config

__all__ = ("main",)

SUBCOMMANDS = ("engine", "eval", "demo", "embed")


def build_parser() -> argparse.ArgumentParser:
    from .search import SearchConfig
    # Defaults come from the dataclasses, so the flags cannot drift from them.
    defaults = Config(upstream="http://127.0.0.1:9200")
    sdefaults = SearchConfig()
    p = argparse.ArgumentParser(
        prog="selproxy",
        description="A URL-selective reverse proxy that reranks search results. "
                    "Subcommands: 'selproxy engine', 'selproxy eval', 'selproxy demo', "
                    "'selproxy embed' "
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

    timeouts = p.add_argument_group("timeouts (seconds)")
    for flag, field in (("--header-timeout", "header_timeout"),
                        ("--idle-timeout", "idle_timeout"),
                        ("--connect-timeout", "connect_timeout"),
                        ("--response-timeout", "response_timeout"),
                        ("--body-timeout", "body_timeout"),
                        ("--shutdown-grace", "shutdown_grace")):
        timeouts.add_argument(flag, type=float, default=getattr(defaults, field),
                              metavar="S", help="default %(default)s")

    search = p.add_argument_group("reranked search")
    search.add_argument("--ranker", metavar="NAME|pkg.mod:Class", default="default",
                        help="rerank claimed searches with this ranker: a registered "
                             "name (default, minilm, bi-encoder, bm25, identity, ...) or a class; "
                             "'default' (the default) is the neural ranker when selproxy[neural] "
                             "is installed; 'none' claims nothing but /_selproxy/status")
    search.add_argument("--embedding-store", default="default", metavar="PATH|default|engine|:memory:",
                        help="where a bi-encoder keeps document embeddings: 'default' is a file per "
                             "model under ~/.cache/selproxy (shared by workers and restarts), "
                             "'engine' a sidecar index of the upstream, ':memory:' none "
                             "(default %(default)s)")
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
    ranker = _chosen_ranker(parser, args.ranker)
    try:
        config = config_from_args(args)
        search = search_from_args(args) if ranker else None
    except ValueError as exc:
        parser.error(str(exc))
    from .rankers.registry import RankerUnavailable, parse_ranker_options
    from .server import Proxy
    try:
        options = parse_ranker_options(args.ranker_option)
    except ValueError as exc:
        parser.error(str(exc))
    if ranker and _takes(ranker, "embedding_store") and "embedding_store" not in options:
        options["embedding_store"] = args.embedding_store
        if args.embedding_store == "engine":
            options.setdefault("store_upstream", args.upstream)
    if args.model_dir:
        options["model_dir"] = args.model_dir
    if args.url:
        options["url"] = args.url
    if options and not ranker:
        parser.error("--ranker-option needs --ranker")
    proxy = Proxy(config=config, ranker=ranker, ranker_options=options or None, search=search)
    try:
        proxy.run()
    except RankerUnavailable as exc:
        # The model loads as the proxy starts (in each worker, after the fork).
        parser.exit(2, f"selproxy: error: {exc}\n")
    return 0


def _chosen_ranker(parser: argparse.ArgumentParser, name: str) -> Optional[str]:
    """The ranker to build: ``none`` means none; ``default`` the neural
    ranker when its extra is installed, else none, said in one line."""
    if name == "none":
        return None
    if name != "default":
        return name
    from .rankers.registry import default_ranker_missing
    missing = default_ranker_missing()
    if missing is None:
        return "default"
    logging.getLogger("selproxy").warning(
        "reranking is off: the default neural ranker needs %s (pip install 'selproxy[neural]'); "
        "--ranker none says passthrough only", missing)
    return None


def _takes(ranker: str, option: str) -> bool:
    """Whether the ranker ``ranker`` names takes the keyword ``option``."""
    import inspect

    from .rankers.registry import load_ranker_class
    try:
        params = inspect.signature(load_ranker_class(ranker)).parameters
    except (ValueError, TypeError, ImportError, AttributeError):
        return False  # the proxy's start reports a bad ranker in its own words
    return option in params


def _subcommand(name: str, argv: List[str]) -> int:
    if name == "engine":
        from .engine.cli import main as engine_main
        return engine_main(argv)
    if name == "eval":
        from .evaluation.cli import main as eval_main
        return eval_main(argv)
    if name == "embed":
        from .embed import main as embed_main
        return embed_main(argv)
    from .demo.cli import main as demo_main
    return demo_main(argv)
