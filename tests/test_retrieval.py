"""Retrieval: tokenizer and chunker, BM25 engines (bm25s against rank-bm25 on real wiki text),
reciprocal-rank fusion, and search over a real on-disk corpus (Chroma + MiniLM + bm25s), including
a fresh process reading the indexes and a tiny random cross-encoder reranker."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.config import REPO_ROOT, RetrievalConfig, Settings
from core.errors import InputError
from core.packaged import wiki_summaries
from core.retrieval import Retriever, chunk_text, ingest_demo, reciprocal_rank_fusion, tokenize
from core.retrieval.bm25 import (
    POINTER,
    Bm25sEngine,
    RankBM25Engine,
    build_index,
    load_index,
    top_k,
)
from core.retrieval.ingest import catalogue_for, document_rows
from core.retrieval.loaders import SourceDoc
from core.retrieval.text import indexed_text

DEMO_DOCS = 40


# -- tokenizer and chunker ----------------------------------------------------------------------
def test_tokenize_casefolds_and_drops_stopwords() -> None:
    assert tokenize("The Eiffel Tower is in PARIS, isn't it?") == ["eiffel", "tower", "paris"]
    assert tokenize("The cat", stopwords=False) == ["the", "cat"]


def _words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_chunk_text_windows_overlap_inside_a_paragraph() -> None:
    chunks = chunk_text(" ".join(_words(25)), words=10, overlap=3)
    assert [c.split() for c in chunks] == [_words(25)[0:10], _words(25)[7:17], _words(25)[14:24],
                                           _words(25)[21:25]]  # fmt: skip


def test_chunk_text_prefers_paragraph_boundaries_and_keeps_text_verbatim() -> None:
    para1 = "Alpha  beta\tgamma delta <b>epsilon</b>."
    para2 = " ".join(_words(8, "x"))
    text = f"{para1}\n\n{para2}"
    chunks = chunk_text(text, words=8, overlap=2)
    # The 5-word first paragraph ends the first window (no overlap across the break) and is
    # kept byte for byte, double space and tab included.
    assert chunks[0] == para1
    assert chunks[1] == " ".join(_words(8, "x"))
    assert len(chunks) == 2


def test_chunk_text_covers_every_word_and_respects_the_size() -> None:
    rng = random.Random(3)
    words = [f"t{i}" for i in range(500)]
    text = "".join(w + rng.choice([" ", " ", "\n", "\n\n"]) for w in words)
    chunks = chunk_text(text, words=40, overlap=10)
    assert all(len(c.split()) <= 40 for c in chunks)
    seen = [w for c in chunks for w in c.split()]
    assert set(seen) == set(words)
    assert seen[0] == "t0" and seen[-1] == "t499"


def test_chunk_text_edge_cases() -> None:
    assert chunk_text("   \n\n ", words=10, overlap=2) == []
    assert chunk_text("one", words=10, overlap=2) == ["one"]
    blob = "x" * 1050  # no whitespace at all: split into 100-character "words"
    chunks = chunk_text(blob, words=4, overlap=0)
    assert "".join(chunks) == blob and len(chunks) == 3
    with pytest.raises(ValueError):
        chunk_text("a b", words=4, overlap=4)


# -- BM25 engines -------------------------------------------------------------------------------
def test_top_k_breaks_ties_by_index_and_skips_zero_scores() -> None:
    scores = np.array([0.0, 2.0, 5.0, 2.0, 2.0, 0.0])
    assert top_k(scores, 3) == [(2, 5.0), (1, 2.0), (3, 2.0)]
    assert top_k(scores, 10) == [(2, 5.0), (1, 2.0), (3, 2.0), (4, 2.0)]
    assert top_k(np.zeros(3), 2) == []


@pytest.fixture(scope="module")
def wiki_sample() -> tuple[list[list[str]], list[list[str]]]:
    """2000 demo summaries (tokenized) and 20 queries made from other articles' descriptions."""
    data = json.loads(wiki_summaries().read_text(encoding="utf-8"))
    items = sorted(data.items())
    rng = random.Random(1234)
    picked = rng.sample(items, 2000)
    docs = [tokenize(indexed_text(v["title"], v["extract"])) for _, v in picked]
    queries: list[list[str]] = []
    for _, v in rng.sample(items, 60):
        q = tokenize(v.get("description") or v["title"])
        if len(q) >= 2:
            queries.append(q)
    return docs, queries[:20]


def test_bm25s_and_rank_bm25_agree_on_top10_of_real_wiki_text(wiki_sample) -> None:
    docs, queries = wiki_sample
    assert len(queries) == 20
    fast, reference = Bm25sEngine.build(docs), RankBM25Engine.build(docs)
    for q in queries:
        a, b = fast.top(q, 10), reference.top(q, 10)
        assert a, f"query {q} matched nothing; pick better queries"
        assert [i for i, _ in a] == [i for i, _ in b], f"rankings differ for {q}"
        # Same ranking, same scores up to rank-bm25's constant (k1 + 1) factor and float32.
        np.testing.assert_allclose([s * 2.5 for _, s in a], [s for _, s in b], rtol=1e-4)


def test_engines_survive_save_and_load(tmp_path: Path, wiki_sample) -> None:
    docs, queries = wiki_sample
    rows = [(f"p{i:05d}", "", " ".join(toks)) for i, toks in enumerate(docs[:300])]
    for engine in ("bm25s", "rank_bm25"):
        folder = tmp_path / engine
        built = build_index(folder, engine, generation=7, passages=rows)
        loaded = load_index(folder)
        assert loaded is not None and loaded.version == built.version
        assert loaded.is_current(engine, 7) and not loaded.is_current(engine, 8)
        for q in queries[:5]:
            assert loaded.search(" ".join(q), 10) == built.search(" ".join(q), 10)


def test_index_publishing_keeps_one_previous_version_and_no_temporaries(tmp_path: Path) -> None:
    rows = [("a", "", "apple banana"), ("b", "", "banana cherry")]
    versions = [build_index(tmp_path, "bm25s", g, rows).version for g in range(1, 5)]
    assert (tmp_path / POINTER).read_text().strip() == versions[-1]
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == sorted(versions[-2:])


# -- fusion -------------------------------------------------------------------------------------
def test_rrf_scores_and_orders_hand_made_ranks() -> None:
    fused = reciprocal_rank_fusion({"bm25": ["a", "b", "c"], "dense": ["c", "a", "d"]}, rrf_k=60)
    assert [f.id for f in fused] == ["a", "c", "b", "d"]
    by_id = {f.id: f for f in fused}
    assert by_id["a"].score == pytest.approx(1 / 61 + 1 / 62)
    assert by_id["c"].score == pytest.approx(1 / 63 + 1 / 61)
    assert by_id["d"].ranks == {"dense": 3}
    assert by_id["a"].ranks == {"bm25": 1, "dense": 2}


def test_rrf_ties_go_to_the_better_best_rank_then_to_the_smaller_id() -> None:
    # rrf_k=1: "z1" at ranks (1, 5) scores 1/2 + 1/6 = 2/3 and "a2" at (2, 2) scores 1/3 + 1/3 = 2/3.
    # Equal scores: "z1" goes first on its better best rank although its id sorts later.
    # "q"/"u" (1/4 each, best rank 3) and "r"/"v" (1/5, best rank 4) tie fully: smaller id first.
    fused = reciprocal_rank_fusion(
        {"bm25": ["z1", "a2", "q", "r", "s"], "dense": ["t", "a2", "u", "v", "z1"]}, rrf_k=1
    )
    assert [f.id for f in fused] == ["z1", "a2", "t", "q", "u", "r", "v", "s"]
    assert fused[0].score == fused[1].score == pytest.approx(2 / 3)
    assert fused[0].ranks == {"bm25": 1, "dense": 5}


# -- the real corpus: Chroma on disk, MiniLM, bm25s ----------------------------------------------
@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 demo articles ingested once for this module (a real embedding run)."""
    home = tmp_path_factory.mktemp("demo") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARMADA_HOME", str(home))
        mp.delenv("ARMADA_CONFIG", raising=False)
        report = ingest_demo(Settings(home=home), limit=DEMO_DOCS)
    assert report.documents_added == DEMO_DOCS
    assert report.passages_embedded == report.passages_added > 0
    return home


@pytest.fixture
def demo(demo_home: Path, settings: Settings) -> Settings:
    """A private copy of the demo corpus for one test (tests may change it)."""
    shutil.copytree(demo_home, settings.home, dirs_exist_ok=True)
    return settings


def _demo_titles(n: int = DEMO_DOCS) -> list[str]:
    data = json.loads(wiki_summaries().read_text(encoding="utf-8"))
    return [data[k]["title"] for k in sorted(data)[:n]]


def test_search_modes_find_an_article_by_its_title(demo: Settings) -> None:
    title = _demo_titles()[7]
    r = Retriever(demo)
    for mode in ("bm25", "dense", "hybrid"):
        hits = r.search(title, k=3, mode=mode)
        assert hits and len(hits) <= 3
        assert hits[0].passage.title == title, mode
        assert set(hits[0].ranks) <= {"bm25", "dense"}
    hybrid = r.search(title, k=5)
    assert hybrid[0].ranks.get("bm25") == 1 and "dense" in hybrid[0].ranks
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


def test_search_rejects_bad_queries(demo: Settings) -> None:
    r = Retriever(demo)
    for bad in ("", "   \n"):
        with pytest.raises(InputError, match="empty"):
            r.search(bad)
    with pytest.raises(InputError, match="mode"):
        r.search("paris", mode="psychic")
    with pytest.raises(InputError, match="limit"):
        r.search("x" * (demo.limits.max_question_chars + 1))


def test_get_count_and_stats(demo: Settings) -> None:
    r = Retriever(demo)
    n = r.count()
    assert n >= DEMO_DOCS
    ids = [h.passage.id for h in r.search(_demo_titles()[3], k=3, mode="dense")]
    got = r.get([ids[1], "no-such-id", ids[0]])
    assert [p.id for p in got] == [ids[1], ids[0]]
    stats = r.stats()
    assert stats["passages"] == stats["dense_passages"] == n
    assert stats["documents"] == DEMO_DOCS and stats["engine"] == "bm25s"
    assert stats["index_version"] and stats["embedding_model"].endswith("MiniLM-L6-v2")


def test_reingesting_unchanged_demo_embeds_nothing(demo: Settings) -> None:
    before = Retriever(demo).stats()["index_version"]
    report = ingest_demo(demo, limit=DEMO_DOCS)
    assert report.documents_unchanged == DEMO_DOCS
    assert report.documents_added == report.passages_added == report.passages_embedded == 0
    assert report.index_version == before


def test_a_new_process_reads_the_indexes_and_a_live_one_sees_its_additions(
    demo: Settings, tmp_path: Path
) -> None:
    """Another process (1) queries the indexes as they are, without rebuilding BM25, then (2)
    ingests a file; this process's long-lived Retriever must then find that file, dense included
    (Chroma caches its vector index per process, so this needs the reopen in ``dense.py``)."""
    title = _demo_titles()[11]
    here = Retriever(demo)
    expected = {
        m: [h.passage.id for h in here.search(title, k=5, mode=m)] for m in ("dense", "bm25")
    }
    version = here.stats()["index_version"]
    new_doc = tmp_path / "new" / "gloop.txt"
    new_doc.parent.mkdir()
    new_doc.write_text("Gloopberries are luminous violet fruits that grow in underwater caves.")
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import core.retrieval.bm25 as bm25
        real_build = bm25.build_in_memory
        def refuse(*a, **k):
            raise SystemExit("the BM25 index was rebuilt in the new process")
        bm25.build_in_memory = refuse
        from core.config import Settings
        from core.retrieval import Retriever, ingest_paths
        settings = Settings(home={str(demo.home)!r})
        r = Retriever(settings)
        out = {{m: [h.passage.id for h in r.search({title!r}, k=5, mode=m)]
               for m in ("dense", "bm25")}}
        out["version"] = r.stats()["index_version"]
        bm25.build_in_memory = real_build
        out["embedded"] = ingest_paths(settings, [Path({str(new_doc.parent)!r})]).passages_embedded
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["dense"] == expected["dense"] and got["dense"]
    assert got["bm25"] == expected["bm25"]
    assert got["version"] == version
    assert got["embedded"] == 1

    query = "violet fruit growing in caves under water"
    assert here.search(query, k=1, mode="dense")[0].passage.id == "new/gloop.txt#0"
    assert here.search("gloopberries", k=1, mode="bm25")[0].passage.id == "new/gloop.txt#0"
    assert here.stats()["dense_passages"] == here.count()


def test_a_stale_or_missing_bm25_index_is_rebuilt(demo: Settings) -> None:
    cat = catalogue_for(demo)
    # A change the indexes have not seen (as if an ingest was killed after the catalogue commit).
    doc = SourceDoc("extra/zyx.txt", "Zyx", "Quuxification of zyxwv particles.", "x", "extra")
    cat.apply("extra", document_rows([doc], demo.retrieval))
    r = Retriever(demo)
    hits = r.search("quuxification zyxwv", k=3, mode="bm25")
    assert hits[0].passage.id == "extra/zyx.txt#0"
    assert load_index(demo.bm25_dir).generation == cat.generation()
    (demo.bm25_dir / POINTER).unlink()
    assert (
        Retriever(demo).search("quuxification", k=1, mode="bm25")[0].passage.doc_id
        == "extra/zyx.txt"
    )


def test_switching_to_rank_bm25_gives_the_same_bm25_ranking(demo: Settings) -> None:
    queries = _demo_titles()[:5] + ["ancient greek philosopher", "river in europe"]
    fast = Retriever(demo)
    expected = [[h.passage.id for h in fast.search(q, k=10, mode="bm25")] for q in queries]
    slow_settings = demo.model_copy(update={"retrieval": RetrievalConfig(bm25_engine="rank_bm25")})
    slow = Retriever(slow_settings)
    got = [[h.passage.id for h in slow.search(q, k=10, mode="bm25")] for q in queries]
    assert got == expected
    assert load_index(demo.bm25_dir).meta["engine"] == "rank_bm25"


# -- reranking with a tiny random cross-encoder -------------------------------------------------
def _tiny_cross_encoder(folder: Path, vocab_words: list[str]) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(vocab_words))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.5,  # large random weights: clearly different scores per pair
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reranker_reorders_candidates_by_cross_encoder_scores(demo: Settings, tmp_path: Path):
    from sentence_transformers import CrossEncoder

    words = [w for t in _demo_titles() for w in tokenize(t, stopwords=False)]
    model_dir = _tiny_cross_encoder(tmp_path / "tiny-ce", words)
    query = "ancient history"
    retrieval = demo.retrieval.model_copy(
        update={"reranker_model": str(model_dir), "candidate_k": 8}
    )
    plain = Retriever(demo.model_copy(update={"retrieval": demo.retrieval.model_copy(
        update={"candidate_k": 8})})).search(query, k=8)  # fmt: skip
    reranked = Retriever(demo.model_copy(update={"retrieval": retrieval})).search(query, k=8)

    assert {h.passage.id for h in reranked} == {h.passage.id for h in plain}
    assert [h.ranks["rerank"] for h in reranked] == list(range(1, len(reranked) + 1))
    ce = CrossEncoder(str(model_dir), num_labels=1, device="cpu")
    direct = ce.predict([(query, indexed_text(h.passage.title, h.passage.text)) for h in plain])
    expected = [plain[i].passage.id for i in np.argsort(-direct, kind="stable")]
    assert [h.passage.id for h in reranked] == expected
    np.testing.assert_allclose([h.score for h in reranked], sorted(direct, reverse=True), rtol=1e-5)
    assert expected != [h.passage.id for h in plain], "the random reranker should reorder"
    # The fused ranks survive reranking.
    fused_rank = {h.passage.id: h.ranks for h in plain}
    for h in reranked:
        assert {k: v for k, v in h.ranks.items() if k != "rerank"} == fused_rank[h.passage.id]
