"""A hold has one owner: whatever step fails after a request holds its model, the hold
is released exactly once, the model serves the next request, and /admin/models shows no hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.engine.base import Generation
from gateway.engine.process.handle import ProcessEngine
from gateway.memory.facts import inspect_models
from gateway.serving import plan, run
from gateway.serving.tools import plan as toolplan
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "hello there"}]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
NAMED = {"type": "function", "function": {"name": "add"}}


class Boom(Exception):
    """A bug of ours, injected."""


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected")


def _shaping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "_sampling", _raise)


def _tool_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolplan, "forced_schema", _raise)


def _submit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ProcessEngine, "generate", _raise)


def _first_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Generation, "next_event", _raise)


def _mid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The third event: a stream's second delta (its first went out), a whole answer's end."""
    original = Generation.next_event
    events = 0

    async def fail_at_the_third_event(self: Generation) -> Any:
        nonlocal events
        event = await original(self)
        events += 1
        if events == 3:
            raise Boom("injected")
        return event

    monkeypatch.setattr(Generation, "next_event", fail_at_the_third_event)


def _shaping_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the generation finished, building the response body fails."""
    from gateway.protocol.replies import ChatResponder

    monkeypatch.setattr(ChatResponder, "completion", _raise)
    monkeypatch.setattr(ChatResponder, "finish_chunk", _raise)


STEPS = {
    "request shaping": _shaping,
    "tool grammar": _tool_grammar,
    "submit to the worker": _submit,
    "first event": _first_event,
    "mid-stream": _mid_stream,
    "answer shaping": _shaping_the_answer,
}


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(make_config({"m": {}}), tmp_path)
    app = create_app(settings, spawn=FakeWorkers().spawn, budget=2**40)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def holds(client: TestClient) -> dict[str, Any]:
    listing = client.get("/admin/models").json()
    (model,) = listing["models"]
    return {"leases": model["leases"], "in_flight": model["in_flight"], "cpu": listing["cpu"]["in_use"]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_any_step_releases_the_hold(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, step: str, stream: bool
) -> None:
    body = {"model": "m", "messages": MSG, "stream": stream, "tools": TOOLS, "tool_choice": NAMED}
    with monkeypatch.context() as patch:
        STEPS[step](patch)
        response = client.post("/v1/chat/completions", json=body)
        text = response.text
    # Failed before the answer began: a 500 of its own; after: in-band in a 200 stream.
    if response.status_code == 200:
        assert stream and '"error"' in text and text.rstrip().endswith("data: [DONE]"), text
    else:
        assert response.status_code == 500, text
        assert response.json()["error"]["type"] == "server_error"
    assert holds(client) == {"leases": 0, "in_flight": 0, "cpu": 0}
    # The model still serves, streamed or not.
    again = client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
    assert again.status_code == 200
    assert holds(client) == {"leases": 0, "in_flight": 0, "cpu": 0}


def test_every_step_was_reached(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each injected step is on the path of a normal request (else the test above proves nothing)."""
    reached: set[str] = set()
    for name, target, attribute in [
        ("request shaping", plan, "_sampling"),
        ("tool grammar", toolplan, "forced_schema"),
        ("submit to the worker", ProcessEngine, "generate"),
        ("first event", Generation, "next_event"),
        ("run", run, "start"),
    ]:
        original = getattr(target, attribute)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            reached.add(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(target, attribute, spy)
    body = {"model": "m", "messages": MSG, "stream": True, "tools": TOOLS, "tool_choice": NAMED}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert reached == {"request shaping", "tool grammar", "submit to the worker", "first event", "run"}


def test_duplicate_tool_names_are_a_400_and_hold_nothing(client: TestClient) -> None:
    """Once a 500 that leaked the model's hold: now refused before anything is held."""
    body = {"model": "m", "messages": MSG, "tools": TOOLS * 2, "tool_choice": NAMED}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "tools")
    assert holds(client) == {"leases": 0, "in_flight": 0, "cpu": 0}
    assert client.post("/v1/chat/completions", json={"model": "m", "messages": MSG}).status_code == 200


@pytest.mark.anyio
async def test_a_stream_dropped_unread_releases_its_hold(make_config: Any, tmp_path: Path) -> None:
    from gateway.access.keys import ANONYMOUS
    from gateway.observability.metrics import Metrics
    from gateway.protocol import parse_chat_request
    from gateway.protocol.answer import Ended
    from gateway.scheduler import Scheduler
    from gateway.serving.call import Call
    from gateway.serving.plan import plan_chat
    from gateway.upstream.proxy import Upstreams

    settings = parse_settings(make_config({"m": {}}), tmp_path)
    factory = FakeWorkers({"m": FakeScript(reply_tokens=20, step_delay=0.01)})  # outlasts the close
    scheduler = Scheduler(settings, inspect_models(settings), factory.engine, budget=2**40)
    chat = parse_chat_request(b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}')
    plan = plan_chat(chat, scheduler.view("m"), settings.gateway)
    call = Call(scheduler, Upstreams(settings, Metrics()), ANONYMOUS)
    stream = await run.open_stream(call, plan)
    assert stream.prompt_tokens == 1 and scheduler.view("m").running == 1
    await stream.close()
    await stream.close()  # twice is harmless
    assert scheduler.view("m").holds == 0 and scheduler.cpu.in_use == 0
    (worker,) = factory.workers
    assert (await worker.outcome(1)).finish_reason == "cancelled"  # its generation stopped too
    read = await run.open_stream(call, plan)
    chunks = [chunk async for chunk in read.chunks]
    assert chunks[-2] == Ended(0, "stop") and scheduler.view("m").holds == 0
    await scheduler.close()
    await call.upstreams.close()
