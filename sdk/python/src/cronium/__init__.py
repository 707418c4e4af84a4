"""Cronium runtime helpers for Python scripts."""
