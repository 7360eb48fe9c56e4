"""Read TREC-style evaluation inputs: topics, qrels and document collections.

Accepted forms, chosen by content rather than by file name:

* topics: TREC SGML/XML (``<top><num>…<title>…</top>``, closing tags optional,
  with or without a root element, as in Cranfield's ``cran.qry.xml`` and the
  classic ad hoc tracks), JSON lines (BEIR: ``_id`` and ``text``), or
  ``id<TAB>text`` lines (MS MARCO);
* qrels: ``query-id iteration doc-id relevance`` lines (trec_eval), or three
  columns ``query-id doc-id relevance`` (BEIR's TSV, header skipped);
* collections: JSON lines (``_id``, ``id``, ``docid`` or ``doc_id`` plus the
  source fields) or TREC SGML/XML ``<doc><docno>…</docno>…</doc>`` records.

Files ending in ``.gz`` are decompressed on the fly.
"""
from __future__ import annotations

import gzip
import html
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO

__all__ = (
    "Topic",
    "Qrels",
    "read_topics",
    "read_qrels",
    "read_collection",
    "number_like_qrels",
    "TrecFormatError",
)

# query id -> doc id -> graded relevance
Qrels = Dict[str, Dict[str, int]]

_TOP = re.compile(r"<top>(.*?)</top>", re.I | re.S)
_DOC = re.compile(r"<doc>(.*?)</doc>", re.I | re.S)
# A field runs from its tag to its closing tag or, in the SGML form whose tags
# are never closed, to the next opening tag.
_FIELD = re.compile(r"<([a-z][\w-]*)>(.*?)(?=</\1>|<[a-z][\w-]*>|\Z)", re.I | re.S)
# Labels that the classic TREC topic files put at the start of a field.
_LABEL = re.compile(r"^\s*(?:number|topic|description|narrative)\s*:\s*", re.I)
_ID_KEYS = ("_id", "id", "docid", "doc_id", "query_id", "qid")
_TEXT_KEYS = ("text", "query", "title")


class TrecFormatError(ValueError):
    """An input file is in none of the accepted forms, or a record lacks its id."""


@dataclass(frozen=True)
class Topic:
    """One judged query: its id as the qrels spell it, and its text."""

    id: str
    text: str


def _open(path: str) -> TextIO:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    # newline=None folds CRLF (Cranfield's qrels use it) into "\n".
    return open(path, encoding="utf-8", newline=None)


def _clean(text: str) -> str:
    return " ".join(html.unescape(text).split())


def _fields(record: str) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    for match in _FIELD.finditer(record):
        name = match.group(1).lower()
        value = _clean(_LABEL.sub("", match.group(2)))
        if name in fields:
            fields[name] = f"{fields[name]} {value}".strip()
        else:
            fields[name] = value
    return fields


def read_topics(path: str, *, field: str = "title", ids: str = "num") -> List[Topic]:
    """Read the topics in ``path``, in file order.

    ``field`` names the SGML field to use as query text (``title``, ``desc``…).
    ``ids="ordinal"`` numbers topics 1, 2, 3… in file order instead of using
    their ``<num>``: Cranfield's qrels count queries that way, while its
    topic numbers have gaps (1, 2, 4, 8…).
    """
    if ids not in ("num", "ordinal"):
        raise ValueError(f"ids must be 'num' or 'ordinal', not {ids!r}")
    with _open(path) as stream:
        content = stream.read()
    topics: List[Topic] = []
    if _TOP.search(content):
        for match in _TOP.finditer(content):
            fields = _fields(match.group(1))
            if "num" not in fields and ids == "num":
                raise TrecFormatError(f"{path}: a <top> without <num>")
            topics.append(Topic(fields.get("num", ""), fields.get(field, "")))
    elif content.lstrip().startswith("{"):
        for line in content.splitlines():
            if line.strip():
                record = json.loads(line)
                topics.append(Topic(str(_first(record, _ID_KEYS, path)), str(_first(record, _TEXT_KEYS, path))))
    else:
        for line in content.splitlines():
            if not line.strip():
                continue
            topic_id, sep, text = line.partition("\t")
            if not sep:
                raise TrecFormatError(f"{path}: expected <top> records, JSON lines or id<TAB>text lines")
            topics.append(Topic(topic_id.strip(), _clean(text)))
    if ids == "ordinal":
        topics = [Topic(str(number), topic.text) for number, topic in enumerate(topics, start=1)]
    return topics


def number_like_qrels(topics: Sequence[Topic], qrels: Qrels) -> List[Topic]:
    """Topics with the ids the qrels use: their own when every one of them is
    judged, else their positions 1, 2, 3… when those are exactly the judged ids
    (Cranfield), else their own."""
    own = {topic.id for topic in topics}
    ordinals = {str(number) for number in range(1, len(topics) + 1)}
    if own <= qrels.keys() or ordinals != qrels.keys():
        return list(topics)
    return [Topic(str(number), topic.text) for number, topic in enumerate(topics, start=1)]


def read_qrels(path: str) -> Qrels:
    """Read relevance judgements; a later line for the same pair wins."""
    qrels: Qrels = {}
    with _open(path) as stream:
        for line_number, line in enumerate(stream, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 4:
                query_id, _, doc_id, relevance = parts
            elif len(parts) == 3:
                query_id, doc_id, relevance = parts
            else:
                raise TrecFormatError(f"{path}:{line_number}: expected 3 or 4 columns, got {len(parts)}")
            try:
                grade = int(relevance)
            except ValueError:
                if line_number == 1:
                    continue  # a header such as BEIR's "query-id corpus-id score"
                raise TrecFormatError(f"{path}:{line_number}: relevance {relevance!r} is not an integer") from None
            qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def _first(record: Dict[str, Any], keys: Sequence[str], path: str) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    raise TrecFormatError(f"{path}: a record has none of the keys {', '.join(keys)}")


def read_collection(
    path: str, *, fields: Optional[Sequence[str]] = None, format: str = "auto"
) -> Iterator[Dict[str, Any]]:
    """Yield documents as ``{"_id": id, <field>: value, …}``, streaming the file.

    ``fields`` keeps only those source fields, in that order (the proxy reads a
    document's text from its source in order).  By default JSON lines keep every
    field and TREC records keep ``title`` and ``text``: Cranfield's ``author``
    and ``bib`` would only add noise to what a ranker reads.
    ``format`` is ``auto``, ``jsonl`` or ``trec``.
    """
    if format not in ("auto", "jsonl", "trec"):
        raise ValueError(f"format must be auto, jsonl or trec, not {format!r}")
    stream = _open(path)
    try:
        if format == "auto":
            format = "jsonl" if stream.read(4096).lstrip().startswith("{") else "trec"
            stream.close()
            stream = _open(path)
        if format == "jsonl":
            yield from _read_jsonl(stream, path, fields)
        else:
            yield from _read_trec_docs(stream, path, tuple(fields) if fields else ("title", "text"))
    finally:
        stream.close()


def _read_jsonl(stream: TextIO, path: str, fields: Optional[Sequence[str]]) -> Iterator[Dict[str, Any]]:
    for line in stream:
        if not line.strip():
            continue
        record = json.loads(line)
        doc_id = str(_first(record, _ID_KEYS[:4], path))
        if fields:
            source = {name: record[name] for name in fields if name in record}
        else:
            source = {name: value for name, value in record.items() if name not in _ID_KEYS[:4]}
        yield {"_id": doc_id, **source}


def _read_trec_docs(stream: TextIO, path: str, fields: Sequence[str]) -> Iterator[Dict[str, Any]]:
    # Scan in chunks: collections can be far larger than memory would like.
    pending = ""
    while True:
        chunk = stream.read(1 << 20)
        pending += chunk
        end = 0
        for match in _DOC.finditer(pending):
            yield _trec_doc(match.group(1), path, fields)
            end = match.end()
        pending = pending[end:]
        if not chunk:
            break
    if "<doc>" in pending.lower():
        raise TrecFormatError(f"{path}: a <doc> record is not closed")


def _trec_doc(record: str, path: str, fields: Sequence[str]) -> Dict[str, Any]:
    parsed = _fields(record)
    doc_id = parsed.get("docno")
    if not doc_id:
        raise TrecFormatError(f"{path}: a <doc> without <docno>")
    return {"_id": doc_id, **{name: parsed[name] for name in fields if name in parsed}}
