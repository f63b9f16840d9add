"""Starts the real gateway (`python -m gateway serve`) as a subprocess for the real tier."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SMOLLM = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_Q8 = MODELS / "SmolLM2-135M-Instruct.Q8_0.gguf"
GEMMA = MODELS / "gemma-3-270m-q4_k_m.gguf"
# Seconds a test waits for any one answer: generous, since a busy machine can be many times slower
# than an idle one. Tests assert states and counts, never that something was fast.
CLIENT_TIMEOUT = 600


def ensure_models() -> None:
    if not all(p.exists() for p in (SMOLLM, SMOLLM_Q8, GEMMA)):
        subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_models.py"), str(MODELS)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayServer:
    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = workdir / "models.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gateway.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path), "--port", str(self.port)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Model worker processes (spawned children), not multiprocessing's resource tracker."""
        pids = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return pids

    def statuses(self) -> dict[str, str]:
        data = httpx.get(f"{self.base_url}/v1/models", timeout=CLIENT_TIMEOUT).json()["data"]
        return {card["id"]: card["status"]["value"] for card in data}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def wait_for(predicate: Any, timeout: float = 120.0) -> bool:
    """Poll an observable condition until it holds or the (generous) deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
