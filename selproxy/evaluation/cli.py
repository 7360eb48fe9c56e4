"""``selproxy eval``: load a collection into an upstream, and evaluate engine order
against reranked order on judged queries; replay a capture offline with other
rankers; and read the verdict of an interleaving experiment.

    selproxy eval load --upstream http://127.0.0.1:9200 --index cranfield cran.all.1400.xml
    selproxy eval run --upstream http://127.0.0.1:9200 --proxy http://127.0.0.1:8080 \\
        --index cranfield --topics cran.qry.xml --qrels cranqrel.trec.txt --topic-ids ordinal
    selproxy eval replay capture.jsonl --ranker bm25 --qrels cranqrel.trec.txt --topics cran.qry.xml
    selproxy eval interleaving capture.jsonl   # or the proxy's URL (its status page)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from ..cli import EXIT_FAILURE, CommandLineError, CommandLineParser, needs_extra, run_command

__all__ = ("main", "build_parser")

PROG = "selproxy eval"
#: The fields of ``run`` that the ``--fields`` default fills in (kept here,
#: so that ``--help`` works without the extra's modules).
DEFAULT_FIELDS = ("title", "text")


def _fields(value: str) -> List[str]:
    fields = [name.strip() for name in value.split(",") if name.strip()]
    if not fields:
        raise argparse.ArgumentTypeError("name at least one field")
    return fields


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {number}")
    return number


def _proxy(value: str) -> List[str]:
    # "URL" or "LABEL=URL"; labels name rows of the report.
    label, sep, url = value.partition("=")
    return [label, url] if sep and not label.startswith("http") else ["reranked", value]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog=prog, description="Measure the relevance a ranker adds over the engine's order."
    )
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{load,run,replay,interleaving}")

    load = commands.add_parser("load", help="index a collection (JSON lines or TREC XML) into the upstream")
    load.add_argument("collection", help="documents: .jsonl or TREC <doc> records, optionally .gz")
    load.add_argument("--upstream", required=True, help="engine URL, e.g. http://127.0.0.1:9200")
    load.add_argument("--index", required=True)
    load.add_argument("--format", choices=("auto", "jsonl", "trec"), default="auto")
    load.add_argument(
        "--fields", type=_fields, default=None,
        help="comma-separated source fields to keep, in order (default: all for JSON lines, title,text for TREC)",
    )
    load.add_argument("--recreate", action="store_true", help="delete the index first if it exists")
    load.add_argument("--batch-size", type=_positive, default=500, help="documents per _bulk request (default 500)")
    load.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")

    run = commands.add_parser("run", help="run judged queries: engine order vs. reranked order")
    run.add_argument("--upstream", required=True, help="engine URL: its own order is the baseline")
    run.add_argument(
        "--proxy", type=_proxy, action="append", default=[], metavar="[LABEL=]URL",
        help="selproxy URL whose reranked order to score; repeat to compare several",
    )
    run.add_argument("--index", required=True)
    run.add_argument("--topics", required=True, help="TREC topics (SGML/XML), JSON lines, or id<TAB>text")
    run.add_argument("--qrels", required=True, help="TREC qrels: query-id 0 doc-id relevance")
    run.add_argument(
        "--topic-ids", choices=("auto", "num", "ordinal"), default="auto",
        help="match qrels by each topic's <num>, or by its position 1, 2, 3… (Cranfield); "
             "auto (default) uses positions only when the <num>s are not all judged and the positions are",
    )
    run.add_argument("--topic-field", default="title", help="topic field used as query text (default title)")
    run.add_argument(
        "--fields", type=_fields, default=list(DEFAULT_FIELDS),
        help="document fields the query searches (default title,text)",
    )
    run.add_argument("--k", type=_positive, default=10, help="cut-off for nDCG and MRR (default 10)")
    run.add_argument("--window", type=_positive, default=50, help="hits asked for, and the Recall cut-off (default 50)")
    run.add_argument("--warmup", type=int, default=2, help="topics sent once before measuring (default 2)")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds per search (default 60)")
    run.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")

    replay = commands.add_parser("replay", help="re-rank captured searches offline with other rankers")
    replay.add_argument("capture", nargs="+", help="files --capture wrote (rotated ones too)")
    replay.add_argument("--ranker", action="append", default=[], metavar="SPEC",
                        help="a ranker to replay (repeatable): a registered name or package.module:Class")
    replay.add_argument("--qrels", help="TREC qrels to judge by (default: the captured clicks)")
    replay.add_argument("--topics", help="with --qrels: the topics, to match captured queries by their text")
    replay.add_argument(
        "--topic-ids", choices=("auto", "num", "ordinal"), default="auto",
        help="as for run (Cranfield: ordinal; auto chooses)")
    replay.add_argument("--topic-field", default="title", help="topic field used as query text (default title)")
    replay.add_argument("--k", type=_positive, default=10, help="cut-off for nDCG and MRR (default 10)")
    replay.add_argument("--deadline", type=float, default=60.0,
                        help="seconds a replayed ranker may take per window (default 60)")
    replay.add_argument("--upstream", metavar="URL",
                        help="for a capture without texts: read the documents from this engine (_mget)")
    replay.add_argument("--text-field", action="append", default=[], metavar="SPEC",
                        help="with --upstream: the proxy's --text-field specs, to make the same texts")
    replay.add_argument("--max-field-chars", type=int, default=2000, metavar="N",
                        help="with --upstream: the proxy's --max-field-chars (default 2000)")
    replay.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")

    inter = commands.add_parser(
        "interleaving", help="the preference between two interleaved arms, with a sign test")
    inter.add_argument("source", nargs="+",
                       help="capture files (their click lines), or status URLs http[s]://HOST:PORT")
    inter.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


async def _load(args: argparse.Namespace) -> int:
    from ._client import SearchClient
    from .loader import load_collection
    from .trec import read_collection

    docs = read_collection(args.collection, fields=args.fields, format=args.format)
    async with SearchClient(args.upstream, timeout=args.timeout) as client:
        report = await load_collection(client, args.index, docs, recreate=args.recreate, batch_docs=args.batch_size)
    print(
        f"indexed {report.indexed} documents into {report.index!r} in {report.seconds:.2f} s "
        f"({report.docs_per_second:.0f} docs/s); {report.failed} rejected"
    )
    for error in report.errors:
        print(f"  rejected {error['_id']!r}: {json.dumps(error['error'])}", file=sys.stderr)
    return 0 if report.failed == 0 else 1


async def _run(args: argparse.Namespace) -> int:
    from .run import evaluate
    from .trec import number_like_qrels, read_qrels, read_topics

    qrels = read_qrels(args.qrels)
    if args.topic_ids == "auto":
        topics = read_topics(args.topics, field=args.topic_field)
        renumbered = number_like_qrels(topics, qrels)
        if renumbered != topics:
            print("note: the qrels number topics by position (as Cranfield's do); matching them that way",
                  file=sys.stderr)
        topics = renumbered
    else:
        topics = read_topics(args.topics, field=args.topic_field, ids=args.topic_ids)
    proxies: Dict[str, str] = {}
    for label, url in args.proxy:
        proxies[label] = url
    report = await evaluate(
        args.upstream, args.index, topics, qrels,
        proxies=proxies, k=args.k, window=args.window, fields=args.fields,
        warmup=args.warmup, timeout=args.timeout,
    )
    if report.judged == 0:
        print(
            "no topic has a relevant judgement in the qrels: do the ids match? "
            "(Cranfield needs --topic-ids ordinal)",
            file=sys.stderr,
        )
        return 1
    _print_result(report, args.json,
                  f"index {report.index!r}: {report.judged} judged of {report.topics} topics, window {report.window}")
    return 0


def _print_result(result: Any, as_json: bool, headline: str) -> None:
    """A report as ``--json`` asks: its JSON, or ``headline`` over its table."""
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(headline)
        print(result.table())


async def _replay(args: argparse.Namespace) -> int:
    from .replay import fetch_texts, read_capture, replay_rankers, report
    from .trec import number_like_qrels, read_qrels, read_topics

    searches, clicks = read_capture(args.capture)
    if not searches:
        raise CommandLineError("the capture holds no searches", EXIT_FAILURE)
    if args.ranker and any(s.texts is None for s in searches):
        if not args.upstream:
            raise CommandLineError("the capture holds no document texts (it was made without "
                                   "--capture-texts): give --upstream URL to read them from the engine",
                                   EXIT_FAILURE)
        loop = asyncio.get_running_loop()
        searches, stale = await loop.run_in_executor(None, fetch_texts, searches, args.upstream,
                                                     args.text_field, args.max_field_chars)
        if stale:
            print(f"note: {stale} captured windows left out: their documents' texts changed since "
                  "(or --text-field differs from the proxy's)", file=sys.stderr)
        if not searches:
            raise CommandLineError("no captured window could be replayed", EXIT_FAILURE)
    qrels = read_qrels(args.qrels) if args.qrels else None
    topics: Any = []
    if qrels is not None:
        if not args.topics:
            raise CommandLineError("--qrels needs --topics, to match the captured queries")
        if args.topic_ids == "auto":
            topics = number_like_qrels(read_topics(args.topics, field=args.topic_field), qrels)
        else:
            topics = read_topics(args.topics, field=args.topic_field, ids=args.topic_ids)
    loop = asyncio.get_running_loop()
    # Each ranker runs on a loop of its own (asyncio.run), off this one.
    replayed = await loop.run_in_executor(None, replay_rankers, args.ranker, searches, args.deadline)
    result = report(searches, clicks, replayed, qrels=qrels, topics=topics, k=args.k)
    _print_result(result, args.json,
                  f"{result.searches} captured searches, {result.judged} judged by {result.judgements}")
    return 0


async def _interleaving(args: argparse.Namespace) -> int:
    from .interleaving import from_clicks, from_status

    urls = [s for s in args.source if s.startswith(("http://", "https://"))]
    if urls and len(urls) != len(args.source):
        raise CommandLineError("give capture files or status URLs, not both")
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, from_status if urls else from_clicks, urls or args.source)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.text())
    return 0


def _check_files(args: argparse.Namespace) -> None:
    """A file named on the command line that cannot be read is one line,
    naming its flag, before anything is sent to the upstream."""
    if args.command == "load":
        named = [("collection", args.collection)]
    elif args.command == "run":
        named = [("--topics", args.topics), ("--qrels", args.qrels)]
    elif args.command == "replay":
        named = [("capture", path) for path in args.capture]
        named += [(flag, path) for flag, path in (("--topics", args.topics), ("--qrels", args.qrels)) if path]
    else:
        named = [("source", path) for path in args.source if not path.startswith(("http://", "https://"))]
    for flag, path in named:
        if not os.path.isfile(path):
            reason = "is a directory" if os.path.isdir(path) else "no such file"
            raise CommandLineError(f"{flag} {path}: {reason}", EXIT_FAILURE)
        if not os.access(path, os.R_OK):
            raise CommandLineError(f"{flag} {path}: permission denied", EXIT_FAILURE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for ``selproxy eval``; ``argv`` excludes the program and ``eval``."""
    return run_command(PROG, build_parser(), _main, argv)


def _main(args: argparse.Namespace) -> int:
    try:
        from ._client import SearchClientError
        from .trec import TrecFormatError
    except ModuleNotFoundError as exc:
        raise needs_extra("this command", "eval", (exc.name or "aiohttp").partition(".")[0]) from None
    _check_files(args)
    handler: Any = {"load": _load, "run": _run, "replay": _replay,
                    "interleaving": _interleaving}[args.command]
    try:
        return int(asyncio.run(handler(args)))
    except CommandLineError:
        raise
    except (OSError, SearchClientError, TrecFormatError, ValueError) as error:
        raise CommandLineError(str(error), EXIT_FAILURE) from None
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
