"""Hydra entry points (thin: config -> library calls)."""
