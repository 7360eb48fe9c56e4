"""Keep secrets out of what the proxy logs, prints and answers.

Text that came from elsewhere (a remote ranker's error body, an exception's
message, a URL given on the command line) goes through here before it reaches
a log line, a start-up error or a response body:

* :func:`redact_url` keeps a URL's scheme, host, port and path, and replaces
  its userinfo and its query (and fragment) with ``***``;
* :func:`excerpt` bounds a text (:data:`EXCERPT_CHARS` by default), replaces
  the secrets it is given, ``Bearer``/``Basic`` credentials, ``api_key=``,
  ``token=``, ``password=`` and the like (``:`` or ``=``, quoted or not), and
  the userinfo and query of any URL in it, and turns control characters into
  spaces, so one excerpt stays one log line.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

__all__ = ("EXCERPT_CHARS", "REDACTED", "excerpt", "redact_url")

#: The longest excerpt of foreign text that is logged.
EXCERPT_CHARS = 200
REDACTED = "***"

_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[^\s\"',;}]+")
_SECRET_FIELD = re.compile(
    r"(?i)([\w.-]*(?:api[-_]?key|apikey|access[-_]?key|secret|token|passw(?:or)?d|authorization)[\w.-]*"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]+")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"']*@")
_URL_QUERY = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#\"']*)[?#][^\s\"']*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact_url(url: object) -> str:
    """``url`` with its userinfo and query replaced by ``***``: safe to log.

    Works on text that is not a valid URL too (``user:pw@host:9200``), since
    a malformed URL is exactly what an error message quotes.
    """
    text = _CONTROL.sub(" ", str(url))
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut + 1] + REDACTED
    scheme, sep, rest = text.rpartition("://") if "://" in text else ("", "", text)
    authority_end = rest.find("/")
    authority = rest if authority_end < 0 else rest[:authority_end]
    if "@" in authority:
        rest = REDACTED + "@" + rest[authority.rindex("@") + 1:]
    return excerpt(scheme + sep + rest)


def excerpt(text: object, secrets: Iterable[Optional[str]] = (),
            limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of ``text``, with the secrets redacted;
    see the module docstring."""
    known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    raw = str(text)
    # Cut before the regular expressions run (the text may be a whole error
    # page), but far enough out that a secret starting inside the excerpt is
    # still whole when it is replaced.
    room = limit * 4 + max((len(s) for s in known), default=0)
    cut = raw[:room]
    for secret in known:
        cut = cut.replace(secret, REDACTED)
    cut = _CREDENTIAL.sub(lambda m: m.group(1) + m.group(2) + REDACTED, cut)
    cut = _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, cut)
    cut = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", cut)
    cut = _URL_QUERY.sub(lambda m: m.group(1) + "?" + REDACTED, cut)
    cut = _CONTROL.sub(" ", cut)
    if len(cut) > limit or len(raw) > room:
        cut = cut[:limit] + f"... ({len(raw)} chars)"
    return cut
