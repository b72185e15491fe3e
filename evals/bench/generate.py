"""Generation speed of the local backend against the machine's memory-bandwidth bound.

    .venv/bin/python evals/bench/generate.py [--tokens 128] [--threads N] [--prompt-tokens 512]

Decoding one token reads every weight once, so on a CPU its speed is capped by memory bandwidth:
``bound_tok_s = read_bandwidth / (parameters × bytes per parameter)``. This script measures, in one
run: the achievable read bandwidth (best of several sums over a 1 GiB tensor, far larger than any
cache), prefill tokens/s on a ~512-token chat prompt, and greedy decode tokens/s over ``--tokens``
new tokens after a warmup, for two variants of the default model (SmolLM2-135M-Instruct, fp32):

- ``plain HF``: ``AutoModelForCausalLM.from_pretrained`` + ``generate``, nothing else;
- ``backend``: the model as ``LocalChatModel`` loads it (column-major linear weights, threads
  from ``--threads``, ``torch.inference_mode``).

Decode speed is timed between the first and the last new token (prefill excluded), best of
``--repeats`` runs, the variants interleaved so background load hits both alike. The machine's
load average is printed: on a shared 2-core box, other processes lower every number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a plain script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from core.config import ModelConfig, load_settings  # noqa: E402
from core.models import LocalChatModel  # noqa: E402

PARAGRAPH = (
    "The Seine flows through Paris, past the islands at the heart of the old city, under bridges "
    "built across eight centuries, before it winds through Normandy to the sea at Le Havre. "
)


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 7) -> float:
    """Best-of-``repeats`` read bandwidth (GB/s) of summing a ``gib`` GiB fp32 tensor."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


class _Clock(BaseStreamer):
    """Timestamps each generation step; the first ``put`` is the prompt."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def prefill_tok_s(model: Any, ids: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            best = min(best, time.perf_counter() - start)
    return ids.shape[1] / best


def decode_tok_s(model: Any, ids: torch.Tensor, tokens: int, pad_id: int) -> float:
    clock = _Clock()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # no early end of sequence: always the same amount of work
            do_sample=False,
            streamer=clock,
            pad_token_id=pad_id,
        )
    steps = clock.times[1:]  # new tokens only
    return (len(steps) - 1) / (steps[-1] - steps[0])


def chat_prompt(backend: LocalChatModel, n_tokens: int) -> torch.Tensor:
    tok = backend.tokenizer
    text = PARAGRAPH * (n_tokens // 30 + 2)
    words = tok.decode(tok(text, add_special_tokens=False)["input_ids"][: n_tokens - 40])
    prompt = backend.render([{"role": "user", "content": words + "\nSummarise this."}])
    return tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per decode run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    settings = load_settings()
    backend = LocalChatModel(ModelConfig(threads=args.threads), settings.model_cache_dir)
    started = time.perf_counter()
    backend.load()
    print(f"model      {backend.path}  (backend load {time.perf_counter() - started:.1f} s)")
    plain = AutoModelForCausalLM.from_pretrained(backend.path, dtype=torch.float32).eval()
    variants = {"plain HF": plain, "backend": backend.hf_model}

    params = sum(p.numel() for p in plain.parameters())  # tied embeddings counted once
    weight_bytes = params * plain.dtype.itemsize
    long_ids = chat_prompt(backend, args.prompt_tokens)
    short_ids = long_ids[:, -48:]
    pad = backend.tokenizer.pad_token_id
    print(
        f"machine    {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"weights    {params / 1e6:.1f} M params x {plain.dtype.itemsize} B = {weight_bytes / 1e6:.0f} MB"
    )

    for model in variants.values():  # warm up: allocator, thread pool, kernels
        decode_tok_s(model, short_ids, 8, pad)
    bandwidth = read_bandwidth_gbs()
    prefill = {name: 0.0 for name in variants}
    decode = {name: 0.0 for name in variants}
    for _ in range(args.repeats):
        for name, model in variants.items():
            prefill[name] = max(prefill[name], prefill_tok_s(model, long_ids, 1))
            decode[name] = max(decode[name], decode_tok_s(model, short_ids, args.tokens, pad))
    bandwidth = max(bandwidth, read_bandwidth_gbs())
    bound = bandwidth * 1e9 / weight_bytes

    gen_start = time.perf_counter()
    gen = backend.generate([{"role": "user", "content": "Tell me about Paris."}], max_new_tokens=64)
    gen_tok_s = gen.usage.completion_tokens / (time.perf_counter() - gen_start)

    print(f"bandwidth  {bandwidth:.1f} GB/s read (best sum over 1 GiB)")
    print(f"bound      {bound:.1f} tok/s = bandwidth / weight bytes per token")
    print(f"prompt     {long_ids.shape[1]} tokens prefill, {args.tokens} tokens decode (greedy)")
    print(f"{'variant':<10} {'prefill tok/s':>14} {'decode tok/s':>13} {'of bound':>9}")
    for name in variants:
        print(
            f"{name:<10} {prefill[name]:>14.0f} {decode[name]:>13.1f} {decode[name] / bound:>9.0%}"
        )
    print(
        f"backend / plain HF: prefill x{prefill['backend'] / prefill['plain HF']:.2f}, "
        f"decode x{decode['backend'] / decode['plain HF']:.2f}"
    )
    print(
        f"generate() end to end: {gen.usage.completion_tokens} tokens at {gen_tok_s:.1f} tok/s "
        f"(prompt {gen.usage.prompt_tokens} tokens, prefill included)"
    )


if __name__ == "__main__":
    main()
