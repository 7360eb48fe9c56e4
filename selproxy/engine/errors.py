"""Errors the engine answers with, in Elasticsearch's shape and status.

Each class carries the HTTP status and the Elasticsearch error ``type``; extra
metadata (``index``, ``resource.id``…) is rendered beside ``type`` and
``reason`` exactly as Elasticsearch does, in the shape the proxy's own errors
take (:func:`selproxy.errors.error_document`)::

    {"error": {"root_cause": [{...}], "type": ..., "reason": ..., ...}, "status": N}
"""
from __future__ import annotations

from typing import Any, Dict

from ..errors import error_document

__all__ = (
    "EngineError", "IndexNotFound", "ParsingError", "IllegalArgument",
    "ResourceAlreadyExists", "VersionConflict", "DocumentMissing",
    "DocumentParsingError", "MapperParsingError", "InvalidIndexName",
    "ActionRequestValidation", "QueryShardError", "ResourceNotFound", "UnsupportedFeature",
    "StrictDynamicMapping", "SearchContextMissing", "TooManySearchContexts", "ElasticsearchParseError",
    "ContentTooLong",
)


class EngineError(Exception):
    """Base class: an error the engine answers with an HTTP status."""

    status: int = 500
    es_type: str = "exception"

    def __init__(self, reason: str, **meta: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.meta: Dict[str, Any] = meta

    def cause(self) -> Dict[str, Any]:
        """The ``{"type", "reason", ...}`` object used in bodies and bulk items."""
        out: Dict[str, Any] = {"type": self.es_type, "reason": self.reason}
        out.update(self.meta)
        return out

    def body(self) -> Dict[str, Any]:
        return error_document(self.status, self.cause())


class IndexNotFound(EngineError):
    status = 404
    es_type = "index_not_found_exception"

    def __init__(self, index: str) -> None:
        meta = {"resource.type": "index_or_alias", "resource.id": index, "index_uuid": "_na_", "index": index}
        super().__init__(f"no such index [{index}]", **meta)


class ParsingError(EngineError):
    status = 400
    es_type = "parsing_exception"


class IllegalArgument(EngineError):
    status = 400
    es_type = "illegal_argument_exception"


class ResourceAlreadyExists(EngineError):
    status = 400
    es_type = "resource_already_exists_exception"


class VersionConflict(EngineError):
    status = 409
    es_type = "version_conflict_engine_exception"


class DocumentMissing(EngineError):
    status = 404
    es_type = "document_missing_exception"


class DocumentParsingError(EngineError):
    status = 400
    es_type = "document_parsing_exception"


class MapperParsingError(EngineError):
    status = 400
    es_type = "mapper_parsing_exception"


class InvalidIndexName(EngineError):
    status = 400
    es_type = "invalid_index_name_exception"


class ActionRequestValidation(EngineError):
    status = 400
    es_type = "action_request_validation_exception"


class QueryShardError(EngineError):
    status = 400
    es_type = "query_shard_exception"


class ResourceNotFound(EngineError):
    status = 404
    es_type = "resource_not_found_exception"


class UnsupportedFeature(EngineError):
    """A valid Elasticsearch request that this small engine does not implement."""
    status = 400
    es_type = "illegal_argument_exception"


class StrictDynamicMapping(EngineError):
    status = 400
    es_type = "strict_dynamic_mapping_exception"


class SearchContextMissing(EngineError):
    """A scroll or point-in-time id that expired, was closed or never existed.

    Elasticsearch reports it as a search that failed on every shard, with the
    missing context as the root cause; the clients raise ``NotFoundError``."""
    status = 404
    es_type = "search_context_missing_exception"

    def __init__(self, context_id: str) -> None:
        super().__init__(f"No search context found for id [{context_id}]")

    def body(self) -> Dict[str, Any]:
        cause = self.cause()
        return {"error": {"root_cause": [cause], "type": "search_phase_execution_exception",
                          "reason": "all shards failed", "phase": "query", "grouped": True,
                          "failed_shards": [{"shard": -1, "index": None, "reason": cause}]},
                "status": self.status}


class TooManySearchContexts(EngineError):
    """More open scrolls or points in time than the engine keeps (Elasticsearch's
    ``search.max_open_scroll_context``, 500 by default, answers 429 too)."""
    status = 429
    es_type = "too_many_scroll_contexts_exception"


class ElasticsearchParseError(EngineError):
    status = 400
    es_type = "parse_exception"


class ContentTooLong(EngineError):
    """A gzip request body inflates past ``http.max_content_length``."""
    status = 413
    es_type = "content_too_long_exception"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body inflates past http.max_content_length [{limit}b]")
