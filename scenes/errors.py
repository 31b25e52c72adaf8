"""The project's error hierarchy, and the errors raised while reading or generating scenes.

Every error distillprep raises on purpose is a `DistillprepError`; each says whether
running the same step again can help (`retryable`: a transient I/O failure, a lost commit
race) or not (bad data, a bad config, a diverged fit), and which exit code the CLI gives
it. The CLI catches only this base: anything else is a bug and shows its traceback. Each
stage's errors sit under it (`SceneError` here, `StoreError` in `storage_schemas`,
`TeacherError` in `teachers`). Every message names the scene, the file and what is wrong,
so that a user never has to read a traceback from deep inside a library.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

EXIT_BAD_DATA = 1
"""Exit code of bad input data, a broken store or a fit that cannot go on."""
EXIT_USAGE = 2
"""Exit code of bad usage or a bad config (and, for validate/inspect, a path that is not a
store)."""
EXIT_TRANSIENT = 3
"""Exit code of a failure that running the same command again may get past (I/O)."""
EXIT_CONFLICT = 4
"""Exit code of a write that lost a race: another writer committed the same thing first."""
EXIT_BUG = 70
"""Exit code of an unexpected exception (a bug): its traceback is printed (EX_SOFTWARE)."""


class DistillprepError(Exception):
    """Base of every error distillprep raises on purpose."""

    retryable: ClassVar[bool] = False
    """Whether running the same step again can succeed (flows retry only these)."""
    exit_code: ClassVar[int] = EXIT_BAD_DATA
    """What the CLI exits with."""
    kind: ClassVar[str] = "bad-data"
    """One word for reports and quarantine records."""


class DataError(DistillprepError):
    """Input data that cannot be used as it is (quarantine the scene; do not retry)."""


class ConfigError(DistillprepError, ValueError):
    """A configuration or argument that cannot be used (fix it; do not retry)."""

    exit_code = EXIT_USAGE
    kind = "bad-config"


class TransientError(DistillprepError):
    """A failure that may pass: an object store that timed out, a file system hiccup."""

    retryable = True
    exit_code = EXIT_TRANSIENT
    kind = "transient"


class ConflictError(TransientError):
    """Another writer got there first; running the step again sees what it wrote."""

    exit_code = EXIT_CONFLICT
    kind = "conflict"


class DivergedError(DistillprepError, FloatingPointError):
    """An optimisation that blew up (NaN or infinite loss): retrying repeats it."""

    kind = "diverged"


class SceneError(DataError):
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


class OutputExistsError(ConfigError, FileExistsError):
    """An output folder that holds something this command will not overwrite."""


class PathOutsideRootError(SceneDataError):
    """A path named by a table or metadata that would leave its root: absolute, climbing
    out with `..`, or a symlink whose target lies outside (`scenes.paths.inside_root`).

    Attributes (besides SceneDataError's, `file` being the table that names the path):
        record: the record naming the path (a token, a segment, a sample).
        path: the path as the table gives it.
    """

    def __init__(self, scene: str | None, table: str | Path, record: str, path: str,
                 problem: str):
        self.record = record
        self.path = path
        super().__init__(scene, table, problem)
