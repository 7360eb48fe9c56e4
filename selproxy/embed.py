"""``selproxy embed``: encode an index's documents ahead of time, into the embedding store.

    selproxy embed --upstream http://127.0.0.1:9200 --index docs [--text-field title --text-field body]

A bi-encoder's document vectors do not depend on the query, so they can all be
computed before the first search.  This walks every document of the index
through the engine's own API (a point in time with ``search_after`` where the
engine has one, else a scroll), takes each hit's text and store key exactly as
the search path does (:func:`selproxy.search.service.hit_texts` and
:func:`~selproxy.search.service.document_key`, the same code), skips what the
store already holds with the same text hash, encodes the rest in large
batches with the bare model and writes them to the store the proxy reads
(``--embedding-store``, the proxy's flag and default).

It is resumable: a second run skips every stored document, and re-encodes a
document only when its text changed.  The first Ctrl-C stops after the batch
in hand (its vectors are kept), closes the engine's point in time or scroll,
prints the totals and exits with 130; a second one stops at once.

The HTTP client is a plain blocking ``http.client`` connection (one keep-alive
connection; http or https; ``user:password@`` in the URL for basic auth): the
walk is one request at a time, and the model, not the engine, is the cost.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import sqlite3
import sys
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ._engine_http import EngineCallError, EngineHTTP, EngineStatusError

__all__ = ("main", "build_parser", "EmbedError", "IndexWalk", "embed_index")

#: How long the engine keeps the walk's point in time or scroll between pages:
#: a page waits for the model to embed it, minutes on a slow or busy machine.
KEEP_ALIVE = "10m"
#: Seconds between progress lines when stderr is not a terminal.
PLAIN_PROGRESS_INTERVAL = 5.0


class EmbedError(EngineCallError):
    """Stops ``selproxy embed`` with one line and a non-zero exit (as does an
    :class:`EngineCallError` from the engine's client)."""


def _index_path(index: str, endpoint: str) -> str:
    return "/" + urllib.parse.quote(index, safe=",*") + "/" + endpoint


class IndexWalk:
    """Every document of ``index``, in pages of ``page_size`` hits.

    A point in time paged with ``search_after`` on ``_shard_doc`` where the
    engine has one (Elasticsearch 7.10+, the embedded engine); a scroll where
    it answers ``_pit`` with an error other than a missing index (OpenSearch,
    older Elasticsearch).  ``source`` is the search's ``_source`` (None: the
    whole source), ``fields`` its ``fields`` (None: not asked).
    :meth:`close` frees the engine's context; call it in any case."""

    def __init__(self, http: EngineHTTP, index: str, *, page_size: int,
                 source: Any = None, fields: Optional[List[str]] = None,
                 keep_alive: str = KEEP_ALIVE) -> None:
        self.http = http
        self.keep_alive = keep_alive
        self.index = index
        self.page_size = page_size
        self.source = source
        self.fields = fields
        self.mode = ""
        self._pit: Optional[str] = None
        self._scroll: Optional[str] = None

    def _missing_index(self, exc: EngineStatusError) -> EngineCallError:
        if exc.status == 404 and exc.error_type in ("index_not_found_exception", ""):
            return EmbedError(f"no index {self.index!r} at {self.http.display}")
        return exc

    def _expired(self, what: str) -> EmbedError:
        return EmbedError(f"the engine's {what} expired between two pages (a page took longer to embed than "
                          f"--keep-alive {self.keep_alive}); run again with a longer one: what is stored "
                          f"is skipped")

    def open(self) -> None:
        """Open the point in time (or note that a scroll will be used)."""
        try:
            answer = self.http.call("POST", _index_path(self.index, f"_pit?keep_alive={self.keep_alive}"))
        except EngineStatusError as exc:
            if exc.status == 404 and exc.error_type == "index_not_found_exception":
                raise self._missing_index(exc) from None
            if exc.status in (401, 403) or exc.status >= 500:
                raise
            self.mode = "scroll"  # no point in time here: no such route, or not allowed
            return
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise EmbedError(f"the engine at {self.http.display} opened a point in time without an id")
        self._pit = answer["id"]
        self.mode = "point in time"

    def count(self) -> Optional[int]:
        """The documents in the index (for the progress bar), or None."""
        try:
            answer = self.http.call("POST", _index_path(self.index, "_count"))
        except EngineStatusError as exc:
            error = self._missing_index(exc)
            if error is not exc or exc.status in (401, 403):
                raise error from None
            return None  # no count here: the walk itself says what is wrong, if anything
        count = answer.get("count") if isinstance(answer, dict) else None
        return count if isinstance(count, int) else None

    def _body(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {"size": self.page_size}
        if self.source is not None:
            body["_source"] = self.source
        if self.fields is not None:
            body["fields"] = self.fields
        return body

    def pages(self) -> Iterator[List[Dict[str, Any]]]:
        if not self.mode:
            self.open()
        if self.mode == "scroll":
            yield from self._scroll_pages()
        else:
            yield from self._pit_pages()

    def _pit_pages(self) -> Iterator[List[Dict[str, Any]]]:
        after: Optional[List[Any]] = None
        while True:
            body = self._body()
            body.update(pit={"id": self._pit, "keep_alive": self.keep_alive}, sort=[{"_shard_doc": "asc"}],
                        track_total_hits=False)
            if after is not None:
                body["search_after"] = after
            try:
                answer = self.http.call("POST", "/_search", body)
            except EngineStatusError as exc:
                if exc.status == 404 and after is not None:
                    raise self._expired("point in time") from None
                raise
            if isinstance(answer.get("pit_id"), str):
                self._pit = answer["pit_id"]  # the engine may hand back a new id
            hits = _hits_of(answer, self.http.display)
            if not hits:
                return
            yield hits
            last = hits[-1].get("sort")
            if not isinstance(last, list):
                raise EmbedError(f"the engine at {self.http.display} returned hits without sort values "
                                 f"in a point-in-time walk")
            after = last

    def _scroll_pages(self) -> Iterator[List[Dict[str, Any]]]:
        body = self._body()
        body["sort"] = ["_doc"]
        try:
            answer = self.http.call("POST", _index_path(self.index, f"_search?scroll={self.keep_alive}"), body)
        except EngineStatusError as exc:
            raise self._missing_index(exc) from None
        while True:
            if isinstance(answer.get("_scroll_id"), str):
                self._scroll = answer["_scroll_id"]
            hits = _hits_of(answer, self.http.display)
            if not hits:
                return
            yield hits
            try:
                answer = self.http.call("POST", "/_search/scroll",
                                        {"scroll": self.keep_alive, "scroll_id": self._scroll})
            except EngineStatusError as exc:
                if exc.status == 404:
                    self._scroll = None
                    raise self._expired("scroll") from None
                raise

    def close(self) -> None:
        """Free the point in time or scroll; best effort (it expires anyway)."""
        pit, self._pit = self._pit, None
        scroll, self._scroll = self._scroll, None
        try:
            if pit is not None:
                self.http.request("DELETE", "/_pit", {"id": pit})
            if scroll is not None:
                self.http.request("DELETE", "/_search/scroll", {"scroll_id": [scroll]})
        except EngineCallError:
            pass


def _hits_of(answer: Any, where: str) -> List[Dict[str, Any]]:
    hits = answer.get("hits") if isinstance(answer, dict) else None
    hits = hits.get("hits") if isinstance(hits, dict) else None
    if not isinstance(hits, list):
        raise EmbedError(f"the engine at {where} answered a search without hits.hits")
    return [h for h in hits if isinstance(h, dict)]


def source_request(specs: Sequence[Any]) -> Tuple[Any, Optional[List[str]]]:
    """What to ask of each hit so the search path's extraction finds the
    same text: ``(_source, fields)``.  No specs: the whole source."""
    if not specs:
        return None, None
    wanted = [s.name for s in specs if s.where == "_source"]
    fields = [s.name for s in specs if s.where == "fields"]
    if any(s.where == "highlight" for s in specs):
        raise EmbedError("a highlight. text field depends on the query: it cannot be embedded ahead "
                         "of time")
    return (list(dict.fromkeys(wanted)) if wanted else False), (list(dict.fromkeys(fields)) or None)


# -- progress ---------------------------------------------------------------------------------------------


class Progress:
    """A tqdm bar (documents/s, time left) on a terminal; else a plain line
    every few seconds."""

    def __init__(self, total: Optional[int], *, stream: Any = None, plain_interval: float = 0.0) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._last_line = self.started
        self._interval = plain_interval or PLAIN_PROGRESS_INTERVAL
        self._bar: Any = None
        isatty = getattr(self.stream, "isatty", None)
        if callable(isatty) and isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit="doc", file=self.stream, dynamic_ncols=True,
                                 smoothing=0.05, desc="embedding")

    def update(self, n: int, **postfix: Any) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"embedding: {self.done}" + (f"/{self.total}" if self.total is not None else "")
        text += f" documents, {rate:.1f} docs/s"
        if self.total is not None and rate > 0 and self.total >= self.done:
            text += f", {(self.total - self.done) / rate:.0f} s left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- the run ----------------------------------------------------------------------------------------------


class Totals:
    __slots__ = ("seen", "embedded", "skipped", "empty", "seconds", "encode_seconds", "interrupted")

    def __init__(self) -> None:
        self.seen = self.embedded = self.skipped = self.empty = 0
        self.seconds = self.encode_seconds = 0.0
        self.interrupted = False


class _Interrupt:
    """The first SIGINT asks the run to stop after its batch; the second
    stops it at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupt":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (embedded in a program): no handler
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("selproxy embed: stopping after this batch (Ctrl-C again to stop now)\n")
        sys.stderr.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def embed_index(walk: IndexWalk, embed: Callable[[List[str]], Any], store: Any, *,
                specs: Sequence[Any], max_chars: int, batch_size: int,
                progress: Optional[Progress] = None,
                stop: Callable[[], bool] = lambda: False) -> Totals:
    """Walk, skip what ``store`` knows, ``embed`` the rest ``batch_size``
    texts at a time, ``store.put_many``.  ``stop()`` is asked after every
    batch and page; when it says so the run ends there (what was embedded is
    stored).  The caller closes ``walk``."""
    from .search.service import document_key, hit_texts

    totals = Totals()
    started = time.perf_counter()
    pending_keys: List[Any] = []
    pending_texts: List[str] = []

    def flush(count: int) -> None:
        keys, texts = pending_keys[:count], pending_texts[:count]
        del pending_keys[:count], pending_texts[:count]
        began = time.perf_counter()
        vectors = embed(texts)
        totals.encode_seconds += time.perf_counter() - began
        errors = store.stats().get("errors", 0)
        store.put_many(list(zip(keys, vectors)))
        # A store that keeps searches alive by swallowing its errors (the
        # engine's) counts them instead: here a lost write must stop the run.
        if store.stats().get("errors", 0) != errors:
            raise EmbedError(f"the embedding store failed to write {len(keys)} vectors; see the warning above")
        totals.embedded += len(keys)

    for page in walk.pages():
        texts = hit_texts(page, specs, max_chars)
        candidates = []
        for hit, text in zip(page, texts):
            if text:
                candidates.append((document_key(hit, text), text))
            else:
                totals.empty += 1
        known = store.known([key for key, _ in candidates]) if candidates else []
        for (key, text), stored in zip(candidates, known):
            if stored:
                totals.skipped += 1
            else:
                pending_keys.append(key)
                pending_texts.append(text)
        totals.seen += len(page)
        while len(pending_texts) >= batch_size and not stop():
            flush(batch_size)
        if progress is not None:
            progress.update(len(page), embedded=totals.embedded, skipped=totals.skipped)
        if stop():
            totals.interrupted = True
            break
    if not totals.interrupted and pending_texts:
        flush(len(pending_texts))
    totals.seconds = time.perf_counter() - started
    return totals


def build_parser(prog: str = "selproxy embed") -> argparse.ArgumentParser:
    from .search import SearchConfig

    sdefaults = SearchConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Encode every document of an index ahead of time into the embedding store the proxy "
                    "reads, so searches never wait for the model.  Resumable: documents already stored "
                    "with the same text are skipped; Ctrl-C stops after the current batch.")
    p.add_argument("--upstream", required=True, metavar="URL", help="the search engine: http[s]://HOST:PORT")
    p.add_argument("--index", required=True, metavar="NAME", help="the index (or alias, or pattern) to walk")
    p.add_argument("--text-field", action="append", default=[], metavar="SPEC",
                   help="as the proxy's flag, and give the same ones: the document text from this field "
                        "(repeatable; default all of _source)")
    p.add_argument("--max-field-chars", type=int, default=sdefaults.max_field_chars, metavar="N",
                   help="as the proxy's flag (default %(default)s)")
    p.add_argument("--ranker", default="default", metavar="NAME|pkg.mod:Class",
                   help="the bi-encoder the proxy uses: default, minilm, bi-encoder, ... (default %(default)s)")
    p.add_argument("--model-dir", metavar="PATH", help="for --ranker bi-encoder: the local model")
    p.add_argument("--ranker-option", action="append", default=[], metavar="KEY=VALUE",
                   help="as the proxy's flag: give the same ones, they can change the model's identity "
                        "(max_length...) and so the store")
    p.add_argument("--embedding-store", default="default", metavar="PATH|default|engine",
                   help="as the proxy's flag (default %(default)s: a file per model under ~/.cache/selproxy)")
    p.add_argument("--batch-size", type=_positive, default=256, metavar="N",
                   help="texts per model call (default %(default)s)")
    p.add_argument("--page-size", type=_positive, default=None, metavar="N",
                   help="hits per page of the walk (default: the batch size)")
    p.add_argument("--keep-alive", default=KEEP_ALIVE, metavar="TIME",
                   help="how long the engine keeps the walk open between pages (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds per request to the engine (default %(default)s)")
    p.add_argument("--upstream-ca-file", metavar="PATH", help="CA bundle to verify the engine's certificate")
    p.add_argument("--upstream-insecure", action="store_true", help="do not verify the engine's certificate")
    return p


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {number}")
    return number


def _build_ranker(args: argparse.Namespace) -> Any:
    from .rankers.registry import (RankerUnavailable, default_ranker_missing, load_ranker_class,
                                   parse_ranker_options, ranker_parameters, resolve_ranker,
                                   store_options)

    name = args.ranker
    if name == "none":
        raise EmbedError("--ranker none keeps no embeddings; name the bi-encoder the proxy uses")
    if name == "default":
        missing = default_ranker_missing()
        if missing is not None:
            raise EmbedError(f"the default neural ranker needs {missing} (pip install 'selproxy[neural]')")
    try:
        options = parse_ranker_options(args.ranker_option)
        load_ranker_class(name)  # an unknown name or class is one line here
    except (ValueError, ImportError, AttributeError) as exc:
        raise EmbedError(str(exc)) from None
    params = ranker_parameters(name)
    if "embedding_store" not in params:
        raise EmbedError(f"ranker {name!r} keeps no document embeddings; selproxy embed needs a bi-encoder "
                         f"(default, minilm, bi-encoder)")
    # The proxy's own store for this ranker, built as the proxy builds it.
    store = store_options(params, options.get("embedding_store", args.embedding_store), args.upstream,
                          args.upstream_ca_file, not args.upstream_insecure)
    for key, value in store.items():
        options.setdefault(key, value)
    if "background_queue" in params:
        options.setdefault("background_queue", 0)  # this run embeds everything itself
    if args.model_dir:
        options["model_dir"] = args.model_dir
    options["batching"] = False  # one caller: the micro-batcher has nothing to share
    try:
        ranker = resolve_ranker(name, options)
    except (RankerUnavailable, ValueError, TypeError, OSError) as exc:
        raise EmbedError(f"cannot build the ranker {name!r}: {exc}") from None
    encoder = getattr(ranker, "encoder", None)
    if not callable(getattr(encoder, "embed", None)):
        raise EmbedError(f"ranker {name!r} has no encoder to embed documents with")
    if getattr(ranker, "store", None) is None:
        raise EmbedError("--embedding-store :memory: keeps nothing; name a file, 'default' or 'engine'")
    return ranker


def _store_line(store: Any) -> str:
    stats = store.stats()
    if stats.get("backend") == "engine":
        return f"index {stats.get('index')} of the engine"
    path = str(stats.get("path", ""))
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.path.getsize(path + suffix)
        except OSError:
            pass
    entries = len(store) if hasattr(store, "__len__") else stats.get("entries")
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    return f"{path} ({entries} vectors, {shown})"


def print_totals(totals: Totals, walk: IndexWalk, store: Any, stream: Any) -> None:
    rate = totals.seen / totals.seconds if totals.seconds > 0 else 0.0
    encode_rate = totals.embedded / totals.encode_seconds if totals.encode_seconds > 0 else 0.0
    lines = [
        ("index", f"{walk.index} at {walk.http.display} (walked with {walk.mode or 'nothing'})"),
        ("documents seen", str(totals.seen)),
        ("embedded", str(totals.embedded)),
        ("skipped (already stored)", str(totals.skipped)),
        ("without text", str(totals.empty)),
        ("seconds", f"{totals.seconds:.2f}"),
        ("docs/s", f"{rate:.1f}"),
        ("model seconds", f"{totals.encode_seconds:.2f}"),
        ("model docs/s", f"{encode_rate:.1f}"),
        ("store", _store_line(store)),
    ]
    if totals.interrupted:
        lines.insert(0, ("interrupted", "yes: run again to embed the rest"))
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        stream.write(f"{key + ':':<{width}} {value}\n")
    stream.flush()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except EngineCallError as exc:  # an EmbedError too
        sys.stderr.write(f"selproxy: error: {exc}\n")
        return 1
    except Exception as exc:
        # The store's file or engine (the walk's own client raises EngineCallError).
        if not isinstance(exc, (OSError, sqlite3.Error, http.client.HTTPException)):
            raise
        sys.stderr.write(f"selproxy: error: the embedding store failed: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("selproxy embed: interrupted\n")
        return 130


def _run(args: argparse.Namespace) -> int:
    from .search.extract import parse_field_spec

    try:
        specs = [parse_field_spec(s, args.max_field_chars) for s in args.text_field]
    except ValueError as exc:
        raise EmbedError(f"--text-field: {exc}") from None
    source, fields = source_request(specs)
    http = EngineHTTP(args.upstream, timeout=args.timeout, ca_file=args.upstream_ca_file,
                      verify=not args.upstream_insecure)
    walk = IndexWalk(http, args.index, page_size=args.page_size or args.batch_size, source=source,
                     fields=fields, keep_alive=args.keep_alive)
    totals = Totals()
    ranker = None
    try:
        total = walk.count()  # an unknown index or an unreachable engine: before the model loads
        ranker = _build_ranker(args)
        store = ranker.store
        max_entries = getattr(store, "max_entries", None)
        if isinstance(max_entries, int) and total is not None and total > max_entries:
            sys.stderr.write(f"selproxy embed: warning: {total} documents but the store keeps "
                             f"{max_entries} (store_max_entries): the oldest will be evicted\n")
        progress = Progress(total)
        with _Interrupt() as interrupt:
            try:
                walk.open()
                totals = embed_index(walk, ranker.encoder.embed, store, specs=specs,
                                     max_chars=args.max_field_chars, batch_size=args.batch_size,
                                     progress=progress, stop=lambda: interrupt.requested)
            finally:
                progress.close()
                walk.close()
        print_totals(totals, walk, store, sys.stdout)
    finally:
        walk.close()
        http.close()
        if ranker is not None:
            close = getattr(ranker, "close", None)
            if callable(close):
                close()
    return 130 if totals.interrupted else 0
