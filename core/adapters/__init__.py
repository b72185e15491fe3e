"""LoRA adapters on disk and in the database: format, verification and the registry.

``core.adapters.format`` is the folder layout the trainer writes and the registry verifies;
``core.adapters.verify`` checks a folder (``verify_files``) and attaches it to a local model only
when it serves (``load_verified``); ``core.adapters.registry`` holds the ``adapter`` rows.
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
from core.adapters.registry import (
    BROKEN,
    NOT_SERVABLE,
    PROMOTED,
    REGISTERED,
    REJECTED,
    RETIRED,
    ROLLED_BACK,
    STATUSES,
    adapter_dir,
    list_adapters,
    next_version,
    previous_version,
    promote,
    register,
    remove,
    resolve,
    roll_back,
    set_status,
    verify_registered,
)
from core.adapters.verify import load_verified, verify_files

__all__ = [
    "BROKEN",
    "CONFIG_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "META_FILE",
    "NOT_SERVABLE",
    "PROMOTED",
    "REGISTERED",
    "REJECTED",
    "RETIRED",
    "ROLLED_BACK",
    "STATUSES",
    "WEIGHTS_FILE",
    "adapter_dir",
    "list_adapters",
    "load_verified",
    "model_fingerprint",
    "next_version",
    "previous_version",
    "promote",
    "read_meta",
    "register",
    "remove",
    "resolve",
    "roll_back",
    "set_status",
    "verify_files",
    "verify_registered",
    "write_manifest",
    "write_meta",
]
