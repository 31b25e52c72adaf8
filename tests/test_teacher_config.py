"""Teacher configs as files: round trip, partial files, and errors that name the field."""

import json

import pytest

from distillprep.teachers.nerf.config import FitConfig
from distillprep.teachers.nerf.config_io import (
    ConfigError,
    from_dict,
    identity_hash,
    load_config_file,
    to_dict,
)
from distillprep.teachers.nerf.outputs import RenderConfig


@pytest.mark.parametrize("cls", [FitConfig, RenderConfig])
def test_round_trip(cls):
    config = cls()
    assert from_dict(cls, json.loads(json.dumps(to_dict(config)))) == config


def test_partial_json_and_toml_files(tmp_path):
    (tmp_path / "a.json").write_text('{"steps": 7, "model": {"grid": {"levels": 4}}}')
    (tmp_path / "a.toml").write_text("steps = 7\n[model.grid]\nlevels = 4\n")
    for name in ("a.json", "a.toml"):
        config = load_config_file(FitConfig, tmp_path / name)
        assert config.steps == 7 and config.model.grid.levels == 4
        assert config.model.hidden == FitConfig().model.hidden  # untouched default


def test_virtual_offsets_parse_as_tuples():
    config = from_dict(RenderConfig, {"virtual": {"offsets": [[2, 0, 0, 0, 0, 0]]}})
    assert config.virtual.offsets == ((2.0, 0.0, 0.0, 0.0, 0.0, 0.0),)


@pytest.mark.parametrize("data, message", [
    ({"stepz": 1}, "config: unknown field(s) ['stepz']"),
    ({"steps": "many"}, "config.steps: expected int, got 'many'"),
    ({"steps": True}, "config.steps: expected int, got True"),
    ({"model": 3}, "config.model: expected a table of fields, got int"),
    ({"sky": {"dilate_bins": [1, 2, 3]}}, "config.sky.dilate_bins: expected 2 values, got 3"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(FitConfig, data)
    assert message in str(info.value)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config_file(FitConfig, tmp_path / "missing.json")
    (tmp_path / "bad.toml").write_text("steps = = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid toml"):
        load_config_file(FitConfig, tmp_path / "bad.toml")


def test_identity_hash_ignores_run_length_only():
    base = FitConfig()
    assert identity_hash(base) == identity_hash(from_dict(FitConfig, {"steps": 1,
                                                                      "log_every": 3}))
    assert identity_hash(base) != identity_hash(from_dict(FitConfig, {"learning_rate": 0.1}))
