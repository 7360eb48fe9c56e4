"""Text analysis, FTS5 query strings, and date parsing.

``text`` fields are indexed by FTS5's ``unicode61`` tokenizer with
``remove_diacritics 0``: split on anything that is not a letter or digit and
lower-cased, which is what Elasticsearch's ``standard`` analyzer does for
ordinary prose (no stemming, no stop words).  :func:`tokens` is the Python twin
used to split query text; every token is then quoted before it reaches FTS5, so
FTS5 re-tokenizes it with the very same tokenizer and the two cannot drift
apart in what matches.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
import time
from typing import Any, List, Optional

from .errors import ParsingError

__all__ = ("TOKENIZE", "tokens", "fts_phrase", "fts_prefix", "lucene_idf",
           "fts5_idf", "parse_date", "K1", "B")

TOKENIZE = "unicode61 remove_diacritics 0"

# Lucene's BM25Similarity defaults, which FTS5's bm25() also uses.
K1 = 1.2
B = 0.75

_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> List[str]:
    """Split ``text`` into lower-case tokens the way ``unicode61`` does."""
    return _TOKEN.findall(text.lower())


def has_token(text: str) -> bool:
    return _TOKEN.search(text) is not None


def fts_phrase(words: List[str]) -> str:
    """An FTS5 string literal for a phrase of already-split tokens."""
    return '"' + " ".join(w.replace('"', '""') for w in words) + '"'


def fts_prefix(word: str) -> str:
    # FTS5: a '*' after a string marks its last token as a prefix token.
    return fts_phrase([word]) + " *"


def lucene_idf(n_docs: int, doc_freq: int) -> float:
    """Lucene's BM25 idf, which is never negative."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def fts5_idf(n_docs: int, doc_freq: int) -> float:
    """The idf FTS5's bm25() uses (fts5_aux.c): the classic Robertson idf,
    floored at 1e-6 for terms in more than half the rows."""
    idf = math.log((n_docs - doc_freq + 0.5) / (doc_freq + 0.5))
    return idf if idf > 0.0 else 1e-6


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?)?)?)?$")
_DATE_MATH = re.compile(r"([+-])(\d+)([yMwdhHms])")
_UNIT_MS = {"w": 604800000, "d": 86400000, "h": 3600000, "H": 3600000,
            "m": 60000, "s": 1000}


def parse_date(value: Any, field: str = "") -> int:
    """Milliseconds since the epoch for a date value, as Elasticsearch's default
    format ``strict_date_optional_time||epoch_millis`` reads it; also ``now``
    with simple date math (``now-1d``, ``now/d``) for range queries."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    if text.startswith("now"):
        return _date_math(int(time.time() * 1000), text[3:])
    if "||" in text:
        anchor, _, math_part = text.partition("||")
        return _date_math(parse_date(anchor, field), math_part)
    if text.lstrip("-").isdigit() and len(text) != 4:
        return int(text)
    m = _DATE.match(text)
    if not m:
        raise ValueError(value)
    year, month, day, hour, minute, sec, frac, tz = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    tzinfo = _dt.timezone.utc
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        tzinfo = _dt.timezone(sign * _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    moment = _dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                          int(minute or 0), int(sec or 0), micro, tzinfo=tzinfo)
    return int(round(moment.timestamp() * 1000))


def _date_math(ms: int, expr: str) -> int:
    pos = 0
    while pos < len(expr):
        if expr[pos] == "/":
            ms = _round_down(ms, expr[pos + 1:pos + 2])
            pos += 2
            continue
        m = _DATE_MATH.match(expr, pos)
        if not m:
            raise ParsingError(f"failed to parse date math [{expr}]")
        amount = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
        unit = m.group(3)
        if unit in ("y", "M"):
            moment = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
            months = moment.month - 1 + amount * (12 if unit == "y" else 1)
            year = moment.year + months // 12
            month = months % 12 + 1
            day = min(moment.day, [31, 29 if _leap(year) else 28, 31, 30, 31, 30,
                                   31, 31, 30, 31, 30, 31][month - 1])
            ms = int(moment.replace(year=year, month=month, day=day).timestamp() * 1000)
        else:
            ms += amount * _UNIT_MS[unit]
        pos = m.end()
    return ms


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _round_down(ms: int, unit: str) -> int:
    moment = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
    if unit == "y":
        moment = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    elif unit == "M":
        moment = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif unit == "w":
        moment = (moment - _dt.timedelta(days=moment.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0)
    elif unit == "d":
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif unit in ("h", "H"):
        moment = moment.replace(minute=0, second=0, microsecond=0)
    elif unit == "m":
        moment = moment.replace(second=0, microsecond=0)
    elif unit == "s":
        moment = moment.replace(microsecond=0)
    else:
        raise ParsingError(f"unsupported rounding unit [{unit}]")
    return int(moment.timestamp() * 1000)


def looks_like_date(value: str) -> Optional[int]:
    """Dynamic date detection: only full ``yyyy-MM-dd``-style strings count,
    as with Elasticsearch's default ``dynamic_date_formats``."""
    if len(value) < 10 or not value[:4].isdigit() or value[4] not in "-/":
        return None
    try:
        return parse_date(value.replace("/", "-", 2))
    except (ValueError, ParsingError):
        return None
