"""The streaming loader over prepared stores: exactly once across ranks and workers,
mid-epoch resume in the uninterrupted order, deterministic shuffles, manifest filters
and the scene split, only the asked-for arrays read, bounded memory, and each yielded
frame carrying its own data. Real stores, real DataLoader workers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from loader_store import UNEVEN, build_loader_store, write_loader_scene

from distillprep.storage_schemas import codec_pipeline
from distillprep.storage_schemas.store import create_store
from distillprep.student.data import (
    LoaderConfig,
    LoaderConfigError,
    LoaderError,
    StoreDataset,
    StoreLoader,
)
from distillprep.student.data.order import buffer_order, share
from distillprep.student.data.resample import resize_nearest, resize_sparse_depth

TOTAL = sum(UNEVEN.values())
# 3 DataLoader workers on a 2-core machine: what the exactly-once test needs, not slow
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(build_loader_store(tmp_path_factory.mktemp("loader") / "store.zarr"))


def ids(batch) -> list[tuple[str, int]]:
    return list(zip(batch["scene_id"], batch["frame_index"].tolist(), strict=True))


def epoch(loader, limit: int | None = None) -> list[list[tuple[str, int]]]:
    """The batches (as frame ids) a loader hands out, at most `limit`."""
    out = []
    for batch in loader:
        out.append(ids(batch))
        if limit is not None and len(out) == limit:
            break
    return out


FIELDS = ("teacher_depth", "intrinsics")


def test_every_frame_once_per_epoch_over_2_ranks_by_3_workers(store):
    config = LoaderConfig(fields=FIELDS, batch_size=4, block_frames=3, shuffle_buffer=8)
    seen = []
    for rank in range(2):
        dataset = StoreDataset(store, config, rank=rank, world_size=2)
        batches = epoch(StoreLoader(dataset, num_workers=3))
        assert sum(len(b) for b in batches) == len(dataset)
        assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1)  # one short batch
        seen += [f for b in batches for f in b]
    expected = {(s, f) for s, n in UNEVEN.items() for f in range(n)}
    assert len(seen) == TOTAL == len(set(seen)) and set(seen) == expected
    # drop_last: both ranks the same number of full batches, the tail counted
    config = LoaderConfig(fields=FIELDS, batch_size=4, block_frames=3, drop_last=True)
    seen = []
    for rank in range(2):
        dataset = StoreDataset(store, config, rank=rank, world_size=2)
        batches = epoch(StoreLoader(dataset, num_workers=3))
        assert [len(b) for b in batches] == [4] * (TOTAL // 8)
        seen += [f for b in batches for f in b]
    assert len(set(seen)) == len(seen) == TOTAL - dataset.dropped_frames() == TOTAL // 8 * 8


@pytest.mark.parametrize("world,workers,batch,drop_last", [
    (1, 1, 1, False), (2, 3, 4, False), (3, 2, 5, True), (4, 3, 2, False), (2, 5, 7, True)])
def test_shares_partition_the_epoch(world, workers, batch, drop_last):
    sizes = [3, 5, 2, 7, 1, 4, 9, 2]
    got = []
    for rank in range(world):
        for worker in range(workers):
            part = share(sizes, rank, world, worker, workers, seed=3, epoch=1,
                         batch_size=batch, drop_last=drop_last, shuffle=True, buffer=4)
            assert sorted(part.emit.tolist()) == list(range(len(part.read)))
            got += part.read[part.emit].tolist()
    assert len(got) == len(set(got))
    assert len(got) == (sum(sizes) if not drop_last
                        else sum(sizes) // (world * batch) * world * batch)


@pytest.mark.parametrize("workers,stop_after", [(3, 1), (3, 5), (2, 8), (0, 3)])
def test_resume_after_k_batches_gives_the_uninterrupted_order(store, workers, stop_after):
    config = LoaderConfig(fields=FIELDS, batch_size=3, block_frames=4, shuffle_buffer=6,
                          seed=5)
    whole = epoch(StoreLoader(StoreDataset(store, config), num_workers=workers))
    killed = StoreLoader(StoreDataset(store, config), num_workers=workers)
    first = epoch(killed, limit=stop_after)
    state = killed.state_dict()
    assert state["batches_seen"] == stop_after
    resumed = StoreLoader(StoreDataset(store, config), num_workers=workers)
    resumed.load_state_dict(state)
    rest = epoch(resumed)
    assert first + rest == whole
    # the epoch is over: the next iteration is the next epoch, in another order
    assert resumed.epoch == 1 and resumed.state_dict()["batches_seen"] == 0
    assert epoch(resumed) != whole


def test_a_state_of_other_settings_is_refused(store):
    config = LoaderConfig(fields=FIELDS, batch_size=3, block_frames=4)
    saved = StoreLoader(StoreDataset(store, config), num_workers=2).state_dict()
    with pytest.raises(LoaderConfigError, match=r"workers 2 \(now 1\)"):
        StoreLoader(StoreDataset(store, config), num_workers=0).load_state_dict(saved)
    other = LoaderConfig(fields=FIELDS, batch_size=3, block_frames=4, min_teacher_psnr=25)
    with pytest.raises(LoaderConfigError, match="plan"):
        StoreLoader(StoreDataset(store, other), num_workers=2).load_state_dict(saved)
    with pytest.raises(LoaderConfigError, match="not a loader state"):
        StoreLoader(StoreDataset(store, config)).load_state_dict({"epoch": 3})


def order(store, seed: int, epoch_: int, **kwargs) -> list[tuple[str, int]]:
    dataset = StoreDataset(store, LoaderConfig(fields=("intrinsics",), seed=seed,
                                               block_frames=4, shuffle_buffer=8, **kwargs))
    dataset.set_epoch(epoch_)
    return [(s["scene_id"], s["frame_index"]) for s in dataset]


def test_seed_and_epoch_decide_the_order(store):
    base = order(store, 0, 0)
    assert order(store, 0, 0) == base
    assert order(store, 1, 0) != base and order(store, 0, 1) != base
    assert sorted(order(store, 1, 0)) == sorted(base) == sorted(order(store, 0, 1))
    # without shuffling: store order, scene after scene
    plain = order(store, 0, 0, shuffle=False)
    assert plain == sorted(plain, key=lambda f: (list(UNEVEN).index(f[0]), f[1]))


def test_the_buffer_mixes_beyond_blocks_and_holds_no_more_than_it_says():
    emitted = buffer_order(1000, 50, np.random.default_rng(0))
    assert sorted(emitted.tolist()) == list(range(1000))
    assert np.all(emitted[:950] <= np.arange(950) + 50)  # never ahead of the reads
    assert np.mean(np.abs(emitted - np.arange(1000))) > 20  # and mixed
    assert buffer_order(5, 50, None).tolist() == list(range(5))


def test_a_worker_holds_at_most_its_buffer_and_one_block(store):
    dataset = StoreDataset(store, LoaderConfig(fields=("intrinsics",), block_frames=5,
                                               shuffle_buffer=7))
    assert len(list(dataset)) == TOTAL
    assert 7 <= dataset.peak_held <= 7 + 5


def test_filters_drop_what_they_say(store):
    def frames(**kwargs):
        dataset = StoreDataset(store, LoaderConfig(**{"fields": ("intrinsics",),
                                                      "shuffle": False, **kwargs}))
        return {(s["scene_id"], s["frame_index"]) for s in dataset}, dataset.plan.excluded

    every = {(s, f) for s, n in UNEVEN.items() for f in range(n)}
    for kwargs, keep in [
            ({"keyframes_only": True}, lambda f: f % 2 == 0),
            ({"min_teacher_psnr": 25.0}, lambda f: f % 10 >= 5),
            ({"max_teacher_abs_rel": 0.085}, lambda f: f % 7 <= 3),
            ({"min_lidar_fraction": 0.1}, lambda f: f % 5 != 4),
            ({"exclude_teacher_heldout": True}, lambda f: f % 4 != 3)]:
        got, excluded = frames(**kwargs)
        assert got == {(s, f) for s, f in every if keep(f)}, kwargs
        assert sum(excluded.values()) == len(every) - len(got), kwargs
    got, _ = frames(scenes=("scene-b", "scene-d"))
    assert {s for s, _ in got} == {"scene-b", "scene-d"}
    got, excluded = frames(fields=("rgb", "next_rgb"))
    assert len(got) == TOTAL - len(UNEVEN) == TOTAL - excluded["no next frame with every camera"]


def test_the_split_is_by_whole_scenes(store):
    def scenes(**kwargs):
        return set(StoreDataset(store, LoaderConfig(fields=("intrinsics",), **kwargs))
                   .plan.scene_ids())

    train, val = scenes(split="train", val_fraction=0.4), scenes(split="val", val_fraction=0.4)
    assert train | val == set(UNEVEN) and not train & val and train and val
    assert scenes(split="val", val_scenes=("scene-c",)) == {"scene-c"}
    assert scenes(split="train", val_scenes=("scene-c",)) == set(UNEVEN) - {"scene-c"}


def test_each_frame_carries_its_own_data(store):
    config = LoaderConfig(fields=("rgb", "intrinsics", "teacher_depth", "lidar_depth",
                                  "dino_features", "virtual_depth", "next_rgb",
                                  "next_intrinsics"), block_frames=3, virtual="all")
    dataset = StoreDataset(store, config)
    assert dataset.plan.virtual_slots == 2
    by_id = {}
    for s in dataset:
        first = 2 * s["frame_index"]
        samples = np.array([first, first + 1])
        assert s["sample_index"].tolist() == samples.tolist()
        assert np.all(s["teacher_depth"] == (samples + 1)[:, None, None])
        assert s["intrinsics"][:, 0, 0].tolist() == (100 + samples).tolist()
        assert s["next_intrinsics"][:, 0, 0].tolist() == (102 + samples).tolist()
        assert s["lidar_depth"].max(axis=(1, 2)).tolist() == (samples + 1).tolist()
        assert np.all(s["dino_features"] == (samples + 1)[:, None, None, None])
        # each camera's virtual views are its own (their depth is source sample + 1)
        for c in range(2):
            valid = s["virtual_valid"][c]
            assert np.all(s["virtual_depth"][c][valid] == samples[c] + 1)
            assert valid.sum() == (0 if c == 1 and s["frame_index"] % 3 == 2 else 2)
        by_id[(s["scene_id"], s["frame_index"])] = s
    for (scene, frame), s in by_id.items():
        if (scene, frame + 1) in by_id:
            assert np.array_equal(s["next_rgb"], by_id[(scene, frame + 1)]["rgb"])


def test_random_virtual_views_are_drawn_per_seed_and_epoch(store):
    def picks(seed, epoch_):
        config = LoaderConfig(fields=("virtual_rgb",), seed=seed, shuffle=False)
        dataset = StoreDataset(store, config)
        dataset.set_epoch(epoch_)
        return [s["virtual_rgb"][:, 0, 0, 0, 0].tolist() for s in dataset]

    assert picks(0, 0) == picks(0, 0)
    assert picks(0, 0) != picks(0, 1) and picks(0, 0) != picks(1, 0)


def test_only_the_arrays_asked_for_are_read(store):
    """Every file the reads open is recorded (Python's audit hook; zarr-python's codec
    pipeline, whose reads go through Python): only the asked-for arrays' files."""
    opened: list[str] = []
    root = store.rstrip("/") + "/scenes/"

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(root):
            opened.append(args[0][len(root):])

    sys.addaudithook(hook)
    before = codec_pipeline.active()
    codec_pipeline.use("python")
    try:
        for fields, arrays in [(("teacher_depth",), {"teacher_depth"}),
                               (("rgb", "dino_features"),
                                {"rgb_jpeg", "rgb_jpeg_nbytes", "dino_features"})]:
            opened.clear()
            dataset = StoreDataset(store, LoaderConfig(fields=fields))
            assert len(list(dataset)) == TOTAL
            touched = {p.split("/")[3] for p in opened if len(p.split("/")) > 4}
            assert touched == arrays
            assert set(dataset.reader.samples_read) == arrays - {"rgb_jpeg_nbytes"}
    finally:
        codec_pipeline.use(before)
        opened.clear()
        root = "\0"  # the hook cannot be removed: make it inert


def test_a_missing_array_fails_at_start_naming_it_and_its_stage(tmp_path):
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    write_loader_scene(store, "scene-a", 4)
    write_loader_scene(store, "scene-b", 4, teacher=False)
    StoreDataset(str(tmp_path / "s.zarr"), LoaderConfig(fields=("rgb",)))
    with pytest.raises(LoaderError, match=r"scene 'scene-b'.*field teacher_depth needs "
                                          r"array teacher_depth.*stage teacher has not run"
                                          r".*distillprep teacher"):
        StoreDataset(str(tmp_path / "s.zarr"), LoaderConfig(fields=("rgb", "teacher_depth")))
    with pytest.raises(LoaderError, match="clip_features.*clip_features has not run"):
        StoreDataset(str(tmp_path / "s.zarr"), LoaderConfig(fields=("clip_features",),
                                                             scenes=("scene-a",)))
    with pytest.raises(LoaderError, match=r"\['scene-z'\] are in none of the stores"):
        StoreDataset(str(tmp_path / "s.zarr"), LoaderConfig(scenes=("scene-z",)))


def test_streams_an_s3_store_with_workers(s3):
    url = "s3://distillprep-test/loader.zarr"
    build_loader_store(url, {"scene-a": 7, "scene-b": 12}, storage_options=s3)
    dataset = StoreDataset(url, LoaderConfig(fields=("rgb", "teacher_depth"), batch_size=2,
                                             block_frames=3), storage_options=s3)
    frames = [f for b in epoch(StoreLoader(dataset, num_workers=2)) for f in b]
    assert sorted(frames) == [("scene-a", f) for f in range(7)] + [
        ("scene-b", f) for f in range(12)]


def test_several_stores_one_feature_basis(tmp_path):
    first = build_loader_store(tmp_path / "a.zarr", {"scene-a": 3})
    second = build_loader_store(tmp_path / "b.zarr", {"scene-b": 4})
    dataset = StoreDataset([str(first), str(second)], LoaderConfig(fields=("dino_features",)))
    assert sorted(s["scene_id"] for s in dataset) == ["scene-a"] * 3 + ["scene-b"] * 4
    basis = dataset.feature_basis("dino")
    assert np.array_equal(basis.basis, np.eye(2, 3)) and basis.mean.shape == (3,)
    other = build_loader_store(tmp_path / "c.zarr", {"scene-c": 2},
                               basis=np.eye(2, 3)[::-1])
    mixed = StoreDataset([str(first), str(other)], LoaderConfig(fields=("dino_features",)))
    with pytest.raises(LoaderError, match=r"c.zarr were reduced with another PCA than those "
                                          r"of store .*a.zarr"):
        mixed.feature_basis("dino")


def test_bad_settings_are_named():
    with pytest.raises(LoaderConfigError, match="unknown field.*'depth'"):
        LoaderConfig(fields=("depth",))
    with pytest.raises(LoaderConfigError, match="batch_size"):
        LoaderConfig(batch_size=0)


def test_resampling_keeps_what_each_map_means():
    sparse = np.zeros((8, 8), np.float32)
    sparse[0, 0], sparse[1, 1], sparse[6, 5] = 7.0, 3.0, 9.0  # two returns share a pixel
    out = resize_sparse_depth(sparse, (4, 4))
    assert out[0, 0] == 3.0 and out[3, 2] == 9.0 and np.count_nonzero(out) == 2
    dense = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert resize_nearest(dense, (2, 2)).tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert resize_nearest(dense, (8, 8))[::2, ::2].tolist() == dense.tolist()


def test_resize_scales_k_with_the_images(store):
    config = LoaderConfig(fields=("rgb", "intrinsics", "teacher_depth"), resize=(8, 6),
                          shuffle=False)
    native = next(iter(StoreDataset(store, LoaderConfig(fields=("intrinsics",),
                                                        shuffle=False))))
    sample = next(iter(StoreDataset(store, config)))
    assert sample["rgb"].shape == (2, 6, 8, 3) and sample["teacher_depth"].shape == (2, 6, 8)
    # the image's corners map to the same rays: u' + 1/2 = (u + 1/2) * 8 / 16
    k, k2 = native["intrinsics"][0], sample["intrinsics"][0]
    for u, v in [(-0.5, -0.5), (15.5, 11.5)]:
        ray = np.linalg.solve(k, [u, v, 1.0])
        assert np.allclose(k2 @ ray, [(u + 0.5) / 2 - 0.5, (v + 0.5) / 2 - 0.5, 1.0])


def test_loader_check_streams_one_epoch_and_reports(store, tmp_path, capsys):
    import json

    from distillprep.flows.cli import main

    assert main(["loader-check", store, "--arrays", "rgb", "teacher_depth", "--batch-size",
                 "4", "--keyframes-only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    keyframes = sum((n + 1) // 2 for n in UNEVEN.values())
    assert report["frames"] == report["planned_frames"] == keyframes
    assert report["scenes"] == len(UNEVEN) and report["cameras"] == ["CAM_FRONT", "CAM_BACK"]
    assert report["excluded"] == {"not a keyframe": TOTAL - keyframes}
    assert report["shapes"]["teacher_depth"] == "(2, 12, 16) float16"
    assert "virtual_rgb" in report["fields_available"] and report["frames_per_second"] > 0
    bare = create_store(tmp_path / "bare.zarr", "synthetic", "v0")
    write_loader_scene(bare, "scene-x", 3, teacher=False)
    assert main(["loader-check", str(tmp_path / "bare.zarr"), "--arrays",
                 "teacher_depth"]) == 1
    assert "array teacher_depth" in capsys.readouterr().err


def test_a_selection_of_no_frame_is_an_error_naming_the_filter(store, capsys):
    """An empty loader would let `train` spin and `eval` score nothing: a filter that
    admits no frame is refused at the start, naming what left the frames out."""
    from distillprep.flows.cli import main

    with pytest.raises(LoaderError, match=r"teacher PSNR below 1000.*loosen the filter"):
        StoreDataset(store, LoaderConfig(fields=("intrinsics",), min_teacher_psnr=1000.0))
    with pytest.raises(LoaderError, match=r"split 'val' \(val scenes \[\]\) leaves none"):
        StoreDataset(store, LoaderConfig(fields=("intrinsics",), split="val", val_scenes=()))
    assert main(["loader-check", store, "--min-teacher-psnr", "1000"]) == 1
    assert "no frame to serve" in capsys.readouterr().err


def test_a_store_listed_twice_is_refused(store):
    with pytest.raises(LoaderConfigError, match="listed more than once"):
        StoreDataset([store, store], LoaderConfig(fields=("intrinsics",)))
