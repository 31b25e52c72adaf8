"""Errors of the teacher stage, under the project's hierarchy (`scenes/errors.py`).

Each combines `TeacherError` (what stage failed) with the project kind that tells a flow
what to do with it: a bad config is fixed, not retried (`TeacherConfigError`, also a
`ValueError`); a scene the teacher cannot be fitted to, a broken checkpoint or weights
file is bad data (`TeacherDataError`, `CheckpointError`, `WeightsError`: quarantine, do
not retry); a fit whose loss blew up is `TeacherDivergedError` (retrying repeats it).
Anything else a teacher raises (a plain `ValueError`, `TypeError`, ...) is a bug.
`WeightsError` and its subclasses live in `teachers/foundation/weights.py`.
"""

from __future__ import annotations

from pathlib import Path

from distillprep.scenes.errors import (
    ConfigError,
    DataError,
    DistillprepError,
    DivergedError,
    SceneDataError,
)


class TeacherError(DistillprepError):
    """Base class of every error the teacher stage raises on purpose."""


class TeacherConfigError(TeacherError, ConfigError):
    """A teacher config file, config value or argument that cannot be used."""


class TeacherDataError(TeacherError, DataError):
    """A scene (or store content) a teacher cannot be fitted to or run on: too few frames,
    no LiDAR, an all-black image, too few feature vectors.

    Attributes:
        scene: scene id, or None when the problem is not one scene's.
        file: the offending file, or None.
        problem: what is wrong, in words.
    """

    def __init__(self, scene: str | None, file: str | Path | None, problem: str):
        self.scene = scene
        self.file = None if file is None else str(file)
        self.problem = problem
        # worded as every scene data error is: "scene 'x', file y: problem"
        super().__init__(str(SceneDataError(scene, file, problem)))


class CheckpointError(TeacherError, DataError):
    """A checkpoint that cannot be read, or does not belong to the scene / config given."""


class TeacherDivergedError(TeacherError, DivergedError):
    """The loss became NaN or infinite: the fit stops instead of writing garbage."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step = step
        """The step (1-based) whose loss was not finite."""
