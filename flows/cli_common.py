"""Helpers every CLI command shares: output, and the arguments spelled one way everywhere
(`--scene ID`, `--dataset NAME`, `--storage-option KEY=VALUE`, `--json`)."""

from __future__ import annotations

import json

from distillprep.scenes.errors import ConfigError


def emit(args, data: dict, text: str) -> None:
    """Print `data` as JSON with --json, else the human text."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def add_scene_argument(parser, many: bool = True, required: bool = False) -> None:
    """`--scene ID`: repeatable where a command takes several scenes (default: all), once
    where it works on one."""
    if many:
        parser.add_argument("--scene", action="append", default=None, metavar="ID",
                            dest="scenes", required=required,
                            help="a scene id (repeat for several; default: all)")
    else:
        parser.add_argument("--scene", default=None, metavar="ID", dest="scene",
                            required=required, help="the scene id")


def add_dataset_argument(parser) -> None:
    """`--dataset NAME`, its choices the registered readers."""
    from distillprep.scenes.datasets import READERS

    parser.add_argument("--dataset", default="nuscenes", choices=sorted(READERS),
                        help="dataset format (a reader in scenes/datasets.py)")


def add_storage_option_argument(parser) -> None:
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for a store URL, e.g. endpoint_url=http://... "
                        "(repeatable; credentials also come from the usual environment)")


def storage_options(args) -> dict[str, str]:
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option {item!r} is not KEY=VALUE")
        options[key] = value
    return options


def check_device(name: str) -> None:
    """Refuse `--device cuda` where torch sees no CUDA device."""
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA device here")
