"""Find the text to rank with: the query text of a search, and the text of each hit.

Everything here is sans-io: plain functions over decoded JSON.

Query text is found without configuration in every common query form:

* the ``q=`` URL parameter, whose Lucene syntax is reduced to words;
* ``match``, ``match_phrase``, ``match_phrase_prefix``, ``match_bool_prefix``,
  ``multi_match``, ``query_string``, ``simple_query_string``, ``combined_fields``;
* ``bool`` at any depth, from ``must`` and ``should`` only: ``filter`` and
  ``must_not`` say which documents may match, not what the user is looking for;
* the wrappers ``dis_max``, ``constant_score``, ``function_score``,
  ``script_score``, ``boosting`` (its ``positive`` side) and ``nested``.

A route may instead name an explicit dotted path into the body
(``query_path="params.text"``) for bodies no rule understands.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = (
    "lucene_text", "query_text", "value_at", "FieldSpec", "parse_field_spec",
    "document_text", "source_strings",
)

# Query types whose clause is ``{field: text}`` or ``{field: {"query": text}}``.
_FIELD_TEXT_QUERIES = frozenset((
    "match", "match_phrase", "match_phrase_prefix", "match_bool_prefix",
))
# Query types whose clause carries ``query`` directly, as plain text.
_PLAIN_TEXT_QUERIES = frozenset(("multi_match", "combined_fields"))
# Query types whose ``query`` uses an operator syntax that must be reduced.
_SYNTAX_QUERIES = frozenset(("query_string", "simple_query_string"))
# Wrappers, with the keys under which the scoring sub-queries live.
_WRAPPERS: Mapping[str, Tuple[str, ...]] = {
    "bool": ("must", "should"),
    "dis_max": ("queries",),
    "constant_score": ("filter",),
    "function_score": ("query",),
    "script_score": ("query",),
    "boosting": ("positive",),
    "nested": ("query",),
}

_LUCENE_TOKEN = re.compile(r"""
      (?P<ws>\s+)
    | (?P<range>[\[{][^\]}]*[\]}])
    | (?P<regex>/(?:\\.|[^/\\])*/)
    | (?P<phrase>"(?:\\.|[^"\\])*"(?:~\d+(?:\.\d+)?)?(?:\^\d+(?:\.\d+)?)?)
    | (?P<open>\()
    | (?P<close>\)(?:\^\d+(?:\.\d+)?)?)
    | (?P<op>&&|\|\||[+\-!|])
    | (?P<field>(?:\\.|[^\s:()"\\\[\]{}])+):(?!//)
    | (?P<word>(?:\\.|[^\s()"])+)
""", re.VERBOSE)
_BOOLEAN_WORDS = frozenset(("AND", "OR", "NOT", "TO"))
_WORD_SUFFIX = re.compile(r"(?:[~^][\d.]*)+$")
_ESCAPE = re.compile(r"\\(.)")
_WILDCARD = re.compile(r"[*?]")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def lucene_text(q: str) -> str:
    """Reduce a Lucene or simple-query-string expression to its searched words.

    Field prefixes, boolean operators, boosts, fuzziness, wildcards, ranges and
    regular expressions are dropped; so is every negated clause (``-x``,
    ``!x``, ``NOT x``), including a negated group.  Phrases keep their words.
    """
    tokens = [(m.lastgroup, m.group()) for m in _LUCENE_TOKEN.finditer(q)]
    words: List[str] = []
    negated = False
    depth_dropped = 0  # > 0 while inside a negated group
    depth = 0
    for kind, text in tokens:
        if kind == "ws" or kind == "field":
            continue
        if kind == "open":
            depth += 1
            if negated and not depth_dropped:
                depth_dropped = depth
            negated = False
            continue
        if kind == "close":
            if depth_dropped == depth:
                depth_dropped = 0
            depth = max(depth - 1, 0)
            negated = False
            continue
        if kind == "op":
            if text in ("-", "!"):
                negated = True
            continue
        if kind == "word" and text in _BOOLEAN_WORDS:
            if text == "NOT":
                negated = True
            continue
        keep = not negated and not depth_dropped
        negated = False
        if not keep or kind in ("range", "regex"):
            continue
        if kind == "phrase":
            body = text[1:text.rindex('"')]
            words.append(_ESCAPE.sub(r"\1", body))
        else:
            word = _WILDCARD.sub("", _ESCAPE.sub(r"\1", _WORD_SUFFIX.sub("", text)))
            if word:
                words.append(word)
    return " ".join(w for w in words if w.strip())


def _clause_text(clause: Any) -> Optional[str]:
    """The text of ``{field: text}`` or ``{field: {"query": text}}``."""
    if not isinstance(clause, Mapping):
        return None
    for value in clause.values():
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            query = value.get("query")
            if isinstance(query, str):
                return query
    return None


def _query_texts(query: Any, depth: int = 0) -> Iterator[str]:
    # Bound the recursion: a body nested deeper than this is not a real query.
    if depth > 64:
        return
    if isinstance(query, list):
        for item in query:
            yield from _query_texts(item, depth + 1)
        return
    if not isinstance(query, Mapping):
        return
    for qtype, clause in query.items():
        if qtype in _FIELD_TEXT_QUERIES:
            text = _clause_text(clause)
            if text:
                yield text
        elif qtype in _PLAIN_TEXT_QUERIES:
            if isinstance(clause, Mapping) and isinstance(clause.get("query"), str):
                yield clause["query"]
        elif qtype in _SYNTAX_QUERIES:
            if isinstance(clause, Mapping) and isinstance(clause.get("query"), str):
                yield lucene_text(clause["query"])
        elif qtype in _WRAPPERS and isinstance(clause, Mapping):
            for key in _WRAPPERS[qtype]:
                if key in clause:
                    yield from _query_texts(clause[key], depth + 1)


def value_at(doc: Any, path: str) -> Any:
    """The value at a dotted ``path`` in nested objects (list items by number), or None."""
    node = doc
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def query_text(body: Optional[Mapping[str, Any]], q_param: Optional[str] = None,
               query_path: Optional[str] = None) -> str:
    """The query text of one search, or "" when there is none.

    ``q_param`` is the ``q=`` URL parameter, which Elasticsearch prefers over a
    body query.  ``query_path`` is a route's explicit dotted path into the body.
    """
    if query_path:
        value = value_at(body, query_path) if body is not None else None
        return value.strip() if isinstance(value, str) else ""
    if q_param is not None:
        return lucene_text(q_param)
    if not body or "query" not in body:
        return ""
    seen: List[str] = []
    for text in _query_texts(body["query"]):
        text = text.strip()
        # A bool ``should`` often asks for the same words in several fields.
        if text and text not in seen:
            seen.append(text)
    return " ".join(seen)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of a hit's text.

    ``where`` is ``"_source"`` (dotted path into the source), ``"fields"``
    (the hit's ``fields`` section) or ``"highlight"`` (its fragments, tags
    removed).  ``max_chars`` truncates the field's text; 0 means no limit.
    """

    name: str
    where: str = "_source"
    max_chars: int = 0


def parse_field_spec(spec: str, default_max_chars: int = 0) -> FieldSpec:
    """Parse ``[highlight.|fields.|_source.]name[:max_chars]``."""
    name, _, limit = spec.partition(":")
    where = "_source"
    for prefix in ("highlight.", "fields.", "_source."):
        if name.startswith(prefix):
            where, name = prefix[:-1], name[len(prefix):]
            break
    if not name:
        raise ValueError(f"empty field name in {spec!r}")
    return FieldSpec(name, where, int(limit) if limit else default_max_chars)


def source_strings(node: Any, out: List[str], depth: int = 0) -> None:
    """Append every string value under ``node`` to ``out``, in document order."""
    # PERF: decoded JSON only holds dict/list/str/number, so exact type tests
    # replace isinstance() against typing ABCs, which cost ~5x more per call.
    kind = type(node)
    if kind is str:
        out.append(node)
    elif depth < 64:
        if kind is dict:
            node = node.values()
        elif kind is not list:
            return
        for value in node:
            value_kind = type(value)
            if value_kind is str:
                out.append(value)
            elif value_kind is dict or value_kind is list:
                source_strings(value, out, depth + 1)


def _truncate(text: str, max_chars: int) -> str:
    return text[:max_chars] if max_chars and len(text) > max_chars else text


def document_text(hit: Mapping[str, Any], fields: Optional[Sequence[FieldSpec]] = None,
                  max_chars: int = 0, source_key: str = "_source") -> str:
    """The text of one hit, for the ranker.

    With no ``fields``: every string value of the source, in document order,
    each truncated to ``max_chars``.  With ``fields``: those fields in the given
    order, each truncated to its own limit.  ``source_key`` names the source
    object (``None``-like ``""`` means the hit itself is the document, as in Solr).
    """
    source = hit.get(source_key) if source_key else hit
    parts: List[str] = []
    if not fields:
        strings: List[str] = []
        source_strings(source, strings)
        if max_chars:
            strings = [s[:max_chars] for s in strings]
        return "\n".join(filter(None, strings))
    for spec in fields:
        if spec.where == "_source":
            value = value_at(source, spec.name)
        else:
            value = (hit.get(spec.where) or {}).get(spec.name)
        strings = []
        source_strings(value, strings)
        if spec.where == "highlight":
            strings = [_TAG.sub("", s) for s in strings]
        text = " ".join(strings)
        if text:
            parts.append(_truncate(text, spec.max_chars))
    return "\n".join(parts)
