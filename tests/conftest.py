"""Shared fixtures. The environment is pinned offline before anything heavy is imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from core.config import REPO_ROOT, Settings  # noqa: E402

# Converted base models are cached across test runs (conversion from GGUF takes ~50 s once).
SHARED_MODELS_DIR = Path(os.environ.get("ARMADA_TEST_MODELS_DIR", REPO_ROOT / "data" / "models"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ARMADA_HOME for one test; no TOML file leaks in from the developer's home."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("ARMADA_HOME", str(h))
    monkeypatch.delenv("ARMADA_CONFIG", raising=False)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, models_dir=SHARED_MODELS_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~3 M-parameter random Llama with SmolLM2's tokenizer (built once per test session)."""
    from core.models.convert import ensure_default_model
    from tests.tiny import make_tiny_model

    base = ensure_default_model(SHARED_MODELS_DIR)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", base)
