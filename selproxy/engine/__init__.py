"""An embedded Elasticsearch-compatible search engine on SQLite FTS5.

A small server that speaks a subset of Elasticsearch's REST API (see the
README) with BM25 ranking, for demos, tests and CI.  It is not a replacement
for Elasticsearch.  Needs the ``selproxy[engine]`` extra (Starlette, uvicorn).
"""
from __future__ import annotations

from .errors import EngineError
from .server import Engine, serve

__all__ = ("Engine", "EngineError", "serve")
