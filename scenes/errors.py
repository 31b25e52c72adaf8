"""Errors raised while reading or generating scenes.

One small hierarchy, so callers can catch `SceneError` and still tell kinds apart. Every
message names the scene, the file and what is wrong, so that a user never has to read a
traceback from deep inside a library.
"""

from __future__ import annotations

from pathlib import Path


class SceneError(Exception):
    """Base class of every error about scene data."""


class InvalidSceneIdError(SceneError, ValueError):
    """A scene id that could escape an output folder or is otherwise unusable."""


class DatasetNotFoundError(SceneError):
    """The dataroot does not hold a dataset of the requested kind."""


class SceneDataError(SceneError):
    """A file of a scene is missing, truncated or holds values that make no sense.

    Attributes:
        scene: scene id (or the raw scene name when that is what is wrong).
        file: the offending file (path or path inside the dataroot), or None.
        problem: what is wrong, in words.
    """

    def __init__(self, scene: str | None, file: str | Path | None, problem: str):
        self.scene = scene
        self.file = None if file is None else str(file)
        self.problem = problem
        where = []
        if scene is not None:
            where.append(f"scene {scene!r}")
        if file is not None:
            where.append(f"file {self.file}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)
