"""The house's rules, read from the code: which module may import which."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent

# The data wing in the order the data flows (retrainer/data/__init__.py says what each does).
DATA_WING = [
    "image",
    "fingerprints",
    "shards",
    "listing",
    "preparation",
    "duplicates",
    "validation",
    "splits",
    "inputs",
    "local",
]
# What the data wing stands on: core modules that know nothing of it.
BELOW_THE_DATA_WING = {"errors", "layout", "progress", "records", "settings", "storage"}


def retrainer_imports(path: Path) -> set[str]:
    """The `retrainer.*` modules a file imports, anywhere in it (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        names |= {module for module in modules if module.startswith("retrainer.")}
    return names


def test_the_data_wing_modules_import_only_earlier_steps_and_the_core_below() -> None:
    folder = REPOSITORY / "retrainer" / "data"
    assert sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__") == sorted(
        DATA_WING
    ), "a module was added to the data wing: place it in DATA_WING in the order the data flows"
    for position, name in enumerate(DATA_WING):
        allowed = {f"retrainer.data.{earlier}" for earlier in DATA_WING[:position]}
        allowed |= {f"retrainer.{lower}" for lower in BELOW_THE_DATA_WING}
        for module in retrainer_imports(folder / f"{name}.py") - {"retrainer.data"}:
            assert module in allowed or module.rsplit(".", 1)[0] in allowed, (
                f"retrainer/data/{name}.py imports {module}"
            )


def test_the_core_below_the_data_wing_does_not_import_it() -> None:
    for lower in BELOW_THE_DATA_WING:
        imported = retrainer_imports(REPOSITORY / "retrainer" / f"{lower}.py")
        assert not {module for module in imported if module.startswith("retrainer.data")}, lower


# The modules that run Keras: importing them loads TensorFlow, which is their job.
KERAS_MODULES = {
    "retrainer.champion",
    "retrainer.evaluation",
    "retrainer.models",
    "retrainer.training",
}
LOADED_FRAMEWORKS = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "tensorflow"})))
"""


def core_modules() -> list[str]:
    """Every module of the core package, by name: retrainer/ and retrainer/data/."""
    folder = REPOSITORY / "retrainer"
    return sorted(
        ".".join(path.relative_to(REPOSITORY).with_suffix("").parts).removesuffix(".__init__")
        for path in folder.rglob("*.py")
    )


def frameworks_loaded_by_importing(modules: list[str]) -> str:
    """What a fresh interpreter has loaded of Prefect and TensorFlow after importing `modules`."""
    answer = subprocess.run(
        [sys.executable, "-c", LOADED_FRAMEWORKS, *modules],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


@pytest.mark.slow
def test_the_core_loads_neither_prefect_nor_tensorflow_but_in_its_keras_modules() -> None:
    modules = core_modules()
    assert set(modules) > KERAS_MODULES and "retrainer.cli" in modules
    assert frameworks_loaded_by_importing([m for m in modules if m not in KERAS_MODULES]) == ""
    assert frameworks_loaded_by_importing(modules) == "tensorflow"  # and never Prefect


def test_the_design_cards_top_level_stays_where_it_is() -> None:
    for name in ("flows", "tasks", "deploy", "tests", "prefect.yaml"):
        assert (REPOSITORY / name).exists(), name
    assert not (REPOSITORY / "retrainer" / "_pipeline").exists(), "only the wheel bundles it"


@pytest.mark.slow
def test_the_wheel_claims_no_generic_top_level_name_and_bundles_the_pipeline(
    tmp_path: Path,
) -> None:
    uv = REPOSITORY / ".tools" / "bin" / "uv"
    build = [str(uv), "build", "--wheel", "--out-dir", str(tmp_path), str(REPOSITORY)]
    answer = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr
    (wheel,) = tmp_path.glob("retrainer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {name for name in top_level if not name.startswith("retrainer")} == set(), top_level
    for bundled in ("flows/retrain.py", "tasks/train.py", "prefect.yaml"):
        assert f"retrainer/_pipeline/{bundled}" in names, bundled
