"""The documented subset of ``query_string`` and ``simple_query_string``.

Both parse to the query DSL (``bool``, ``range``, ``match_all``, ``exists``)
with :class:`FieldsTerm` leaves, which the compiler scores like a
``multi_match`` ``best_fields`` over the query's fields.

``query_string`` subset: bare terms; ``"phrases"``; ``field:term``,
``field:"phrase"``, ``field:(a b)`` and field wildcards (``title*:x``);
``AND``/``&&``, ``OR``/``||``, ``NOT``/``!``, ``+term``, ``-term``; parentheses;
a trailing ``*`` for a prefix (``sear*``); ``^2`` boosts; ``*`` / ``*:*``;
``_exists_:field``; ranges ``field:[1 TO 5]``, ``field:{a TO b}`` with ``*`` for
an open end, and ``field:>=5``.  Operators combine exactly as in Lucene's
classic query parser (``a AND b OR c`` is ``+a +b c``).  Fuzzy ``~``, wildcards
inside a term and ``/regex/`` are refused with a 400.

``simple_query_string`` subset: terms, ``"phrases"``, ``+`` (AND), ``|``
(OR), ``-`` (NOT), parentheses, trailing ``*`` prefixes; ``~N`` is ignored.
It never fails on syntax.  Unlike Elasticsearch, ``-term`` always excludes
(``a -b`` means a and not b, whatever ``default_operator`` is).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import QueryShardError, UnsupportedFeature

__all__ = ("FieldsTerm", "parse_query_string")


@dataclass
class FieldsTerm:
    fields: List[str]
    text: str
    operator: str = "or"
    phrase: bool = False
    prefix: bool = False
    boost: float = 1.0


Token = Tuple[str, Any]
MUST, SHOULD, MUST_NOT = "must", "should", "must_not"


def _lex(text: str, simple: bool) -> List[Token]:
    out: List[Token] = []
    i, n = 0, len(text)
    specials = set('+|-"()~*\\ \t\r\n') if simple else set('()"^~:[]{}\\ \t\r\n')
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "(":
            out.append(("LP", None))
            i += 1
            continue
        if c == ")":
            out.append(("RP", None))
            i += 1
            continue
        if c == '"':
            end = i + 1
            buf = []
            while end < n and text[end] != '"':
                if text[end] == "\\" and end + 1 < n:
                    end += 1
                buf.append(text[end])
                end += 1
            if end >= n and not simple:
                raise QueryShardError(f"Failed to parse query [{text}]")
            out.append(("PHRASE", "".join(buf)))
            i = end + 1
            continue
        if c == "~":
            end = i + 1
            while end < n and (text[end].isdigit() or text[end] == "."):
                end += 1
            out.append(("FUZZ", text[i + 1:end]))
            i = end
            continue
        if simple:
            if c == "+":
                out.append(("AND", None))
                i += 1
                continue
            if c == "|":
                out.append(("OR", None))
                i += 1
                continue
            if c == "-":
                out.append(("NOT", None))
                i += 1
                continue
        else:
            if text.startswith("&&", i):
                out.append(("AND", None))
                i += 2
                continue
            if text.startswith("||", i):
                out.append(("OR", None))
                i += 2
                continue
            if c == "!":
                out.append(("NOT", None))
                i += 1
                continue
            if c == "+":
                out.append(("PLUS", None))
                i += 1
                continue
            if c == "-":
                out.append(("MINUS", None))
                i += 1
                continue
            if c == "^":
                end = i + 1
                while end < n and (text[end].isdigit() or text[end] == "."):
                    end += 1
                try:
                    out.append(("BOOST", float(text[i + 1:end])))
                except ValueError:
                    raise QueryShardError(f"Failed to parse query [{text}]") from None
                i = end
                continue
            if c in "[{":
                close = min((p for p in (text.find("]", i), text.find("}", i)) if p != -1), default=-1)
                if close == -1:
                    raise QueryShardError(f"Failed to parse query [{text}]")
                parts = text[i + 1:close].split()
                if len(parts) != 3 or parts[1] != "TO":
                    raise QueryShardError(f"Failed to parse query [{text}]")
                out.append(("RANGE", (c == "[", parts[0], parts[2], text[close] == "]")))
                i = close + 1
                continue
            if c in "<>" and out and out[-1][0] == "FIELD":
                op = c + ("=" if text.startswith("=", i + 1) else "")
                i += len(op)
                end = i
                while end < n and not text[end].isspace() and text[end] not in "()":
                    end += 1
                out.append(("CMP", (op, text[i:end])))
                i = end
                continue
        end = i
        buf = []
        while end < n and text[end] not in specials:
            buf.append(text[end])
            end += 1
        while end < n and text[end] == "\\" and end + 1 < n:
            buf.append(text[end + 1])
            end += 2
            while end < n and text[end] not in specials:
                buf.append(text[end])
                end += 1
        if end < n and text[end] == "*":
            buf.append("*")
            end += 1
        word = "".join(buf)
        if not word:
            i += 1
            continue
        i = end
        if not simple and i < n and text[i] == ":":
            out.append(("FIELD", word))
            i += 1
        elif not simple and word in ("AND", "OR", "NOT"):
            out.append((word, None))
        else:
            out.append(("TERM", word))
    return out


class _Parser:
    def __init__(self, text: str, tokens: List[Token], fields: List[str], operator: str, simple: bool) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0
        self.fields = fields
        self.operator = operator.lower()
        self.simple = simple

    def fail(self) -> QueryShardError:
        return QueryShardError(f"Failed to parse query [{self.text}]")

    def peek(self) -> Optional[str]:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def group(self, fields: List[str]) -> Dict[str, Any] | FieldsTerm:
        clauses: List[List[Any]] = []
        while self.peek() not in (None, "RP"):
            conj = None
            if self.peek() in ("AND", "OR"):
                conj = self.take()[0]
            mods = None
            if self.peek() == "PLUS":
                self.take()
                mods = MUST
            elif self.peek() in ("MINUS", "NOT"):
                self.take()
                mods = MUST_NOT
            if self.peek() in (None, "RP"):
                break
            node = self.primary(fields)
            if node is not None:
                self._add(clauses, conj, mods, node)
        return self._build(clauses)

    def _add(self, clauses: List[List[Any]], conj: Optional[str], mods: Optional[str], node: Any) -> None:
        # Lucene's classic QueryParserBase.addClause.
        if clauses and conj == "AND" and clauses[-1][0] != MUST_NOT:
            clauses[-1][0] = MUST
        if clauses and self.operator == "and" and conj == "OR" and clauses[-1][0] != MUST_NOT:
            clauses[-1][0] = SHOULD
        prohibited = mods == MUST_NOT
        if self.operator == "or":
            required = mods == MUST or (conj == "AND" and not prohibited)
        else:
            required = not prohibited and conj != "OR"
        occur = MUST_NOT if prohibited else (MUST if required else SHOULD)
        clauses.append([occur, node])

    @staticmethod
    def _build(clauses: List[List[Any]]) -> Dict[str, Any] | FieldsTerm:
        if not clauses:
            return {"match_none": {}}
        if len(clauses) == 1 and clauses[0][0] != MUST_NOT:
            node: Dict[str, Any] | FieldsTerm = clauses[0][1]
            return node
        body: Dict[str, Any] = {}
        for occur, node in clauses:
            body.setdefault(occur, []).append(node)
        return {"bool": body}

    def primary(self, fields: List[str]) -> Any:
        kind, value = self.take()
        if kind == "LP":
            node = self.group(fields)
            if self.peek() == "RP":
                self.take()
            elif not self.simple:
                raise self.fail()
            return self._boost(node)
        if kind == "RP":
            return None
        if kind == "FIELD":
            if self.peek() is None:
                raise self.fail()
            if value == "_exists_":
                _, target = self.take()
                return {"exists": {"field": target}}
            if value == "*" and self.peek() == "TERM" and self.tokens[self.pos][1] == "*":
                self.take()
                return {"match_all": {}}
            nxt = self.peek()
            if nxt == "RANGE":
                _, (lo_inc, lo, hi, hi_inc) = self.take()
                bounds = {}
                if lo != "*":
                    bounds["gte" if lo_inc else "gt"] = lo
                if hi != "*":
                    bounds["lte" if hi_inc else "lt"] = hi
                return {"range": {value: bounds}}
            if nxt == "CMP":
                _, (op, bound) = self.take()
                return {"range": {value: {{">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op]: bound}}}
            return self.primary([value])
        if kind == "PHRASE":
            node = FieldsTerm(fields, value, self.operator, phrase=True)
            if self.peek() == "FUZZ":
                slop = self.take()[1]
                if slop not in ("", "0") and not self.simple:
                    raise UnsupportedFeature("phrase slop (\"...\"~N) is not supported by selproxy.engine")
            return self._boost(node)
        if kind == "TERM":
            if self.peek() == "FUZZ":
                self.take()
                if not self.simple:
                    raise UnsupportedFeature("fuzzy terms (term~) are not supported by selproxy.engine")
            if value == "*":
                return self._boost({"match_all": {}})
            if value.startswith("/") and value.endswith("/") and len(value) > 1 and not self.simple:
                raise UnsupportedFeature("regular expressions (/.../) are not supported by selproxy.engine")
            prefix = value.endswith("*")
            stem = value.rstrip("*") if prefix else value
            if ("*" in stem or "?" in stem) and not self.simple:
                raise UnsupportedFeature(f"wildcard term [{value}] is not supported by selproxy.engine; "
                                         "only a trailing * (prefix) is")
            return self._boost(FieldsTerm(fields, stem, self.operator, prefix=prefix))
        if kind in ("BOOST", "FUZZ"):
            return None
        if kind in ("AND", "OR", "NOT", "PLUS", "MINUS"):
            return None
        raise self.fail()

    def _boost(self, node: Any) -> Any:
        if self.peek() != "BOOST":
            return node
        boost = self.take()[1]
        if isinstance(node, FieldsTerm):
            node.boost *= boost
            return node
        return {"bool": {"must": [node], "boost": boost}}


def parse_query_string(text: str, fields: List[str], default_operator: str, simple: bool) -> Any:
    """The query DSL tree for a query string over ``fields``."""
    operator = str(default_operator).lower()
    if operator not in ("or", "and"):
        raise QueryShardError(f"Unsupported default_operator [{default_operator}]")
    parser = _Parser(text, _lex(text, simple), fields, operator, simple)
    node = parser.group(fields)
    while parser.peek() == "RP":
        if not simple:
            raise parser.fail()
        parser.take()
        more = parser.group(fields)
        node = {"bool": {"should": [node, more]}}
    return node
