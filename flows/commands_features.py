"""CLI commands of the foundation-feature stage: `features` (fills a store's DINOv2 or
CLIP feature arrays, resumable) and `query` (CLIP text -> heat maps over the images)."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_common import (
    add_scene_argument,
    add_storage_option_argument,
    check_device,
    emit,
    storage_options,
)


def add_features(sub) -> None:
    from distillprep.teachers.foundation.models import MODELS

    p = sub.add_parser("features", help="extract PCA-reduced DINOv2/CLIP feature maps of "
                       "every image and virtual view of a store (resumable)")
    p.add_argument("store", help="store path or URL")
    add_storage_option_argument(p)
    p.add_argument("--model", required=True, choices=list(MODELS))
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", type=Path, default=None,
                         help="the model's checkpoint file (default: <model>.pth in "
                         "$DISTILLPREP_WEIGHTS_DIR); nothing is downloaded")
    weights.add_argument("--random-init", action="store_true",
                         help="random weights of the same architecture (tests, demos; the "
                         "store records it and validate/inspect say so)")
    p.add_argument("--pca", type=int, default=64, metavar="C", help="channels kept")
    p.add_argument("--input-width", type=int, default=None, metavar="PX",
                   help="width images are resized to for the model (default: the model's)")
    p.add_argument("--stride", type=int, default=None, metavar="PX",
                   help="pixels between patches (default: the patch size; e.g. 7 for a "
                   "4x denser DINOv2 grid, as EmerNeRF)")
    p.add_argument("--denoise-positions", action="store_true",
                   help="take out the feature pattern fixed to the image position (EmerNeRF's "
                   "observation), estimated on the PCA sample, before the PCA")
    p.add_argument("--pca-images", type=int, default=64,
                   help="images sampled across the store to fit the PCA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 CPU, 32 CUDA")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    add_scene_argument(p)
    p.add_argument("--force", action="store_true",
                   help="refit the PCA and redo every scene, even those already done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_features)


def run_features(args) -> int:
    from tqdm import tqdm

    from distillprep.storage_schemas.store import open_store
    from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor
    from distillprep.teachers.foundation.job import run_features as run

    check_device(args.device)
    config = FeatureConfig(model=args.model, channels=args.pca, input_width=args.input_width,
                           stride=args.stride, pca_images=args.pca_images, seed=args.seed,
                           denoise_positions=args.denoise_positions,
                           random_init=args.random_init)
    store = open_store(args.store, mode="a", storage_options=storage_options(args))
    extractor = load_extractor(config, args.weights, args.device, args.batch_size)
    if args.random_init:
        print(f"distillprep features: WARNING: {args.model} with RANDOM weights "
              "(--random-init): these features are not pretrained ones", file=sys.stderr)
    bar = None if args.json else tqdm(unit="img", desc=f"{args.model} features")
    summary = run(store, extractor, config, args.scenes, args.force,
                  progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    rate = summary.images / max(summary.wall_time_s, 1e-9)
    data = {"store": args.store, "model": args.model, "family": extractor.spec.family,
            "random_init": args.random_init, "done": summary.done, "skipped": summary.skipped,
            "images": summary.images, "wall_time_s": summary.wall_time_s,
            "images_per_s": rate, **extractor.provenance}
    emit(args, data, f"{args.store}: {extractor.spec.family} features of {args.model} "
         f"({'RANDOM weights' if args.random_init else extractor.provenance['weights']}) in "
         f"{len(summary.done)} scene(s), {len(summary.skipped)} already done; "
         f"{summary.images} images at {rate:.2f} images/s")
    return 0


def add_query(sub) -> None:
    p = sub.add_parser("query", help="CLIP text query: similarity heat maps over the "
                       "images of a store with CLIP features")
    p.add_argument("store", help="store path or URL")
    add_storage_option_argument(p)
    p.add_argument("--text", required=True, help='what to look for, e.g. "car"')
    add_scene_argument(p)
    p.add_argument("--png", required=True, type=Path, help="folder for the heat maps")
    p.add_argument("--weights", type=Path, default=None,
                   help="the CLIP checkpoint the features were made with (default: "
                   "<model>.pth in $DISTILLPREP_WEIGHTS_DIR; not needed for random-init "
                   "features)")
    p.add_argument("--max-images", type=int, default=12,
                   help="real images (and virtual views) per scene to draw")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_query)


def run_query(args) -> int:
    from PIL import Image

    from distillprep.storage_schemas.store import open_store
    from distillprep.teachers.foundation.query import overlay, query_store

    store = open_store(args.store, storage_options=storage_options(args))
    result = query_store(store, args.text, args.scenes, args.weights, args.max_images)
    paths = []
    for m in result.maps:
        path = args.png / m.scene_id / f"{m.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay(m, result.low, result.high)).save(path)
        paths.append(str(path))
    if result.random_init:
        print("distillprep query: WARNING: these CLIP features come from RANDOM weights "
              "(--random-init): the heat maps show nothing meaningful", file=sys.stderr)
    emit(args, {"text": args.text, "random_init": result.random_init, "pngs": paths,
                "similarity_range": [result.low, result.high]},
         "\n".join(paths))
    return 0


COMMANDS = (add_features, add_query)
