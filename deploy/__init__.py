"""Deployment recipes: configs and helpers for running NAG servers (not part of the `nag` package)."""
