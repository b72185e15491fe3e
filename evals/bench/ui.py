"""UI speed benchmark: the chat page's first paint and a turn's time to first token, in Chromium.

Run from the repository root (needs Debian's chromium: ``scripts/install-chromium.sh``):

    python evals/bench/ui.py                 # 3 starts of each app, 3 warm questions
    python evals/bench/ui.py --repeats 1     # quicker

First paint: process start → the chat input visible in headless Chromium. Time to first token:
question submitted → the first answer text visible. Both are measured for ``armada ui`` (over a
tiny ingested corpus, the real default model, the rag arm pinned) and for a baseline measured in the same run: a bare
Streamlit page holding only a chat input that streams a canned answer. Printed as ratios, because
machines are noisy. The first Armada question also loads the model (reported apart as "cold").

The browser harness (``start_app``, ``chromium``, selectors) is reused by ``tests/test_browser.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHAT_INPUT = '[data-testid="stChatInputTextArea"]'
ANSWER = '[class*="st-key-answer-stream"]'
STREAMLIT_FLAGS = [
    "--server.headless",
    "true",
    "--server.address",
    "127.0.0.1",
    "--browser.gatherUsageStats",
    "false",
    "--server.fileWatcherType",
    "none",
]
BASELINE_PAGE = """\
import streamlit as st
q = st.chat_input("Ask a question")
if q:
    n = st.session_state["n"] = st.session_state.get("n", -1) + 1
    with st.chat_message("assistant"):
        slot, shown = st.container(key=f"answer-stream-{n}").empty(), ""
        for w in "a canned answer of a few words".split():
            shown += w + " "
            slot.text(shown)
        st.feedback("thumbs")
"""
DOCS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital of France, on the Seine."},
    {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower is named after Eiffel."},
]


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        ANONYMIZED_TELEMETRY="False",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def armada_command(*args: str) -> list[str]:
    """``armada ARGS`` (the console script beside this interpreter, else ``python -m app.cli``)."""
    script = Path(sys.executable).with_name("armada")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return [*head, *args]


def armada_ui_command(port: int) -> list[str]:
    return armada_command("ui", "--server.port", str(port), *STREAMLIT_FLAGS)


def streamlit_command(page: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(page), "--server.port", str(port)] + (
        STREAMLIT_FLAGS
    )


@contextmanager
def start_app(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run a Streamlit server until the block ends (then terminate it, by its own pid)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium context (Debian's binary, a fresh profile) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


def first_paint(ctx: Any, cmd: list[str], env: dict[str, str], port: int, log: Path) -> float:
    """Seconds from process start to the chat input visible."""
    t0 = time.perf_counter()
    with start_app(cmd, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector(CHAT_INPUT, state="visible", timeout=60_000)
        dt = time.perf_counter() - t0
        page.close()
    return dt


def ask(page: Any, question: str, turn: int, timeout_ms: int = 120_000) -> float:
    """Submit the session's ``turn``-th question (from 0); seconds until its answer's first text
    is visible. Both pages key the streaming answer ``answer-stream-{turn}``."""
    page.fill(CHAT_INPUT, question)
    t0 = time.perf_counter()
    page.keyboard.press("Enter")
    page.wait_for_function(
        """(sel) => { const el = document.querySelector(sel);
             return el !== null && el.innerText.trim().length > 0; }""",
        arg=f".st-key-answer-stream-{turn}",
        timeout=timeout_ms,
        polling="raf",
    )
    dt = time.perf_counter() - t0
    page.wait_for_selector('[data-testid="stFeedbackButton"]', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    return dt


def settle(page: Any, timeout_ms: int = 30_000) -> None:
    """Wait until the script run is over and the page's tables and charts are drawn."""
    page.wait_for_timeout(200)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    page.mouse.wheel(0, 20_000)  # charts below the fold draw when scrolled into view
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]')
             && [...document.querySelectorAll('[data-testid="stDataFrame"]')]
                  .every(d => d.querySelector('canvas'))
             && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
                  .every(d => d.querySelector('canvas, svg'))""",
        timeout=timeout_ms,
    )
    page.mouse.wheel(0, -20_000)
    page.wait_for_timeout(400)  # the last frame of the charts' entry transition


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="starts of each app; warm questions")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: run scripts/install-chromium.sh")
    work = Path(tempfile.mkdtemp(prefix="armada-ui-bench-"))
    home = work / "home"
    docs = work / "docs"
    docs.mkdir(parents=True)
    (docs / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    # The rag arm answers every question, so the warm numbers compare like with like.
    env = offline_env(
        ARMADA_HOME=str(home), ARMADA_ROUTER__POLICY="fixed", ARMADA_ROUTER__ARM="rag"
    )
    env.setdefault("ARMADA_MODELS_DIR", str(ROOT / "data" / "models"))
    subprocess.run(
        armada_command("ingest", str(docs)),
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    baseline = work / "baseline.py"
    baseline.write_text(BASELINE_PAGE)

    def command(name: str, port: int) -> list[str]:
        return streamlit_command(baseline, port) if name == "baseline" else armada_ui_command(port)

    paint: dict[str, list[float]] = {"baseline": [], "armada": []}
    ttft: dict[str, list[float]] = {"baseline": [], "armada warm": [], "armada cold": []}
    with chromium(work / "profile") as ctx:
        for r in range(args.repeats):
            for name in ("baseline", "armada"):
                port = free_port()
                log = work / f"{name}-{r}.log"
                paint[name].append(first_paint(ctx, command(name, port), env, port, log))
        for name in ("baseline", "armada"):
            port = free_port()
            with start_app(command(name, port), env, work / f"{name}-ttft.log") as proc:
                wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector(CHAT_INPUT, timeout=60_000)
                turn = 0
                if name == "armada":
                    ttft["armada cold"].append(ask(page, "What is the capital of France?", turn))
                    turn += 1
                for q in range(args.repeats):
                    key = "baseline" if name == "baseline" else "armada warm"
                    question = f"Who is the Eiffel Tower named after? ({q})"
                    ttft[key].append(ask(page, question, turn))
                    turn += 1
                page.close()

    b_paint, b_ttft = _median(paint["baseline"]), _median(ttft["baseline"])
    print(f"UI benchmark (headless Chromium, medians over {args.repeats} runs)")
    print(f"{'measure':<34}{'seconds':>10}{'× baseline':>12}")
    rows = [
        ("first paint: bare Streamlit page", b_paint, b_paint),
        ("first paint: armada ui (Chat)", _median(paint["armada"]), b_paint),
        ("first token: canned stream", b_ttft, b_ttft),
        ("first token: armada, warm model", _median(ttft["armada warm"]), b_ttft),
        ("first token: armada, cold (loads)", _median(ttft["armada cold"]), b_ttft),
    ]
    for label, value, base in rows:
        print(f"{label:<34}{value:>10.2f}{value / base:>12.2f}")


if __name__ == "__main__":
    main()
