"""Resolve a ``--ranker`` value to a ranker instance.

A value is either a short name registered in the entry-point group
``selproxy.rankers`` (the package registers ``identity`` and ``bm25``; other
packages may add their own), or ``package.module:ClassName``.  Options come as
``key=value`` strings (repeated ``--ranker-option``) and are passed to the
class as keyword arguments; values that read as JSON (numbers, ``true``,
``null``, lists) are converted, anything else stays a string.

Loading code by name happens only here, at start-up, from the operator's
configuration; nothing in a request can reach it.
"""
from __future__ import annotations

import importlib
import json
from importlib import metadata
from typing import Any, Dict, Iterable, Mapping, Optional

__all__ = ("ENTRY_POINT_GROUP", "BUILTIN_RANKERS", "RankerUnavailable", "parse_ranker_options",
           "load_ranker_class", "resolve_ranker", "available_rankers")

ENTRY_POINT_GROUP = "selproxy.rankers"


class RankerUnavailable(RuntimeError):
    """A ranker named by the configuration could not be built (a missing
    model, a bad option): the proxy cannot start its search service."""


#: Used when the package's entry points are not installed (a source checkout).
BUILTIN_RANKERS: Mapping[str, str] = {
    "identity": "selproxy.rankers.identity:IdentityRanker",
    "bm25": "selproxy.rankers.bm25:BM25Ranker",
    "minilm": "selproxy.rankers.minilm:MiniLMRanker",
    "cross-encoder": "selproxy.rankers.cross_encoder:CrossEncoderRanker",
    "bi-encoder": "selproxy.rankers.bi_encoder:BiEncoderRanker",
    "remote": "selproxy.rankers.remote:RemoteRanker",
}

#: Options that configure the micro-batcher, not the ranker itself.
BATCH_OPTIONS = {"batch_max_pairs": "max_pairs", "batch_max_wait_ms": "max_wait_ms",
                 "batch_queue": "max_queue_pairs"}


def parse_ranker_options(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    """``["k1=1.2", "stopwords=en"]`` -> ``{"k1": 1.2, "stopwords": "en"}``."""
    options: Dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"ranker option {item!r} is not key=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value
    return options


def _entry_points() -> Dict[str, Any]:
    try:
        return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken distribution must not stop the proxy
        return {}


def available_rankers() -> Dict[str, str]:
    """Short name -> ``module:attribute`` of every known ranker."""
    names = dict(BUILTIN_RANKERS)
    names.update((name, ep.value) for name, ep in _entry_points().items())
    return names


def load_ranker_class(spec: str) -> Any:
    """The class (or factory) that ``spec`` names."""
    if ":" not in spec:
        ep = _entry_points().get(spec)
        if ep is not None:
            return ep.load()
        if spec not in BUILTIN_RANKERS:
            known = ", ".join(sorted(available_rankers()))
            raise ValueError(f"unknown ranker {spec!r}; known: {known}; or give package.module:ClassName")
        spec = BUILTIN_RANKERS[spec]
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"ranker {spec!r} is not package.module:ClassName")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def resolve_ranker(spec: str, options: Optional[Mapping[str, Any]] = None) -> Any:
    """Build the ranker ``spec`` names, with ``options`` as keyword arguments.

    A ranker class that sets ``micro_batching = True`` (the local models)
    comes wrapped in a :class:`~selproxy.rankers.batching.MicroBatcher`, so
    concurrent searches share model calls; ``batching=false`` turns that off
    and the ``batch_*`` options tune it."""
    options = dict(options or {})
    batching = options.pop("batching", True)
    batch_options = {BATCH_OPTIONS[k]: options.pop(k) for k in list(options) if k in BATCH_OPTIONS}
    factory = load_ranker_class(spec)
    ranker = factory(**options)
    if not callable(getattr(ranker, "rank", None)):
        raise TypeError(f"{spec!r} built {ranker!r}, which has no rank(query, docs) method")
    if batching and getattr(ranker, "micro_batching", False):
        from .batching import MicroBatcher
        ranker = MicroBatcher(ranker, **batch_options)
    elif batch_options:
        raise ValueError(f"{spec!r} is not micro-batched: {', '.join(BATCH_OPTIONS)} do not apply")
    return ranker
