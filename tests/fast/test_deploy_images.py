"""deploy/Dockerfile and deploy/Dockerfile.cuda hold the properties an operator relies on.

No container engine runs here; tests/real/test_real_image_command.py runs the image's command line."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.dockerfile import read
from tests.real.server import free_port

REPO = Path(__file__).resolve().parents[2]
IMAGES = [REPO / "deploy" / "Dockerfile", REPO / "deploy" / "Dockerfile.cuda"]


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the build context (last matching rule wins)."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/").removeprefix("**/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_image_is_multi_stage_slim_and_unprivileged(path: Path) -> None:
    stages = read(path)
    assert len(stages) >= 2, "build tools stay in a build stage"
    build, runtime = stages[0], stages[-1]
    assert build.name == "build"
    assert any("--from=build" in c.value for c in runtime.all("COPY"))
    runtime_installs = " ".join(r.value for r in runtime.all("RUN"))
    for tool in ("build-essential", "cmake", "nvcc", "-devel"):
        assert tool not in runtime_installs and tool not in runtime.base, tool
    if path.name.endswith("cuda"):
        assert "runtime" in runtime.base and "devel" in build.base
        assert "GGML_CUDA=on" in build.env()["CMAKE_ARGS"]
    user = runtime.last("USER").value.split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_image_runs_gateway_serve_with_health_and_signals(path: Path) -> None:
    runtime = read(path)[-1]
    assert runtime.last("CMD").exec_form() == ["gateway", "serve"]  # the README's command, nothing added
    assert runtime.last("ENTRYPOINT").exec_form() == ["tini", "--"]  # PID 1 forwards SIGTERM, reaps workers
    assert runtime.last("STOPSIGNAL").value == "SIGTERM"
    health = runtime.last("HEALTHCHECK")
    assert health.exec_form() == ["gateway", "health"]
    assert "--start-period" in health.value  # model loading at start does not count as unhealthy
    env = runtime.env()
    assert env["GATEWAY_HOST"] == "0.0.0.0" and env["GATEWAY_PORT"] == "8000"
    assert runtime.last("EXPOSE").value == env["GATEWAY_PORT"]
    workdir = runtime.last("WORKDIR").value
    assert runtime.last("VOLUME").exec_form() == [f"{workdir}/models"]  # the default config's ./models


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_build_context_has_what_the_image_copies_and_no_models(path: Path) -> None:
    for stage in read(path):
        for copy in stage.all("COPY"):
            if "--from=" in copy.value:
                continue
            *sources, _ = copy.value.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    for kept_out in (".venv", "models", ".git", "tests", "models/x.gguf", "gateway/__pycache__"):
        assert dockerignored(kept_out), kept_out


def test_readme_shows_the_image_command() -> None:
    assert "gateway serve" in (REPO / "README.md").read_text()


def test_health_probe_fails_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--port", str(free_port()), "--timeout", "2"]) == 1


def test_health_probe_asks_loopback_when_the_image_listens_on_all_interfaces() -> None:
    """GATEWAY_HOST=0.0.0.0 in the image: the probe connects to 127.0.0.1 and wants a 200."""
    import http.server
    import threading

    statuses = iter([200, 503])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(next(statuses) if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = str(server.server_address[1])
        assert main(["health", "--host", "0.0.0.0", "--port", port]) == 0
        assert main(["health", "--host", "0.0.0.0", "--port", port]) == 1
    finally:
        server.shutdown()
        server.server_close()
