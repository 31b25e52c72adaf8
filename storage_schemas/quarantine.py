"""Quarantine records, a typed part of the store format:

    quarantine/<scene_id>.json      QuarantineRecord: why the scene's preparation stopped

A scene whose preparation failed for good (bad data, a bad config, a transient error that
outlived its retries) is quarantined by the flow that ran it: the record names the step,
the error and its kind, so that every other scene goes on and a later run knows to leave
the scene alone until asked (`distillprep prepare --retry-quarantined`). A successful
preparation of the scene removes its record. The record is advisory: the scene's stages
keep whatever they committed before the failure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .attrs import parse_json, parse_model
from .store import Store

PREFIX = "quarantine"


class QuarantineRecord(BaseModel):
    """`quarantine/<scene_id>.json`: why a scene's preparation stopped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scene_id: str = Field(description="the scene")
    step: str = Field(description="the step that failed, e.g. teacher-fit")
    kind: str = Field(description="the error's kind: bad-data, bad-config, transient, ...")
    error_type: str = Field(description="the exception's class name")
    message: str = Field(description="the error's message (names scene, file and problem)")
    attempts: int = Field(ge=1, description="times the step was tried in that run")
    retryable: bool = Field(description="whether the error said retrying may help")
    at: datetime = Field(description="when it was quarantined (UTC)")
    flow_run: str | None = Field(default=None, description="the Prefect flow run, if any")


def record_key(scene_id: str) -> str:
    return f"{PREFIX}/{scene_id}.json"


def parse_quarantine(raw: Any, where: str = "quarantine record") -> QuarantineRecord:
    """A QuarantineRecord from untrusted JSON, or MetadataError naming `where`."""
    return parse_model(QuarantineRecord, raw, where)


def write_quarantine(store: Store, record: QuarantineRecord) -> None:
    store.location.put(record_key(record.scene_id), record.model_dump_json(indent=1).encode())


def read_quarantine(store: Store, scene_id: str) -> QuarantineRecord | None:
    """The scene's record, or None when it is not quarantined."""
    key = record_key(scene_id)
    raw = store.location.get(key)
    if raw is None:
        return None
    where = f"{store.location.location.rstrip('/')}/{key}"
    return parse_quarantine(parse_json(raw, where), where)


def quarantined(store: Store) -> dict[str, QuarantineRecord]:
    """Every quarantined scene's record, by scene id."""
    names = [n for n in store.location.children(PREFIX) if n.endswith(".json")]
    records = (read_quarantine(store, name[: -len(".json")]) for name in sorted(names))
    return {r.scene_id: r for r in records if r is not None}


def clear_quarantine(store: Store, scene_id: str) -> None:
    """Remove the scene's record (nothing happens when there is none)."""
    if store.location.exists(record_key(scene_id)):
        store.location.delete(record_key(scene_id))
