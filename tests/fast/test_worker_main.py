"""Workers started from the `gateway` console script do not run the script's imports again."""

from __future__ import annotations

import multiprocessing.spawn
import sys
import types

import pytest

from gateway.cli.main import workers_skip_this_script


def test_a_console_script_main_is_not_imported_by_spawned_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    script = types.ModuleType("__main__")
    script.__file__ = "/venv/bin/gateway"  # what pip's console script is: a file with no module spec
    script.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", script)
    before = multiprocessing.spawn.get_preparation_data("gateway-worker")
    assert before["init_main_from_path"] == "/venv/bin/gateway"  # the web stack, again, in every worker
    workers_skip_this_script()
    after = multiprocessing.spawn.get_preparation_data("gateway-worker")
    assert "init_main_from_path" not in after
    assert after["init_main_from_name"] == "gateway.__main__"  # which multiprocessing does not import


def test_a_module_main_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="pytest.__main__")  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", main)
    workers_skip_this_script()
    assert main.__spec__.name == "pytest.__main__"
