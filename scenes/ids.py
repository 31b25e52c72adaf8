"""Scene ids: the one place they are validated.

A scene id becomes a folder or group name in every output, so anything that could
escape an output folder or confuse a store path is refused wherever an id enters: among
them the names the store gives its own files and folders, which a scene's folder beside
them would collide with (`scenes/zarr.json` is the `scenes` group's metadata).
"""

from __future__ import annotations

from .errors import InvalidSceneIdError

MAX_SCENE_ID_LENGTH = 128
_FORBIDDEN_CHARS = {"/": "a slash", "\\": "a backslash", "\x00": "a NUL byte", ":": "a colon"}
RESERVED_SCENE_IDS = ("zarr.json", "scenes", "manifest", "commits", "quarantine",
                      "feature_runs")
"""The store's own names (storage_schemas/store.py's layout): refused as scene ids, in any
letter case (a case-insensitive file system would mix them up)."""
TEMPORARY_SUFFIX = ".partial"
"""zarr's local store names its temporary files `<name>.<uuid>.partial` (and ours start
with a dot): a scene of such a name would be taken for one and cleaned up."""


def validate_scene_id(scene_id: object) -> str:
    """Return `scene_id` unchanged if it is a safe scene id, else raise InvalidSceneIdError.

    Refused: non-strings, the empty string, more than 128 characters, a leading dot
    (covers `.`, `..` and hidden names), `..` anywhere, slashes, backslashes, NUL, colons,
    other control characters, surrounding whitespace, the store's own names
    (RESERVED_SCENE_IDS, any case) and names ending in `.partial`.
    """
    if not isinstance(scene_id, str):
        raise InvalidSceneIdError(f"scene id must be a string, got {type(scene_id).__name__}")
    shown = repr(scene_id[:140])
    if not scene_id:
        raise InvalidSceneIdError("scene id is empty")
    if len(scene_id) > MAX_SCENE_ID_LENGTH:
        raise InvalidSceneIdError(
            f"scene id {shown} is {len(scene_id)} characters long; "
            f"at most {MAX_SCENE_ID_LENGTH} are allowed"
        )
    for char, name in _FORBIDDEN_CHARS.items():
        if char in scene_id:
            raise InvalidSceneIdError(f"scene id {shown} contains {name}")
    if scene_id.startswith("."):
        raise InvalidSceneIdError(f"scene id {shown} starts with a dot")
    if ".." in scene_id:
        raise InvalidSceneIdError(f"scene id {shown} contains '..'")
    if any(ord(c) < 32 or ord(c) == 127 for c in scene_id):
        raise InvalidSceneIdError(f"scene id {shown} contains a control character")
    if scene_id != scene_id.strip():
        raise InvalidSceneIdError(f"scene id {shown} has leading or trailing whitespace")
    if scene_id.casefold() in RESERVED_SCENE_IDS:
        raise InvalidSceneIdError(f"scene id {shown} is a name the store uses for its own "
                                  f"files ({', '.join(RESERVED_SCENE_IDS)})")
    if scene_id.casefold().endswith(TEMPORARY_SUFFIX):
        raise InvalidSceneIdError(f"scene id {shown} ends in {TEMPORARY_SUFFIX!r}, the "
                                  "suffix of the store's temporary files")
    return scene_id
