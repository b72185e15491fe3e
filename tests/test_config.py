"""Settings: defaults work offline; environment variables and a TOML file override them."""

from __future__ import annotations

import pytest

from core.config import Settings, config_file, load_settings


def test_defaults_are_offline_and_under_home(home):
    s = load_settings()
    assert s.home == home
    assert s.db_url == f"sqlite:///{home / 'armada.db'}"
    assert s.models["default"].backend == "local" and s.models["default"].model is None
    assert [a.name for a in s.arms] == ["rag", "closed_book", "refrag"]
    assert s.retrieval.bm25_engine == "bm25s" and s.retrieval.mode == "hybrid"
    assert s.router.policy == "thompson" and s.arm("rag").prior > s.arm("closed_book").prior
    assert not (home / "armada.db").exists()  # loading settings creates nothing


def test_environment_overrides_nested_fields(home, monkeypatch):
    monkeypatch.setenv("ARMADA_RETRIEVAL__TOP_K", "7")
    monkeypatch.setenv("ARMADA_ROUTER__POLICY", "uniform")
    s = load_settings()
    assert s.retrieval.top_k == 7 and s.router.policy == "uniform"


def test_toml_file_in_home_is_read_and_env_wins(home, monkeypatch):
    (home / "armada.toml").write_text(
        """
[retrieval]
top_k = 3
bm25_engine = "rank_bm25"

[models.remote]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "served"

[[arms]]
name = "rag"
agent = "rag"

[[arms]]
name = "rag_remote"
agent = "rag"
model = "remote"
"""
    )
    monkeypatch.setenv("ARMADA_RETRIEVAL__TOP_K", "5")
    s = load_settings()
    assert config_file() == home / "armada.toml"
    assert s.retrieval.top_k == 5 and s.retrieval.bm25_engine == "rank_bm25"
    assert s.arm("rag_remote").model == "remote" and s.models["remote"].backend == "openai"


def test_explicit_config_path_must_exist(home, monkeypatch):
    monkeypatch.setenv("ARMADA_CONFIG", str(home / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="ARMADA_CONFIG"):
        load_settings()


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"arms": [{"name": "x", "agent": "rag", "model": "nope"}]}, "unknown model"),
        ({"retrieval": {"chunk_words": 50, "chunk_overlap": 50}}, "chunk_overlap"),
        ({"retrieval": {"top_k": 0}}, "top_k"),
    ],
)
def test_invalid_settings_say_what_is_wrong(home, update, match):
    with pytest.raises(ValueError, match=match):
        Settings(**update)
