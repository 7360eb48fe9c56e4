"""``selproxy demo``: start the embedded engine, load the stdlib docs, put selproxy
with the default neural ranker in front, show searches side by side, keep serving."""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from typing import Any, AsyncIterator, List, Optional, Sequence

from ..cli import EXIT_FAILURE, CommandLineError, CommandLineParser, require_extra, run_command

__all__ = ("main", "build_parser")

PROG = "selproxy demo"
DEFAULT_RANKER = "minilm"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = CommandLineParser(prog=prog, description=__doc__)
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


def _listen_failure(what: str, flag: str, listen: str, exc: OSError) -> CommandLineError:
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (another process holds the port)"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return CommandLineError(f"cannot start {what} on {listen}: {reason}; choose another with {flag} HOST:PORT",
                            EXIT_FAILURE)


@contextlib.asynccontextmanager
async def _engine(listen: str) -> AsyncIterator[Any]:
    # Wiring point: the embedded engine (issue 3).
    from ..config import parse_listen
    from ..engine import Engine

    host, port = parse_listen(listen)
    engine = Engine(data=":memory:", host=host, port=port)
    try:
        await engine.__aenter__()
    except OSError as exc:
        raise _listen_failure("the embedded engine", "--engine-listen", listen, exc) from None
    try:
        yield engine
    finally:
        await engine.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def _proxy(upstream: str, listen: str, ranker_name: str,
                 rank_deadline: Optional[float]) -> AsyncIterator[Any]:
    # selproxy with the chosen ranker in front of ``upstream``; it is shown
    # once the ranker has warmed up, as the status page's "ready" says.
    from ..search import SearchConfig
    from ..server import Proxy

    # The proxy's own defaults: the demo shows what a user gets.
    search = SearchConfig() if rank_deadline is None else SearchConfig(rank_deadline=rank_deadline)
    proxy = Proxy(upstream=upstream, listen=listen, ranker=ranker_name, search=search)
    try:
        await proxy.start()
    except OSError as exc:
        raise _listen_failure("selproxy", "--listen", listen, exc) from None
    try:
        await proxy.ready()
        yield proxy
    finally:
        await proxy.stop()


def _check(args: argparse.Namespace) -> None:
    from ..config import parse_listen
    from ..rankers.registry import RANKER_EXTRAS, RankerSpecError, check_ranker

    for flag, value in (("--listen", args.listen), ("--engine-listen", args.engine_listen)):
        try:
            parse_listen(value)
        except ValueError as exc:
            raise CommandLineError(f"{flag}: {exc}") from None
    if args.ranker == DEFAULT_RANKER:
        # The demo extra brings the default ranker's model with it.
        require_extra(f"the default ranker ({DEFAULT_RANKER})", "demo", RANKER_EXTRAS["selproxy.rankers.minilm"][1])
    try:
        check_ranker(args.ranker)
    except RankerSpecError as exc:
        raise CommandLineError(str(exc)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(PROG, build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from ..rankers.registry import RankerUnavailable
    from . import app

    _check(args)
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
    except RankerUnavailable as exc:
        raise CommandLineError(str(exc), EXIT_FAILURE) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
