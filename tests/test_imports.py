"""Imports point down the data flow: the dataset readers know nothing of the store, the
store nothing of the teachers, the teachers nothing of the student, and nothing imports
the CLI and flows. (A stage package reads what earlier stages committed through the store,
which is why `teachers` may import `storage_schemas`.)"""

import ast

import pytest
from conftest import REPO

ALLOWED = {
    "scenes": {"scenes"},
    "storage_schemas": {"scenes", "storage_schemas"},
    "teachers": {"scenes", "storage_schemas", "teachers"},
    "student": {"scenes", "storage_schemas", "teachers", "student"},
    "flows": {"scenes", "storage_schemas", "teachers", "student", "flows"},
}


def _imported_packages(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "distillprep" and len(parts) > 1:
                yield parts[1], node.lineno


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_flow(package):
    wrong = [f"{path.relative_to(REPO)}:{line} imports distillprep.{target}"
             for path in sorted((REPO / package).rglob("*.py"))
             for target, line in _imported_packages(path) if target not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)
