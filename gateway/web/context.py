"""What a handler reads of the application and of its request: the services, and the request as
the request path sees it (`serving.Call`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from gateway.access.keys import ANONYMOUS, Principal
from gateway.observability.record import RequestRecord
from gateway.serving.call import Call

if TYPE_CHECKING:  # the services import every route, and the routes this module
    from gateway.web.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def principal_of(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def record_of(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)


def call_of(request: Request) -> Call:
    services = services_of(request)
    return Call(services.scheduler, services.upstreams, principal_of(request), record_of(request))
