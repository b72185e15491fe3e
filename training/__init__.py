"""Training: RAFT data building, LoRA training and the nightly retrain loop (see the LoRA issue)."""
