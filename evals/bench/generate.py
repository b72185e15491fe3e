"""Generation speed of the local backend against the machine's memory-bandwidth bound.

    .venv/bin/python evals/bench/generate.py [--tokens 128] [--threads N] [--prompt-tokens 512]

Decoding one token reads every weight once, so on a CPU its speed is capped by memory bandwidth:
``bound_tok_s = read_bandwidth / bytes read per token``, where the bytes are those of the variant
as it is stored (``core.models.quant.bytes_read_per_token``: every parameter and buffer once,
int8 weights at 1 B plus their fp32 scales and offsets, fp32 norms, the output head in full, and a
single row of an input embedding table that is not tied to the head). This script measures, in
one run: the achievable read bandwidth (best of several sums over a 1 GiB tensor, far larger than
any cache, with the same torch thread count as the decode), prefill tokens/s on a ~512-token chat
prompt, and greedy decode tokens/s over ``--tokens`` new tokens after a warmup, for these variants
of the default model (SmolLM2-135M-Instruct):

- ``plain HF``: ``AutoModelForCausalLM.from_pretrained`` (fp32) + ``generate``, nothing else;
- ``fp32``: the default, as ``LocalChatModel(cpu_weights="fp32")`` decodes: transformers prefill,
  then one C++ call per token (``core.models.fused``), threads from ``--threads``;
- ``int8``: ``LocalChatModel(cpu_weights="int8")``: weight-only int8 linear layers with an fp32
  scale and offset per 32 weights (``core.models.quant``; bit-for-bit the GGUF's Q4_1/Q8_0 values,
  so its greedy outputs match fp32's, which the script checks on a short generation), decoded
  on the same fused path;
- ``int8 HF``: that int8 model through transformers' ``generate`` (the path before fused
  decoding; adapters it cannot run, DoRA for one, and sampling still take it).

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
from core.models.quant import bytes_read_per_token  # noqa: E402

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


def decode_tok_s_fused(backend: LocalChatModel, ids: torch.Tensor, tokens: int) -> float:
    """The same measure on the fused path: between the first and the last new token."""
    times: list[float] = []
    backend._fused.generate(
        backend.hf_model,
        ids,
        max_new_tokens=tokens,
        eos=set(),  # no early end of sequence: always the same amount of work
        on_ids=lambda _token: times.append(time.perf_counter()),
        threads=backend.config.threads,
    )
    return (len(times) - 1) / (times[-1] - times[0])


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
    config = ModelConfig(threads=args.threads)
    backends = {
        weights: LocalChatModel(config, settings.model_cache_dir, cpu_weights=weights)
        for weights in ("fp32", "int8")
    }
    for weights, backend in backends.items():
        started = time.perf_counter()
        backend.load()  # the first int8 load on a machine also compiles its kernel (~1 min)
        print(
            f"model      {backend.path}  ({weights} load {time.perf_counter() - started:.1f} s, "
            f"weights {backend.info()['weights']})"
        )
    for weights, backend in backends.items():
        if backend.info()["decode"] != "fused":
            sys.exit(f"{weights}: no fused decoding here ({backend.info()['decode_note']})")
    backend = backends["fp32"]
    plain = AutoModelForCausalLM.from_pretrained(backend.path, dtype=torch.float32).eval()
    variants = {
        "plain HF": plain,
        **{w: b.hf_model for w, b in backends.items()},
        "int8 HF": backends["int8"].hf_model,
    }
    weight_bytes = {name: bytes_read_per_token(model) for name, model in variants.items()}

    long_ids = chat_prompt(backend, args.prompt_tokens)
    short_ids = long_ids[:, -48:]
    pad = backend.tokenizer.pad_token_id
    print(
        f"machine    {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    def decode(name: str, tokens: int) -> float:
        if name in backends:
            return decode_tok_s_fused(backends[name], short_ids, tokens)
        return decode_tok_s(variants[name], short_ids, tokens, pad)

    for name in variants:  # warm up: allocator, thread pools, kernels
        decode(name, 8)
    bandwidth = read_bandwidth_gbs()
    prefill = {name: 0.0 for name in variants}
    speed = {name: 0.0 for name in variants}
    for _ in range(args.repeats):
        for name, model in variants.items():
            prefill[name] = max(prefill[name], prefill_tok_s(model, long_ids, 1))
            speed[name] = max(speed[name], decode(name, args.tokens))
    bandwidth = max(bandwidth, read_bandwidth_gbs())

    question = [{"role": "user", "content": "Tell me about Paris."}]
    gens = {}
    for weights, b in backends.items():
        gen_start = time.perf_counter()
        gen = b.generate(question, max_new_tokens=64)
        gens[weights] = (gen, gen.usage.completion_tokens / (time.perf_counter() - gen_start))

    print(f"bandwidth  {bandwidth:.1f} GB/s read (best sum over 1 GiB)")
    print(
        f"prompt     {long_ids.shape[1]} tokens prefill; decode {args.tokens} tokens (greedy) "
        f"after a {short_ids.shape[1]}-token prompt"
    )
    print("bound      bandwidth / bytes read per decoded token, per variant")
    print(
        f"{'variant':<10} {'MB/token':>9} {'bound tok/s':>12} {'prefill tok/s':>14} "
        f"{'decode tok/s':>13} {'of bound':>9}"
    )
    for name in variants:
        bound = bandwidth * 1e9 / weight_bytes[name]
        print(
            f"{name:<10} {weight_bytes[name] / 1e6:>9.1f} {bound:>12.1f} {prefill[name]:>14.0f} "
            f"{speed[name]:>13.1f} {speed[name] / bound:>9.0%}"
        )
    for name in [*backends, "int8 HF"]:
        print(
            f"{name} / plain HF: prefill x{prefill[name] / prefill['plain HF']:.2f}, "
            f"decode x{speed[name] / speed['plain HF']:.2f}"
        )
    print(
        f"int8 / fp32: prefill x{prefill['int8'] / prefill['fp32']:.2f}, "
        f"decode x{speed['int8'] / speed['fp32']:.2f}; "
        f"int8 fused / int8 HF: decode x{speed['int8'] / speed['int8 HF']:.2f}"
    )
    for weights, (gen, tok_s) in gens.items():
        print(
            f"generate() {weights} end to end: {gen.usage.completion_tokens} tokens at "
            f"{tok_s:.1f} tok/s (prompt {gen.usage.prompt_tokens} tokens, prefill included)"
        )
    same = gens["fp32"][0].text == gens["int8"][0].text
    print(f"int8 greedy text {'identical to' if same else 'DIFFERS from'} fp32")


if __name__ == "__main__":
    main()
