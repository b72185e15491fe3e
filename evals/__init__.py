"""Evaluation: metrics, judges, the A/B harness and speed benchmarks (``evals/bench``)."""
