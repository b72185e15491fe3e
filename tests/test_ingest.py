"""Ingest: supported formats, bad input (each refused with a clear IngestError naming the file, the
rest of the folder still ingested), consistency of catalogue / BM25 / Chroma, re-ingest and
update semantics, inert HTML, and a huge single line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import LimitsConfig, RetrievalConfig, Settings
from core.errors import IngestError
from core.retrieval import Retriever, ingest_paths
from core.retrieval.bm25 import load_index
from core.retrieval.dense import DenseIndex
from core.retrieval.ingest import catalogue_for

SCRIPT_DOC = (
    "<h1>Widget manual</h1>\n<script>alert('pwned'); document.cookie</script>\n"
    '<a href="javascript:void(0)" onclick="steal()">click</a> Frobnicator settings.'
)


def _write(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return folder


def _jsonl(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def _assert_consistent(settings: Settings) -> None:
    """Catalogue, BM25 index and Chroma hold exactly the same passages."""
    cat = catalogue_for(settings)
    ids = sorted(pid for pid, _ in cat.passage_keys())
    index = load_index(settings.bm25_dir)
    assert index is not None and index.generation == cat.generation()
    assert sorted(index.ids) == ids
    assert DenseIndex(settings).count(cat.generation()) == len(ids)


GOOD = {
    "good.txt": "Quokkas are small marsupials living on Rottnest Island.",
    "notes/guide.md": "# Sourdough guide\n\nFeed the starter daily with flour and water.",
    "records.jsonl": _jsonl(
        {"id": "r1", "title": "Vesuvius", "text": "Mount Vesuvius destroyed Pompeii in 79 AD."},
        {"id": 2, "text": "Tardigrades survive in outer space."},
        {"contents": "Axolotls regenerate their limbs.", "title": "Axolotl"},
    ),
}
BAD = {
    "latin1.txt": "Caf\u00e9 cr\u00e8me".encode("latin-1"),
    "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "empty.txt": "",
    "blank.md": "  \n\n\t\n",
    "broken.jsonl": _jsonl({"text": "fine line"}, "{not json", {"title": "no text"}),
    "picture.png": b"\x89PNG\r\n",
}


def test_a_folder_with_bad_files_ingests_the_good_ones(settings: Settings, tmp_path: Path) -> None:
    folder = _write(tmp_path / "corpus", {**GOOD, **BAD})
    report = ingest_paths(settings, [folder])

    errors = {Path(p).name: msg for p, msg in report.errors}
    assert set(errors) == set(BAD)
    assert "UTF-8" in errors["latin1.txt"] and "line 1" in errors["latin1.txt"]
    assert "binary" in errors["binary.txt"]
    assert "empty" in errors["empty.txt"] and "empty" in errors["blank.md"]
    assert "line 2: invalid JSON" in errors["broken.jsonl"]
    assert "line 3" in errors["broken.jsonl"] and "not ingested" in errors["broken.jsonl"]
    assert "unsupported" in errors["picture.png"]

    assert report.files_seen == len(GOOD) + len(BAD)
    assert report.documents_added == 5  # 1 txt + 1 md + 3 JSONL records
    assert report.passages_embedded == report.passages_added == 5
    docs = {p.doc_id for p in Retriever(settings).get(_all_ids(settings))}
    assert docs == {
        "corpus/good.txt",
        "corpus/notes/guide.md",
        "corpus/records.jsonl:r1",
        "corpus/records.jsonl:2",
        next(d for d in docs if d.startswith("corpus/records.jsonl:sha-")),
    }
    assert not any("broken" in d for d in docs)  # the whole bad JSONL file was refused
    _assert_consistent(settings)
    md = Retriever(settings).search("sourdough starter", k=1, mode="bm25")[0]
    assert md.passage.title == "Sourdough guide"


def _all_ids(settings: Settings) -> list[str]:
    return [pid for pid, _ in catalogue_for(settings).passage_keys()]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("latin1.txt", BAD["latin1.txt"], "not valid UTF-8"),
        ("binary.txt", BAD["binary.txt"], "binary"),
        ("empty.txt", BAD["empty.txt"], "empty"),
        ("broken.jsonl", BAD["broken.jsonl"], "line 2: invalid JSON"),
        ("dupes.jsonl", _jsonl({"id": 1, "text": "a"}, {"id": 1, "text": "b"}), "duplicate id"),
        ("picture.png", BAD["picture.png"], "unsupported"),
    ],
)
def test_a_bad_file_alone_raises_a_clear_ingest_error(
    settings: Settings, tmp_path: Path, name: str, content: str | bytes, expected: str
) -> None:
    path = _write(tmp_path, {name: content}) / name
    with pytest.raises(IngestError, match=expected) as info:
        ingest_paths(settings, [path])
    assert str(path) in str(info.value)
    # Nothing half-written: no passages, no index.
    assert catalogue_for(settings).counts() == (0, 0)
    assert load_index(settings.bm25_dir) is None


def test_missing_path_and_oversized_file_are_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        ingest_paths(settings, [tmp_path / "nope"])
    big = _write(tmp_path, {"big.txt": "word " * 300})
    small = settings.model_copy(update={"limits": LimitsConfig(max_ingest_file_bytes=1000)})
    with pytest.raises(IngestError, match=r"big\.txt.*over the .* limit"):
        ingest_paths(small, [big / "big.txt"])


def test_html_and_script_are_stored_and_returned_verbatim(settings: Settings, tmp_path: Path):
    folder = _write(tmp_path / "web", {"page.txt": SCRIPT_DOC, "other.txt": "Unrelated text."})
    ingest_paths(settings, [folder])
    r = Retriever(settings)
    for mode in ("bm25", "hybrid"):
        hit = r.search("frobnicator alert", k=1, mode=mode)[0]
        assert hit.passage.text == SCRIPT_DOC
    assert r.get(["web/page.txt#0"])[0].text == SCRIPT_DOC


def test_reingest_skips_unchanged_and_replaces_changed(settings: Settings, tmp_path: Path) -> None:
    folder = _write(tmp_path / "kb", GOOD)
    first = ingest_paths(settings, [folder])
    again = ingest_paths(settings, [folder])
    assert again.documents_unchanged == first.documents_added == 5
    assert again.passages_embedded == again.documents_added == again.documents_updated == 0
    assert again.index_version == first.index_version

    _write(folder, {"good.txt": "Wombats produce cube-shaped droppings."})
    _write(folder, {"records.jsonl": _jsonl(
        {"id": "r1", "title": "Vesuvius", "text": "Mount Vesuvius destroyed Pompeii in 79 AD."},
        {"contents": "Axolotls regenerate their limbs.", "title": "Axolotl"},
    )})  # fmt: skip
    third = ingest_paths(settings, [folder])
    assert third.documents_updated == 1 and third.documents_removed == 1
    assert third.passages_embedded == 1 and third.documents_unchanged == 3
    assert third.index_version != first.index_version
    r = Retriever(settings)
    assert r.search("wombats cube", k=1, mode="bm25")[0].passage.id == "kb/good.txt#0"
    assert r.search("quokkas rottnest", k=5, mode="bm25") == []
    assert r.search("tardigrades", k=5, mode="bm25") == []
    dense = r.search("small marsupial on an island", k=10, mode="dense")
    assert "Quokkas" not in " ".join(h.passage.text for h in dense)
    _assert_consistent(settings)


def test_a_jsonl_file_that_turns_bad_keeps_its_previous_version(
    settings: Settings, tmp_path: Path
) -> None:
    folder = _write(tmp_path / "kb", {"r.jsonl": _jsonl({"id": "a", "text": "Original text."})})
    ingest_paths(settings, [folder])
    _write(folder, {"r.jsonl": _jsonl({"id": "a", "text": "New text."}, "[1, 2")})
    with pytest.raises(IngestError, match="line 2"):
        ingest_paths(settings, [folder])
    assert Retriever(settings).get(["kb/r.jsonl:a#0"])[0].text == "Original text."
    _assert_consistent(settings)


def test_a_huge_single_line_is_chunked(settings: Settings, tmp_path: Path) -> None:
    words = [f"tok{i}" for i in range(30_000)] + ["needleword"]
    line = " ".join(words)  # ~250 KB, no newline at all
    nospace = "z" * 300_000
    folder = _write(tmp_path / "huge", {"line.txt": line, "blob.txt": nospace})
    big = settings.model_copy(
        update={"retrieval": RetrievalConfig(chunk_words=4000, chunk_overlap=0)}
    )
    report = ingest_paths(big, [folder])
    assert not report.errors
    r = Retriever(big)
    passages = r.get(sorted(_all_ids(big)))
    line_parts = sorted((p for p in passages if p.doc_id == "huge/line.txt"),
                        key=lambda p: int(p.id.rsplit("#", 1)[1]))  # fmt: skip
    assert len(line_parts) == 8 and " ".join(p.text for p in line_parts) == line
    blob_parts = [p for p in passages if p.doc_id == "huge/blob.txt"]
    assert len(blob_parts) == 1 and blob_parts[0].text == nospace  # 3000 capped "words"
    assert r.search("needleword", k=1, mode="bm25")[0].passage.id == line_parts[-1].id
    _assert_consistent(big)


def test_a_file_ingested_again_on_its_own_keeps_its_document_id(
    settings: Settings, tmp_path: Path
) -> None:
    folder = _write(
        tmp_path / "kb", {"a.txt": "Okapis are related to giraffes.", "b.txt": "Kiwis."}
    )
    ingest_paths(settings, [folder])
    _write(folder, {"a.txt": "Okapis are the only living relatives of giraffes."})
    report = ingest_paths(settings, [folder / "a.txt"])
    assert (report.documents_added, report.documents_updated) == (0, 1)
    assert catalogue_for(settings).counts() == (2, 2)
    assert Retriever(settings).get(["kb/a.txt#0"])[0].text.startswith("Okapis are the only")


def test_nothing_to_ingest(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no files or folders"):
        ingest_paths(settings, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no files to ingest"):
        ingest_paths(settings, [tmp_path / "empty"])


def test_searching_an_empty_home_finds_nothing_and_writes_nothing(settings: Settings) -> None:
    r = Retriever(settings)
    assert r.search("anything") == [] and r.count() == 0 and r.get(["x#0"]) == []
    assert r.stats()["passages"] == 0
    assert list(settings.home.iterdir()) == []
