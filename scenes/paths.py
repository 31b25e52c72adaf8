"""Paths that a dataset's tables, a store's metadata or an export name stay inside their
root: the one check made before any such path is opened or written.

The rule: the path is a non-empty relative string without NUL bytes and without a `..`
part, and once every symlink on it is followed it still lies under the root (the root
itself resolved first, so a dataroot that is a symlink is fine). A symlink inside the root
is followed only when its target lies inside the root too. Anything else is refused with
an error naming the table, the record and the path, before the file is touched.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from .errors import PathOutsideRootError, SceneDataError

_SHOWN = 200
"""Characters of a refused path shown in a message (a table may hold megabytes)."""


def inside_root(root: str | Path, relative: object, *, table: str | Path, record: object,
                scene: str | None = None) -> Path:
    """`root / relative`, the root resolved, when it stays inside the root.

    table: the file that names the path (a table, a manifest), named by errors.
    record: the record that names it (a token, a sample), named by errors.
    Raises PathOutsideRootError for an absolute path, a `..` part or a symlink leading out;
    SceneDataError for a value that is no path at all (not a string, empty, NUL bytes) or
    that cannot be resolved (a symlink loop).
    """
    where = f"record {record}"
    if not isinstance(relative, str | PurePath):
        raise SceneDataError(scene, table, f"{where}: the path {str(relative)[:_SHOWN]!r} is a "
                             f"{type(relative).__name__}, expected a string")
    text = str(relative)
    shown = repr(text[:_SHOWN])
    if not text or "\x00" in text:
        raise SceneDataError(scene, table, f"{where}: the path {shown} is empty or holds a NUL "
                             "byte")
    base = Path(root).resolve()
    path = Path(text)

    def outside(why: str) -> PathOutsideRootError:
        return PathOutsideRootError(scene, table, str(record), text,
                                    f"{where}: the path {shown} {why}; paths a dataset names "
                                    f"must stay inside its root {base}")

    if path.is_absolute():
        raise outside("is absolute")
    if ".." in path.parts:
        raise outside("climbs with '..'")
    joined = base / path
    try:
        target = joined.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise SceneDataError(scene, table, f"{where}: the path {shown} cannot be resolved: "
                             f"{exc}") from None
    if not target.is_relative_to(base):
        raise outside(f"leads through a symlink to {str(target)[:_SHOWN]!r}")
    return joined
