"""Claimed search requests: rewrite, rerank, answer in the engine's own format.

The modules are sans-io (``routes``, ``extract``, ``rewrite``, ``respond``,
``overrides``) except :mod:`.service`, the async glue the core calls.
"""
from .config import SOLR, ParamSearchAPI, SearchConfig, SearchRoute
from .routes import default_routes, solr_routes
from .service import SearchService

__all__ = ("SearchService", "SearchConfig", "SearchRoute", "ParamSearchAPI", "SOLR",
           "default_routes", "solr_routes")
