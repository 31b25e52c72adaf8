"""Two writer processes committing to one scene at once, many rounds, on a local path and on
S3 (moto on loopback): commits of different stages both land every round; commits of the
same stage from the same state give exactly one winner, and the other writer is told."""

import multiprocessing

import numpy as np
import pytest
from store_helpers import commit_rounds, feature_arrays, write_scene

from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import validate_scene

SCENE = "s"


def _store(backend, tmp_path, s3):
    if backend == "local":
        return str(tmp_path / "store.zarr"), None
    return f"s3://distillprep-test/concurrency-{tmp_path.name}.zarr", s3


def _race(location, options, writers, rounds, same_base):
    """Run the writers (family, seed) for `rounds`; yields each round's results after both
    wrote, while they wait."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(writers) + 1), ctx.Queue()
    procs = [ctx.Process(target=commit_rounds, args=(location, options, SCENE, family, seed,
                                                     rounds, barrier, results, same_base))
             for family, seed in writers]
    for p in procs:
        p.start()
    try:
        for _ in range(rounds):
            barrier.wait(timeout=120)  # all start the round together
            barrier.wait(timeout=120)  # all have committed (or lost)
            yield sorted(results.get(timeout=30) for _ in writers)
    finally:
        barrier.abort()
        for p in procs:
            p.join(timeout=30)


# one S3 round by default (each ~6 s, the moto server's); the slow set races three
@pytest.mark.parametrize("backend, rounds", [
    ("local", 6), ("s3", 1), pytest.param("s3", 3, marks=pytest.mark.slow)])
def test_commits_of_different_stages_both_land(backend, rounds, tmp_path, s3):
    location, options = _store(backend, tmp_path, s3)
    write_scene(create_store(location, "synthetic", "v0", storage_options=options), SCENE)
    writers = [("dino", 100), ("clip", 200)]
    for r, outcome in enumerate(_race(location, options, writers, rounds, same_base=False)):
        assert [o[2] for o in outcome] == ["ok", "ok"], outcome
        store = open_store(location, storage_options=options)
        view = store.scene(SCENE)
        assert set(view.stages()) == {"ingest", "dino_features", "clip_features"}, r
        for family, seed in writers:
            expected = feature_arrays(family, 4, None, seed=seed + r)[f"{family}_features"]
            np.testing.assert_array_equal(view[f"{family}_features"][...], expected)
        report = validate_scene(store, SCENE)
        assert report.ok, [str(f) for f in report.errors]


# one S3 round by default (each ~6 s, the moto server's); the slow set races three
@pytest.mark.parametrize("backend, rounds", [
    ("local", 6), ("s3", 1), pytest.param("s3", 3, marks=pytest.mark.slow)])
def test_commits_of_one_stage_from_one_state_have_one_winner(backend, rounds, tmp_path, s3):
    location, options = _store(backend, tmp_path, s3)
    write_scene(create_store(location, "synthetic", "v0", storage_options=options), SCENE)
    writers = [("dino", 100), ("dino", 200)]
    for r, outcome in enumerate(_race(location, options, writers, rounds, same_base=True)):
        assert sorted(o[2] for o in outcome) == ["conflict", "ok"], outcome
        winner = next(o[0] for o in outcome if o[2] == "ok")
        loser = next(o for o in outcome if o[2] == "conflict")
        assert "another writer committed it first" in loser[3]
        assert f"scene '{SCENE}', stage dino_features" in loser[3]
        store = open_store(location, storage_options=options)
        view = store.scene(SCENE)
        assert view.commits["dino_features"].sequence == r + 1
        expected = feature_arrays("dino", 4, None, seed=winner + r)["dino_features"]
        np.testing.assert_array_equal(view["dino_features"][...], expected)
        assert validate_scene(store, SCENE).ok
