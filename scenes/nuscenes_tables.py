"""The nuScenes table records the reader uses, typed: every field is checked for its type
and range where it is parsed, and a malformed one is a SceneDataError naming the table
file, the record (its token) and the field. The devkit loads the tables and checks their
references; whatever it accepts is parsed here before the reader uses it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import SceneDataError
from .tables import IMAGE_SIDE_RANGE, table_integer, table_timestamp_us

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")
"""Every table file of a nuScenes version folder."""
KEYED_TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor")
"""The tables the reader looks records up in by token: a token must name one record."""


@dataclass(frozen=True)
class SceneRecord:
    """A `scene.json` record."""

    token: str
    """The scene's token."""
    name: str
    """The scene's name (its scene id once validated)."""
    first_sample_token: str
    """The first sample of the scene's `next` chain."""
    description: str
    """Free text ("" when the record has none)."""


@dataclass(frozen=True)
class SampleRecord:
    """A `sample.json` record, with the keyframe sample_data the devkit indexed for it."""

    token: str
    """The sample's token."""
    next: str
    """The next sample of the scene ("" after the last)."""
    data: dict
    """Sensor channel -> the token of its keyframe sample_data (built by the devkit)."""


@dataclass(frozen=True)
class SampleDataRecord:
    """A `sample_data.json` record: one image or LiDAR sweep."""

    token: str
    """The sample_data's token."""
    filename: str
    """Its file, relative to the dataroot (checked by `paths.inside_root` when used)."""
    timestamp_us: int
    """Capture time, microseconds (within `tables.TIMESTAMP_US_RANGE`)."""
    is_key_frame: bool
    """Whether it belongs to a keyframe."""
    width: int
    """Image width in pixels (0 for LiDAR; the reader requires >= 1 for a camera)."""
    height: int
    """Image height in pixels (0 for LiDAR)."""
    next: str
    """The next sample_data of the same sensor ("" after the last)."""
    calibrated_sensor_token: str
    """Its calibration."""
    ego_pose_token: str
    """The ego pose at its timestamp."""


def _fail(scene: str | None, file: Path, where: str, problem: str) -> SceneDataError:
    return SceneDataError(scene, file, f"{where}: {problem}")


def _text(record: dict, field: str, file: Path, where: str, scene: str | None,
          default: str | None = None) -> str:
    if field not in record and default is not None:
        return default
    if field not in record:
        raise _fail(scene, file, where, f"field {field!r} is missing")
    value = record[field]
    if not isinstance(value, str):
        raise _fail(scene, file, where, f"field {field!r} is {str(value)[:80]!r} "
                    f"({type(value).__name__}), expected a string")
    return value


def parse_scene(record: dict, file: Path) -> SceneRecord:
    """A scene record (its name already known to be a string)."""
    name = record.get("name")
    where = f"scene {str(record.get('token'))[:80]!r}"
    return SceneRecord(token=_text(record, "token", file, where, name), name=name,
                       first_sample_token=_text(record, "first_sample_token", file, where,
                                                name),
                       description=_text(record, "description", file, where, name, ""))


def parse_sample(record: dict, file: Path, scene: str) -> SampleRecord:
    """A sample record as the devkit holds it (its `data` index added)."""
    where = f"sample {str(record.get('token'))[:80]!r}"
    return SampleRecord(token=_text(record, "token", file, where, scene),
                        next=_text(record, "next", file, where, scene),
                        data=dict(record.get("data", {})))


def parse_sample_data(record: dict, file: Path, scene: str) -> SampleDataRecord:
    """A sample_data record."""
    where = f"sample_data {str(record.get('token'))[:80]!r}"
    is_key_frame = record.get("is_key_frame")
    if not isinstance(is_key_frame, bool):
        raise _fail(scene, file, where, f"field 'is_key_frame' is {str(is_key_frame)[:80]!r}, "
                    "expected true or false")
    text = {f: _text(record, f, file, where, scene)
            for f in ("token", "filename", "next", "calibrated_sensor_token", "ego_pose_token")}
    numbers = {f: record.get(f) for f in ("timestamp", "width", "height")}
    if missing := [f for f, v in numbers.items() if v is None]:
        raise _fail(scene, file, where, f"field {missing[0]!r} is missing or null")
    size = {f: table_integer(numbers[f], 0, IMAGE_SIDE_RANGE[1], file=file, where=where,
                             field=f, scene=scene) for f in ("width", "height")}
    return SampleDataRecord(
        timestamp_us=table_timestamp_us(numbers["timestamp"], file=file, where=where,
                                        field="timestamp", scene=scene),
        is_key_frame=is_key_frame, **size, **text)


def check_unique_tokens(nusc, table_dir: Path) -> None:
    """SceneDataError naming the table when two records of a keyed table share a token
    (the devkit would silently keep the last)."""
    for name in KEYED_TABLES:
        records = getattr(nusc, name)
        if len({r["token"] for r in records}) == len(records):
            continue
        twice = [token for token, n in Counter(r["token"] for r in records).items() if n > 1]
        raise SceneDataError(None, table_dir / f"{name}.json", f"{len(twice)} token(s) name "
                             f"several records, e.g. {str(twice[0])[:80]!r}: a token must name "
                             "one record")


def diagnose_tables(table_dir: Path) -> None:
    """SceneDataError naming the first table file that is missing, not JSON (or nested too
    deep to parse) or not a list of records with tokens; returns when none is."""
    for name in TABLES:
        path = table_dir / f"{name}.json"
        if not path.is_file():
            raise SceneDataError(None, path, "table file is missing")
        try:
            records = json.loads(path.read_text())
        except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise SceneDataError(None, path, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise SceneDataError(None, path, "not valid JSON: nested too deep to parse") from None
        if not isinstance(records, list) or not all(
                isinstance(r, dict) and "token" in r for r in records):
            raise SceneDataError(None, path, "expected a list of records that each have a token")
