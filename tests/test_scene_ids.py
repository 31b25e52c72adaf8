import pytest

from distillprep.scenes import InvalidSceneIdError, validate_scene_id


@pytest.mark.parametrize("good", ["scene-0001", "a", "segment-10050810020_5313_150_5333_150",
                                  "x" * 128, "Scène_ü"])
def test_accepts_safe_ids(good):
    assert validate_scene_id(good) == good


@pytest.mark.parametrize("bad, why", [
    ("../evil", "slash"), ("a/../b", "slash"), ("scene/1", "slash"),
    ("scene\\1", "backslash"), ("scene\x001", "NUL"), (".hidden", "starts with a dot"),
    ("x" * 129, "129 characters"), ("", "empty"), ("a..b", "'..'"), ("c:evil", "colon"),
    (" scene", "whitespace"), ("tab\there", "control character"), (7, "must be a string"),
])
def test_refuses_ids_that_could_escape(bad, why):
    with pytest.raises(InvalidSceneIdError, match=why):
        validate_scene_id(bad)


@pytest.mark.parametrize("bad, why", [
    ("zarr.json", "store uses for its own"), ("ZARR.JSON", "store uses for its own"),
    ("commits", "store uses for its own"), ("Manifest", "store uses for its own"),
    ("quarantine", "store uses for its own"), ("scenes", "store uses for its own"),
    ("feature_runs", "store uses for its own"), ("scene.1a2b.partial", "'.partial'"),
])
def test_refuses_the_store_s_own_names(bad, why):
    with pytest.raises(InvalidSceneIdError, match=why):
        validate_scene_id(bad)
