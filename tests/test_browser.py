"""The app in a real headless Chromium: ask, vote, visit every page, and prove no injection ran.

``armada ui`` runs as a subprocess on a free port over a temporary ARMADA_HOME holding a tiny
ingested corpus, one document of which carries an ``<img onerror>``, a ``<script>``, a
``javascript:`` link and an outside image. Playwright drives Debian's ``/usr/bin/chromium``
(installed by ``scripts/install-chromium.sh``; ``playwright install`` is never run). Every request
the page makes is recorded and any not to 127.0.0.1 is aborted, so nothing leaves the machine
even if escaping failed. Screenshots of each page go to ``artifacts/screenshots/``.

Skipped with a reason when Chromium or Playwright is missing, unless ``CI`` is set (then it fails).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlmodel

from core.config import Settings
from core.store import Feedback, Store
from evals.bench.ui import (
    ANSWER,
    CHAT_INPUT,
    CHROMIUM,
    armada_ui_command,
    chromium,
    free_port,
    offline_env,
    settle,
    start_app,
    wait_http,
)
from tests.conftest import SHARED_MODELS_DIR
from tests.ui_seed import seed_evals_and_adapters, write_corpus

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
PAGES = {"Leaderboard": "leaderboard", "Evaluations": "evaluations"}
PAGES["Adapters & training"] = "adapters"
CONFIG = """
[[arms]]
name = "rag"
agent = "rag"

[[arms]]
name = "closed_book"
agent = "closed_book"

[router]
policy = "fixed"  # always rag in the chat, so its sources are the retrieved passages
arm = "rag"
"""


def _need_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (run scripts/install-chromium.sh)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright; no browser download)")
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _votes(store: Store) -> list[Feedback]:
    with store.session() as s:
        return list(s.exec(sqlmodel.select(Feedback)))


def _poll(fn, timeout: float = 15.0):  # noqa: ANN001, ANN202
    """``fn()`` once it is truthy (the server writes from its own process)."""
    deadline = time.monotonic() + timeout
    while not (value := fn()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


@pytest.mark.real_model
def test_ask_vote_and_visit_every_page_in_chromium(home, tmp_path):
    _need_browser()
    from core.retrieval import ingest_paths

    ingest_paths(Settings(home=home, models_dir=SHARED_MODELS_DIR), [write_corpus(tmp_path / "d")])
    store = Store(f"sqlite:///{home / 'armada.db'}")
    seed_evals_and_adapters(store, home)  # so those pages have something to show
    (tmp_path / "armada.toml").write_text(CONFIG)
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = offline_env(
        ARMADA_HOME=str(home),
        ARMADA_MODELS_DIR=str(SHARED_MODELS_DIR),
        ARMADA_CONFIG=str(tmp_path / "armada.toml"),
    )
    requests: list[str] = []

    def guard(route) -> None:  # noqa: ANN001 - playwright's Route
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()  # recorded below; never sent

    with (
        start_app(armada_ui_command(port), env, tmp_path / "server.log") as proc,
        chromium(tmp_path / "profile") as ctx,
    ):
        ctx.on("request", lambda r: requests.append(r.url))
        ctx.route("**/*", guard)
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector(CHAT_INPUT, timeout=60_000)

        page.fill(CHAT_INPUT, "What does the Zanzibar archipelago grow?")
        page.keyboard.press("Enter")
        page.wait_for_selector('[data-testid="stFeedbackButton"]', timeout=90_000)
        assert page.locator(ANSWER).count() == 0  # the streamed answer now sits in the history
        answer = page.locator('[data-testid="stChatMessageContent"]').nth(1).inner_text()
        assert answer.strip() and "arm rag" in answer

        page.locator('[data-testid="stExpander"] summary').first.click()
        sources = page.locator('[data-testid="stExpanderDetails"]').first
        sources.wait_for(state="visible")
        text = sources.inner_text()
        assert "<img src=x onerror=" in text and "<script>" in text  # shown, as text
        assert "javascript:window.__pwned=4" in text

        page.locator('[data-testid="stFeedbackButton"]').first.click()  # thumbs up
        [vote] = _poll(lambda: _votes(store))
        assert vote.score == 1.0 and vote.voter.startswith("ui-")
        page.set_viewport_size({"width": 1280, "height": 1500})  # the app scrolls inside itself
        page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)

        page.locator('[data-testid="stSidebarNavLink"]', has_text="Arena").click()
        page.locator("h1", has_text="Arena").wait_for(timeout=30_000)
        page.get_by_label("Question").fill("Who is the Eiffel Tower named after?")
        page.get_by_role("button", name="Ask two arms").click()
        page.get_by_role("button", name="A is better").click(timeout=90_000)
        page.get_by_text("You voted").wait_for(timeout=30_000)
        [battle] = _poll(store.arena_battles)
        assert battle.winner == "a" and {battle.arm_a, battle.arm_b} == {"rag", "closed_book"}
        settle(page)
        page.screenshot(path=str(SHOTS / "arena.png"), full_page=True)

        for title, name in PAGES.items():
            page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
            page.locator("h1", has_text=title).wait_for(timeout=30_000)
            if name == "leaderboard":  # the chat turn, the two arena answers and the vote
                page.get_by_text("3 answers, 1 votes").wait_for(timeout=30_000)
            settle(page)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        # No payload ran, no element was made from it, no request left for its image.
        assert page.evaluate("window.__pwned") is None
        assert "pwned" not in page.title()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector(CHAT_INPUT, timeout=30_000)
        assert page.evaluate("window.__pwned") is None
        assert page.locator('img[src="x"], a[href^="javascript"]').count() == 0

    store.close()
    outside = [u for u in requests if urlparse(u).hostname not in ("127.0.0.1", None)]
    assert not outside, outside
    assert not [u for u in requests if urlparse(u).path == "/x"]
    assert not [u for u in requests if "armada-test.invalid" in u]
