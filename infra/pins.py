"""Prints the pinned requirements of pyproject.toml for the Docker images, one per line, so
that the images install exactly the project's pins without repeating them.

    python infra/pins.py torch          # torch and torchvision (from a CPU or CUDA index)
    python infra/pins.py rest cpu       # every other dependency, then the `cpu` extra's

The images install torch first from the index of their build (CPU or CUDA), then the rest
from the default index: pip keeps the installed `torch==X+cpu` (or `+cu126`) since it
satisfies the pin `torch==X`. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TORCH = ("torch", "torchvision")
"""Installed from the build's own index (their wheels differ per CPU/CUDA build)."""


def _name(requirement: str) -> str:
    """The distribution name of a `name==version` requirement, normalised."""
    return requirement.split("==")[0].split("[")[0].strip().lower().replace("_", "-")


def pins(group: str, extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The requirements of `group` ("torch": torch and torchvision; "rest": every other
    dependency, then those of `extras`) in pyproject.toml's order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    if group == "torch":
        return [r for r in project["dependencies"] if _name(r) in TORCH]
    if group != "rest":
        raise ValueError(f"unknown group {group!r} (torch, rest)")
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"unknown extras {unknown} (pyproject has {sorted(optional)})")
    rest = [r for r in project["dependencies"] if _name(r) not in TORCH]
    return rest + [r for e in extras for r in optional[e]]


def main(argv: list[str]) -> int:
    """Prints the pins of `argv[0]` (torch or rest) and the extras after it."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(pins(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
