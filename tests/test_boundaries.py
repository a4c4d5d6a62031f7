"""The house's rules, read from the code: which module may import which."""

from __future__ import annotations

import ast
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

# The data wing in the order the data flows (retrainer/data/__init__.py says what each does).
DATA_WING = ["image", "shards", "listing", "preparation", "validation", "splits", "inputs", "local"]
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
