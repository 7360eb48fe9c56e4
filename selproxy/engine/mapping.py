"""Mappings: validation, dynamic mapping, and turning a document into index rows.

A mapping is kept in Elasticsearch's own nested ``properties`` form (that is
what ``GET /<index>/_mapping`` returns) and flattened to dotted paths for
indexing and querying.  Multi-fields (``"fields": {"keyword": {...}}``) become
paths of their own (``title.keyword``) fed from the parent's value.

Each leaf field has a *kind*, which decides where its values go:
``text`` → an FTS5 table of its own; ``keyword`` (and ``boolean``) → the
keyword table; ``number`` and ``date`` (as epoch milliseconds) → the numeric
table; ``none`` → kept in ``_source`` only.

Stored-only data costs no index rows: a ``binary`` field (base64 text, never
searchable, as in Elasticsearch), a ``text`` field with ``"index": false``, any
leaf with both ``"index": false`` and ``"doc_values": false``, everything under
an object with ``"enabled": false``, and, under ``"dynamic": false`` (at the
root or on an object), every field the mapping does not name.  A keyword,
number, date or boolean with ``"index": false`` alone is still indexed: its
rows are this engine's doc values, which Elasticsearch 8 also searches.
``"dynamic": "strict"`` refuses unmapped fields; ``"runtime"`` is taken as
``false``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .analysis import has_token, looks_like_date, parse_date
from .errors import DocumentParsingError, IllegalArgument, MapperParsingError, StrictDynamicMapping

__all__ = ("Field", "flatten", "validate_properties", "merge_properties", "validate_root", "dynamic_mode",
           "DocRows", "analyse_document", "leaf_plans")

_KINDS = {
    "text": "text", "match_only_text": "text", "search_as_you_type": "text",
    "keyword": "keyword", "constant_keyword": "keyword", "wildcard": "keyword",
    "version": "keyword", "boolean": "keyword",
    "long": "number", "integer": "number", "short": "number", "byte": "number",
    "unsigned_long": "number", "double": "number", "float": "number",
    "half_float": "number", "scaled_float": "number",
    "date": "date", "date_nanos": "date",
    # Accepted so existing mappings load, but only kept in _source.
    "dense_vector": "none", "sparse_vector": "none", "geo_point": "none",
    "geo_shape": "none", "ip": "none", "binary": "none", "flattened": "none",
    "rank_feature": "none", "rank_features": "none", "semantic_text": "none",
}
_INTEGER_TYPES = {"long", "integer", "short", "byte", "unsigned_long"}
_OBJECT_TYPES = {"object", "nested"}
_DYNAMIC = {True: "true", False: "false", "true": "true", "false": "false", "strict": "strict", "runtime": "runtime"}
# Mapping attributes kept at the root (beside "properties"); others are accepted and ignored.
ROOT_KEYS = ("dynamic", "enabled", "_meta")


def _is_false(value: Any) -> bool:
    return value is False or value == "false"


def _spec_type(spec: Dict[str, Any]) -> Optional[str]:
    if "type" in spec:
        return str(spec["type"])
    if "properties" in spec or "enabled" in spec or "dynamic" in spec:
        return "object"
    return None


def _kind(ftype: str, spec: Dict[str, Any]) -> str:
    kind = _KINDS.get(ftype, "none")
    if _is_false(spec.get("index", True)) and (kind == "text" or _is_false(spec.get("doc_values", True))):
        return "none"
    return kind


def dynamic_mode(value: Any, path: str = "_doc") -> str:
    """``"true"``, ``"false"``, ``"strict"`` or ``"runtime"`` from a mapping's ``dynamic``."""
    mode = _DYNAMIC.get(value) if isinstance(value, (bool, str)) else None
    if mode is None:
        raise MapperParsingError(f"Could not convert [{path}.dynamic] to boolean")
    return mode


def validate_root(mappings: Dict[str, Any]) -> Dict[str, Any]:
    """The root attributes of a mapping this engine keeps, checked."""
    root: Dict[str, Any] = {}
    if "dynamic" in mappings:
        root["dynamic"] = dynamic_mode(mappings["dynamic"])
    if "enabled" in mappings:
        if not isinstance(mappings["enabled"], bool):
            raise MapperParsingError("Failed to parse value [enabled] as only [true] or [false] are allowed.")
        root["enabled"] = mappings["enabled"]
    if "_meta" in mappings:
        root["_meta"] = mappings["_meta"]
    return root


@dataclass(frozen=True)
class Field:
    """One indexable leaf: ``name`` is the dotted path queries use, ``source``
    the dotted path its values come from (they differ for multi-fields)."""
    name: str
    source: str
    type: str
    kind: str
    ignore_above: Optional[int] = None

    @property
    def integer(self) -> bool:
        return self.type in _INTEGER_TYPES


def validate_properties(props: Any, prefix: str = "") -> None:
    if not isinstance(props, dict):
        raise MapperParsingError(f"Expected map for property [properties] on field [{prefix or '_doc'}]")
    for name, spec in props.items():
        path = prefix + name
        if not isinstance(spec, dict):
            raise MapperParsingError(f"Expected map for property [fields] on field [{path}] but got a "
                                     f"{type(spec).__name__}")
        ftype = _spec_type(spec)
        if ftype is None:
            raise MapperParsingError(f"No type specified for field [{path}]")
        if ftype in _OBJECT_TYPES:
            if "dynamic" in spec:
                dynamic_mode(spec["dynamic"], path)
            if "enabled" in spec and not isinstance(spec["enabled"], bool):
                raise MapperParsingError("Failed to parse value [enabled] as only [true] or [false] are allowed.")
            validate_properties(spec.get("properties", {}), path + ".")
            continue
        for flag in ("index", "doc_values"):
            if flag in spec and not isinstance(spec[flag], bool) and spec[flag] not in ("true", "false"):
                raise MapperParsingError(f"Failed to parse value [{spec[flag]}] as only [true] or [false] are "
                                         f"allowed.")
        if ftype not in _KINDS:
            raise MapperParsingError(f"No handler for type [{ftype}] declared on field [{path}]")
        if "fields" in spec:
            validate_properties(spec["fields"], path + ".")


def flatten(props: Dict[str, Any]) -> Tuple[Dict[str, Field], Dict[str, Dict[str, Any]]]:
    """(leaf fields by query name, every mapped path's spec by source path)."""
    fields: Dict[str, Field] = {}
    specs: Dict[str, Dict[str, Any]] = {}

    def walk(level: Dict[str, Any], prefix: str) -> None:
        for name, spec in level.items():
            path = prefix + name
            specs[path] = spec
            ftype = spec.get("type", "object")
            if ftype in _OBJECT_TYPES:
                if spec.get("enabled", True) is not False:
                    walk(spec.get("properties", {}), path + ".")
                continue
            fields[path] = Field(path, path, ftype, _kind(ftype, spec), spec.get("ignore_above"))
            for sub, sub_spec in spec.get("fields", {}).items():
                stype = sub_spec.get("type", "text")
                fields[path + "." + sub] = Field(path + "." + sub, path, stype, _kind(stype, sub_spec),
                                                 sub_spec.get("ignore_above"))

    walk(props, "")
    return fields, specs


def merge_properties(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``old`` with ``new``'s fields added; changing a field's type is refused,
    as in Elasticsearch."""
    merged = copy.deepcopy(old)
    for name, spec in new.items():
        path = prefix + name
        if name not in merged:
            merged[name] = copy.deepcopy(spec)
            continue
        before = merged[name]
        old_type = before.get("type", "object")
        new_type = spec.get("type", "object" if "properties" in spec else old_type)
        if old_type != new_type:
            raise IllegalArgument(f"mapper [{path}] cannot be changed from type [{old_type}] to [{new_type}]")
        if old_type in _OBJECT_TYPES:
            before["properties"] = merge_properties(before.get("properties", {}),
                                                    spec.get("properties", {}), path + ".")
        elif "fields" in spec:
            before["fields"] = merge_properties(before.get("fields", {}), spec["fields"], path + ".")
    return merged


def _dynamic_spec(value: Any) -> Dict[str, Any]:
    # Elasticsearch's default dynamic mapping (numeric detection off, date detection on).
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, dict):
        return {"properties": {}}
    if isinstance(value, str) and looks_like_date(value) is not None:
        return {"type": "date"}
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


def _insert_path(props: Dict[str, Any], path: str, spec: Dict[str, Any]) -> None:
    head, _, rest = path.partition(".")
    if not rest:
        props.setdefault(head, spec)
        return
    parent = props.setdefault(head, {"properties": {}})
    _insert_path(parent.setdefault("properties", {}), rest, spec)


@dataclass
class DocRows:
    """What one document puts in the index: the joined text of each text field,
    and the keyword and numeric values by field name."""
    texts: Dict[str, str]
    keywords: List[Tuple[str, str]]
    numbers: List[Tuple[str, Any]]


def leaf_plans(fields: Dict[str, Field]) -> Dict[str, List[Field]]:
    """For each mapped leaf source path, the fields its values feed (itself and its multi-fields)."""
    plans: Dict[str, List[Field]] = {}
    for field in fields.values():
        plans.setdefault(field.source, []).append(field)
    for plan in plans.values():
        plan.sort(key=lambda f: f.name != f.source)
    return plans


def analyse_document(source: Dict[str, Any], props: Dict[str, Any], fields: Dict[str, Field],
                     specs: Dict[str, Dict[str, Any]], doc_id: str,
                     plans: Optional[Dict[str, List[Field]]] = None,
                     root: Optional[Dict[str, Any]] = None,
                     ) -> Tuple[DocRows, Optional[Dict[str, Any]]]:
    """The index rows for ``source`` and, when it brings unmapped fields, the
    updated ``properties`` (``None`` when the mapping is unchanged).  ``plans``
    is :func:`leaf_plans` of ``fields``, precomputed by callers that index many
    documents against one mapping; ``root`` holds the mapping's root
    attributes (``dynamic``, ``enabled``)."""
    root = root or {}
    if root.get("enabled", True) is False:
        return DocRows({}, [], []), None
    if plans is None:
        plans = leaf_plans(fields)
    texts: Dict[str, List[str]] = {}
    keywords: List[Tuple[str, str]] = []
    numbers: List[Tuple[str, Any]] = []
    added: Dict[str, Dict[str, Any]] = {}

    def fail(path: str, ftype: str, value: Any) -> DocumentParsingError:
        preview = value if isinstance(value, str) else repr(value)
        return DocumentParsingError(
            f"failed to parse field [{path}] of type [{ftype}] in document with id '{doc_id}'. "
            f"Preview of field's value: '{preview}'")

    def add_leaf(field: Field, value: Any) -> None:
        kind = field.kind
        if kind == "text":
            if isinstance(value, (dict, list)):
                raise fail(field.name, field.type, value)
            texts.setdefault(field.name, []).append(value if isinstance(value, str) else _scalar(value))
        elif kind == "keyword":
            if isinstance(value, dict):
                raise fail(field.name, field.type, value)
            if field.type == "boolean":
                if value in (True, "true"):
                    keywords.append((field.name, "true"))
                elif value in (False, "false", ""):
                    keywords.append((field.name, "false"))
                else:
                    raise fail(field.name, field.type, value)
                return
            text = value if isinstance(value, str) else _scalar(value)
            if field.ignore_above is None or len(text) <= field.ignore_above:
                keywords.append((field.name, text))
        elif kind == "number":
            numbers.append((field.name, _number(field, value, fail)))
        elif kind == "date":
            try:
                numbers.append((field.name, parse_date(value)))
            except Exception:
                raise fail(field.name, field.type, value) from None
        elif field.type == "binary" and not isinstance(value, str):
            raise fail(field.name, field.type, value)

    def visit(path: str, value: Any, dynamic: str) -> None:
        if value is None:
            return
        if isinstance(value, list):
            for item in value:
                visit(path, item, dynamic)
            return
        plan = plans.get(path)
        if plan is not None:
            if isinstance(value, dict):
                raise fail(path, plan[0].type, value)
            for leaf in plan:
                add_leaf(leaf, value)
            return
        spec = specs.get(path) or added.get(path)
        if spec is None:
            if dynamic == "strict":
                parent, _, name = path.rpartition(".")
                raise StrictDynamicMapping(f"[{path}] mapping set to strict, dynamic introduction of [{name}] "
                                           f"within [{parent or '_doc'}] is not allowed")
            if dynamic != "true":
                return  # dynamic false (or runtime): kept in _source, neither mapped nor indexed
            spec = _dynamic_spec(value)
            added[path] = spec
        ftype = spec.get("type", "object")
        if ftype in _OBJECT_TYPES:
            if spec.get("enabled", True) is False:
                return  # stored in _source only, whatever it holds
            if not isinstance(value, dict):
                raise DocumentParsingError(
                    f"object mapping for [{path}] tried to parse field [{path}] as object, "
                    f"but found a concrete value")
            inner = dynamic_mode(spec["dynamic"], path) if "dynamic" in spec else dynamic
            for key, sub in value.items():
                visit(path + "." + key, sub, inner)
            return
        if isinstance(value, dict):
            raise fail(path, ftype, value)
        field = fields.get(path) or _leaf(path, spec)
        add_leaf(field, value)
        for sub, sub_spec in spec.get("fields", {}).items():
            name = path + "." + sub
            add_leaf(fields.get(name) or Field(name, path, sub_spec.get("type", "text"),
                                               _kind(sub_spec.get("type", "text"), sub_spec),
                                               sub_spec.get("ignore_above")), value)

    top = dynamic_mode(root["dynamic"]) if "dynamic" in root else "true"
    for key, value in source.items():
        visit(key, value, top)

    new_props: Optional[Dict[str, Any]] = None
    if added:
        new_props = copy.deepcopy(props)
        for path in sorted(added, key=lambda p: p.count(".")):
            _insert_path(new_props, path, added[path])
    rows = DocRows({name: "\n".join(parts) for name, parts in texts.items()
                    if any(has_token(part) for part in parts)}, keywords, numbers)
    return rows, new_props


def _leaf(path: str, spec: Dict[str, Any]) -> Field:
    ftype = spec["type"]
    return Field(path, path, ftype, _kind(ftype, spec), spec.get("ignore_above"))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(field: Field, value: Any, fail: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise fail(field.name, field.type, value)
    try:
        number = float(value) if isinstance(value, str) else value
        if field.integer:
            if isinstance(number, float):
                if number != number or number in (float("inf"), float("-inf")):
                    raise ValueError(value)
                return int(number)
            return int(number)
        return float(number)
    except (TypeError, ValueError):
        raise fail(field.name, field.type, value) from None
