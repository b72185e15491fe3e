"""Shared infrastructure: config, store, retrieval, models, text utilities. Imports nothing above it."""
