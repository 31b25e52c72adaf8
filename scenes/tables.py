"""Values read out of a dataset's tables (nuScenes JSON, Waymo Parquet and protos) that
every reader checks the same way: integers of a plausible range, or a SceneDataError
naming the table file, the record and the field."""

from __future__ import annotations

from pathlib import Path

from .errors import SceneDataError

TIMESTAMP_US_RANGE = (0, 16_725_225_600_000_000)
"""Plausible timestamps, microseconds since the Unix epoch: from 1970 to the year 2500
(far inside int64, so that differences and sums of them cannot overflow either)."""
IMAGE_SIDE_RANGE = (1, 65_535)
"""Plausible image widths and heights in pixels (a JPEG's largest side is 65,535)."""


def table_integer(value: object, low: int, high: int, *, file: str | Path, where: str,
                  field: str, scene: str | None) -> int:
    """`value` when it is an integer (not a bool, not a float) within [low, high]; else a
    SceneDataError naming the file, the record (`where`) and the field."""
    if type(value) is not int:  # a numpy or arrow integer arrives here as int already
        raise SceneDataError(scene, file, f"{where}: field {field!r} is {str(value)[:80]!r} "
                             f"({type(value).__name__}), expected an integer")
    if not low <= value <= high:
        raise SceneDataError(scene, file, f"{where}: field {field!r} is {str(value)[:80]}, "
                             f"outside the plausible range [{low}, {high}]")
    return value


def table_timestamp_us(value: object, *, file: str | Path, where: str, field: str,
                       scene: str | None) -> int:
    """A timestamp in microseconds within TIMESTAMP_US_RANGE (`table_integer`)."""
    return table_integer(value, *TIMESTAMP_US_RANGE, file=file, where=where, field=field,
                         scene=scene)


def arrow_kind_matches(actual, expected) -> bool:
    """Whether a Parquet column of arrow type `actual` reads as the schema's `expected`:
    the same kind of value at any width (an int32 for an int64, a large_list for a list;
    an integer for a float), lists compared by their values' kind."""
    import pyarrow as pa  # only the Parquet readers call this

    t = pa.types
    lists = (t.is_list, t.is_large_list, t.is_fixed_size_list)
    if any(is_list(expected) for is_list in lists):
        return (any(is_list(actual) for is_list in lists)
                and arrow_kind_matches(actual.value_type, expected.value_type))
    kinds = {t.is_integer: (t.is_integer,), t.is_floating: (t.is_floating, t.is_integer),
             t.is_string: (t.is_string, t.is_large_string),
             t.is_binary: (t.is_binary, t.is_large_binary)}
    for kind, accepted in kinds.items():
        if kind(expected):
            return any(accept(actual) for accept in accepted)
    return actual == expected
