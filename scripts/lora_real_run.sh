#!/bin/bash
# The real CPU run of the LoRA arms (issue #4) on ../shared/datasets with SmolLM2:
# three RAFT experts, one merged RAFT adapter, one FT adapter, the expert routers, then the
# evaluation of closed_book, rag, ft, raft and multi_lora_raft on held-out dev questions.
#
#   ARMADA_HOME=/tmp/lora-home scripts/lora_real_run.sh [N_EVAL]     (resumable: rerun to resume)
#
# About 75 min of training and 35 min of evaluation (N_EVAL=40) on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
: "${ARMADA_HOME:?set ARMADA_HOME to the folder for the corpus, adapters and results}"
D=${DATASETS:-../shared/datasets}
N=${1:-40}
A=.venv/bin/armada
W=$ARMADA_HOME/lora-run
mkdir -p "$W"
HOTPOT=hotpotqa:$D/hotpotqa/train_sample.json
POPQA=popqa:$D/popqa/popqa.tsv,$D/popqa/paragraphs.jsonl
PUBMED=pubmedqa:$D/pubmedqa/ori_pqal_trainval.json

[ -f "$ARMADA_HOME/corpus.db" ] || $A ingest "$D/corpus/passages.jsonl"   # ~15 min once

RAFT="--held-out 0.2 --n 100 --k 3 --max-passage-words 60 --distractors retriever"
[ -f "$W/hotpotqa.jsonl" ] || $A raft build -d "$HOTPOT" $RAFT --out "$W/hotpotqa.jsonl"
[ -f "$W/popqa.jsonl" ] || $A raft build -d "$POPQA" $RAFT --out "$W/popqa.jsonl"
[ -f "$W/pubmedqa.jsonl" ] || $A raft build -d "$PUBMED" $RAFT --out "$W/pubmedqa.jsonl"
[ -f "$W/merged.jsonl" ] || $A raft build -d "$HOTPOT" -d "$POPQA" -d "$PUBMED" $RAFT --out "$W/merged.jsonl"
[ -f "$W/ft.jsonl" ] || $A raft build --ft -d "$HOTPOT" -d "$POPQA" -d "$PUBMED" --held-out 0.2 --n 100 --out "$W/ft.jsonl"

TRAIN="--r 16 --alpha 32 --epochs 1 --lr 5e-4 --batch-tokens 1024 --threads 2 --promote"
trained() { $A adapters list --json | grep -q "\"name\": \"$1\""; }
for d in hotpotqa popqa pubmedqa; do
  trained "raft_$d" || $A train "$W/$d.jsonl" --name "raft_$d" --kind raft_expert $TRAIN
done
trained raft || $A train "$W/merged.jsonl" --name raft --kind raft $TRAIN
trained ft || $A train "$W/ft.jsonl" --name ft --kind ft $TRAIN

[ -f "$W/router/prototypes.json" ] || $A raft router --out "$W/router" \
  -e "hotpotqa=$HOTPOT" -e "hotpotqa=hotpotqa:$D/hotpotqa/dev_fullwiki.json" \
  --exclude "hotpotqa:$D/hotpotqa/dev_distractor.json" -e "popqa=$POPQA" -e "pubmedqa=$PUBMED" \
  --held-out 0.2

[ -f "$ARMADA_HOME/armada.toml" ] || cat > "$ARMADA_HOME/armada.toml" <<TOML
[[arms]]
name = "rag"
agent = "rag"
prior = 0.8

[[arms]]
name = "closed_book"
agent = "closed_book"
prior = 0.3

[[arms]]
name = "refrag"
agent = "refrag"
prior = 0.6

[[arms]]
name = "ft"
agent = "ft"

[[arms]]
name = "raft"
agent = "raft"

[[arms]]
name = "multi_lora_raft"
agent = "multi_lora_raft"
options = { experts = { hotpotqa = "raft_hotpotqa", popqa = "raft_popqa", pubmedqa = "raft_pubmedqa" }, router = "prototype", prototypes = "$W/router/prototypes.json", mode = "top1" }
TOML

# Follow-up measured the same day: the PopQA expert rebuilt without the answer-entity gold pages
#   armada raft build -d "$POPQA" $RAFT --drop-answer-titled-gold --out "$W/popqa_subject.jsonl"
#   armada train "$W/popqa_subject.jsonl" --name raft_popqa --kind raft_expert $TRAIN   (then promote v2)
EVAL=(--dataset "hotpotqa:$D/hotpotqa/dev_distractor.json" --dataset "$POPQA" --dataset "$PUBMED")
.venv/bin/python -m evals.router_accuracy --routers "$W/router" --n 100 "${EVAL[@]}" --out "$W/router_accuracy.json"
$A eval --arms closed_book,rag,ft,raft,multi_lora_raft "${EVAL[@]}" --n "$N" --seed 0 --out "$W/eval"
