"""The `distillprep` console script, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO
from PIL import Image

CLI = str(Path(sys.executable).parent / "distillprep")


def _run(*args, check=True):
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_synth_then_scenes_json_then_preview(tmp_path):
    out = tmp_path / "ds"
    report = json.loads(_run("synth", out, "--format", "nuscenes", "--scenes", "1", "--frames",
                             "2", "--width", "96", "--height", "54", "--sweeps", "1", "--seed",
                             "5", "--supersample", "1", "--workers", "1", "--json").stdout)
    assert report["out"] == str(out)
    listing = json.loads(_run("scenes", out, "--dataset", "nuscenes", "--json").stdout)
    assert listing["version"] == "v1.0-mini"
    [scene] = listing["scenes"]
    assert scene["scene_id"] == "scene-0001" and scene["frames"] == 2
    assert scene["cameras"][0] == "CAM_FRONT" and len(scene["cameras"]) == 6
    with_sweeps = json.loads(_run("scenes", out, "--sweeps", "--json").stdout)
    assert with_sweeps["scenes"][0]["frames"] == 3
    png = tmp_path / "preview.png"
    text = _run("preview", out, "--scene", "scene-0001", "--out", png).stdout
    assert str(png) in text and "ground-truth" in text
    image = np.asarray(Image.open(png))
    assert image.shape[0] > 4 * 40 and image.shape[2] == 3
    assert image.std() > 20  # a real picture, not a blank canvas


def test_preview_without_ground_truth_uses_lidar(small_dataset, tmp_path):
    import shutil

    root = Path(shutil.copytree(small_dataset, tmp_path / "ds"))
    shutil.rmtree(root / "ground_truth")
    report = json.loads(_run("preview", root, "--out", tmp_path / "p.png", "--json").stdout)
    assert report["depth"].startswith("LiDAR")


def test_errors_exit_1_with_a_message_and_usage_errors_exit_2(tmp_path):
    proc = _run("scenes", tmp_path, check=False)
    assert proc.returncode == 1
    assert "no nuScenes table folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("synth", check=False)
    assert proc.returncode == 2


def test_scenes_skip_bad_reports_the_failure(small_dataset, tmp_path):
    import shutil

    root = Path(shutil.copytree(small_dataset, tmp_path / "ds"))
    victim = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[0]
    victim.write_bytes(b"")
    proc = _run("scenes", root, "--skip-bad", "--json", check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert len(report["scenes"]) == 1
    assert "LiDAR file is empty" in report["failures"][0]["error"]


def test_a_bug_shows_its_traceback_and_its_own_exit_code(small_store, monkeypatch, capsys):
    """The CLI catches only the project's own errors: a TypeError inside a stage is a bug,
    shown whole, with an exit code that bad data never gets."""
    from distillprep.flows.cli import main
    from distillprep.scenes.errors import EXIT_BAD_DATA, EXIT_BUG
    from distillprep.storage_schemas import validate

    def broken(*args, **kwargs):
        return len(None)  # a TypeError, as a real bug raises it

    monkeypatch.setattr(validate, "validate_store", broken)
    code = main(["validate", str(small_store)])
    err = capsys.readouterr().err
    assert code == EXIT_BUG != EXIT_BAD_DATA
    assert "Traceback (most recent call last)" in err and "TypeError" in err
    assert "internal error (a bug in distillprep" in err


def test_a_looping_scene_table_ends_with_a_message(dataset_copy):
    records = json.loads((dataset_copy / "v1.0-mini" / "sample.json").read_text())
    scene = json.loads((dataset_copy / "v1.0-mini" / "scene.json").read_text())[1]
    for record in records:
        if record["token"] == scene["last_sample_token"]:
            record["next"] = scene["first_sample_token"]
    (dataset_copy / "v1.0-mini" / "sample.json").write_text(json.dumps(records))
    proc = subprocess.run([CLI, "scenes", str(dataset_copy)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "scene 'scene-0002'" in proc.stderr and "loops back" in proc.stderr
