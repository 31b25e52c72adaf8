"""CLI commands of the scene stage: `synth`, `scenes`, `preview`."""

from __future__ import annotations

from pathlib import Path

from distillprep.scenes.errors import ConfigError, DatasetNotFoundError

from .cli_common import add_dataset_argument, add_scene_argument, emit


def add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic dataset with exact ground truth")
    p.add_argument("out", type=Path, help="output dataroot")
    from distillprep.scenes.synthetic.generate import WRITERS

    p.add_argument("--format", default="nuscenes", choices=sorted(WRITERS))
    p.add_argument("--scenes", type=int, default=2, help="how many scenes to generate")
    p.add_argument("--frames", type=int, default=10,
                   help="keyframes per scene (nuScenes 2 Hz, Waymo 10 Hz)")
    p.add_argument("--width", type=int, default=800,
                   help="width of the rig's largest camera (nuScenes 1600, Waymo 1920; every "
                   "camera scales with it)")
    p.add_argument("--height", type=int, default=450,
                   help="height of the rig's largest camera (nuScenes 900, Waymo 1280)")
    p.add_argument("--sweeps", type=int, default=0,
                   help="non-keyframe captures per sensor between keyframes (0-9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="v1.0-mini",
                   help="nuScenes table folder name (v1.0-*); Waymo ignores it")
    p.add_argument("--supersample", type=int, default=2, help="S x S colour rays per pixel")
    p.add_argument("--workers", type=int, default=0, help="render processes (0: all cores)")
    p.add_argument("--lidar-beams", type=int, default=None,
                   help="beams of the main LiDAR over its elevations (default: the rig's own, "
                   "nuScenes' HDL-32E 32, Waymo's TOP 64)")
    p.add_argument("--sky-masks", action="store_true",
                   help="write every image's exact sky mask under OUT/sky_masks, where "
                   "`ingest --sky-masks` reads a segmentation model's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier synthetic dataset at OUT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from tqdm import tqdm

    from distillprep.scenes.synthetic.generate import SynthConfig, generate

    config = SynthConfig(scenes=args.scenes, frames=args.frames, width=args.width,
                         height=args.height, sweeps=args.sweeps, seed=args.seed,
                         version=args.version, supersample=args.supersample,
                         workers=args.workers, lidar_beams=args.lidar_beams,
                         sky_masks=args.sky_masks)
    out = generate(args.out, args.format, config, overwrite=args.overwrite,
                   progress=None if args.json else lambda it, **kw: tqdm(it, unit="capture", **kw))
    report = {"out": str(out), "format": args.format,
              "version": args.version if args.format == "nuscenes" else args.format[-2:],
              "scenes": args.scenes, "frames": args.frames}
    emit(args, report, f"wrote {args.scenes} {args.format} scene(s) to {out}")
    return 0


def add_scenes(sub) -> None:
    p = sub.add_parser("scenes", help="list the scenes of a dataset")
    p.add_argument("dataroot", type=Path)
    add_dataset_argument(p)
    p.add_argument("--version", default=None, help="table folder (detected when only one)")
    add_scene_argument(p)
    p.add_argument("--sweeps", action="store_true", help="count frames built from sweeps too")
    p.add_argument("--skip-bad", action="store_true",
                   help="report scenes that fail to read instead of stopping")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_scenes)


def _run_scenes(args) -> int:
    from distillprep.scenes.datasets import read_dataset

    read = read_dataset(args.dataset, str(args.dataroot), version=args.version,
                        scenes=args.scenes, sweeps=args.sweeps, skip_bad=args.skip_bad)
    report = {"dataroot": str(args.dataroot), "dataset": args.dataset, "version": read.version,
              "scenes": [s.summary() for s in read.scenes],
              "failures": [f.to_json() for f in read.failures]}
    lines = [f"{read.version}: {len(read.scenes)} scene(s)"]
    for s in report["scenes"]:
        lines.append(f"  {s['scene_id']:<16} {s['frames']:>4} frames  "
                     f"{s['camera_samples']:>5} images  {s['lidar_sweeps']:>4} LiDAR sweeps  "
                     f"{s['duration_s']:6.1f} s")
    for f in read.failures:
        lines.append(f"  SKIPPED {f.scene}: {f.error}")
    emit(args, report, "\n".join(lines))
    return 1 if read.failures else 0


def add_preview(sub) -> None:
    p = sub.add_parser("preview", help="PNG of one frame: every camera with colour-mapped "
                       "depth (exact ground truth when the dataset has it, else LiDAR)")
    p.add_argument("dataroot", type=Path)
    add_dataset_argument(p)
    p.add_argument("--version", default=None)
    add_scene_argument(p, many=False)
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_preview)


def _run_preview(args) -> int:
    from PIL import Image

    from distillprep.scenes.datasets import read_dataset
    from distillprep.scenes.preview import dilate_sparse, frame_preview
    from distillprep.scenes.projection import sparse_depth_map
    from distillprep.scenes.synthetic.truth import has_ground_truth, load_ground_truth_depth

    read = read_dataset(args.dataset, str(args.dataroot), version=args.version,
                        scenes=None if args.scene is None else [args.scene])
    if not read.scenes:
        raise DatasetNotFoundError(f"no scenes in {args.dataroot}")
    scene = read.scenes[0]
    if not 0 <= args.frame < len(scene.frames):
        raise ConfigError(f"scene {scene.scene_id!r} has {len(scene.frames)} frames; "
                          f"--frame {args.frame} is out of range")
    frame = scene.frames[args.frame]
    if has_ground_truth(args.dataroot):
        source = "exact ground-truth depth"

        def depth_of(sample):
            return load_ground_truth_depth(args.dataroot, sample.source_file)
    else:
        source = "LiDAR depth (projected, sparse)"
        points = frame.lidar_points().points

        def depth_of(sample):
            return dilate_sparse(sparse_depth_map(sample, points), radius=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_preview(frame, depth_of)).save(args.out)
    report = {"png": str(args.out), "scene_id": scene.scene_id, "frame": args.frame,
              "depth": source}
    emit(args, report, f"preview of {scene.scene_id} frame {args.frame} ({source}): "
            f"{args.out}")
    return 0


COMMANDS = (add_synth, add_scenes, add_preview)
