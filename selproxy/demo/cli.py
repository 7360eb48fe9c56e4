"""``selproxy demo``: start the embedded engine, load the stdlib docs, put selproxy
with the default neural ranker in front, show searches side by side, keep serving."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, AsyncIterator, List, Optional, Sequence

import uvloop

from . import app

__all__ = ("main", "build_parser")

DEFAULT_RANKER = "minilm"


def build_parser(prog: str = "selproxy demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="where selproxy listens (default %(default)s)")
    parser.add_argument("--engine-listen", default="127.0.0.1:9200", metavar="HOST:PORT",
                        help="where the embedded engine listens (default %(default)s)")
    parser.add_argument("--ranker", default=DEFAULT_RANKER, help="ranker name (default %(default)s)")
    parser.add_argument("--query", action="append", dest="queries", metavar="TEXT",
                        help="a search to show side by side; repeatable (default: a few examples)")
    parser.add_argument("--rank-deadline", type=float, default=None, metavar="S",
                        help="how long a search may wait for the model (default: the proxy's, "
                             "as `selproxy --help` shows)")
    parser.add_argument("--once", action="store_true", help="exit after showing the searches")
    return parser


def _engine(listen: str) -> Any:
    # Wiring point: the embedded engine (issue 3).
    from ..engine import Engine

    host, _, port = listen.rpartition(":")
    return Engine(data=":memory:", host=host or "127.0.0.1", port=int(port))


@contextlib.asynccontextmanager
async def _proxy(upstream: str, listen: str, ranker_name: str,
                 rank_deadline: Optional[float]) -> AsyncIterator[Any]:
    # selproxy with the chosen ranker in front of ``upstream``; it is shown
    # once the ranker has warmed up, as the status page's "ready" says.
    from ..search import SearchConfig
    from ..server import Proxy

    # The proxy's own defaults: the demo shows what a user gets.
    search = SearchConfig() if rank_deadline is None else SearchConfig(rank_deadline=rank_deadline)
    async with Proxy(upstream=upstream, listen=listen, ranker=ranker_name, search=search) as proxy:
        await proxy.ready()
        yield proxy


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    queries: List[str] = args.queries or list(app.EXAMPLE_QUERIES)
    demo = app.run_demo(
        _engine(args.engine_listen),
        lambda upstream: _proxy(upstream, args.listen, args.ranker, args.rank_deadline),
        queries=queries,
        serve_forever=not args.once,
    )
    try:
        # The engine, selproxy's core and the demo client share one uvloop loop.
        uvloop.run(demo)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
