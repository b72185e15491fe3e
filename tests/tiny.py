"""A tiny random-weight causal LM with SmolLM2's tokenizer, for fast training/adapter tests.

Its layer names match SmolLM2 (Llama: q/k/v/o_proj, gate/up/down_proj), so LoRA configs, adapter
keys and chat templates behave as with the real model, at ~3 M parameters (most in the embedding).
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_tiny_model(folder: Path, base_dir: Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Write a random Llama model of SmolLM2's vocabulary to ``folder`` (tokenizer from ``base_dir``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
