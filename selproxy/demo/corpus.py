"""The demo corpus: the documentation of the running Python's own standard library.

It is generated on the user's machine, so selproxy ships no text copied from
elsewhere: docstrings of the stdlib's modules, classes, methods and functions,
and the language reference topics that ``help()`` shows (``pydoc_data``), cut
into passages of about 60-120 words, each with a title.

Importing modules runs their code, so the walk happens in a child interpreter
(``python -I``): whatever a module prints or leaves behind stays there, and a
hang is cut off by a timeout.  Modules that open windows, print, start a
browser, need a terminal, or run tests on import are never imported.  The walk
is sorted, so a given Python yields the same passages every time.

This module imports only the standard library: the child runs it as a script.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

__all__ = ("Passage", "build_passages", "passages_from_text")

MIN_WORDS = 60
MAX_WORDS = 120

# Never imported, with any submodule.  Why: it prints (this), opens a browser
# (antigravity), needs a display (tkinter, turtle, turtledemo, idlelib), writes
# to the terminal (readline, rlcompleter), runs or is test code (test,
# unittest.test, lib2to3.tests…), writes cache files on import (lib2to3),
# or is deprecated noise that duplicates other modules (distutils), or is
# read separately (pydoc_data).
_NEVER_IMPORT = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "readline", "rlcompleter",
    "test", "tests", "lib2to3", "distutils", "pydoc_data", "ensurepip", "venv",
})
# Packages whose submodules add nothing a reader asks for (one codec each…).
_NO_SUBMODULES = frozenset({"encodings", "ctypes.macholib"})
_MAX_DEPTH = 3
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


@dataclass(frozen=True)
class Passage:
    """One searchable passage; ``id`` is stable for a given Python version."""

    id: str
    title: str
    text: str
    kind: str  # "module", "class", "function", "method", "group" or "topic"

    def source(self) -> Dict[str, str]:
        """The document body to index (the ``_id`` goes in the bulk action)."""
        return {"title": self.title, "text": self.text, "kind": self.kind}


def build_passages(*, timeout: float = 30.0, budget: float = 12.0) -> List[Passage]:
    """Walk the standard library in a child interpreter and return its passages.

    ``budget`` bounds the import walk inside the child (modules left when it
    runs out are skipped); ``timeout`` kills a child that overruns anyway.
    """
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["TERM"] = "dumb"
    completed = subprocess.run(
        [sys.executable, "-I", os.path.abspath(__file__), "--emit", f"--budget={budget}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"building the demo corpus failed (exit {completed.returncode}):\n{tail}")
    return [Passage(**json.loads(line)) for line in completed.stdout.splitlines() if line.strip()]


# --- text into passages ------------------------------------------------------


def _paragraphs(text: str) -> List[str]:
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _split_long(words: List[str]) -> List[List[str]]:
    pieces = -(-len(words) // MAX_WORDS)
    size = -(-len(words) // pieces)  # even pieces, each at most MAX_WORDS
    return [words[start:start + size] for start in range(0, len(words), size)]


def passages_from_text(text: str) -> List[str]:
    """Cut ``text`` into passages of about MIN_WORDS-MAX_WORDS words along paragraph
    boundaries; a paragraph over MAX_WORDS is cut into even pieces.  Text shorter
    than MIN_WORDS stays one passage."""
    chunks: List[List[str]] = []
    current: List[str] = []
    for paragraph in _paragraphs(text):
        words = paragraph.split()
        if current and len(current) + len(words) > MAX_WORDS and len(current) >= MIN_WORDS // 2:
            chunks.append(current)
            current = []
        current = current + words
        if len(current) > MAX_WORDS:
            *done, current = _split_long(current)
            chunks.extend(done)
        if len(current) >= MIN_WORDS:
            chunks.append(current)
            current = []
    if current:
        if chunks and len(current) < MIN_WORDS:
            # A short tail joins the passage before it, and if that makes it too
            # long the two are cut again into halves, each above MIN_WORDS.
            combined = chunks.pop() + current
            if len(combined) <= MAX_WORDS:
                chunks.append(combined)
            else:
                half = len(combined) // 2
                chunks.extend([combined[:half], combined[half:]])
        else:
            chunks.append(current)
    return [" ".join(chunk) for chunk in chunks]


# --- the walk (runs in the child) --------------------------------------------


def _module_names(deadline: float) -> List[str]:
    if hasattr(sys, "stdlib_module_names"):
        top = set(sys.stdlib_module_names)
    else:  # Python 3.9
        import sysconfig

        stdlib = sysconfig.get_paths()["stdlib"]
        top = {info.name for info in pkgutil.iter_modules([stdlib])} | set(sys.builtin_module_names)
    names: List[str] = []
    pending = sorted(name for name in top if _wanted(name))
    while pending and time.monotonic() < deadline:
        name = pending.pop(0)
        module = _import(name)
        if module is None:
            continue
        names.append(name)
        path = getattr(module, "__path__", None)
        if path is not None and name not in _NO_SUBMODULES and name.count(".") + 1 < _MAX_DEPTH:
            children = sorted(f"{name}.{info.name}" for info in pkgutil.iter_modules(path))
            pending = [child for child in children if _wanted(child)] + pending
    return names


def _wanted(name: str) -> bool:
    parts = name.split(".")
    return not any(part.startswith("_") or part in _NEVER_IMPORT for part in parts)


def _import(name: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: B036 - a module may raise anything, even SystemExit
        return None


def _doc(obj: Any) -> str:
    # obj.__doc__ rather than inspect.getdoc(): getdoc copies a base class's
    # docstring onto every override, which would repeat it many times over.
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _signature(name: str, obj: Any) -> str:
    try:
        text = f"{name}{inspect.signature(obj)}"
    except Exception:  # builtins' text signatures can fail to evaluate in many ways
        return name
    text = _ADDRESS.sub("", text)
    return text if len(text) <= 160 else name


def _is_documentable(obj: Any) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj)


def _entries(owner: str, namespace: Dict[str, Any], seen: Set[int], claim: Any) -> Iterator[Tuple[str, Any]]:
    for name in sorted(namespace):
        obj = namespace[name]
        if name.startswith("_") or not claim(obj) or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield name, obj


def _owner_passages(
    owner: str, kind: str, entries: Sequence[Tuple[str, str, str]], prefix: Optional[str] = None
) -> Iterator[Passage]:
    """Long entries become passages of their own; short ones are packed together
    (their owner's one-line methods read best side by side)."""
    group: List[Tuple[str, str]] = []
    group_words = 0
    group_number = 0

    def flush() -> Iterator[Passage]:
        nonlocal group, group_words, group_number
        if group:
            names = ", ".join(name for name, _ in group)
            title = f"{owner}: {names}"
            if len(title) > 100:
                title = title[:97].rsplit(",", 1)[0] + ", …"
            yield Passage(f"{owner}:group{group_number}", title, " ".join(text for _, text in group), "group")
            group_number += 1
        group, group_words = [], 0

    for name, heading, doc in entries:
        words = len(doc.split())
        if words >= MIN_WORDS:
            qualname = f"{owner}.{name}" if prefix is None else f"{prefix}{name}"
            # The heading is a paragraph of its own, so it counts towards the size.
            for number, text in enumerate(passages_from_text(f"{heading}\n\n{doc}")):
                yield Passage(f"{qualname}#{number}", qualname, text, kind)
        elif words >= 3:
            line = f"{heading}: {' '.join(doc.split())}"
            if group and group_words + len(line.split()) > MAX_WORDS:
                yield from flush()
            group.append((name, line))
            group_words += len(line.split())
    yield from flush()


def _module_passages(module_name: str, module: Any, seen: Set[int], public: Set[str]) -> Iterator[Passage]:
    builtin = module_name == "builtins"
    prefix = "" if builtin else f"{module_name}."
    doc = _doc(module)
    if doc:
        for number, text in enumerate(passages_from_text(doc)):
            yield Passage(f"{module_name}#{number}", module_name, text, "module")

    def defined_here(obj: Any) -> bool:
        home = getattr(obj, "__module__", None) or ""
        # C implementations live in private modules (_io, _functools…): credit
        # them to their public twin (io, functools…), or else to the first
        # public module that exposes them.
        twin = home.lstrip("_")
        return _is_documentable(obj) and (
            builtin or home == module_name or twin == module_name or (home.startswith("_") and twin not in public)
        )

    # A class or function with a short docstring joins its module's packed
    # passages; the methods of a class are packed under the class.
    short_entries = []
    for name, obj in _entries(module_name, vars(module), seen, defined_here):
        qualname = f"{prefix}{name}"
        doc = _doc(obj)
        if inspect.isclass(obj):
            if len(doc.split()) >= MIN_WORDS:
                for number, text in enumerate(passages_from_text(doc)):
                    yield Passage(f"{qualname}#{number}", qualname, text, "class")
            else:
                short_entries.append((name, _signature(qualname, obj), doc))
            yield from _class_passages(qualname, obj, seen)
        else:
            short_entries.append((name, _signature(qualname, obj), doc))
    yield from _owner_passages(module_name, "function", short_entries, prefix)


def _class_passages(qualname: str, cls: type, seen: Set[int]) -> Iterator[Passage]:

    def own_member(obj: Any) -> bool:
        return inspect.isroutine(obj) or isinstance(obj, (property, classmethod, staticmethod))

    # Members of private bases count as the class's own: io.TextIOBase gets
    # its readline() from _io._IOBase, which no reader would look up.
    namespace: Dict[str, Any] = {}
    for base in cls.__mro__:
        if base is cls or (base is not object and base.__name__.startswith("_")):
            for name, member in vars(base).items():
                namespace.setdefault(name, member)
    methods = []
    for name, member in _entries(qualname, namespace, seen, own_member):
        target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        methods.append((name, _signature(f"{qualname}.{name}", target), _doc(target)))
    yield from _owner_passages(qualname, "method", methods)


def _topic_passages() -> Iterator[Passage]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions leave pydoc_data out
        return
    for key in sorted(topics):
        text = topics[key]
        lines = text.lstrip("\n").splitlines()
        title = key
        if len(lines) > 1 and lines[1] and set(lines[1]) <= set("*=-^~"):
            title, text = lines[0].strip(), "\n".join(lines[2:])
        for number, chunk in enumerate(passages_from_text(text)):
            yield Passage(f"topic:{key}#{number}", title, chunk, "topic")


def walk(budget: float) -> Iterator[Passage]:
    """Every passage, in a fixed order: the language topics, then ``builtins``,
    then the other modules in name order."""
    deadline = time.monotonic() + budget
    yield from _topic_passages()
    seen: Set[int] = set()
    names = _module_names(deadline)
    public = set(names)
    for name in ["builtins"] + [name for name in names if name != "builtins"]:
        if time.monotonic() > deadline:
            break
        module = sys.modules.get(name) or _import(name)
        if module is None:
            continue
        claimed = set(seen)
        try:
            passages = list(_module_passages(name, module, claimed, public))
        except Exception:  # an odd module is skipped whole, never half-read
            continue
        seen = claimed
        yield from passages


def _emit(argv: Sequence[str]) -> int:
    budget = 12.0
    for arg in argv:
        if arg.startswith("--budget="):
            budget = float(arg.split("=", 1)[1])
    # Keep the real stdout for the passages; anything a module prints at
    # import, even from C, goes to /dev/null instead.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")
    ids: Set[str] = set()
    warnings.simplefilter("ignore")  # deprecation notices from reading old modules' attributes
    for passage in walk(budget):
        if passage.id in ids:  # the same name reached twice (an alias)
            continue
        ids.add(passage.id)
        out.write(json.dumps(asdict(passage), ensure_ascii=False) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    if "--emit" in sys.argv[1:]:
        sys.exit(_emit(sys.argv[1:]))
