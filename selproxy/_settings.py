"""Where the command's settings come from: flags, ``SELPROXY_*`` environment
variables, a TOML file (``--config``), defaults -- in that order of precedence.

The settings are the command's flags themselves, read off its argparse
parser, so a flag cannot exist without its key and its variable:

* the file's key is the long flag without its dashes (``rank-deadline =
  0.25``; ``rank_deadline`` is the same key), a repeatable flag takes an
  array (``include-index = ["books", "films"]``), a switch a boolean;
* the variable is the flag upper-cased, ``-`` to ``_``, after ``SELPROXY_``
  (``--upstream-ca-file`` is ``SELPROXY_UPSTREAM_CA_FILE``); a switch reads
  ``1/0/true/false/yes/no``, a repeatable flag a comma-separated list, and an
  empty variable counts as unset.

A key the file should not have, a value of the wrong type, or a variable
that does not parse is a usage error in one line (exit 2), naming where it
was and, for a key, the nearest valid one.  Other ``SELPROXY_*`` variables
are ignored: Kubernetes sets ``SELPROXY_SERVICE_HOST`` and the like for a
Service named ``selproxy``.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ._redact import REDACTED, excerpt, redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

__all__ = ("ENV_PREFIX", "LIST_SEPARATOR", "Setting", "SettingsError", "settings_of", "resolve",
           "render_toml")

ENV_PREFIX = "SELPROXY_"
#: Between the items of a repeatable flag given in a variable.
LIST_SEPARATOR = ","

#: Flags that are not settings: they act, or they name the settings' file.
_NOT_SETTINGS = {"help", "version", "print_config"}
#: Settings that a file cannot set (the file itself).
_FLAG_OR_ENV_ONLY = {"config"}
#: Settings whose values may carry credentials: shown redacted.
_URL_SETTINGS = {"upstream", "url"}
_SECRET_WORDS = ("key", "token", "secret", "passw", "auth", "credential")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


class SettingsError(ValueError):
    """A setting that cannot be used, in one line; ``code`` is the exit
    status (2, a usage error; 1, the file cannot be read)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Setting:
    """One flag as a setting: its file key, variable and type."""

    key: str                    # rank-deadline
    dest: str                   # rank_deadline
    flag: str                   # --rank-deadline
    kind: str                   # int, float, str, bool, list or optional-path
    default: Any
    choices: Optional[Sequence[str]] = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace("-", "_")


def settings_of(parser: argparse.ArgumentParser) -> List[Setting]:
    """The parser's long flags as settings, in the order ``--help`` shows."""
    found = []
    for action in parser._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        key = flag[2:]
        if isinstance(action, argparse._StoreTrueAction):
            kind = "bool"
        elif isinstance(action, argparse._StoreFalseAction):
            # --no-window-cache: the setting is what it turns off
            # (window-cache = false), so a file and a variable say it plainly.
            kind, key = "bool", action.dest.replace("_", "-")
        elif isinstance(action, argparse._AppendAction):
            kind = "list"
        elif action.nargs == "?":
            kind = "optional-path"
        elif action.type is int:
            kind = "int"
        elif action.type is float:
            kind = "float"
        else:
            kind = "str"
        found.append(Setting(key, action.dest, flag, kind, action.default,
                             tuple(action.choices) if action.choices else None))
    return found


def resolve(parser: argparse.ArgumentParser, argv: Sequence[str],
            environ: Mapping[str, str]) -> argparse.Namespace:
    """Parse ``argv`` and fill what it does not give from ``environ``, then
    from the ``--config`` file, then from the defaults.  A repeatable flag
    given on the command line replaces the lists from elsewhere."""
    settings = settings_of(parser)
    actions = {a.dest: a for a in parser._actions}
    saved = {s.dest: actions[s.dest].default for s in settings}
    try:
        for setting in settings:
            actions[setting.dest].default = UNSET if setting.kind != "list" else None
        args = parser.parse_args(list(argv))
    finally:
        for dest, default in saved.items():
            actions[dest].default = default
    env = env_values(settings, environ)
    path = args.config if args.config is not UNSET else env.get("config", UNSET)
    from_file = file_values(settings, path) if path not in (UNSET, None, "") else {}
    sources: Dict[str, str] = {}
    for setting in settings:
        given = getattr(args, setting.dest)
        if given is not UNSET and given is not None:
            sources[setting.dest] = "flag"
            continue
        for source, values in (("env", env), ("file", from_file)):
            if setting.dest in values:
                setattr(args, setting.dest, values[setting.dest])
                sources[setting.dest] = source
                break
        else:
            default = setting.default
            setattr(args, setting.dest, list(default) if isinstance(default, list) else default)
    args.config = None if path is UNSET else path
    args.setting_sources = sources
    return args


def env_values(settings: Sequence[Setting], environ: Mapping[str, str]) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for setting in settings:
        raw = environ.get(setting.env)
        if raw is None or raw.strip() == "":
            continue
        values[setting.dest] = _from_text(setting, raw.strip(), setting.env)
    return values


def _from_text(setting: Setting, raw: str, where: str) -> Any:
    if setting.kind == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise SettingsError(f"{where}: expected 1/0/true/false/yes/no, got {excerpt(raw)!r}")
    if setting.kind == "list":
        return [item.strip() for item in raw.split(LIST_SEPARATOR) if item.strip()]
    if setting.kind == "optional-path":
        lowered = raw.lower()
        return "-" if lowered in _TRUE else None if lowered in _FALSE else raw
    if setting.kind in ("int", "float"):
        try:
            value: Any = int(raw) if setting.kind == "int" else float(raw)
        except ValueError:
            noun = "an integer" if setting.kind == "int" else "a number"
            raise SettingsError(f"{where}: expected {noun}, got {excerpt(raw)!r}") from None
        if setting.kind == "float" and not math.isfinite(value):
            raise SettingsError(f"{where}: expected a finite number, got {excerpt(raw)!r}")
        return value
    return _checked_choice(setting, raw, where)


def _checked_choice(setting: Setting, value: str, where: str) -> str:
    if setting.choices and value not in setting.choices:
        raise SettingsError(f"{where}: expected one of {', '.join(setting.choices)}, got {excerpt(value)!r}")
    return value


def file_values(settings: Sequence[Setting], path: str) -> Dict[str, Any]:
    """The settings a TOML file gives, checked: {dest: value}."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        raise SettingsError(f"--config {path}: {reason}", code=1) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {path}: not TOML ({exc})") from None
    by_key = {s.key: s for s in settings if s.dest not in _FLAG_OR_ENV_ONLY}
    values: Dict[str, Any] = {}
    spelled: Dict[str, str] = {}
    for raw_key, value in document.items():
        key = raw_key.replace("_", "-")
        setting = by_key.get(key)
        if setting is None:
            nearest = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.0)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
            raise SettingsError(f"{path}: unknown key {excerpt(raw_key)!r}{hint}")
        if key in spelled:
            raise SettingsError(f"{path}: {raw_key!r} and {spelled[key]!r} are the same key")
        spelled[key] = raw_key
        values[setting.dest] = _from_toml(setting, value, f"{path}: {raw_key}")
    return values


_TOML_TYPES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list": "a string or an array of strings", "optional-path": 'a path, "-" or true/false'}


def _from_toml(setting: Setting, value: Any, where: str) -> Any:
    kind = setting.kind
    ok = ((kind == "int" and type(value) is int)
          or (kind == "float" and type(value) in (int, float))
          or (kind == "str" and isinstance(value, str))
          or (kind == "bool" and isinstance(value, bool))
          or (kind == "list" and (isinstance(value, str) or (
              isinstance(value, list) and all(isinstance(v, str) for v in value))))
          or (kind == "optional-path" and isinstance(value, (str, bool))))
    if not ok:
        shown = excerpt(json.dumps(value, default=str), limit=60)
        raise SettingsError(f"{where}: expected {_TOML_TYPES[kind]}, got {shown}")
    if kind == "float":
        if not math.isfinite(value):
            raise SettingsError(f"{where}: expected a finite number, got {value}")
        return float(value)
    if kind == "list":
        # A repeatable flag given once: `url = "..."` as well as `url = ["..."]`.
        return [value] if isinstance(value, str) else list(value)
    if kind == "optional-path" and isinstance(value, bool):
        return "-" if value else None
    if kind == "str":
        return _checked_choice(setting, value, where)
    return value


# -- showing the configuration ------------------------------------------------

def render_toml(settings: Sequence[Setting], args: argparse.Namespace) -> str:
    """The effective settings as a TOML file ``--config`` reads back, with
    credentials replaced by ``***``; an unset setting is a comment."""
    sources = getattr(args, "setting_sources", {})
    lines = ["# selproxy --print-config: flags, then SELPROXY_* variables, then "
             f"{'the file ' + str(args.config) if args.config else 'a --config file'}, then defaults"]
    for setting in settings:
        if setting.dest in _FLAG_OR_ENV_ONLY:
            continue
        value = _redacted(setting, getattr(args, setting.dest))
        origin = sources.get(setting.dest, "default")
        if value is None or (setting.kind == "list" and not value and origin == "default"):
            lines.append(f"# {setting.key} is not set")
            continue
        lines.append(f"{setting.key} = {_toml_value(value)}" + ("" if origin == "default" else f"  # {origin}"))
    return "\n".join(lines) + "\n"


def _redacted(setting: Setting, value: Any) -> Any:
    if value is None:
        return None
    if setting.dest in _URL_SETTINGS:
        # --url repeats (several rerank endpoints): a list of them.
        return [redact_url(v) for v in value] if isinstance(value, list) else redact_url(value)
    if setting.dest == "ranker_option":
        shown = []
        for item in value:
            name, sep, _raw = item.partition("=")
            if sep and any(word in name.lower() for word in _SECRET_WORDS):
                shown.append(f"{name}={REDACTED}")
            else:
                shown.append(excerpt(item, limit=1000))
        return shown
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string: the same escapes, and
    # ensure_ascii leaves only printable ASCII.
    return json.dumps(str(value))
