"""``selproxy engine``: run the embedded Elasticsearch-compatible engine."""
from __future__ import annotations

import argparse
import errno
import logging
import sqlite3
import sys
from typing import List, Optional

from ..cli import EXIT_FAILURE, CommandLineError, CommandLineParser, needs_extra, run_command

__all__ = ("build_parser", "main")

PROG = "selproxy engine"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog=prog, description="A small Elasticsearch-compatible search server on SQLite FTS5 "
                               "(for demos, tests and CI; not a replacement for Elasticsearch).")
    parser.add_argument("--listen", default="127.0.0.1:9200", metavar="HOST:PORT",
                        help="address to serve HTTP on (default: %(default)s)")
    parser.add_argument("--data", default=":memory:", metavar="PATH",
                        help="SQLite file to keep the indices in, or :memory: (default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="server log level (default: %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(PROG, build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..config import parse_listen
    try:
        from .server import serve
    except ModuleNotFoundError as exc:
        raise needs_extra("this command", "engine", (exc.name or "starlette").partition(".")[0]) from None
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise CommandLineError(f"--listen: {exc}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.listen, args.data, args.log_level)
    except OSError as exc:
        raise CommandLineError(_start_failure(args.listen, exc), EXIT_FAILURE) from None
    except sqlite3.Error as exc:
        raise CommandLineError(f"--data {args.data}: {exc}", EXIT_FAILURE) from None
    return 0


def _start_failure(listen: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {listen}: address already in use (another process holds the port); "
                "stop it or choose another --listen")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or exc.errno is not None and exc.errno < 0:
        return f"cannot listen on {listen}: {(exc.strerror or str(exc)).lower()}; choose another --listen"
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)


if __name__ == "__main__":
    sys.exit(main())
