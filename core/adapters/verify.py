"""Check an adapter folder before any of it reaches a model, then load it and check it serves.

``verify_files`` reads only bytes, JSON and safetensors (never a pickle: nothing here calls
``torch.load``) and refuses, with a message naming the folder, what is wrong and what to do:

1. a missing folder; any pickle, by name (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.pickle``,
   ``.ckpt``) or by content (a pickle protocol header or a zip, as ``torch.save`` writes), whatever
   the file is called;
2. a missing required file, or an empty one;
3. a malformed ``SHA256SUMS``, a listed file missing or changed, a file it does not list;
4. an ``adapter_config.json`` that is not a LoRA config (``peft_type``, ``r``, ``target_modules``);
   a ``meta.json`` of another format;
5. a weights file that is truncated or padded (its header parsed by hand), tensors that are not
   LoRA weights, ranks that disagree with the config, NaN or infinite values;
6. optionally, a base model other than the one the adapter was trained on (its fingerprint).

``load_verified`` then attaches the adapter to a ``LocalChatModel`` and refuses it, leaving the
model as it was, when peft's expected tensors differ from the file's (peft itself silently skips
tensors of modules the config does not target) or a smoke prompt yields non-finite logits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.adapters import format as fmt
from core.errors import AdapterError, ModelError

if TYPE_CHECKING:
    from core.models.local import LocalChatModel

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ZIP_MAGIC = b"PK\x03\x04"
PEFT_PREFIX = "base_model.model."
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on the JSON header."""

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
LORA_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
SMOKE_PROMPT = [{"role": "user", "content": "Say hello."}]
SHOWN_KEYS = 3
"""How many offending keys a message lists."""


def _fail(folder: Path, problem: str, advice: str) -> AdapterError:
    return AdapterError(f"adapter at {folder}: {problem}. {advice}")


RETRAIN = "Retrain or re-export the adapter (armada train), or restore the folder from a backup."


# -- files -----------------------------------------------------------------------------------------


def _is_pickle(head: bytes) -> bool:
    if head.startswith(ZIP_MAGIC):
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _check_no_pickles(folder: Path, entries: list[Path]) -> None:
    for p in entries:
        if not p.is_file():
            continue
        if p.name.lower().endswith(PICKLE_SUFFIXES):
            raise _fail(
                folder,
                f"{p.name} is a pickle file, which can run code when loaded; adapters are only "
                f"accepted as {fmt.WEIGHTS_FILE}",
                "Delete it, or re-save the adapter with save_pretrained(safe_serialization=True).",
            )
        with open(p, "rb") as f:
            head = f.read(4)
        if _is_pickle(head):
            raise _fail(
                folder,
                f"{p.name} holds a pickle (torch.save / zip) payload, not the format its name "
                "claims; pickles can run code when loaded and are never opened",
                "Re-save the adapter with save_pretrained(safe_serialization=True).",
            )


def _check_present(folder: Path, entries: list[Path]) -> None:
    missing = [n for n in fmt.REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        raise _fail(folder, f"missing {', '.join(missing)}", RETRAIN)
    for p in entries:
        if p.is_file() and p.stat().st_size == 0:
            raise _fail(folder, f"{p.name} is empty (0 bytes)", RETRAIN)


def _check_manifest(folder: Path, entries: list[Path]) -> None:
    try:
        listed = fmt.read_manifest(folder)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(folder, f"{fmt.MANIFEST_FILE} cannot be read: {e}", RETRAIN) from e
    if not listed:
        raise _fail(folder, f"{fmt.MANIFEST_FILE} lists no files", RETRAIN)
    for name, digest in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise _fail(folder, f"{name} is listed in {fmt.MANIFEST_FILE} but missing", RETRAIN)
        actual = fmt.sha256_file(path)
        if actual != digest:
            raise _fail(
                folder,
                f"checksum mismatch for {name}: {fmt.MANIFEST_FILE} says {digest[:12]}…, the "
                f"file hashes to {actual[:12]}… (changed or damaged after it was written)",
                RETRAIN,
            )
    extra = sorted(p.name for p in entries if p.name != fmt.MANIFEST_FILE and p.name not in listed)
    if extra:
        raise _fail(
            folder,
            f"unexpected file(s) not listed in {fmt.MANIFEST_FILE}: {', '.join(extra)}",
            "Remove them; an adapter folder holds only the files its manifest lists.",
        )


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(folder, f"{name} is not valid JSON ({e})", RETRAIN) from e
    if not isinstance(data, dict):
        raise _fail(folder, f"{name} is not a JSON object", RETRAIN)
    return data


def _check_config(folder: Path) -> dict[str, Any]:
    config = _read_json(folder, fmt.CONFIG_FILE)
    where = fmt.CONFIG_FILE
    if config.get("peft_type") != "LORA":
        raise _fail(
            folder,
            f'{where} has peft_type {config.get("peft_type")!r}; only LoRA adapters ("LORA") '
            "are supported",
            RETRAIN,
        )
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise _fail(
            folder, f"{where} has r={r!r}; the LoRA rank must be a positive integer", RETRAIN
        )
    targets = config.get("target_modules")
    ok_targets = (isinstance(targets, str) and targets.strip()) or (
        isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
    )
    if not ok_targets:
        raise _fail(
            folder,
            f"{where} has target_modules={targets!r}; it must name the layers the adapter "
            "changes (a non-empty list or a regex)",
            RETRAIN,
        )
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pattern.values()
    ):
        raise _fail(folder, f"{where} has a malformed rank_pattern {pattern!r}", RETRAIN)
    return config


def _check_meta(folder: Path) -> dict[str, Any]:
    meta = _read_json(folder, fmt.META_FILE)
    if meta.get("format") != fmt.FORMAT:
        raise _fail(
            folder,
            f"{fmt.META_FILE} has format {meta.get('format')!r}, expected {fmt.FORMAT!r}",
            "Re-export the adapter with this version of Armada (armada train).",
        )
    return meta


# -- weights ---------------------------------------------------------------------------------------


def _check_safetensors_layout(folder: Path) -> dict[str, Any]:
    """Parse the safetensors header by hand; returns it (tensor name → dtype/shape/offsets)."""
    path = folder / fmt.WEIGHTS_FILE
    name = fmt.WEIGHTS_FILE
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _fail(
                folder, f"{name} is truncated ({size} bytes, shorter than its header)", RETRAIN
            )
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise _fail(folder, f"{name} is not a safetensors file (header length {n})", RETRAIN)
        if 8 + n > size:
            raise _fail(
                folder,
                f"{name} is truncated: its header says {n} bytes of JSON, the file has only {size} "
                "bytes",
                RETRAIN,
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(folder, f"{name} has a malformed header ({e})", RETRAIN) from e
    if not isinstance(header, dict):
        raise _fail(folder, f"{name} has a malformed header (not a JSON object)", RETRAIN)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise _fail(folder, f"{name} holds no tensors", RETRAIN)
    data_size = size - 8 - n
    end = 0
    for key, info in tensors.items():
        try:
            dtype, shape, (begin, stop) = info["dtype"], info["shape"], info["data_offsets"]
            nbytes = math.prod(int(d) for d in shape) * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(folder, f"{name} has a malformed header entry for {key}", RETRAIN) from e
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
            raise _fail(folder, f"{name} has bad data offsets for {key}: {[begin, stop]}", RETRAIN)
        if stop - begin != nbytes:
            raise _fail(
                folder,
                f"{name}: {key} ({dtype} {shape}) needs {nbytes} bytes but its offsets span "
                f"{stop - begin}",
                RETRAIN,
            )
        if stop > data_size:
            raise _fail(
                folder,
                f"{name} is truncated: {key} ends at byte {8 + n + stop} but the file has only "
                f"{size} bytes",
                RETRAIN,
            )
        end = max(end, stop)
    if data_size > end:
        raise _fail(
            folder, f"{name} has {data_size - end} unexpected bytes after its last tensor", RETRAIN
        )
    return tensors


def _module_of(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` → the module path
    ``model.layers.0.self_attn.q_proj`` (the name peft's ``rank_pattern`` keys match)."""
    stem = key.removeprefix(PEFT_PREFIX)
    for marker in LORA_MARKERS:
        head, sep, _ = stem.partition(f".{marker}")
        if sep:
            return head
    return stem.rpartition(".")[0]


def _rank_for(module: str, config: dict[str, Any]) -> tuple[int, str]:
    """The rank peft gives ``module`` and where it comes from: the first matching
    ``rank_pattern`` key (matched as peft does), else ``r``."""
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return int(rank), f"rank_pattern[{pattern!r}]={rank}"
        except re.error:
            continue
    return int(config["r"]), f"r={config['r']}"


def _is_module_to_save(key: str, config: dict[str, Any]) -> bool:
    """A full copy of a module peft trains outright (``modules_to_save``; saved without a marker)."""
    names = config.get("modules_to_save") or []
    module = key.removeprefix(PEFT_PREFIX).rpartition(".")[0]
    return "modules_to_save" in key or any(
        isinstance(m, str) and m and module.endswith(m) for m in names
    )


def _check_tensors(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Load the weights (safetensors only) and check keys, ranks and values; returns them."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(folder / fmt.WEIGHTS_FILE, device="cpu")
    except Exception as e:
        raise _fail(folder, f"{fmt.WEIGHTS_FILE} cannot be read: {e}", RETRAIN) from e
    foreign = [
        k
        for k in tensors
        if not any(m in k for m in LORA_MARKERS) and not _is_module_to_save(k, config)
    ]
    if foreign:
        raise _fail(
            folder,
            f"{fmt.WEIGHTS_FILE} holds {len(foreign)} tensor(s) that are not LoRA weights, e.g. "
            f"{', '.join(sorted(foreign)[:SHOWN_KEYS])}",
            "Export only the LoRA weights (peft save_pretrained with save_embedding_layers="
            "False); copies of base-model layers are not accepted.",
        )
    for key in sorted(tensors):
        t = tensors[key]
        if t.ndim < 2 or not any(m in key for m in LORA_MARKERS[:4]):
            continue  # biases, DoRA magnitudes and modules_to_save have no rank axis
        rank, source = _rank_for(_module_of(key), config)
        is_a = ".lora_A" in key or ".lora_embedding_A" in key
        got = t.shape[0] if is_a else t.shape[1]
        if got != rank:
            raise _fail(
                folder,
                f"rank mismatch: {fmt.CONFIG_FILE} {source} but {key} has shape {list(t.shape)}",
                "The config and the weights come from different trainings; re-export the adapter.",
            )
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _fail(folder, f"non-finite values in {key} (NaN or infinity)", RETRAIN)
    return tensors


# -- public ----------------------------------------------------------------------------------------


def verify_files(folder: Path, *, base_fingerprint: str | None = None) -> dict[str, Any]:
    """Check an adapter folder (see the module docstring); returns its parsed ``meta.json``.

    Raises ``AdapterError`` naming the folder, the problem and the fix.
    """
    meta, _ = _verify(Path(folder), base_fingerprint)
    return meta


def _verify(folder: Path, base_fingerprint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if not folder.is_dir():
        raise _fail(
            folder,
            "no such folder",
            "Check the path; `armada adapters list` shows the registered adapters.",
        )
    entries = sorted(folder.iterdir())
    _check_no_pickles(folder, entries)
    _check_present(folder, entries)
    _check_manifest(folder, entries)
    config = _check_config(folder)
    meta = _check_meta(folder)
    _check_safetensors_layout(folder)
    tensors = _check_tensors(folder, config)
    trained_on = meta.get("base_model_sha256")
    if base_fingerprint is not None and not trained_on:
        raise _fail(
            folder,
            f"{fmt.META_FILE} does not say which base model it was trained on "
            "(no base_model_sha256), so it cannot be matched to the loaded one",
            "Re-export the adapter with this version of Armada (armada train).",
        )
    if base_fingerprint is not None and trained_on != base_fingerprint:
        raise _fail(
            folder,
            f"trained on base model {meta.get('base_model', '?')} (sha256 "
            f"{str(trained_on)[:12]}…), but the loaded base model is different (sha256 "
            f"{base_fingerprint[:12]}…); a LoRA only works on the exact weights it was trained on",
            "Serve it with the base model it was trained on, or retrain it on this one.",
        )
    return meta, tensors


def _saved_keys(hf_model: Any, name: str) -> set[str]:
    """The tensor names peft would save for adapter ``name``: the adapter name taken out of the
    parameter names (``q_proj.lora_A.<name>.weight`` → ``q_proj.lora_A.weight``), so they compare
    with a file's keys directly."""
    from peft.utils import get_peft_model_state_dict

    # save_embedding_layers=False: "auto" may read the base config (or ask the Hub) to guess
    # whether the vocabulary was resized; such embedding copies are refused by verify_files anyway.
    return set(get_peft_model_state_dict(hf_model, adapter_name=name, save_embedding_layers=False))


def _generation_lock() -> Any:
    try:
        from core.models.local import _GENERATION_LOCK
    except ImportError:  # pragma: no cover - the lock is an implementation detail of local.py
        return contextlib.nullcontext()
    return _GENERATION_LOCK


def _check_keys(model: LocalChatModel, name: str, folder: Path, file_keys: set[str]) -> None:
    """The tensors peft expects for ``name`` (from its config) must be exactly the file's."""
    expected = _saved_keys(model.hf_model, name)
    missing, unexpected = sorted(expected - file_keys), sorted(file_keys - expected)
    if not missing and not unexpected:
        return
    parts = []
    if unexpected:
        parts.append(
            f"{len(unexpected)} tensor(s) in the file match no layer the config targets "
            f"(peft would silently ignore them), e.g. {', '.join(unexpected[:SHOWN_KEYS])}"
        )
    if missing:
        parts.append(
            f"{len(missing)} tensor(s) the config implies are missing from the file, e.g. "
            f"{', '.join(missing[:SHOWN_KEYS])}"
        )
    targets = model.hf_model.peft_config[name].target_modules
    if isinstance(targets, set):
        targets = sorted(targets)
    raise _fail(
        folder,
        f"{fmt.CONFIG_FILE} does not match the weights (target_modules={targets!r}): "
        + "; ".join(parts),
        "The config and the weights come from different trainings; re-export the adapter.",
    )


def _smoke(model: LocalChatModel, name: str, folder: Path) -> None:
    """Two generated tokens and one forward pass through the adapter; the logits must be finite."""
    import torch

    try:
        model.generate(SMOKE_PROMPT, adapter=name, max_new_tokens=2, temperature=0.0)
        hf_model, tokenizer = model.hf_model, model.tokenizer
        templated = bool(getattr(tokenizer, "chat_template", None))
        enc = tokenizer(
            [model.render(SMOKE_PROMPT)], return_tensors="pt", add_special_tokens=not templated
        )
        device = next(hf_model.parameters()).device
        with torch.inference_mode():
            logits = hf_model(**enc.to(device), adapter_names=[name]).logits
    except Exception as e:
        raise _fail(
            folder,
            f"a smoke prompt through the adapter failed: {e}",
            "Armada serves adapters in mixed batches, which peft supports for plain LoRA only "
            "(no DoRA, no modules_to_save); retrain or re-export it as one.",
        ) from e
    if not bool(torch.isfinite(logits).all()):
        raise _fail(
            folder,
            "a smoke prompt through the adapter gives non-finite logits (NaN or infinity); its "
            "weights are finite but too large for this base model",
            RETRAIN,
        )


def load_verified(
    model: LocalChatModel, name: str, folder: Path, *, smoke: bool = True
) -> dict[str, Any]:
    """Verify ``folder`` against ``model``'s base weights, attach it as adapter ``name`` and check
    that it serves; returns its ``meta.json``.

    On any failure ``model`` is left with the adapters it had (a version of ``name`` it was
    serving before is put back) and ``AdapterError`` is raised.
    """
    folder = Path(folder).expanduser().resolve()
    meta, tensors = _verify(folder, fmt.model_fingerprint(model.path))
    file_keys = set(tensors)
    del tensors
    with _generation_lock():
        previous = model.info()["adapters"].get(name) if name in model.adapters() else None
        try:
            model.load_adapter(name, folder)
        except ModelError as e:
            _drop_partial(model, name)
            _restore(model, name, previous)
            raise _fail(folder, f"peft could not load it as adapter {name!r}: {e}", RETRAIN) from e
        try:
            _check_keys(model, name, folder, file_keys)
            if smoke:
                _smoke(model, name, folder)
        except BaseException:
            with contextlib.suppress(Exception):
                model.unload_adapter(name)
            _restore(model, name, previous)
            raise
    log.info("adapter %s verified and loaded from %s", name, folder)
    return meta


def _drop_partial(model: LocalChatModel, name: str) -> None:
    """Take out what a failed peft load may have left attached under ``name``."""
    if name in model.adapters() or not model.loaded:
        return
    hf_model = model.hf_model
    if name in (getattr(hf_model, "peft_config", None) or {}):
        with contextlib.suppress(Exception):
            hf_model.delete_adapter(name)


def _restore(model: LocalChatModel, name: str, previous: str | None) -> None:
    if previous is None or name in model.adapters():
        return
    try:
        model.load_adapter(name, previous)
    except Exception as e:  # pragma: no cover - it loaded before
        log.error("could not put back adapter %s from %s: %s", name, previous, e)
