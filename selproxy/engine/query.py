"""The query DSL, compiled to SQL over one index.

Every query compiles to one SQL ``SELECT rid, score`` with each matching
document once.  Composite queries nest those selects, so ``bool`` works to any
depth.

Scoring (``NOTE(engine):`` the one place where this engine's scores are made):

- A term in a ``text`` field scores Lucene's BM25 (k1=1.2, b=0.75): FTS5's
  ``bm25()`` supplies the term-frequency and length part from its own per-field
  statistics (each text field has its own FTS5 table), and its idf, which is the
  classic ``ln((N-n+0.5)/(n+0.5))`` floored at 1e-6, is swapped for Lucene's
  ``ln(1+(N-n+0.5)/(n+0.5))``: FTS5's score for the term is multiplied by
  ``idf_lucene / (idf_fts5 * (k1+1))``, computed from N and n read from the same
  table.  So a single-field term score equals Elasticsearch's, up to Lucene's
  lossy one-byte encoding of document lengths.
- ``match`` sums its terms (a ``bool`` ``should`` of term queries, as in
  Elasticsearch); ``match_phrase`` scores the phrase as one term whose document
  frequency is that of the phrase.
- ``multi_match`` ``best_fields`` (and query_string over several fields) takes
  the best field's score plus ``tie_breaker`` times the others'; ``most_fields``
  sums them.
- ``bool`` sums ``must`` and ``should`` scores; ``filter`` and ``must_not``
  add nothing.
- ``term``, ``terms``, ``range``, ``ids``, ``exists``, ``match_all`` and prefix
  terms score a constant ``boost`` (1.0 by default).
"""
from __future__ import annotations

import fnmatch
import math
import sqlite3
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .analysis import K1, fts5_idf, fts_phrase, fts_prefix, lucene_idf, parse_date, tokens
from .errors import EngineError, ParsingError, UnsupportedFeature
from .mapping import Field
from .querystring import FieldsTerm, parse_query_string
from .store import IndexMeta

__all__ = ("Sql", "Compiler", "SUPPORTED_QUERIES")


@dataclass
class Sql:
    text: str
    params: List[Any] = dc_field(default_factory=list)


NOTHING = "SELECT NULL AS rid, 0.0 AS score WHERE 0"

SUPPORTED_QUERIES = ("match_all", "match_none", "match", "match_phrase", "multi_match", "query_string",
                     "simple_query_string", "term", "terms", "range", "ids", "exists", "bool",
                     "constant_score", "dis_max")
# Elasticsearch queries this engine knows by name but does not implement.
_KNOWN_UNSUPPORTED = {
    "fuzzy", "prefix", "wildcard", "regexp", "match_bool_prefix", "match_phrase_prefix", "combined_fields",
    "nested", "has_child", "has_parent", "parent_id", "geo_bounding_box", "geo_distance", "geo_polygon",
    "geo_shape", "shape", "more_like_this", "script", "script_score", "function_score", "boosting",
    "percolate", "rank_feature", "distance_feature", "pinned", "wrapper", "knn", "sparse_vector",
    "text_expansion", "semantic", "intervals", "span_term", "span_near", "span_or", "span_not",
    "span_first", "span_multi", "span_containing", "span_within", "field_masking_span", "terms_set",
    "rule", "type",
}


def _single(q: Any, name: str) -> Tuple[str, Any]:
    """The single ``{field: spec}`` pair of a field-level query."""
    if not isinstance(q, dict) or not q:
        raise ParsingError(f"[{name}] query malformed, no start_object after query name")
    items = [(k, v) for k, v in q.items() if k not in ("boost", "_name")] if name in (
        "term", "terms", "range") else list(q.items())
    if len(items) != 1:
        raise ParsingError(f"[{name}] query doesn't support multiple fields, found [{items[0][0]}] "
                           f"and [{items[1][0]}]" if len(items) > 1 else f"[{name}] query malformed")
    return items[0]


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def minimum_should_match(spec: Any, optional: int) -> int:
    """How many of ``optional`` clauses must match, from an int or a percentage."""
    if spec is None:
        return 0
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            value = int(float(text[:-1]) * optional / 100.0)
        else:
            value = int(text)
    except ValueError:
        raise UnsupportedFeature(f"minimum_should_match [{spec}] is not supported by selproxy.engine; "
                                 "use an integer or a percentage") from None
    if value < 0:
        value = optional + value
    return max(0, min(optional, value))


class Compiler:
    """Compiles queries for one index, reading term statistics on ``conn``."""

    def __init__(self, conn: sqlite3.Connection, meta: IndexMeta) -> None:
        self.conn = conn
        self.meta = meta
        self._rows: Dict[str, int] = {}

    # -- entry ---------------------------------------------------------------------------------

    def compile(self, query: Any, scoring: bool = True) -> Sql:
        if isinstance(query, FieldsTerm):
            return self._fields_term(query, scoring)
        if not isinstance(query, dict):
            raise ParsingError("query malformed, must start with start_object")
        if len(query) != 1:
            if not query:
                raise ParsingError("query malformed, empty clause found")
            names = list(query)
            raise ParsingError(f"[{names[0]}] malformed query, expected [END_OBJECT] but found [FIELD_NAME]")
        name, body = next(iter(query.items()))
        method = getattr(self, "_q_" + name, None)
        if method is None or name not in SUPPORTED_QUERIES:
            if name in _KNOWN_UNSUPPORTED:
                raise UnsupportedFeature(f"query [{name}] is not supported by selproxy.engine; supported "
                                         f"queries: {', '.join(SUPPORTED_QUERIES)}")
            raise ParsingError(f"unknown query [{name}]")
        compiled: Sql = method(body, scoring)
        return compiled

    # -- statistics ----------------------------------------------------------------------------

    def _doc_count(self, table: str) -> int:
        if table not in self._rows:
            # FTS5 keeps one %_docsize row per document.
            self._rows[table] = self.conn.execute(f"SELECT count(*) FROM {table}_docsize").fetchone()[0]
        return self._rows[table]

    def _doc_freq(self, table: str, expr: str) -> int:
        freq: int = self.conn.execute(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (expr,)).fetchone()[0]
        return freq

    def _bm25_term(self, table: str, expr: str, boost: float, scoring: bool) -> Optional[Sql]:
        """One FTS5 match expression, scored as one BM25 term, or None if nothing matches."""
        if not scoring:
            return Sql(f"SELECT rowid AS rid, 0.0 AS score FROM {table} WHERE {table} MATCH ?", [expr])
        n_docs = self._doc_count(table)
        freq = self._doc_freq(table, expr)
        if freq == 0:
            return None
        scale = boost * lucene_idf(n_docs, freq) / (fts5_idf(n_docs, freq) * (K1 + 1.0))
        # LIMIT -1 keeps SQLite from flattening this select into an outer aggregate
        # or join, where FTS5 refuses to evaluate bm25().
        return Sql(f"SELECT rowid AS rid, -bm25({table}) * ? AS score FROM {table} WHERE {table} MATCH ? LIMIT -1",
                   [scale, expr])

    # -- combinators ---------------------------------------------------------------------------

    @staticmethod
    def _sum(parts: List[Sql], need: int = 0) -> Sql:
        """Documents matching at least ``need`` parts, scored by the sum."""
        if not parts or need > len(parts):
            return Sql(NOTHING)
        if len(parts) == 1:
            return parts[0]
        union = " UNION ALL ".join(f"SELECT rid, score FROM ({p.text})" for p in parts)
        having = f" HAVING count(*) >= {int(need)}" if need > 1 else ""
        return Sql(f"SELECT rid, sum(score) AS score FROM ({union}) GROUP BY rid{having}",
                   [x for p in parts for x in p.params])

    @staticmethod
    def _dis_max(parts: List[Sql], tie_breaker: float) -> Sql:
        if not parts:
            return Sql(NOTHING)
        if len(parts) == 1:
            return parts[0]
        union = " UNION ALL ".join(f"SELECT rid, score FROM ({p.text})" for p in parts)
        return Sql(f"SELECT rid, max(score) + ? * (sum(score) - max(score)) AS score FROM ({union}) GROUP BY rid",
                   [float(tie_breaker)] + [x for p in parts for x in p.params])

    @staticmethod
    def _boosted(sql: Sql, boost: float) -> Sql:
        if boost == 1.0:
            return sql
        return Sql(f"SELECT rid, score * ? AS score FROM ({sql.text})", [float(boost)] + sql.params)

    def _constant(self, sql: Sql, boost: float) -> Sql:
        return Sql(f"SELECT rid, ? AS score FROM ({sql.text})", [float(boost)] + sql.params)

    def _all(self, boost: float) -> Sql:
        return Sql(f"SELECT rid, ? AS score FROM {self.meta.docs}", [float(boost)])

    # -- field-level building blocks -----------------------------------------------------------

    def _field(self, name: str) -> Optional[Field]:
        return self.meta.fields.get(name)

    def _text_match(self, fld: Field, text: str, operator: str, msm: Any, boost: float, scoring: bool) -> Sql:
        words = tokens(text)
        if not words:
            return Sql(NOTHING)
        table = self.meta.fts_table(fld.name)
        parts: List[Sql] = []
        for word in words:
            part = self._bm25_term(table, fts_phrase([word]), boost, scoring)
            if part is not None:
                parts.append(part)
        if operator.lower() == "and":
            need = len(words)
        else:
            need = max(1, minimum_should_match(msm, len(words)))
        return self._sum(parts, need)

    def _exact(self, fld: Field, values: List[Any], boost: float) -> Sql:
        """Documents whose keyword, boolean, number or date field holds one of ``values``."""
        keys: List[Any]
        if fld.kind == "keyword":
            if fld.type == "boolean":
                keys = ["true" if v in (True, "true") else "false" for v in values]
            else:
                keys = [v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
                        for v in values]
            table = self.meta.keywords
        elif fld.kind in ("number", "date"):
            keys = []
            for value in values:
                try:
                    keys.append(parse_date(value) if fld.kind == "date" else _number(value))
                except Exception:
                    raise ParsingError(f"failed to parse date field [{value}] for [{fld.name}]") from None
                if keys[-1] is None:
                    raise ParsingError(f"[{fld.name}] of type [{fld.type}] cannot parse [{value}] as a number")
            table = self.meta.numbers
        else:
            return Sql(NOTHING)
        if not keys:
            return Sql(NOTHING)
        marks = ",".join("?" * len(keys))
        return Sql(f"SELECT DISTINCT rid, ? AS score FROM {table} WHERE field = ? AND value IN ({marks})",
                   [float(boost), fld.name] + keys)

    def _field_match(self, name: str, text: Any, operator: str, msm: Any, boost: float, scoring: bool,
                     phrase: bool = False, lenient: bool = True) -> Sql:
        if name == "_id":
            return self._q_ids({"values": [str(text)], "boost": boost}, scoring)
        fld = self._field(name)
        if fld is None:
            return Sql(NOTHING)
        if fld.kind == "text":
            if phrase:
                words = tokens(str(text))
                if not words:
                    return Sql(NOTHING)
                part = self._bm25_term(self.meta.fts_table(fld.name), fts_phrase(words), boost, scoring)
                return part or Sql(NOTHING)
            return self._text_match(fld, str(text), operator, msm, boost, scoring)
        if fld.kind == "none":
            return Sql(NOTHING)
        try:
            return self._exact(fld, [text], boost)
        except EngineError:
            if lenient:
                return Sql(NOTHING)
            raise

    def _prefix(self, name: str, prefix: str, boost: float) -> Sql:
        fld = self._field(name)
        if fld is None:
            return Sql(NOTHING)
        if fld.kind == "text":
            words = tokens(prefix)
            if len(words) != 1:
                return Sql(NOTHING)
            table = self.meta.fts_table(fld.name)
            return Sql(f"SELECT rowid AS rid, ? AS score FROM {table} WHERE {table} MATCH ?",
                       [float(boost), fts_prefix(words[0])])
        if fld.kind == "keyword":
            return Sql(f"SELECT DISTINCT rid, ? AS score FROM {self.meta.keywords} "
                       "WHERE field = ? AND substr(value, 1, ?) = ?",
                       [float(boost), fld.name, len(prefix), prefix])
        return Sql(NOTHING)

    def expand_fields(self, patterns: List[str]) -> List[Tuple[str, float]]:
        """Field names (with boosts) that ``title^2``-style patterns name."""
        out: Dict[str, float] = {}
        for pattern in patterns:
            name, _, boost_text = pattern.partition("^")
            boost = float(boost_text) if boost_text else 1.0
            if name in ("*", "_all"):
                for fname, fld in self.meta.fields.items():
                    if fld.kind == "text":
                        out.setdefault(fname, boost)
            elif "*" in name:
                for fname, fld in self.meta.fields.items():
                    if fnmatch.fnmatchcase(fname, name) and fld.kind != "none":
                        out.setdefault(fname, boost)
            else:
                out[name] = boost
        return list(out.items())

    def default_fields(self) -> List[str]:
        configured = (self.meta.settings.get("index", {}) or {}).get("query", {}) \
            if isinstance(self.meta.settings.get("index"), dict) else {}
        default = configured.get("default_field") if isinstance(configured, dict) else None
        if default is None:
            default = self.meta.settings.get("index.query.default_field", "*")
        return default if isinstance(default, list) else [default]

    # -- the queries ---------------------------------------------------------------------------

    def _q_match_all(self, body: Any, scoring: bool) -> Sql:
        return self._all(float((body or {}).get("boost", 1.0)))

    def _q_match_none(self, body: Any, scoring: bool) -> Sql:
        return Sql(NOTHING)

    def _q_match(self, body: Any, scoring: bool) -> Sql:
        name, spec = _single(body, "match")
        if not isinstance(spec, dict):
            spec = {"query": spec}
        unknown = set(spec) - {"query", "operator", "minimum_should_match", "boost", "analyzer", "lenient",
                               "zero_terms_query", "auto_generate_synonyms_phrase_query", "_name",
                               "fuzzy_transpositions", "max_expansions", "prefix_length"}
        if "fuzziness" in spec:
            raise UnsupportedFeature("[match] fuzziness is not supported by selproxy.engine")
        if unknown:
            raise ParsingError(f"[match] query does not support [{sorted(unknown)[0]}]")
        if "query" not in spec:
            raise ParsingError("No text specified for text query")
        zero = spec.get("zero_terms_query", "none")
        if zero == "all" and isinstance(spec["query"], str) and not tokens(spec["query"]):
            return self._all(float(spec.get("boost", 1.0)))
        return self._field_match(name, spec["query"], spec.get("operator", "or"), spec.get("minimum_should_match"),
                                 float(spec.get("boost", 1.0)), scoring, lenient=bool(spec.get("lenient", False)))

    def _q_match_phrase(self, body: Any, scoring: bool) -> Sql:
        name, spec = _single(body, "match_phrase")
        if not isinstance(spec, dict):
            spec = {"query": spec}
        unknown = set(spec) - {"query", "boost", "analyzer", "slop", "zero_terms_query", "_name"}
        if unknown:
            raise ParsingError(f"[match_phrase] query does not support [{sorted(unknown)[0]}]")
        if int(spec.get("slop", 0)) != 0:
            raise UnsupportedFeature("[match_phrase] slop is not supported by selproxy.engine (only exact phrases)")
        return self._field_match(name, spec.get("query", ""), "or", None, float(spec.get("boost", 1.0)),
                                 scoring, phrase=True)

    def _q_multi_match(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict) or "query" not in body:
            raise ParsingError("No text specified for multi_match query")
        unknown = set(body) - {"query", "fields", "type", "operator", "tie_breaker", "minimum_should_match",
                               "boost", "analyzer", "lenient", "zero_terms_query", "_name",
                               "auto_generate_synonyms_phrase_query", "slop"}
        if "fuzziness" in body:
            raise UnsupportedFeature("[multi_match] fuzziness is not supported by selproxy.engine")
        if unknown:
            raise ParsingError(f"[multi_match] query does not support [{sorted(unknown)[0]}]")
        kind = body.get("type", "best_fields")
        if kind not in ("best_fields", "most_fields", "phrase"):
            raise UnsupportedFeature(f"[multi_match] type [{kind}] is not supported by selproxy.engine; "
                                     "supported: best_fields, most_fields, phrase")
        fields = body.get("fields") or self.default_fields()
        if isinstance(fields, str):
            fields = [fields]
        parts = []
        for name, boost in self.expand_fields(fields):
            part = self._field_match(name, body["query"], body.get("operator", "or"),
                                     body.get("minimum_should_match"), boost, scoring, phrase=kind == "phrase")
            if part.text != NOTHING:
                parts.append(part)
        if kind == "most_fields":
            combined = self._sum(parts, 1)
        else:
            combined = self._dis_max(parts, float(body.get("tie_breaker", 0.0)))
        return self._boosted(combined, float(body.get("boost", 1.0)))

    def _q_dis_max(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
            raise ParsingError("[dis_max] requires 'queries' field with at least one clause")
        parts = [self.compile(q, scoring) for q in body["queries"]]
        return self._boosted(self._dis_max(parts, float(body.get("tie_breaker", 0.0))),
                             float(body.get("boost", 1.0)))

    def _q_query_string(self, body: Any, scoring: bool) -> Sql:
        return self._string_query(body, scoring, simple=False)

    def _q_simple_query_string(self, body: Any, scoring: bool) -> Sql:
        return self._string_query(body, scoring, simple=True)

    def _string_query(self, body: Any, scoring: bool, simple: bool) -> Sql:
        name = "simple_query_string" if simple else "query_string"
        if isinstance(body, str):
            body = {"query": body}
        if not isinstance(body, dict) or "query" not in body:
            raise ParsingError(f"[{name}] must be provided with a [query]")
        allowed = {"query", "fields", "default_field", "default_operator", "boost", "analyzer", "lenient",
                   "analyze_wildcard", "_name", "flags", "auto_generate_synonyms_phrase_query",
                   "minimum_should_match", "tie_breaker", "type", "quote_field_suffix", "allow_leading_wildcard"}
        unknown = set(body) - allowed
        if unknown:
            raise ParsingError(f"[{name}] unsupported field [{sorted(unknown)[0]}]")
        fields = body.get("fields") or ([body["default_field"]] if body.get("default_field") else None) \
            or self.default_fields()
        tree = parse_query_string(str(body["query"]), fields, body.get("default_operator", "or"), simple)
        return self._boosted(self.compile(tree, scoring), float(body.get("boost", 1.0)))

    def _fields_term(self, node: FieldsTerm, scoring: bool) -> Sql:
        """A bare term, prefix or phrase of a query string, over its fields."""
        parts = []
        for name, boost in self.expand_fields(node.fields):
            if node.prefix:
                part = self._prefix(name, node.text, boost * node.boost)
            else:
                part = self._field_match(name, node.text, node.operator, None, boost * node.boost, scoring,
                                         phrase=node.phrase)
            if part.text != NOTHING:
                parts.append(part)
        return self._dis_max(parts, 0.0)

    def _q_term(self, body: Any, scoring: bool) -> Sql:
        name, spec = _single(body, "term")
        if isinstance(spec, dict):
            if "value" not in spec:
                raise ParsingError("[term] query does not support [%s]" % (sorted(spec)[0] if spec else ""))
            value, boost = spec["value"], float(spec.get("boost", 1.0))
            insensitive = bool(spec.get("case_insensitive", False))
        else:
            value, boost, insensitive = spec, 1.0, False
        return self._terms(name, [value], boost, insensitive)

    def _q_terms(self, body: Any, scoring: bool) -> Sql:
        name, values = _single(body, "terms")
        boost = float(body.get("boost", 1.0)) if isinstance(body, dict) else 1.0
        if not isinstance(values, list):
            raise ParsingError("[terms] query does not support [%s]" % name)
        return self._terms(name, values, boost, False)

    def _terms(self, name: str, values: List[Any], boost: float, insensitive: bool) -> Sql:
        if name == "_id":
            return self._q_ids({"values": [str(v) for v in values], "boost": boost}, False)
        fld = self._field(name)
        if fld is None or not values:
            return Sql(NOTHING)
        if fld.kind == "text":
            # A term is not analysed; on a text field it matches the indexed token.
            table = self.meta.fts_table(fld.name)
            words = [str(v).lower() for v in values if tokens(str(v)) == [str(v).lower()]]
            if not words:
                return Sql(NOTHING)
            return Sql(f"SELECT rowid AS rid, ? AS score FROM {table} WHERE {table} MATCH ?",
                       [boost, " OR ".join(fts_phrase([w]) for w in words)])
        if insensitive and fld.kind == "keyword":
            marks = ",".join("?" * len(values))
            return Sql(f"SELECT DISTINCT rid, ? AS score FROM {self.meta.keywords} "
                       f"WHERE field = ? AND lower(value) IN ({marks})",
                       [boost, fld.name] + [str(v).lower() for v in values])
        return self._exact(fld, values, boost)

    def _q_range(self, body: Any, scoring: bool) -> Sql:
        name, spec = _single(body, "range")
        if not isinstance(spec, dict):
            raise ParsingError("[range] query malformed, no start_object after query name")
        unknown = set(spec) - {"gt", "gte", "lt", "lte", "from", "to", "include_lower", "include_upper",
                               "boost", "format", "time_zone", "relation", "_name"}
        if unknown:
            raise ParsingError(f"[range] query does not support [{sorted(unknown)[0]}]")
        bounds = {k: spec[k] for k in ("gt", "gte", "lt", "lte") if spec.get(k) is not None}
        if spec.get("from") is not None:
            bounds["gte" if spec.get("include_lower", True) else "gt"] = spec["from"]
        if spec.get("to") is not None:
            bounds["lte" if spec.get("include_upper", True) else "lt"] = spec["to"]
        boost = float(spec.get("boost", 1.0))
        fld = self._field(name)
        if fld is None:
            return Sql(NOTHING)
        if fld.kind in ("number", "date"):
            table = self.meta.numbers
            convert: Callable[[Any], Any] = parse_date if fld.kind == "date" else _number
        elif fld.kind == "keyword":
            table = self.meta.keywords
            convert = str
        else:
            raise UnsupportedFeature(f"[range] queries on [{fld.type}] field [{name}] are not supported "
                                     "by selproxy.engine")
        where: List[str] = ["field = ?"]
        params: List[Any] = [fld.name]
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        for key, value in bounds.items():
            try:
                converted = convert(value)
            except Exception:
                converted = None
            if converted is None:
                raise ParsingError(f"failed to parse [{value}] for range on field [{name}] of type [{fld.type}]")
            if fld.kind == "date" and key in ("gt", "lte") and isinstance(value, str) and "/" in value:
                # Rounded date math rounds up for gt/lte, as in Elasticsearch.
                converted = _round_up(value)
            where.append(f"value {ops[key]} ?")
            params.append(converted)
        return Sql(f"SELECT DISTINCT rid, ? AS score FROM {table} WHERE {' AND '.join(where)}", [boost] + params)

    def _q_ids(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict) or not isinstance(body.get("values", []), list):
            raise ParsingError("[ids] query malformed")
        values = [str(v) for v in body.get("values", [])]
        if not values:
            return Sql(NOTHING)
        marks = ",".join("?" * len(values))
        return Sql(f"SELECT rid, ? AS score FROM {self.meta.docs} WHERE id IN ({marks})",
                   [float(body.get("boost", 1.0))] + values)

    def _q_exists(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict) or "field" not in body:
            raise ParsingError("[exists] must be provided with a [field]")
        name = body["field"]
        boost = float(body.get("boost", 1.0))
        names = [n for n in self.meta.fields if n == name or n.startswith(name + ".") or
                 ("*" in name and fnmatch.fnmatchcase(n, name))]
        parts = []
        for fname in names:
            fld = self.meta.fields[fname]
            if fld.kind == "text":
                table = self.meta.fts_table(fname)
                parts.append(Sql(f"SELECT rowid AS rid FROM {table}"))
            elif fld.kind == "keyword":
                parts.append(Sql(f"SELECT rid FROM {self.meta.keywords} WHERE field = ?", [fname]))
            elif fld.kind in ("number", "date"):
                parts.append(Sql(f"SELECT rid FROM {self.meta.numbers} WHERE field = ?", [fname]))
        if not parts:
            return Sql(NOTHING)
        union = " UNION ".join(p.text for p in parts)
        return Sql(f"SELECT DISTINCT rid, ? AS score FROM ({union})", [boost] + [x for p in parts for x in p.params])

    def _q_constant_score(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict) or "filter" not in body:
            raise ParsingError("[constant_score] requires a 'filter' element")
        return self._constant(self.compile(body["filter"], False), float(body.get("boost", 1.0)))

    def _q_bool(self, body: Any, scoring: bool) -> Sql:
        if not isinstance(body, dict):
            raise ParsingError("[bool] query malformed, no start_object after query name")
        unknown = set(body) - {"must", "should", "filter", "must_not", "minimum_should_match", "boost", "_name",
                               "adjust_pure_negative"}
        if unknown:
            raise ParsingError(f"[bool] query does not support [{sorted(unknown)[0]}]")

        def clauses(key: str) -> List[Any]:
            value = body.get(key, [])
            return value if isinstance(value, list) else [value]

        must = [self.compile(q, scoring) for q in clauses("must")]
        filters = [self.compile(q, False) for q in clauses("filter")]
        should = [self.compile(q, scoring) for q in clauses("should")]
        must_not = [self.compile(q, False) for q in clauses("must_not")]
        boost = float(body.get("boost", 1.0))
        required = len(must) + len(filters)
        msm_spec = body.get("minimum_should_match")
        if msm_spec is None:
            need = 0 if required else 1
        else:
            need = minimum_should_match(msm_spec, len(should))
        if not required and should:
            # Lucene: a query of only optional clauses must match at least one of them.
            need = max(need, 1)
        if not required and not should:
            base = self._all(1.0 if not must_not else 0.0)
            if not must_not:
                return self._boosted(base, boost)
        elif need > len(should):
            return Sql(NOTHING)
        else:
            pieces = ([f"SELECT rid, score, 1 AS req, 0 AS opt FROM ({p.text})" for p in must] +
                      [f"SELECT rid, 0.0 AS score, 1 AS req, 0 AS opt FROM ({p.text})" for p in filters] +
                      [f"SELECT rid, score, 0 AS req, 1 AS opt FROM ({p.text})" for p in should])
            params = [x for p in must + filters + should for x in p.params]
            if required == 1 and not should:
                only = (must + filters)[0]
                base = only if must else Sql(f"SELECT rid, 0.0 AS score FROM ({only.text})", only.params)
            else:
                having = [f"sum(req) = {required}"] if required else []
                if need:
                    having.append(f"sum(opt) >= {need}")
                base = Sql(f"SELECT rid, sum(score) AS score FROM ({' UNION ALL '.join(pieces)}) GROUP BY rid"
                           + (f" HAVING {' AND '.join(having)}" if having else ""), params)
        if must_not:
            excluded = " UNION ".join(f"SELECT rid FROM ({p.text})" for p in must_not)
            base = Sql(f"SELECT rid, score FROM ({base.text}) WHERE rid NOT IN ({excluded})",
                       base.params + [x for p in must_not for x in p.params])
        return self._boosted(base, boost)


def _round_up(value: str) -> int:
    # "now/d" as an upper bound means the last millisecond of the day.
    anchor, _, unit = value.rpartition("/")
    start = parse_date(value)
    steps = {"s": "+1s", "m": "+1m", "h": "+1h", "H": "+1h", "d": "+1d", "w": "+1w", "M": "+1M", "y": "+1y"}
    return parse_date(anchor + steps.get(unit, "+0s") + "/" + unit) - 1 if unit in steps else start
