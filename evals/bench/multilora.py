"""Many LoRA arms on one base model: batch throughput, adapter switches, memory and mixtures.

    .venv/bin/python evals/bench/multilora.py [--rows 16] [--new-tokens 32] [--threads N]
        [--repeats 3] [--no-peft-baseline] [--json out.json]

On the default model (SmolLM2-135M-Instruct, fp32 on the CPU, as ``LocalChatModel`` loads it), with
``--adapters`` (4) random LoRA adapters of rank ``--rank`` (16) on q/k/v/o/gate/up/down, seeded
and written to a temporary folder, this script measures in one process:

- throughput: generated tokens/s of one ``generate_batch`` of ``--rows`` rows, all on one adapter
  (``single``), cycling through the adapters (``mixed``: a mixed-adapter batch), on a 2-expert
  mixture from ``mix_adapters`` and on the base model (no adapter) for reference; and, unless
  ``--no-peft-baseline``, single and mixed again on peft's own mixed-batch LoRA forward (a gather
  and a scatter per adapter per layer) instead of ``LocalChatModel``'s (contiguous runs of rows,
  ``mm`` + ``addmm_`` on views). Every row generates exactly ``--new-tokens`` tokens (end of
  sequence is masked until then), so all variants do the same work. The variants alternate
  within each of ``--repeats`` rounds (order reversed every other round); throughput is the
  median per variant, ratios the median of per-round ratios. Target: mixed / single >= 0.75;
- adapter switch: a 1-token ``generate`` on adapter A right after one on adapter B, against one
  right after another on A (the difference is the switch cost; target <= 50 ms), medians of
  ``--switches`` pairs; and the time of each ``load_adapter`` from disk (the files were just written,
  so they come from the page cache: parse, build the LoRA layers, copy weights);
- memory: the process RSS before and after each ``load_adapter`` and the adapter's parameter bytes
  (``adapter_bytes``); and the time ``mix_adapters`` takes for a new 2-expert mixture and for the
  same one again (cached).

The ratios are the point: the machine may be shared, so absolute numbers move between runs, while
variants measured alternately in one process share the same conditions. The load average is
printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a plain script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402
import torch  # noqa: E402

from core.config import REPO_ROOT, ModelConfig  # noqa: E402
from core.models import LocalChatModel  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIXED_RATIO_TARGET = 0.75
SWITCH_TARGET_MS = 50.0

QUESTIONS = [
    "Describe the water cycle in detail.",
    "Explain how a bicycle stays upright.",
    "Tell me about the history of Paris.",
    "Why is the sky blue during the day?",
    "How do vaccines train the immune system?",
    "What causes the seasons on Earth?",
    "Explain photosynthesis to a child.",
    "How does a refrigerator keep food cold?",
]


def write_random_adapter(folder: Path, model: Any, rank: int, seed: int) -> Path:
    """A peft LoRA adapter folder with random A and B for ``model``'s layers, without peft's model
    wrapping (no second copy of the base weights): ``adapter_config.json`` plus safetensors."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] not in TARGETS or not isinstance(module, torch.nn.Linear):
            continue
        fan_in, fan_out = module.in_features, module.out_features
        a = (torch.rand(rank, fan_in, generator=generator) * 2 - 1) / fan_in**0.5
        b = torch.randn(fan_out, rank, generator=generator) * 0.02
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
    folder.mkdir(parents=True)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM")
    config.save_pretrained(folder)
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def rss() -> int:
    return psutil.Process().memory_info().rss


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=16, help="rows per generate_batch")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the variants (median)")
    ap.add_argument("--switches", type=int, default=7, help="pairs timed for the switch cost")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "data" / "models")
    ap.add_argument(
        "--no-peft-baseline",
        dest="peft_baseline",
        action="store_false",
        help="skip the single/mixed variants on peft's own mixed-batch LoRA forward",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    backend = LocalChatModel(ModelConfig(threads=args.threads), args.models_dir)
    load_s, _ = timed(backend.load)
    model = backend.hf_model
    print(
        f"model      {backend.path} ({backend.info()['weights']}, load {load_s:.1f} s); "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    names = [f"arm{i}" for i in range(args.adapters)]
    loads: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="armada-multilora-") as tmp:
        folders = {
            name: write_random_adapter(Path(tmp) / name, model, args.rank, seed)
            for seed, name in enumerate(names, start=1)
        }
        for name in names:
            before = rss()
            seconds, _ = timed(lambda n=name: backend.load_adapter(n, folders[n]))
            loads[name] = {
                "load_ms": seconds * 1e3,
                "rss_delta_mb": (rss() - before) / 1e6,
                "param_mb": backend.adapter_bytes(name) / 1e6,
            }

        mix_first_s, mixture = timed(lambda: backend.mix_adapters({names[0]: 0.5, names[1]: 0.5}))
        mix_cached_s, again = timed(lambda: backend.mix_adapters({names[1]: 0.5, names[0]: 0.5}))
        assert again == mixture
        mixture_mb = backend.adapter_bytes(mixture) / 1e6

        batch = [
            [{"role": "user", "content": q}]
            for q in itertools.islice(itertools.cycle(QUESTIONS), args.rows)
        ]
        cycled = [names[i % len(names)] for i in range(args.rows)]
        # name: (adapter per row, LoRA forward: ours (contiguous runs) or peft's own)
        variants: dict[str, tuple[list[str | None], bool]] = {
            "base": ([None] * args.rows, False),
            "single": ([names[0]] * args.rows, False),
            "mixed": (cycled, False),
            "mixture": ([mixture] * args.rows, False),
        }
        if args.peft_baseline:
            variants |= {
                "single/peft": ([names[0]] * args.rows, True),
                "mixed/peft": (cycled, True),
            }
        lora_layers = [m for m in model.modules() if "_mixed_batch_forward" in vars(m)]
        ours = {m: vars(m)["_mixed_batch_forward"] for m in lora_layers}

        def use_peft_forward(peft: bool) -> None:
            for m in lora_layers:
                if peft:
                    vars(m).pop("_mixed_batch_forward", None)
                else:
                    m._mixed_batch_forward = ours[m]

        def run(rows: list[str | None], peft: bool) -> float:
            use_peft_forward(peft)
            try:
                seconds, gens = timed(
                    lambda: backend.generate_batch(
                        batch, adapter_names=rows, max_new_tokens=args.new_tokens
                    )
                )
            finally:
                use_peft_forward(False)
            assert all(g.usage.completion_tokens == args.new_tokens for g in gens)
            return sum(g.usage.completion_tokens for g in gens) / seconds

        for rows, peft in variants.values():  # warm up: allocator, thread pool, LoRA paths
            use_peft_forward(peft)
            backend.generate_batch(batch[:4], adapter_names=rows[:4], max_new_tokens=2)
        use_peft_forward(False)
        tok_s: dict[str, list[float]] = {v: [] for v in variants}
        # Every row runs to --new-tokens: the same work in every variant, whatever the adapters say.
        model.generation_config.min_new_tokens = args.new_tokens
        for round_ in range(args.repeats):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for variant in order:
                tok_s[variant].append(run(*variants[variant]))
        model.generation_config.min_new_tokens = None
        throughput = {v: statistics.median(s) for v, s in tok_s.items()}

        question = [{"role": "user", "content": QUESTIONS[0]}]

        def one_token(adapter: str) -> float:
            return timed(lambda: backend.generate(question, adapter=adapter, max_new_tokens=1))[0]

        same, switched = [], []
        a, b = names[0], names[1]
        one_token(a)
        for _ in range(args.switches):
            one_token(b)
            switched.append(one_token(a))  # A right after B
            same.append(one_token(a))  # A right after A
        same_ms, switched_ms = statistics.median(same) * 1e3, statistics.median(switched) * 1e3

    load_avg = os.getloadavg()[0]

    def ratio(num: str, den: str) -> float:
        """Median over rounds of num / den measured in the same round."""
        return statistics.median(a / b for a, b in zip(tok_s[num], tok_s[den], strict=True))

    mixed_ratio = ratio("mixed", "single")
    switch_ms = switched_ms - same_ms
    print(
        f"batch      {args.rows} rows x {args.new_tokens} new tokens, {args.adapters} adapters "
        f"r={args.rank} on {len(TARGETS)} modules, median of {args.repeats} rounds; "
        "x single: median of per-round ratios"
    )
    print(f"{'variant':<12} {'tok/s':>8} {'x single':>9}   rounds (tok/s)")
    for variant, value in throughput.items():
        rounds = " ".join(f"{x:.1f}" for x in tok_s[variant])
        print(f"{variant:<12} {value:>8.1f} {ratio(variant, 'single'):>9.2f}   {rounds}")
    print(f"{'adapter':<10} {'load ms':>8} {'RSS +MB':>8} {'params MB':>10}")
    for name, row in loads.items():
        print(
            f"{name:<10} {row['load_ms']:>8.0f} {row['rss_delta_mb']:>8.1f} {row['param_mb']:>10.1f}"
        )
    print(
        f"mixture    {mixture} = 0.5 {names[0]} + 0.5 {names[1]}: built in "
        f"{mix_first_s * 1e3:.0f} ms, cached {mix_cached_s * 1e3:.3f} ms, {mixture_mb:.1f} MB"
    )
    print(
        f"switch     1-token generate: A after A {same_ms:.1f} ms, A after B {switched_ms:.1f} ms "
        f"(median of {args.switches})"
    )
    print(
        f"mixed / single  x{mixed_ratio:.2f}  (target >= {MIXED_RATIO_TARGET}: "
        f"{'met' if mixed_ratio >= MIXED_RATIO_TARGET else 'MISSED'})"
    )
    peft_ratios = {}
    if args.peft_baseline:
        peft_ratios = {
            "mixed_over_single_peft": ratio("mixed/peft", "single/peft"),
            "mixed_ours_over_peft": ratio("mixed", "mixed/peft"),
            "single_ours_over_peft": ratio("single", "single/peft"),
        }
        print(
            f"peft forward    mixed / single x{peft_ratios['mixed_over_single_peft']:.2f}; "
            f"ours / peft's: mixed x{peft_ratios['mixed_ours_over_peft']:.2f}, "
            f"single x{peft_ratios['single_ours_over_peft']:.2f}"
        )
    print(
        f"switch cost     {switch_ms:+.1f} ms  (target <= {SWITCH_TARGET_MS:.0f} ms: "
        f"{'met' if switch_ms <= SWITCH_TARGET_MS else 'MISSED'})"
    )
    print(f"load average at the end {load_avg:.2f}")

    results = {
        "model": str(backend.path),
        "weights": backend.info()["weights"],
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": load_avg,
        "rows": args.rows,
        "new_tokens": args.new_tokens,
        "adapters": args.adapters,
        "rank": args.rank,
        "target_modules": TARGETS,
        "throughput_tok_s": throughput,
        "throughput_rounds": tok_s,
        "variants": {
            v: {"adapters": rows, "peft_forward": peft} for v, (rows, peft) in variants.items()
        },
        "mixed_over_single": mixed_ratio,
        **peft_ratios,
        "mixed_over_single_target": MIXED_RATIO_TARGET,
        "switch": {"same_ms": same_ms, "switched_ms": switched_ms, "cost_ms": switch_ms},
        "switch_target_ms": SWITCH_TARGET_MS,
        "adapter_loads": loads,
        "mixture": {
            "name": mixture,
            "build_ms": mix_first_s * 1e3,
            "cached_ms": mix_cached_s * 1e3,
            "param_mb": mixture_mb,
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
