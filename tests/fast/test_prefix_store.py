"""The prefix store on disk (engine/prefixstore): files are used only under their exact key and
whole, the directory stays under its bound least recently used first, and two workers share it."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.prefixstore.files import MAGIC
from gateway.engine.prefixstore.key import model_key
from gateway.engine.prefixstore.store import PrefixStore, usage
from gateway.engine.worker.saved import Cached, choose

TOKENS = list(range(100, 400))
STATE = bytes(range(256)) * 40


def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x01" * 5000)
    return path


def config(path: Path, **overrides: Any) -> dict[str, Any]:
    base = {"path": str(path), "n_gpu_layers": 0, "flash_attn": "auto", "cache_type_k": "f16", "cache_type_v": "f16"}
    return {**base, **overrides}


def key_of(path: Path, build: str = "llama 1", **overrides: Any) -> bytes:
    key = model_key(config(path, **overrides), build)
    assert key is not None
    return key


def kv_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.kv"))


def test_a_saved_prefix_is_found_and_read_back_by_another_worker(tmp_path: Path) -> None:
    key = key_of(model_file(tmp_path))
    writer = PrefixStore(tmp_path / "store", key, 10**9)
    assert writer.save(TOKENS, STATE) > len(STATE)
    reader = PrefixStore(tmp_path / "store", key, 10**9)  # a later load, in another process
    stored, shared = reader.best([*TOKENS[:250], 7, 8, 9], longest=1000)
    assert stored is not None and shared == 250
    assert stored.tokens == tuple(TOKENS)
    assert reader.load(stored) == STATE
    assert reader.best([*TOKENS, 1], longest=len(TOKENS) - 1) == (None, 0)  # longer than a context: unused
    assert reader.best([5, 6, 7], longest=1000) == (None, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"cache_type_k": "q8_0"},
        {"cache_type_v": "q4_0"},
        {"flash_attn": "on"},
        {"n_gpu_layers": -1},
        {"placement": {"n_gpu_layers": 12}},
        {"build": "llama 2"},
        {"model": "touched"},
        {"model": "rewritten"},
        {"model": "projector"},
    ],
)
def test_a_file_under_any_other_key_is_never_used_and_is_discarded(tmp_path: Path, change: dict[str, Any]) -> None:
    path = model_file(tmp_path)
    old = key_of(path)
    store = PrefixStore(tmp_path / "store", old, 10**9)
    store.save(TOKENS, STATE)
    if change.get("model") == "touched":
        os.utime(path, ns=(1, 1))
        change = {}
    elif change.get("model") == "rewritten":
        path.write_bytes(b"GGUF" + b"\x02" * 5000)  # same size
        os.utime(path, ns=(os.stat(path).st_atime_ns, 5))
        change = {}
    elif change.get("model") == "projector":  # a vision projector makes an image's cells
        (tmp_path / "mmproj.gguf").write_bytes(b"GGUF projector")
        change = {"mmproj": str(tmp_path / "mmproj.gguf")}
    build = change.pop("build", "llama 1")
    new = key_of(path, build, **change)
    assert new != old
    fresh = PrefixStore(tmp_path / "store", new, 10**9)
    assert fresh.best(TOKENS, 1000) == (None, 0)  # another key's files are not even looked at
    # Under the new key's name (a digest collision, a copied file), the header's key still rules it out.
    [saved] = kv_files(tmp_path / "store")
    impostor = tmp_path / "store" / saved.name.replace(saved.name.split("-")[0], fresh._prefix.rstrip("-"))
    saved.rename(impostor)
    assert fresh.best(TOKENS, 1000) == (None, 0)
    assert not impostor.exists()


def test_a_missing_model_file_has_no_key(tmp_path: Path) -> None:
    assert model_key(config(tmp_path / "absent.gguf"), "llama 1") is None
    assert model_key(config(model_file(tmp_path), mmproj=str(tmp_path / "absent")), "llama 1") is None


def test_an_image_s_placeholder_ids_are_kept_exactly(tmp_path: Path) -> None:
    """An image's positions hold ids from its digest, far beyond 64 bits (engine/worker/media.py)."""
    tokens = [*TOKENS[:80], *(-(1 + 0xFEDCBA987654321 * 2**24 + i) for i in range(16)), *TOKENS[80:]]
    key = key_of(model_file(tmp_path))
    PrefixStore(tmp_path / "store", key, 10**9).save(tokens, STATE)
    reader = PrefixStore(tmp_path / "store", key, 10**9)
    stored, shared = reader.best(tokens, 1000)
    assert stored is not None and shared == len(tokens) and reader.load(stored) == STATE
    other_image = [*tokens[:80], -5, *tokens[81:]]
    assert reader.best(other_image, 1000)[1] == 80


@pytest.mark.parametrize("damage", ["truncate", "payload", "header", "magic", "empty"])
def test_a_damaged_file_is_discarded_and_deleted(tmp_path: Path, damage: str) -> None:
    key = key_of(model_file(tmp_path))
    PrefixStore(tmp_path / "store", key, 10**9).save(TOKENS, STATE)
    [path] = kv_files(tmp_path / "store")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "payload":
        data[-1] ^= 1
    elif damage == "header":
        data[len(MAGIC) + 20] ^= 1
    elif damage == "magic":
        data[0] ^= 1
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    store = PrefixStore(tmp_path / "store", key, 10**9)
    stored, _ = store.best(TOKENS, 1000)
    if stored is not None:  # a damaged payload passes the header check: the full read catches it
        assert damage == "payload"
        assert store.load(stored) is None
    assert not path.exists()
    assert store.best(TOKENS, 1000) == (None, 0)


def test_a_file_damaged_after_indexing_is_not_used(tmp_path: Path) -> None:
    key = key_of(model_file(tmp_path))
    store = PrefixStore(tmp_path / "store", key, 10**9)
    store.save(TOKENS, STATE)
    stored, _ = store.best(TOKENS, 1000)
    [path] = kv_files(tmp_path / "store")
    with open(path, "r+b") as file:  # same length, so the directory listing does not change
        file.seek(-5, os.SEEK_END)
        file.write(b"\x00\x00\x00\x00\x00")
    assert stored is not None and store.load(stored) is None
    assert not path.exists()


def test_the_store_keeps_under_its_bound_least_recently_used_first(tmp_path: Path) -> None:
    key = key_of(model_file(tmp_path))
    directory = tmp_path / "store"
    size = PrefixStore(directory, key, 10**9).save([1, *TOKENS], STATE)
    for path in kv_files(directory):
        path.unlink()
    store = PrefixStore(directory, key, 2 * size + size // 2)  # room for two files
    prompts = [[n, *TOKENS] for n in (1, 2, 3)]
    store.save(prompts[0], STATE)
    store.save(prompts[1], STATE)
    for age, path in enumerate(sorted(kv_files(directory), key=lambda p: p.stat().st_mtime_ns)):
        os.utime(path, (1000 + age, 1000 + age))  # first written: least recently used
    first, _ = store.best(prompts[0], 1000)
    assert first is not None and store.load(first) == STATE  # used: now the most recent
    store.save(prompts[2], STATE)
    assert usage(directory) == (2, 2 * size)
    assert store.best(prompts[1], 1000) == (None, 0)  # the least recently used one went
    assert store.best(prompts[0], 1000)[1] == len(prompts[0])
    assert store.best(prompts[2], 1000)[1] == len(prompts[2])
    assert store.save([4, *TOKENS], STATE * 3) == 0  # larger than the whole store: never written


def test_a_prefix_a_stored_one_covers_is_not_written_again(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path / "store", key_of(model_file(tmp_path)), 10**9)
    assert store.save(TOKENS, STATE) > 0
    assert store.save(TOKENS[:200], STATE) == 0
    assert len(kv_files(tmp_path / "store")) == 1


def _writer(directory: str, key: bytes, first: int, bound: int) -> None:
    store = PrefixStore(Path(directory), key, bound)
    for n in range(first, first + 30):
        store.save([n, *TOKENS], STATE)
        store.entries()


def test_two_workers_share_a_store(tmp_path: Path) -> None:
    key = key_of(model_file(tmp_path))
    directory = tmp_path / "store"
    size = PrefixStore(directory, key, 10**9).save([0, *TOKENS], STATE)
    bound = 10 * size
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(str(directory), key, first, bound)) for first in (1000, 2000)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    assert not list(directory.glob(".*"))  # no temporary file left behind
    files, total = usage(directory)
    assert 0 < total <= bound and files == total // size
    reader = PrefixStore(directory, key, bound)
    for stored in reader.entries():  # every file that is there is whole
        assert reader.load(stored) == STATE
    assert len(kv_files(directory)) == files


def test_what_is_saved_a_shared_prefix_once_a_lone_prompt_whole() -> None:
    system = list(range(1000, 1100))
    a = Cached(0, [*system, 1, 2, 3])
    b = Cached(1, [*system, 4, 5], hits=1, shared=100)  # a request took the system prompt from it
    lone = Cached(2, list(range(5000, 5080)))
    short = Cached(3, [9] * 10)
    assert choose([a, b, lone, short], min_tokens=64) == [(0, system), (2, lone.tokens)]
    # A part shared with a prefix stored already is that part (the store refreshes it, writes nothing).
    assert choose([Cached(0, [*system, 7, 8])], 64, stored=[[*system, 1]]) == [(0, system)]
    # One prefix another chosen one begins with is left out: restoring the longer covers it.
    assert choose([Cached(0, system), Cached(1, [*system, *range(50)], hits=3, shared=150)], 64) == [
        (1, [*system, *range(50)])
    ]
