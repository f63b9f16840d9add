"""The browser console's routes: served at /ui/ when on, / redirected there, gone when off; the files
are public but every figure they show comes from the API behind the same keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from gateway.web.console import FILES

USER = "console-user-123456"
ADMIN = "console-admin-123456"
SECURED = {"api_keys": [{"id": "alice", "key": USER, "models": ["a"]}], "admin_key": ADMIN}


def make_client(make_config: Any, tmp_path: Path, gateway: dict[str, Any] | None = None) -> TestClient:
    doc = make_config({"a": {"aliases": ["a-alias"]}, "b": {}}, gateway=gateway)
    return TestClient(create_app(parse_settings(doc, tmp_path), spawn=FakeWorkers().spawn))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_root_redirects_to_the_console_and_its_files_are_served(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path) as client:
        redirect = client.get("/", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
        page = client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        # Every file the page names is served, with a type the browser runs as a module or a style.
        names = re.findall(r'(?:src|href)="([\w.]+\.(?:js|css))"', page.text)
        assert names == ["app.css", "app.js"]
        imported = set(re.findall(r'from "\./([\w.]+)"', "".join(p.read_text() for p in FILES.glob("*.js"))))
        for name in [*names, *imported]:
            response = client.get(f"/ui/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), name
        assert client.get("/ui", follow_redirects=False).status_code in (307, 308)
        assert client.get("/ui/missing.js").status_code == 404


def test_console_off_serves_neither_page_nor_redirect(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path, {"console": False}) as client:
        assert client.get("/", follow_redirects=False).status_code == 404
        assert client.get("/ui/").status_code == 404
        assert client.get("/ui/session").status_code == 404
        assert client.get("/v1/models").status_code == 200


def test_session_says_what_the_presented_key_may_do(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path, SECURED) as client:
        assert client.get("/ui/session").json() == {
            "keys_required": True,
            "key_id": None,
            "models": False,
            "admin": False,
        }
        assert client.get("/ui/session", headers=bearer("wrong-key-123456")).json()["models"] is False
        user = client.get("/ui/session", headers=bearer(USER)).json()
        assert user == {"keys_required": True, "key_id": "alice", "models": True, "admin": False}
        admin = client.get("/ui/session", headers={"x-api-key": ADMIN}).json()
        assert admin["admin"] is True and admin["models"] is False
        assert client.get("/ui/session", headers=bearer(USER)).headers["cache-control"] == "no-store"
    with make_client(make_config, tmp_path) as client:  # no keys at all: everything is open
        assert client.get("/ui/session").json() == {
            "keys_required": False,
            "key_id": "anonymous",
            "models": True,
            "admin": True,
        }


def test_the_page_serves_without_a_key_but_the_data_needs_one(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path, SECURED) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/admin/models", headers=bearer(USER)).status_code == 401
        assert client.get("/admin/requests", headers=bearer(USER)).status_code == 401
        assert [c["id"] for c in client.get("/v1/models", headers=bearer(USER)).json()["data"]] == ["a"]


def test_recent_requests_keep_the_log_fields_of_api_calls_only(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path, {**SECURED, "log_content": True}) as client:
        chat = {"model": "a-alias", "messages": [{"role": "user", "content": "secret words"}], "max_tokens": 4}
        assert client.post("/v1/chat/completions", json=chat, headers=bearer(USER)).status_code == 200
        assert client.post("/v1/chat/completions", json={**chat, "model": "b"}, headers=bearer(USER)).status_code == 404
        client.get("/v1/models", headers=bearer(USER))  # polling is not a request worth listing
        client.get("/admin/models", headers=bearer(ADMIN))
        client.get("/health")
        records = client.get("/admin/requests", headers=bearer(ADMIN)).json()["data"]
        assert [(r["endpoint"], r["status"], r["key_id"]) for r in records] == [
            ("/v1/chat/completions", 404, "alice"),
            ("/v1/chat/completions", 200, "alice"),
        ]
        done = records[1]
        assert done["model"] == "a" and done["completion_tokens"] > 0 and done["duration_ms"] >= 0
        assert "secret" not in str(records)  # never content, even with log_content on
        assert len(client.get("/admin/requests?limit=1", headers=bearer(ADMIN)).json()["data"]) == 1


def test_admin_models_show_aliases_and_the_batch(make_config: Any, tmp_path: Path) -> None:
    with make_client(make_config, tmp_path) as client:
        before = {m["id"]: m for m in client.get("/admin/models").json()["models"]}
        assert before["a"]["aliases"] == ["a-alias"] and before["a"]["batch"] is None
        client.post("/admin/models/a/load")
        after = {m["id"]: m for m in client.get("/admin/models").json()["models"]}
        batch = after["a"]["batch"]
        assert after["a"]["state"] == "loaded" and batch is not None
        assert batch["running"] == 0 and batch["kv_cells"] > 0
