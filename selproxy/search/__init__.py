"""Claimed search requests: rewrite, rerank, answer in the engine's own format.

The modules are sans-io (``routes``, ``extract``, ``rewrite``, ``respond``,
``overrides``, ``interleave``) except :mod:`.service`, the async glue the core
calls, :mod:`.relevance` (interleaving, capture and the click beacon, called
from the service) and :mod:`.capture`'s writer thread.
"""
from .capture import CaptureConfig
from .config import SOLR, ParamSearchAPI, SearchConfig, SearchRoute
from .interleave import InterleaveConfig
from .routes import default_routes, solr_routes
from .service import SearchService

__all__ = ("SearchService", "SearchConfig", "SearchRoute", "ParamSearchAPI", "SOLR",
           "default_routes", "solr_routes", "InterleaveConfig", "CaptureConfig")
