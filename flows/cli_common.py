"""Helpers every CLI command shares."""

from __future__ import annotations

import json


def emit(args, data: dict, text: str) -> None:
    """Print `data` as JSON with --json, else the human text."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)
