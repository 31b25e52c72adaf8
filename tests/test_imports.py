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


def test_the_cli_parser_is_built_without_torch():
    """Every `distillprep` command builds the whole parser first: importing torch there
    cost each command (`scenes`, `validate`, ...) seconds before it did anything."""
    import subprocess
    import sys

    code = ("import sys\nfrom distillprep.flows.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'prefect', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_teacher_fit_help_states_the_jobs_defaults():
    from distillprep.flows.cli import build_parser
    from distillprep.teachers.nerf.job import TeacherFitJob

    parser = build_parser()
    teacher = next(a for a in parser._subparsers._group_actions[0].choices.values()
                   if a.prog.endswith(" teacher"))
    fit = teacher._subparsers._group_actions[0].choices["fit"]
    helps = {a.dest: a.help for a in fit._actions}
    job = TeacherFitJob()
    assert f"default: {job.holdout})" in helps["holdout"]
    assert f"default: {job.checkpoint_every})" in helps["checkpoint_every"]
    assert fit.get_default("device") == job.device
