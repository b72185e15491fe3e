"""LoRA adapters on disk and in the database: format, verification and the registry.

``core.adapters.format`` is the folder layout the trainer writes and the registry verifies.
"""

from __future__ import annotations

from core.adapters.format import (
    CONFIG_FILE,
    FORMAT,
    MANIFEST_FILE,
    META_FILE,
    WEIGHTS_FILE,
    model_fingerprint,
    read_meta,
    write_manifest,
    write_meta,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "META_FILE",
    "WEIGHTS_FILE",
    "model_fingerprint",
    "read_meta",
    "write_manifest",
    "write_meta",
]
