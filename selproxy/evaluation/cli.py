"""``selproxy eval``: load a collection into an upstream, and evaluate engine order
against reranked order on judged queries.

    selproxy eval load --upstream http://127.0.0.1:9200 --index cranfield cran.all.1400.xml
    selproxy eval run --upstream http://127.0.0.1:9200 --proxy http://127.0.0.1:8080 \\
        --index cranfield --topics cran.qry.xml --qrels cranqrel.trec.txt --topic-ids ordinal
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="{load,run}")

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
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"index {report.index!r}: {report.judged} judged of {report.topics} topics, window {report.window}")
        print(report.table())
    return 0


def _check_files(args: argparse.Namespace) -> None:
    """A file named on the command line that cannot be read is one line,
    naming its flag, before anything is sent to the upstream."""
    named = ([("collection", args.collection)] if args.command == "load"
             else [("--topics", args.topics), ("--qrels", args.qrels)])
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
    handler: Any = _load if args.command == "load" else _run
    try:
        return int(asyncio.run(handler(args)))
    except (OSError, SearchClientError, TrecFormatError, ValueError) as error:
        raise CommandLineError(str(error), EXIT_FAILURE) from None
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
