"""C++ torch extensions compiled on first use with the system compiler, then cached by torch.

``core.models.quant`` (the int8 linear kernel) and ``core.models.fused`` (the fused decode step)
each carry one. The build uses ``-march=native`` (the cached binary is for this machine's CPU) and
takes a few tens of seconds once; torch keeps it under ``TORCH_EXTENSIONS_DIR`` /
``~/.cache/torch_extensions``, keyed by name and source. A failed build is remembered, so a
machine without a compiler pays for the attempt once per process and callers fall back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import ModelError

log = logging.getLogger(__name__)


class LazyExtension:
    """One extension module, built on the first ``load()``; its source has an ``isa()`` function."""

    def __init__(
        self,
        name: str,
        label: str,
        source: Callable[[], str],
        functions: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.label = label
        self._source = source
        self._functions = list(functions) if functions is not None else None
        self.module: Any = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The compiled module; ModelError (the same one each time) if it cannot be built here."""
        if self.module is not None:
            return self.module
        with self._lock:
            if self.module is None and self.error is None:
                try:
                    from torch.utils.cpp_extension import load_inline

                    self.module = load_inline(
                        self.name,
                        cpp_sources=self._source(),
                        functions=self._functions,
                        extra_cflags=["-O3", "-march=native"],
                        verbose=False,
                    )
                    log.info("%s kernel ready (%s)", self.label, self.module.isa())
                except Exception as e:  # no compiler, no ninja, unsupported platform, ...
                    self.error = f"{type(e).__name__}: {e}".strip()[:2000]
            if self.module is None:
                raise ModelError(f"the {self.label} kernel could not be built: {self.error}")
        return self.module

    def available(self) -> bool:
        """Whether the module builds/loads here (builds it on the first call)."""
        try:
            self.load()
        except ModelError:
            return False
        return True
