"""The ``selproxy`` command: flags map onto :class:`selproxy.config.Config`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ._version import __version__
from .config import Config

__all__ = ("main",)

SUBCOMMANDS = ("engine", "eval", "demo")


def build_parser() -> argparse.ArgumentParser:
    defaults = Config(upstream="http://127.0.0.1:9200")
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

    timeouts = p.add_argument_group("timeouts (seconds)")
    for flag, field in (("--header-timeout", "header_timeout"),
                        ("--idle-timeout", "idle_timeout"),
                        ("--connect-timeout", "connect_timeout"),
                        ("--response-timeout", "response_timeout"),
                        ("--shutdown-grace", "shutdown_grace")):
        timeouts.add_argument(flag, type=float, default=getattr(defaults, field),
                              metavar="S", help="default %(default)s")

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
        shutdown_grace=args.shutdown_grace, forwarded_headers=args.forwarded_headers,
        access_log=args.access_log,
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        build_parser().error(str(exc))
    from .server import Proxy
    Proxy(config=config).run()
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
