"""Storage figures for `make bench`, each a ratio to a baseline timed in the same run:
writes against numpy.save of the same bytes, reads against numpy.load of those files,
both codec pipelines, the footprint of the RGB choice, and codec candidates."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute  # noqa: F401  (imported before timing: its first import is slow)
import zarr
from PIL import Image
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas import codec_pipeline, layout
from distillprep.storage_schemas.ingest import scene_payload
from distillprep.storage_schemas.reader import SceneReader
from distillprep.storage_schemas.spec import ARRAYS
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import validate_store


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _payloads(dataset: Path, repeat: int = 1):
    """Ingest payloads of the dataset's scenes; `repeat` tiles every per-sample array along
    N, making scenes as long as real ones (a nuScenes scene has ~240 keyframe images) out
    of the same rendered data."""
    import pyarrow as pa

    read = read_nuscenes(dataset)
    out = []
    for scene in read.scenes:
        arrays, dims, manifest, sources, lidars = scene_payload(scene)
        if repeat > 1:  # later copies play later frames: shift times and frame numbers
            span = int(arrays["frame_timestamp_us"][-1] - arrays["frame_timestamp_us"][0]) + 1
            shift = {"timestamp_us": span, "frame_timestamp_us": span,
                     "lidar_timestamp_us": span, "frame_index": dims["F"],
                     "lidar_frame_index": dims["F"]}
            arrays = {name: np.concatenate([data + k * shift.get(name, 0)
                                            for k in range(repeat)]).astype(data.dtype)
                      if ARRAYS[name].shape[0] in ("N", "F", "S", "P") else data
                      for name, data in arrays.items()}
            dims = {**dims, **{d: dims[d] * repeat for d in ("N", "F", "S", "P")}}
            rows = manifest.to_pylist()
            manifest = pa.Table.from_pylist(
                [{**row, "sample_index": k * len(rows) + row["sample_index"]}
                 for k in range(repeat) for row in rows], schema=manifest.schema)
        out.append((scene, arrays, dims, manifest, sources, lidars))
    return read.version, out


def _write_all(store, payloads, suffix=""):
    from datetime import UTC, datetime

    from store_helpers import ingest_provenance

    from distillprep.storage_schemas.attrs import SceneAttrs

    for scene, arrays, dims, manifest, sources, lidars in payloads:
        attrs = SceneAttrs(scene_id=scene.scene_id + suffix, dataset="nuscenes",
                           dataset_version="bench", created=datetime.now(UTC),
                           cameras=list(scene.camera_names), lidars=lidars, width=dims["W"],
                           height=dims["H"], num_samples=dims["N"], num_frames=dims["F"],
                           source_files=sources)
        if suffix:
            import pyarrow as pa
            manifest = manifest.set_column(0, "scene_id", pa.array(
                [scene.scene_id + suffix] * manifest.num_rows))
        store.write_scene(attrs, arrays, manifest, ingest_provenance())


def bench_store(dataset: Path) -> None:
    version, payloads = _payloads(dataset, repeat=4)
    raw_bytes = sum(a.nbytes for _, arrays, *_ in payloads for a in arrays.values())
    samples = sum(d["N"] for _, _, d, *_ in payloads)
    with tempfile.TemporaryDirectory(dir=dataset.parent) as tmp:
        tmp = Path(tmp)
        npy_dir = tmp / "npy"
        npy_dir.mkdir()

        # Baseline: the research-script layout (DistillNeRF's own code reads one .npy per
        # camera image): one file per sample for per-sample arrays, one per scene table.
        def save_npy():
            for scene, arrays, *_ in payloads:
                for name, data in arrays.items():
                    if ARRAYS[name].per_sample:
                        for i, row in enumerate(data):
                            np.save(npy_dir / f"{scene.scene_id}_{name}_{i}.npy", row)
                    else:
                        np.save(npy_dir / f"{scene.scene_id}_{name}.npy", data)

        def load_npy():
            for scene, arrays, *_ in payloads:
                for name, data in arrays.items():
                    if ARRAYS[name].per_sample:
                        for i in range(len(data)):
                            np.load(npy_dir / f"{scene.scene_id}_{name}_{i}.npy")
                    else:
                        np.load(npy_dir / f"{scene.scene_id}_{name}.npy")

        # Rounds interleave baseline and candidates, and each keeps its best round: the
        # machine is shared, and drift then hits all of them alike.
        best: dict[str, float] = {}
        for round_ in range(4):
            for key, fn in (("npy.write", save_npy), ("npy.read", load_npy)):
                best[key] = min(best.get(key, np.inf), _timed(fn))
            for pipeline in ("python", "zarrs"):
                codec_pipeline.use(pipeline)
                path = tmp / f"{pipeline}{round_}.zarr"
                store = create_store(path, "nuscenes", version)
                codec_pipeline.use(pipeline)
                write = _timed(lambda store=store: _write_all(store, payloads))
                store = open_store(path)
                codec_pipeline.use(pipeline)
                read = _timed(lambda store=store: _read_shards(store))
                best[f"{pipeline}.write"] = min(best.get(f"{pipeline}.write", np.inf), write)
                best[f"{pipeline}.read"] = min(best.get(f"{pipeline}.read", np.inf), read)
        npy_bytes = sum(p.stat().st_size for p in npy_dir.iterdir())
        print(f"store.raw_payload_mb: {raw_bytes / 1e6:.1f}")
        print(f"store.npy_per_sample_write_mb_per_s: {raw_bytes / 1e6 / best['npy.write']:.0f}")
        for pipeline in ("python", "zarrs"):
            print(f"store.{pipeline}.write_ratio_to_npy: "
                  f"{best['npy.write'] / best[pipeline + '.write']:.2f}")
            print(f"store.{pipeline}.sequential_read_ratio_to_npy: "
                  f"{best['npy.read'] / best[pipeline + '.read']:.2f}")
        on_disk = store.location.size_under("")
        print(f"store.bytes_per_sample: {on_disk / samples:.0f}")
        print(f"store.bytes_ratio_to_npy: {on_disk / npy_bytes:.2f}")
        codec_pipeline.use()
        store = open_store(path)
        readers = {s: SceneReader(store, s) for s in store.scenes()}
        rng = np.random.default_rng(0)
        picks = [(s, int(rng.integers(len(r)))) for s, r in readers.items() for _ in range(20)]
        random_read = _timed(lambda: [readers[s].read(i) for s, i in picks]) / len(picks)
        print(f"store.random_sample_read_ms: {random_read * 1e3:.2f}")
        decode = _timed(lambda: [s for r in readers.values() for s in r]) / samples
        print(f"store.sequential_sample_with_jpeg_decode_ms: {decode * 1e3:.2f}")
        bench_checksums(payloads, version, tmp)
        _bench_rgb_footprint(payloads, tmp)
        _bench_codecs(payloads, dataset)
        _bench_validator(payloads, version, tmp)
        bench_validate_against_ingest(dataset, tmp)


@contextlib.contextmanager
def _as_before_checksums():
    """Write and read as the store did before chunks carried a crc32c: the spec's codecs
    alone, and zarr's own pipelines (the same data, layout and code otherwise)."""
    compressors_for = layout.compressors_for
    layout.compressors_for = lambda spec: [
        c for c in compressors_for(spec) if not isinstance(c, Crc32cCodec)] or None
    pipelines = dict(codec_pipeline.PIPELINES)
    codec_pipeline.PIPELINES.update(python="zarr.core.codec_pipeline.BatchedCodecPipeline",
                                    zarrs="zarrs.ZarrsCodecPipeline")
    try:
        yield
    finally:
        layout.compressors_for = compressors_for
        codec_pipeline.PIPELINES.update(pipelines)


def bench_checksums(payloads, version, tmp: Path) -> None:
    """What the chunks' crc32c costs, against the same arrays without it, both pipelines:
    writing the scenes, reading them shard by shard (a scan, the loader's default
    blocks), frame by frame (one frame's cameras a read: inside a shard, where this code
    checks zarrs' chunks itself), and every third sample read and its JPEG decoded (what
    `read_sample` users and the teacher pay). Ratios > 1: slower with checksums; `_cpu_ratio`
    lines compare the process's CPU time (all threads), steadier on a busy machine."""
    def by_frame(store):
        for scene_id in store.scenes():
            reader = SceneReader(store, scene_id)
            cams = len(reader.attrs.cameras)
            for start in range(0, len(reader), cams):
                reader.read_block(start, start + cams)

    def by_sample(store):
        for scene_id in store.scenes():
            reader = SceneReader(store, scene_id)
            for index in range(0, len(reader), 3):
                reader.read(index)

    best: dict[str, float] = {}
    for round_ in range(3):
        for pipeline in ("python", "zarrs"):
            for variant in ("before", "crc32c"):
                with _as_before_checksums() if variant == "before" else contextlib.nullcontext():
                    os.environ["DISTILLPREP_CODEC_PIPELINE"] = pipeline
                    try:
                        path = tmp / f"crc-{variant}-{pipeline}{round_}.zarr"
                        store = create_store(path, "nuscenes", version)
                        times = _wall_and_cpu("write", lambda s=store: _write_all(s, payloads))
                        store = open_store(path)
                        times.update(_wall_and_cpu("shard_read", lambda s=store: _read_shards(s)))
                        times.update(_wall_and_cpu("frame_read", lambda s=store: by_frame(s)))
                        times.update(_wall_and_cpu("decoded_sample_read",
                                                   lambda s=store: by_sample(s)))
                    finally:
                        del os.environ["DISTILLPREP_CODEC_PIPELINE"]
                        codec_pipeline.use()
                for what, seconds in times.items():
                    key = f"{pipeline}.{what}.{variant}"
                    best[key] = min(best.get(key, np.inf), seconds)
    for pipeline in ("python", "zarrs"):
        for what in ("write", "shard_read", "frame_read", "decoded_sample_read"):
            for clock in ("", "_cpu"):
                ratio = (best[f"{pipeline}.{what}{clock}.crc32c"]
                         / best[f"{pipeline}.{what}{clock}.before"])
                print(f"store.crc32c.{pipeline}.{what}{clock}_ratio: {ratio:.2f}")


def _wall_and_cpu(what: str, fn) -> dict[str, float]:
    """{what: wall seconds, what_cpu: CPU seconds of the process} of one call of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return {what: time.perf_counter() - wall, f"{what}_cpu": time.process_time() - cpu}


def _read_shards(store) -> None:
    """Every per-sample array of every scene, shard by shard (what the reader's scan and
    the loader's default blocks read)."""
    for scene_id in store.scenes():
        reader = SceneReader(store, scene_id)
        step = reader.shard_length()
        for start in range(0, len(reader), step):
            reader.read_block(start, start + step)


def _bench_rgb_footprint(payloads, tmp: Path) -> None:
    """The RGB decision: source JPEG bytes (ours) against decoded RGB compressed
    losslessly (zstd-3, one image per chunk, sharded)."""
    decoded = []
    for _, arrays, *_ in payloads:
        for row, n in zip(arrays["rgb_jpeg"], arrays["rgb_jpeg_nbytes"], strict=True):
            decoded.append(np.asarray(Image.open(io.BytesIO(row[:n].tobytes())).convert("RGB")))
    rgb = np.stack(decoded)
    jpeg_bytes = sum(int(a["rgb_jpeg_nbytes"].sum()) for _, a, *_ in payloads)
    array = zarr.create_array(str(tmp / "rgb_decoded.zarr"), shape=rgb.shape, dtype=rgb.dtype,
                              chunks=(1, *rgb.shape[1:]), shards=(len(rgb), *rgb.shape[1:]),
                              compressors=[ZstdCodec(level=3)])
    array[...] = rgb
    stored = sum(p.stat().st_size for p in (tmp / "rgb_decoded.zarr").rglob("*") if p.is_file())
    n = len(rgb)
    print(f"rgb.jpeg_bytes_per_image: {jpeg_bytes / n:.0f}")
    print(f"rgb.decoded_zstd_bytes_per_image: {stored / n:.0f}")
    print(f"rgb.decoded_zstd_footprint_ratio_to_jpeg: {stored / jpeg_bytes:.2f}")
    rows = [(r, m) for _, a, *_ in payloads for r, m in zip(a["rgb_jpeg"], a["rgb_jpeg_nbytes"],
                                                            strict=True)]
    jpeg_decode = _timed(lambda: [np.asarray(Image.open(io.BytesIO(r[:m].tobytes())).convert(
        "RGB")) for r, m in rows]) / n
    decoded_read = _timed(lambda: [array[i] for i in range(n)]) / n
    print(f"rgb.jpeg_decode_ms_per_image: {jpeg_decode * 1e3:.2f}")
    print(f"rgb.decoded_zstd_read_ms_per_image: {decoded_read * 1e3:.2f}")


_CODECS = {
    "zstd-1": [ZstdCodec(level=1)],
    "zstd-3": [ZstdCodec(level=3)],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
    "blosc-zstd-shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2)],
}


def _bench_codecs(payloads, dataset: Path) -> None:
    """Compression ratio and write/read speed of candidate codecs per array kind:
    sparse LiDAR depth, and dense float16 depth (the synthetic world's exact depth stands
    in for teacher depth)."""
    sparse = np.concatenate([a["lidar_depth"] for _, a, *_ in payloads])
    dense = np.stack([np.load(p).astype(np.float16) for p in sorted(
        (dataset / "ground_truth" / "depth" / "samples").rglob("*.npy"))])
    bench_codecs("lidar_depth", sparse)
    bench_codecs("dense_depth", dense)
    rows = ARRAYS["lidar_points"].chunk_rows
    for name in ("lidar_points", "lidar_intensity"):
        bench_codecs(name, np.concatenate([a[name] for _, a, *_ in payloads]), rows)


def bench_codecs(kind: str, data: np.ndarray, rows: int = 1) -> None:
    """Each candidate codec on data (N, ...), `rows` rows per chunk, one shard: ratio,
    write and read MB/s."""
    for name, compressors in _CODECS.items():
        if name.startswith("blosc"):
            compressors = [BloscCodec(cname=compressors[0].cname, clevel=compressors[0].clevel,
                                      shuffle="shuffle", typesize=data.dtype.itemsize)]
        with tempfile.TemporaryDirectory() as tmp:
            array = zarr.create_array(f"{tmp}/a.zarr", shape=data.shape, dtype=data.dtype,
                                      chunks=(rows, *data.shape[1:]),
                                      shards=(-(-len(data) // rows) * rows, *data.shape[1:]),
                                      compressors=compressors)
            write = _timed(lambda array=array: array.__setitem__(Ellipsis, data))
            read = _timed(lambda array=array: array[...])
            stored = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        mb = data.nbytes / 1e6
        print(f"codec.{kind}.{name}.ratio: {data.nbytes / stored:.2f}")
        print(f"codec.{kind}.{name}.write_mb_per_s: {mb / write:.0f}")
        print(f"codec.{kind}.{name}.read_mb_per_s: {mb / read:.0f}")


def bench_validate_against_ingest(dataset: Path, tmp: Path) -> None:
    """`validate` and `validate --deep` of a store against the `ingest` that wrote it
    (dataset read, JPEG bytes, LiDAR projected, all written), in the same process."""
    from distillprep.storage_schemas.ingest import IngestConfig, ingest

    read = read_nuscenes(dataset, sweeps=True)
    best = {}
    for round_ in range(3):
        path = tmp / f"ingest{round_}.zarr"
        store = create_store(path, "nuscenes", read.version)
        best["ingest"] = min(best.get("ingest", np.inf), _timed(lambda store=store: ingest(
            store, read_nuscenes(dataset, sweeps=True).scenes,
            IngestConfig("nuscenes", read.version, sweeps=True))))
        for deep in (False, True):
            key = "deep" if deep else "plain"
            report = None

            def check(path=path, deep=deep):
                nonlocal report
                report = validate_store(path, deep=deep)

            best[key] = min(best.get(key, np.inf), _timed(check))
            assert report.ok, [str(f) for f in report.errors[:3]]
    print(f"validate.ingest_seconds: {best['ingest']:.2f}")
    print(f"validate.ratio_to_ingest: {best['plain'] / best['ingest']:.3f}")
    print(f"validate.deep_ratio_to_ingest: {best['deep'] / best['ingest']:.3f}")


def _bench_validator(payloads, version, tmp: Path) -> None:
    """Validator without --deep on a store of about 1,000 samples (the scenes repeated)."""
    store = create_store(tmp / "big.zarr", "nuscenes", version)
    copies = -(-1000 // sum(d["N"] for _, _, d, *_ in payloads))
    for k in range(copies):
        _write_all(store, payloads, suffix=f"-copy{k}")
    start = time.perf_counter()
    report = validate_store(tmp / "big.zarr")
    seconds = time.perf_counter() - start
    assert report.ok, [str(f) for f in report.errors[:3]]
    print(f"validate.samples: {report.samples}")
    print(f"validate.seconds_without_deep: {seconds:.2f}")


