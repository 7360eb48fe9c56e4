"""Stubs for ``selproxy/_routes.pyx``: the compiled route table."""
from typing import Dict, Iterable, Optional, Tuple, Union
from typing_extensions import disjoint_base

from .handler import NotifyRoute, Route

__all__ = ('RouteMatch', 'RouteTable')

@disjoint_base
class RouteMatch:
    """A route and the path segments it captured."""

    @property
    def route(self) -> Union[Route, NotifyRoute]: ...
    @property
    def params(self) -> Dict[str, str]: ...
    @property
    def notify(self) -> bool:
        """Whether the route is a notify route: passed through, its handler told."""

@disjoint_base
class RouteTable:
    """Routes compiled once; matching runs in C per request head."""

    def __init__(self, routes: Iterable[Union[Route, NotifyRoute]] = ()) -> None: ...
    @property
    def routes(self) -> Tuple[Union[Route, NotifyRoute], ...]: ...
    def __len__(self) -> int: ...
    def match(self, method: Union[str, bytes], target: Union[str, bytes]) -> Optional[RouteMatch]:
        """The first route that claims ``method`` and ``target``, or None."""
