"""`gateway serve|check|schema|health`: the command line, and settings → uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from gateway.cli.check import check
from gateway.config import DEFAULT_CONFIG_NAME, Settings, default_settings, json_schema, load_settings
from gateway.errors import ConfigError
from gateway.memory.facts import inspect_models

log = logging.getLogger("gateway")


def _config_path(config: Path | None) -> Path | None:
    """--config, else ./models.yaml, else None (the embedded default)."""
    if config is not None:
        return config
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def settings_for(config: Path | None) -> Settings:
    path = _config_path(config)
    return load_settings(path) if path else default_settings(Path.cwd())


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal after its graceful shutdown; a drained SIGTERM is a clean exit.
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.web.app import create_app

    config_path = _config_path(args.config)
    settings = settings_for(config_path)
    facts = inspect_models(settings)
    app = create_app(settings, facts=facts, config_path=config_path, handle_sighup=True, watch_config=args.watch_config)
    grace = settings.gateway.shutdown_grace
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(grace) + 2,
        lifespan="on",
        access_log=False,  # the gateway writes its own structured access log
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()
    return 0


def health(args: argparse.Namespace) -> int:
    """GET /health of a local gateway: exit 0 when it answers 200 (a container HEALTHCHECK)."""
    host = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{args.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _listen_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument(
        "--host", default=env.get("GATEWAY_HOST", "127.0.0.1"), help="default $GATEWAY_HOST or 127.0.0.1"
    )
    parser.add_argument(
        "--port", type=int, default=int(env.get("GATEWAY_PORT", "8000")), help="default $GATEWAY_PORT or 8000"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for local GGUF models")
    sub = parser.add_subparsers(dest="command", required=True)
    # Defaults come from GATEWAY_* environment variables where set: how a container image or a
    # Kubernetes pod configures the same `gateway serve` command line.
    env = os.environ
    run = sub.add_parser("serve", help="serve the API")
    run.add_argument(
        "--config",
        type=Path,
        default=Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None,
        help="models.yaml (default: $GATEWAY_CONFIG, else ./models.yaml)",
    )
    _listen_arguments(run)
    run.add_argument(
        "--log-level",
        default=env.get("GATEWAY_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
    )
    run.add_argument(
        "--watch-config",
        type=float,
        default=float(env.get("GATEWAY_WATCH_CONFIG", "0")),
        metavar="SECONDS",
        help="check the configuration file this often and reload it when it changes (0: never; default "
        "$GATEWAY_WATCH_CONFIG or 0)",
    )
    run.set_defaults(func=serve)
    probe = sub.add_parser("health", help="exit 0 when the gateway on --host/--port answers GET /health")
    _listen_arguments(probe)
    probe.add_argument("--timeout", type=float, default=5.0)
    probe.set_defaults(func=health)
    chk = sub.add_parser("check", help="validate the configuration and show memory estimates")
    chk.add_argument("--config", type=Path, default=None)
    chk.add_argument(
        "--measure", action="store_true", help="load each model once and show the estimate's error per memory pool"
    )
    chk.set_defaults(func=lambda args: check(settings_for(args.config), args.measure))
    sch = sub.add_parser("schema", help="print the JSON schema of models.yaml")
    sch.set_defaults(func=schema)
    return parser


def workers_skip_this_script() -> None:
    """Run from the `gateway` console script, `__main__` is that script, and every spawned worker would
    run its imports again (the CLI, the web stack, pydantic: 15 MiB more per worker than under
    `python -m gateway`). multiprocessing leaves a main module named `<package>.__main__` alone, so
    the script's module gets the name `python -m gateway` gives it."""
    script = sys.modules["__main__"]
    if getattr(script, "__spec__", None) is None and getattr(script, "__file__", None):
        script.__spec__ = importlib.util.find_spec("gateway.__main__")


def main(argv: list[str] | None = None) -> int:
    workers_skip_this_script()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"gateway: configuration error:\n{exc}", file=sys.stderr)
        return 2
    return code
