"""`make bench`: Waymo without TensorFlow. The reader's time per camera sample (segment
opened, frames parsed, the JPEG found and decoded) against plain decoding of the same
JPEG bytes from memory, for v1 (TFRecord) and v2 (Parquet); then a teacher fitted on a
synthetic Waymo segment with sky masks, printed with the keys of the nuScenes fit
(`waymo.` before them) so the two read side by side.

DISTILLPREP_BENCH_WAYMO_FIT_MINUTES sets the fit's time (default 3, as the nuScenes fit's
default; 0 skips it).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from bench_teacher_fit import bench_teacher_fit
from bench_timing import best_of
from PIL import Image

from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.waymo.reader import read_waymo

ALL_CAMERAS = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")
READER_SEGMENT = SynthConfig(scenes=1, frames=10, width=480, height=320, seed=4,
                             supersample=1)
FIT_SEGMENT = SynthConfig(scenes=1, frames=45, width=320, height=213, seed=3, sky_masks=True)
"""4.5 s of a segment at 10 Hz (the nuScenes bench scene's span), three front cameras, with
sky masks (exact: the stand-in for the segmentation masks EmerNeRF fits Waymo with)."""


def _plain_decode(blobs: list[bytes]) -> None:
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            np.asarray(im.convert("RGB"))


def _read_every_image(root: Path) -> None:
    for scene in read_waymo(root, cameras=ALL_CAMERAS).scenes:
        for sample in scene.camera_samples:
            sample.load_image()


def bench_waymo_reader(tmp: Path) -> None:
    for version in ("v1", "v2"):
        root = generate(tmp / f"reader_{version}", f"waymo-{version}", READER_SEGMENT)
        samples = [s for scene in read_waymo(root, cameras=ALL_CAMERAS).scenes
                   for s in scene.camera_samples]
        blobs = [s.load_jpeg() for s in samples]
        floor = best_of(partial(_plain_decode, blobs)) / len(blobs)
        ours = best_of(partial(_read_every_image, root)) / len(blobs)
        print(f"reader.waymo_{version}.camera_samples: {len(blobs)} (5 cameras, "
              f"{READER_SEGMENT.frames} frames, 480x320 and 480x222)")
        print(f"reader.waymo_{version}.seconds_per_camera_sample: {ours:.5f}")
        print(f"reader.waymo_{version}.ratio_to_plain_jpeg_decode: {ours / floor:.2f}")


def bench_waymo(fit_minutes: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_waymo_reader(Path(tmp))
        if fit_minutes <= 0:
            return
        start = time.perf_counter()
        root = generate(Path(tmp) / "fit", "waymo-v1", FIT_SEGMENT)
        print(f"waymo.teacher.scene_generation_s: {time.perf_counter() - start:.0f}")
        print("waymo.teacher.sky: the dataset's sky masks (synthetic: exact), not the LiDAR's")
        bench_teacher_fit(root, fit_minutes, dataset="waymo", prefix="waymo.", sky_masks=True)


if __name__ == "__main__":
    bench_waymo(float(os.environ.get("DISTILLPREP_BENCH_WAYMO_FIT_MINUTES", "3")))
