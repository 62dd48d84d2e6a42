"""CLI commands for prompt mutation and search (registered on the main app)."""

from __future__ import annotations

from .cli import app  # noqa: F401
