#!/usr/bin/env python3
"""selproxy's serving process alone, without the master, for callgrind.

``selproxy`` forks its workers from a master, and ``callgrind_control``
cannot reach a forked child (valgrind's gdbserver stays with the process it
started).  The master is not on the request path (the kernel hands each
connection to a worker), so the per-request figure is the worker's: this
runs what a worker runs, configured by the same flags, settings and logging.

    python benchmarks/serve_one_worker.py --upstream http://127.0.0.1:9200 --ranker none
"""
import os
import sys

from selproxy.cli import build_parser, build_proxy, configure_logging, resolve_args
from selproxy.server import run_bounded


def main() -> None:
    args = resolve_args(build_parser(), sys.argv[1:], os.environ)
    configure_logging(args)
    run_bounded(build_proxy(args).serve())


if __name__ == "__main__":
    main()
