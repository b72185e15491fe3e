"""The on-disk format of an Armada LoRA adapter, shared by the trainer and the registry.

A published adapter is one folder, normally ``<ARMADA_HOME>/adapters/<name>/v<version>/``::

    adapter_config.json         peft's LoraConfig
    adapter_model.safetensors   the LoRA weights (never a pickle ``.bin``)
    meta.json                   FORMAT, name, version, kind, base model + its fingerprint, data
                                manifest, prompt template, hyperparameters, metrics
    SHA256SUMS                  "<sha256>  <file>" for every other file, sorted by name

The folder is built under a temporary name next to its final place and renamed into place
(``publish``), so a reader sees a complete adapter or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.config import is_adapter_path as is_path  # noqa: F401 - re-exported
from core.retrieval.storage import atomic_write_text, fsync_tree

FORMAT = "armada-adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "SHA256SUMS"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE, MANIFEST_FILE)
FINGERPRINT_CACHE = ".armada-fingerprint.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_text(folder: Path) -> str:
    """The SHA256SUMS content for every file in ``folder`` but the manifest itself."""
    lines = [
        f"{sha256_file(p)}  {p.name}"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    ]
    return "\n".join(lines) + "\n"


def write_manifest(folder: Path) -> str:
    """Write ``SHA256SUMS`` for ``folder``; returns the manifest's own sha256 (the adapter's id)."""
    text = manifest_text(folder)
    atomic_write_text(folder / MANIFEST_FILE, text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, str]:
    """File name → sha256 from ``SHA256SUMS`` (ValueError on a malformed line)."""
    out: dict[str, str] = {}
    for n, line in enumerate((folder / MANIFEST_FILE).read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise ValueError(f"{MANIFEST_FILE} line {n} is malformed: {line[:80]!r}")
        out[name] = digest
    return out


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(
        folder / META_FILE, json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True) + "\n"
    )


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` as a dict (ValueError when it is not a JSON object)."""
    data = json.loads((folder / META_FILE).read_text("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{META_FILE} is not a JSON object")
    return data


def model_fingerprint(model_dir: Path) -> str:
    """A sha256 over a model folder's ``config.json`` and weight files (cached by size and mtime).

    It identifies the base weights an adapter was trained on: an adapter loaded on other weights,
    even of the same shape, is refused.
    """
    model_dir = Path(model_dir)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors")
    )
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = model_dir / FINGERPRINT_CACHE
    try:
        cached = json.loads(cache.read_text("utf-8"))
        if cached.get("files") == stamp:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # a read-only model folder: hash again next time
        atomic_write_text(cache, json.dumps({"files": stamp, "sha256": digest}))
    return digest


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder next to ``final`` (same filesystem, so the rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, final: Path) -> Path:
    """Flush ``tmp`` to disk, then rename it to ``final`` (which must not exist yet)."""
    if final.exists():
        raise FileExistsError(f"{final} already exists; adapters are never overwritten")
    fsync_tree(tmp)
    os.rename(tmp, final)
    return final


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove temporary folders a killed run left under ``parent``; returns what was removed."""
    removed = []
    if parent.is_dir():
        for p in parent.glob(".*.tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
