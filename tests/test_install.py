"""A wheel of the project installs and imports from outside the repo (not only editable)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from conftest import REPO


def test_wheel_installs_and_imports_outside_the_repo(tmp_path):
    # Built from a clean copy: setuptools' build/ folder in the checkout can hold stale files.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "demo_out", "*.egg-info", "__pycache__", ".*_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True)
    [wheel] = wheels.glob("distillprep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("scenes", "scenes/synthetic", "teachers", "teachers/nerf", "teachers/volume",
                "teachers/foundation", "storage_schemas", "student", "flows"):
        assert f"distillprep/{pkg}/__init__.py" in names
    assert "distillprep/storage_schemas/json/store_attrs.schema.json" in names
    assert "distillprep/teachers/nerf/hash_kernel.cpp" in names  # built from beside its .py
    assert not any(n.startswith(("flows/", "scenes/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "distillprep = distillprep.flows.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    # -S: no site processing, so the editable install's path hooks play no part; the
    # dependencies come from this venv's site-packages, distillprep only from the wheel.
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    code = ("import distillprep.scenes, distillprep.scenes.synthetic.render, "
            "distillprep.flows.cli as cli; print(distillprep.scenes.__file__); "
            "cli.main(['--help'])")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target))
    assert "synth" in proc.stdout


def test_the_gpu_and_cpu_extras_resolve_on_the_registry(tmp_path):
    """`pip install '.[gpu]'` must find what it asks for (spconv-cu120 2.3.8 never existed):
    the extras' requirements resolve, without installing them."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for name in ("cpu", "gpu"):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                               "--ignore-installed", "-q", "--report", str(tmp_path / name),
                               *extras[name]], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"extra [{name}] {extras[name]}: {proc.stderr[-2000:]}"
        import json

        report = json.loads((tmp_path / name).read_text())
        assert [item["metadata"]["name"] for item in report["install"]] == [
            requirement.split("==")[0] for requirement in extras[name]]
