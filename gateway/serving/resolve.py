"""Which model a request's `model` names, local or remote: decided once, here."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import invalid_request, model_not_found
from gateway.scheduler import SlotView
from gateway.serving.call import Call


@dataclass(frozen=True)
class Remote:
    """A model served by other servers (an `upstream:` entry): no worker, no memory here."""

    model_id: str


def resolve(call: Call, name: str) -> SlotView | Remote:
    """The model a name (or alias) refers to, as far as this client may know: one outside its key's
    allow-list is reported as not existing. Noted in the request's record."""
    model_id = call.upstreams.settings.resolve(name)
    target: SlotView | Remote
    if model_id is not None and call.upstreams.get(model_id) is not None:
        target = Remote(model_id)
    else:
        target = call.scheduler.view(name)
        model_id = target.model_id
    if not call.principal.may_use(model_id):
        raise model_not_found(name)
    if call.record is not None:
        call.record.model = model_id
    return target


def resolve_local(call: Call, name: str) -> SlotView:
    """`resolve` for endpoints that only local models serve."""
    target = resolve(call, name)
    if isinstance(target, Remote):
        raise invalid_request(
            f"Model '{name}' is served by another server: this endpoint works with local models only.",
            param="model",
        )
    return target
