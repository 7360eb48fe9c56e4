"""Stubs for ``selproxy/_routes.pyx``: the compiled route table."""
from typing import Dict, Iterable, Optional, Tuple, Union
from typing_extensions import disjoint_base

from .handler import Route

__all__ = ('RouteMatch', 'RouteTable')

@disjoint_base
class RouteMatch:
    """A route and the path segments it captured."""

    @property
    def route(self) -> Route: ...
    @property
    def params(self) -> Dict[str, str]: ...

@disjoint_base
class RouteTable:
    """Routes compiled once; matching runs in C per request head."""

    def __init__(self, routes: Iterable[Route] = ()) -> None: ...
    @property
    def routes(self) -> Tuple[Route, ...]: ...
    def __len__(self) -> int: ...
    def match(self, method: Union[str, bytes], target: Union[str, bytes]) -> Optional[RouteMatch]:
        """The first route that claims ``method`` and ``target``, or None."""
