"""``selproxy engine``: run the embedded Elasticsearch-compatible engine."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

__all__ = ("build_parser", "main")


def build_parser(prog: str = "selproxy engine") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = build_parser().parse_args(argv)
    try:
        from .server import parse_listen, serve
    except ImportError as exc:
        print(f"selproxy engine needs the [engine] extra (pip install 'selproxy[engine]'): {exc}",
              file=sys.stderr)
        return 2
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        print(f"selproxy engine: --listen: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.listen, args.data, args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
