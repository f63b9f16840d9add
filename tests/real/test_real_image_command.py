"""The container image's command line, run outside a container: what `docker run` would start.

CMD, HEALTHCHECK, ENV, WORKDIR and STOPSIGNAL are read from deploy/Dockerfile, so the image cannot
drift from what is tested here. Only the listening address is changed (as `docker run -e` would):
loopback and a free port instead of 0.0.0.0:8000."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai import OpenAI

from tests.dockerfile import read
from tests.real.server import CLIENT_TIMEOUT, MODELS, REPO, free_port

pytestmark = pytest.mark.real
VENV_BIN = Path(sys.executable).parent


def image_environment(stage_env: dict[str, str], port: int) -> dict[str, str]:
    env = {**os.environ}
    for key, value in stage_env.items():
        env[key] = value.replace("/opt/gateway/bin", str(VENV_BIN)).replace("$PATH", os.environ["PATH"])
    env.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))
    return env


def resolve(argv: list[str], env: dict[str, str]) -> list[str]:
    program = shutil.which(argv[0], path=env["PATH"])
    assert program is not None and Path(program).parent == VENV_BIN, program
    return [program, *argv[1:]]


def test_image_command_serves_answers_health_and_stops_gracefully(tmp_path: Path) -> None:
    runtime = read(REPO / "deploy" / "Dockerfile")[-1]
    # The image's working directory, with the models volume mounted: the embedded default serves from it.
    workdir = tmp_path / runtime.last("WORKDIR").value.strip("/")
    workdir.mkdir(parents=True)
    (workdir / "models").symlink_to(MODELS)
    port = free_port()
    env = image_environment(runtime.env(), port)
    health = resolve(runtime.last("HEALTHCHECK").exec_form(), env)
    stop_signal = getattr(signal, runtime.last("STOPSIGNAL").value)
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        resolve(runtime.last("CMD").exec_form(), env), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
        (card,) = client.models.list().data
        assert card.id == "smollm2-135m-instruct"  # the embedded default, from the volume
        # `docker stop` sends STOPSIGNAL during a stream: the stream finishes, the process exits 0.
        stream = client.chat.completions.create(
            model=card.id,
            messages=[{"role": "user", "content": "Count from one to fifty in words."}],
            max_tokens=16,  # finishes well within shutdown_grace even on a loaded machine
            temperature=0,
            stream=True,
        )
        pieces: list[str] = []
        finish: list[str | None] = []
        first = threading.Event()

        def read_stream() -> None:
            for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    first.set()
                    finish.append(chunk.choices[0].finish_reason)

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(300)
        process.send_signal(stop_signal)
        reader.join(300)
        assert finish[-1] in ("stop", "length") and "".join(pieces)
        assert process.wait(300) == 0
        assert subprocess.run(health, env=env, capture_output=True).returncode == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
