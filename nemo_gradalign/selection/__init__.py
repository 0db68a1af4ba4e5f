"""Turning per-problem statistics into a choice of problems."""
