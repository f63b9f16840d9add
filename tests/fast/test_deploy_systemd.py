"""deploy/systemd/llm-gateway.service: verified by systemd itself (`systemd-analyze verify` and its
offline security review, in a throw-away root holding the unit's executables), and its command line
is one `gateway` accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli.main import build_parser

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "llm-gateway.service"
SYSTEM_UNITS = Path("/lib/systemd/system")
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(), reason="systemd-analyze is not installed"
)


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def fake_root(tmp_path: Path, unit_text: str) -> Path:
    """A root with systemd's own units, executables at the unit's paths, and the unit installed."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    section = service()
    for key in ("ExecStart", "ExecReload"):
        program = root / shlex.split(section[key])[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    target = root / "etc/systemd/system" / UNIT.name
    target.parent.mkdir(parents=True)
    target.write_text(unit_text)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{UNIT.name}"],
        capture_output=True,
        text=True,
    )


@needs_systemd
def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    result = verify(fake_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_systemd
def test_verification_catches_a_typo(tmp_path: Path) -> None:
    result = verify(fake_root(tmp_path, UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt")))
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr


@needs_systemd
def test_security_review_rates_the_unit_well_protected(tmp_path: Path) -> None:
    root = fake_root(tmp_path, UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--threshold=25", UNIT.name],
        capture_output=True,
        text=True,
    )
    # 0 (fully protected) .. 100 (exposed), printed as 0.0 .. 10.0: "OK" is below 3.0 here.
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    assert float(line.split(":")[1].split()[0]) <= 2.5, line


def test_unit_runs_gateway_serve_hardened() -> None:
    section = service()
    argv = shlex.split(section["ExecStart"])
    assert Path(argv[0]).name == "gateway" and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])
    assert args.config == Path("/etc/llm-gateway/models.yaml") and args.port == 8000
    assert section["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reload by diff, no restart
    assert section["Restart"] == "on-failure"
    assert section["DynamicUser"] == "yes" and section["ProtectSystem"] == "strict"
    assert section["NoNewPrivileges"] == "yes" and section["CapabilityBoundingSet"] == ""
    assert section["KillSignal"] == "SIGTERM" and int(section["TimeoutStopSec"]) > 30  # shutdown_grace
    assert section["RestartPreventExitStatus"] == "2"  # an invalid configuration (gateway's exit code)
