"""selproxy: a URL-selective HTTP/1.1 reverse proxy that reranks search results."""
from ._version import __version__
from .config import Config
from .errors import (
    BadRequest, BodyTooLarge, HandlerError, HeadersTooLarge, ProxyError,
    RequestLineTooLong, UpstreamTimeout, UpstreamUnavailable,
)
from .handler import Request, Response, Route, Upstream
from .rankers import AsyncCloses, BatchRanker, Ranker, RankKeywords, Scores, WarmsUp
from .server import Proxy, serve

__all__ = (
    "__version__", "Proxy", "serve", "Config", "Route", "Request", "Response",
    "Upstream", "Ranker", "BatchRanker", "RankKeywords", "WarmsUp", "AsyncCloses", "Scores",
    "ProxyError", "BadRequest", "BodyTooLarge",
    "HandlerError", "HeadersTooLarge", "RequestLineTooLong", "UpstreamTimeout",
    "UpstreamUnavailable",
)
