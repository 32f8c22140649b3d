"""Diagnostics that take a GPU training step apart (operator counts, syncs, profiles, CUDA graphs, loop overhead)."""
