"""The browser console (/ui/) in a real headless Chromium (Debian's, driven by Playwright) against the
real gateway on real models: keys, the overview and its controls, a streamed chat, compare."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, SMOLLM_Q8, GatewayServer

pytestmark = pytest.mark.real

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by scripts/setup; Playwright downloads none
USER_KEY = "console-user-key-0123"
ADMIN_KEY = "console-admin-key-0123"
# Where the README's screenshots are written when asked (GATEWAY_SCREENSHOTS=docs); a temp dir otherwise.
SHOTS = os.environ.get("GATEWAY_SCREENSHOTS")
WAIT_MS = CLIENT_TIMEOUT * 1000
sync_api.expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    config = {
        "gateway": {
            "memory_budget": "2GiB",
            "api_keys": [{"id": "alice", "key": USER_KEY}],
            "admin_key": ADMIN_KEY,
        },
        "models": {"smollm2": model(SMOLLM, aliases=["gpt-4o-mini"], ttl="10m"), "smollm2-q8": model(SMOLLM_Q8)},
    }
    server = GatewayServer(config, tmp_path_factory.mktemp("console"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/setup installs it (apt-get install chromium)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, gateway: GatewayServer) -> Iterator[Any]:
    """A fresh page (its own session storage) at 1280 px that fails the test on any console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=gateway.base_url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], errors


def sign_in(page: Any, key: str, keyboard: bool = False) -> None:
    page.goto("/")
    field = page.get_by_label("Key", exact=True)
    if keyboard:  # the field has the focus when the page asks for a key; typing and Enter suffice
        sync_api.expect(field).to_be_focused()
        page.keyboard.type(key)
        page.keyboard.press("Enter")
        return
    field.fill(key)
    page.get_by_role("button", name="Use this key").click()


def shot(page: Any, name: str, tmp_path: Path) -> None:
    folder = Path(SHOTS) if SHOTS else tmp_path
    page.screenshot(path=str(folder / name), full_page=True)


def admin(gateway: GatewayServer, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(f"{gateway.base_url}{path}", headers=headers, timeout=CLIENT_TIMEOUT).raise_for_status()


def test_root_redirects_and_a_wrong_key_is_refused(page: Any) -> None:
    page.goto("/")
    assert page.url.endswith("/ui/")
    expect = sync_api.expect
    expect(page.get_by_role("heading", name="API key")).to_be_visible()
    sign_in(page, "not-a-key-at-all", keyboard=True)
    expect(page.get_by_role("alert").filter(has_text="That key was refused.")).to_be_visible()
    expect(page.get_by_role("navigation", name="Views")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_user_key_sees_its_models_without_admin_parts(page: Any) -> None:
    expect = sync_api.expect
    sign_in(page, USER_KEY)
    row = page.locator('tr[data-model="smollm2"]')
    expect(row).to_contain_text("aka gpt-4o-mini")
    expect(page.locator('tr[data-model="smollm2-q8"]')).to_be_visible()
    expect(page.get_by_role("button", name="Load smollm2", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Reload configuration")).to_be_hidden()
    expect(page.get_by_role("heading", name="Memory pools")).to_be_hidden()
    expect(page.get_by_role("heading", name="Recent requests")).to_be_hidden()
    expect(page.get_by_text("Key “alice”: models")).to_be_visible()


def test_a_chat_streams_into_the_page(page: Any) -> None:
    expect = sync_api.expect
    sign_in(page, USER_KEY)
    page.get_by_role("button", name="Playground").click()
    page.get_by_label("Model 1", exact=True).select_option("smollm2")
    page.get_by_text("Sampling").click()
    page.get_by_label("Max tokens").fill("48")
    # Count how many times the answer's text changes while it streams: more than once is a stream.
    page.evaluate(
        """() => {
        window.__updates = 0;
        new MutationObserver(() => { window.__updates += 1; })
          .observe(document.querySelector('#columns'), {subtree: true, characterData: true, childList: true});
        }"""
    )
    page.get_by_label("Message").fill("Count from one to twenty in words.")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".msg.assistant[data-done]")
    expect(answer).to_have_count(1)
    assert answer.locator(".content").inner_text().strip(), answer.evaluate("e => e.outerHTML")
    expect(answer.locator(".stats")).to_contain_text("tokens/s")
    expect(answer.locator(".stats")).to_contain_text("TTFT")
    assert page.evaluate("window.__updates") > 3
    # The conversation goes on: the second turn carries the first.
    page.get_by_label("Message").fill("And now backwards.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant[data-done]")).to_have_count(2)
    expect(page.locator(".msg.user")).to_have_count(2)


def test_compare_shows_two_answers_side_by_side(page: Any, tmp_path: Path) -> None:
    expect = sync_api.expect
    sign_in(page, USER_KEY)
    page.get_by_role("button", name="Playground").click()
    page.get_by_label("Model 1", exact=True).select_option("smollm2")
    page.get_by_role("button", name="Compare with another model").click()
    page.get_by_label("Model 2", exact=True).select_option("smollm2-q8")
    page.get_by_label("System prompt").fill("You are brief.")
    page.get_by_text("Sampling").click()
    page.get_by_label("Max tokens").fill("32")
    page.get_by_label("Message").fill("Name three colours.")
    page.get_by_role("button", name="Send").click()
    columns = page.locator(".column")
    expect(columns).to_have_count(2)
    for index, name in enumerate(["smollm2", "smollm2-q8"]):
        column = columns.nth(index)
        expect(column.get_by_role("heading", name=name, exact=True)).to_be_visible()
        done = column.locator(".msg.assistant[data-done]")
        expect(done).to_have_count(1)
        assert done.locator(".content").inner_text().strip()
        expect(done.locator(".stats")).to_contain_text(" out")
        expect(column.locator(".memory")).to_contain_text("memory")
    # The settings stay inside their panel (an open fieldset used to push its inputs over the answers).
    settings = page.locator("#settings").bounding_box()
    field = page.get_by_label("Max tokens").bounding_box()
    assert field["x"] + field["width"] <= settings["x"] + settings["width"]
    assert page.locator("#settings").evaluate("e => e.scrollWidth <= e.clientWidth")
    boxes = [columns.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and abs(boxes[0]["y"] - boxes[1]["y"]) < 2
    shot(page, "console-compare.png", tmp_path)


def test_overview_follows_a_load_and_shows_the_requests(page: Any, gateway: GatewayServer, tmp_path: Path) -> None:
    expect = sync_api.expect
    admin(gateway, "/admin/models/smollm2/load")
    sign_in(page, ADMIN_KEY)
    expect(page.get_by_role("heading", name="Memory pools")).to_be_visible()
    host = page.locator(".pool").first
    expect(host).to_contain_text("host")
    expect(host.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"host: .+ budget \(.*smollm2 "))
    state = page.locator('tr[data-model="smollm2"] .state')
    expect(state).to_have_text("loaded")
    page.get_by_role("button", name="Unload smollm2", exact=True).click()
    expect(state).to_have_text("unloaded")
    load = page.get_by_role("button", name="Load smollm2", exact=True)
    expect(load).to_be_enabled()
    load.press("Enter")  # by keyboard
    expect(state).to_have_text("loaded")
    # A request made through the API shows in the recent requests, with its key and tokens, not its text.
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={"model": "smollm2", "messages": [{"role": "user", "content": "secret-words"}], "max_tokens": 8},
        timeout=CLIENT_TIMEOUT,
    )
    response.raise_for_status()
    recent = page.locator(f'#recent tr[data-request-id="{response.headers["x-request-id"]}"]')
    expect(recent).to_contain_text("alice")
    expect(recent).to_contain_text("/v1/chat/completions")
    expect(page.locator("#recent")).not_to_contain_text("secret-words")
    expect(page.locator('tr[data-model="smollm2"]')).to_contain_text("of 1")  # batch slots: n of parallel
    shot(page, "console-overview.png", tmp_path)


def test_a_model_still_loading_shows_apart_in_its_pool(page: Any, gateway: GatewayServer) -> None:
    """A load in flight lasts well under a second here, too short to catch: the gateway's own
    /admin/models answer is rewritten in flight to one taken mid-load (the model `loading`, its claim
    in the pool's `loading`, not in `used`)."""
    expect = sync_api.expect
    admin(gateway, "/admin/models/smollm2/load")

    def mid_load(route: Any) -> None:
        state = route.fetch().json()
        row = next(m for m in state["models"] if m["id"] == "smollm2")
        row["state"] = "loading"
        claim = row["memory_pools"]["host"]
        host = next(p for p in state["pools"] if p["name"] == "host")
        host["used"], host["loading"] = host["used"] - claim, claim
        route.fulfill(json=state)

    page.route("**/admin/models", mid_load)
    sign_in(page, ADMIN_KEY)
    host = page.locator(".pool").first
    expect(host.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"loading \(smollm2 \(loading\) "))
    expect(host.locator(".fill.loading")).to_have_count(1)
    expect(host.locator(".pool-loading")).to_contain_text("loading")


def test_phone_width(page: Any) -> None:
    expect = sync_api.expect
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, ADMIN_KEY)
    expect(page.locator('tr[data-model="smollm2"]')).to_be_visible()
    expect(page.get_by_role("button", name="Playground")).to_be_hidden()  # the admin key may not chat here
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_role("button", name="Forget key").click()
    sign_in(page, USER_KEY)
    page.get_by_role("button", name="Playground").click()
    expect(page.get_by_label("Message")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def sse(*chunks: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_options_reach_the_request_and_reasoning_is_folded_apart(page: Any) -> None:
    """What the page sends for its options, and how it shows reasoning, tool calls and a vision model,
    on a stream the test writes itself (these small models neither reason nor see)."""
    expect = sync_api.expect
    sent: list[dict[str, Any]] = []

    def models(route: Any) -> None:
        body = route.fetch().json()
        for card in body["data"]:
            card["capabilities"] = ["chat", "vision"] if card["id"] == "smollm2-q8" else ["chat", "reasoning"]
        route.fulfill(json=body)

    def chat(route: Any) -> None:
        sent.append(route.request.post_data_json)
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "smollm2"}

        def delta(**d: Any) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}

        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        body = sse(
            delta(role="assistant", content=""),
            delta(reasoning_content="The user wants "),
            delta(reasoning_content="the weather."),
            delta(content="Checking."),
            delta(tool_calls=[call]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]),
            {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}},
        )
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/v1/models", models)
    page.route("**/v1/chat/completions", chat)
    sign_in(page, USER_KEY)
    page.get_by_role("button", name="Playground").click()
    page.get_by_label("Model 1", exact=True).select_option("smollm2")
    expect(page.get_by_label("Image")).to_be_hidden()  # smollm2's card does not list vision
    page.get_by_label("Model 1", exact=True).select_option("smollm2-q8")
    expect(page.get_by_label("Image")).to_be_visible()
    page.get_by_label("Model 1", exact=True).select_option("smollm2")
    page.get_by_text("Sampling").click()
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Seed").fill("7")
    page.get_by_text("JSON schema", exact=True).click()
    page.get_by_label("Answer in JSON matching this schema").fill('{"type": "object"}')
    page.get_by_text("Tools", exact=True).click()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    page.get_by_label("Tools (an OpenAI tools array)").fill(json.dumps(tools))
    page.get_by_label("System prompt").fill("Be terse.")
    page.get_by_label("Message").fill("Weather in Oslo?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant[data-done]")
    expect(answer).to_have_count(1)
    body = sent[0]
    assert body["model"] == "smollm2" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.3 and body["seed"] == 7 and body["max_tokens"] == 256
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    assert body["tools"] == tools
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    reasoning = answer.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning).not_to_have_attribute("open", "")  # folded until opened
    assert reasoning.locator(".reasoning-text").text_content() == "The user wants the weather."
    expect(answer.locator(".content")).to_have_text("Checking.")
    expect(answer.locator(".tool-calls")).to_have_text('get_weather({"city": "Oslo"})')
    expect(answer.locator(".stats")).to_contain_text("9 in, 7 out")
    # The next turn carries the answer and its tool call (the conversation as the API expects it).
    page.get_by_label("Message").fill("Thanks.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant[data-done]")).to_have_count(2)
    assistant = sent[1]["messages"][2]
    assert assistant["content"] == "Checking." and assistant["tool_calls"][0]["function"]["name"] == "get_weather"
