"""Scene ids: the one place they are validated.

A scene id becomes a folder or group name in every output, so anything that could
escape an output folder or confuse a store path is refused wherever an id enters.
"""

from __future__ import annotations

from .errors import InvalidSceneIdError

MAX_SCENE_ID_LENGTH = 128
_FORBIDDEN_CHARS = {"/": "a slash", "\\": "a backslash", "\x00": "a NUL byte", ":": "a colon"}


def validate_scene_id(scene_id: object) -> str:
    """Return `scene_id` unchanged if it is a safe scene id, else raise InvalidSceneIdError.

    Refused: non-strings, the empty string, more than 128 characters, a leading dot
    (covers `.`, `..` and hidden names), `..` anywhere, slashes, backslashes, NUL, colons,
    other control characters and surrounding whitespace.
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
    return scene_id
