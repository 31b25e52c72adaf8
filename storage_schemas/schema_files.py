"""The checked-in JSON Schema files under `storage_schemas/json/`, generated from the
models. `python -m distillprep.storage_schemas.schema_files WRITE_DIR` regenerates them;
a test fails when the checked-in files drift from the code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .attrs import SCHEMA_MODELS, SCHEMA_VERSION
from .feature_runs import FeatureRun
from .quarantine import QuarantineRecord
from .spec import ARRAYS, ArraySpec

SCHEMA_DIR = Path(__file__).parent / "json"


def generated() -> dict[str, str]:
    """File name -> content of every schema file, as the code defines them now."""
    models = {**SCHEMA_MODELS, "feature_run": FeatureRun, "quarantine_record": QuarantineRecord}
    files = {f"{name}.schema.json": model.model_json_schema() for name, model in models.items()}
    files["array_spec.schema.json"] = ArraySpec.model_json_schema()
    files["arrays.json"] = {"schema_version": SCHEMA_VERSION,
                            "arrays": [spec.model_dump(mode="json") for spec in ARRAYS.values()]}
    return {name: json.dumps(content, indent=2, sort_keys=True) + "\n"
            for name, content in files.items()}


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generated().items():
        (directory / name).write_text(text)
        paths.append(directory / name)
    return paths


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
