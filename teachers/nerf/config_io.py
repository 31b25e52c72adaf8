"""Teacher configs as plain data: nested frozen dataclasses <-> JSON-able dicts, a strict
parser for user config files (JSON or TOML, partial: omitted fields keep their defaults),
and the hash that says whether two configs fit the same teacher."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from distillprep.teachers.errors import TeacherConfigError

T = TypeVar("T")

RUN_LENGTH_FIELDS = frozenset({"steps", "log_every"})
"""Fields that say how long to run, not what is fitted: a resumed fit may change them."""


ConfigError = TeacherConfigError
"""A teacher config file or value that cannot be used (also a `ValueError` and the
project's `ConfigError`: the CLI exits 2)."""


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as nested dicts of JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from `data`; missing fields keep their defaults, unknown ones
    and values of the wrong type raise ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has "
                          f"{sorted(names)}")
    values = {name: _value(hints[name], raw, f"{where}.{name}") for name, raw in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _value(kind: Any, raw: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, raw, where)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {raw!r}")
        args = typing.get_args(kind)
        kinds = [args[0]] * len(raw) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(raw):
            raise ConfigError(f"{where}: expected {len(kinds)} values, got {len(raw)}")
        return tuple(_value(k, r, f"{where}[{i}]")
                     for i, (k, r) in enumerate(zip(kinds, raw, strict=True)))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            if option is type(None) and raw is None:
                return None
            try:
                return _value(option, raw, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {raw!r} is none of {kind}")
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if origin is typing.Literal and raw in typing.get_args(kind):
        return raw
    if kind in (int, str, bool) and type(raw) is kind:
        return raw
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {raw!r}")


def read_config_data(path: str | Path) -> Any:
    """The data of a config file: YAML (.yaml/.yml), TOML (.toml) or JSON (anything
    else); ConfigError naming the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except Exception as exc:  # noqa: BLE001 - each parser raises its own error types
        raise ConfigError(f"config file {path}: not valid {path.suffix[1:] or 'JSON'}: "
                          f"{exc}") from None


def load_config_file(cls: type[T], path: str | Path) -> T:
    """Parse a YAML, TOML or JSON file (by suffix) into `cls`."""
    return from_dict(cls, read_config_data(path), f"config file {path}")


def identity_hash(config: Any) -> str:
    """SHA-256 of the config without its run-length fields: equal for configs that fit the
    same teacher."""
    data = {k: v for k, v in to_dict(config).items() if k not in RUN_LENGTH_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
