"""The code a run trains with, and the user's own part of it: `module:function` settings.

A user's model factory and callbacks are found and fingerprinted without being imported: their
source shapes the trained model, so it is part of the work key, and a night with nothing new must
decide to skip without importing TensorFlow (which the user's module surely does). They are
imported only when the run goes on to train.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path

from retrainer.errors import SettingsError
from retrainer.records import CodeIdentity

# The product's own packages: a change to any of their Python files is new training code. The
# README, the docs, the tests and the deployment files are not: changing them retrains nothing.
PRODUCT_PACKAGES = ("retrainer", "tasks", "flows")
# The distributions whose version shapes what a model learns and how it is saved.
FRAMEWORKS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"), "keras": ("keras",)}


def load_function(setting: str, spec: str) -> Callable[..., object]:
    """Import the function `spec` names; one line naming `setting` when it is not there."""
    module_name, _, function_name = spec.partition(":")  # its form checked by the settings
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SettingsError(
            f"{setting}: cannot load '{spec}': {error} (the module must be importable on the "
            "worker: installed, or on PYTHONPATH; see 'Your own model' in the README)"
        ) from None
    if not callable(function):
        raise SettingsError(f"{setting}: '{spec}' is not a function")
    return function


def python_files(roots: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        files.extend([root] if root.is_file() else sorted(root.rglob("*.py")))
    return files


def sha256_of_files(files: Iterable[Path], relative_to: Path | None = None) -> str:
    """One hash over every file's name and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(files):
        name = path.relative_to(relative_to) if relative_to else Path(path.name)
        digest.update(f"{name.as_posix()}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def installed_elsewhere(origin: Path) -> bool:
    """The module lies in site-packages: an installed distribution, named by its version."""
    libraries = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return any(origin.resolve().is_relative_to(library) for library in libraries)


def find_module(setting: str, spec: str) -> list[Path]:
    """The files of the module `spec` names (a package: its folder), found on sys.path the way
    the import system would, without running any of its code or its parents'."""
    module_name = spec.partition(":")[0]  # its form is checked by the settings
    locations: list[str] | None = None
    found = None
    for depth, part in enumerate(module_name.split(".")):
        found = importlib.machinery.PathFinder.find_spec(part, locations)
        if found is None:
            missing = ".".join(module_name.split(".")[: depth + 1])
            raise SettingsError(
                f"{setting}: cannot find module '{missing}' of '{spec}' on this worker (install "
                "it, or put its folder on PYTHONPATH; see 'Your own model' in the README)"
            )
        locations = list(found.submodule_search_locations or [])
    assert found is not None  # a module name has at least one part
    if locations:
        return [Path(location) for location in locations]
    return [Path(found.origin)] if found.origin else []


def module_source(setting: str, spec: str) -> str:
    """What identifies the code of the module `spec` names, without importing it: the version of
    the distribution that installed it, else a hash of its top-level package's Python files (a
    helper module beside the factory counts as much as the factory)."""
    top = spec.partition(":")[0].split(".")[0]
    if top in PRODUCT_PACKAGES:
        return "retrainer"  # part of the training code
    find_module(setting, spec)
    roots = find_module(setting, top)
    if roots and installed_elsewhere(roots[0]):
        names = importlib.metadata.packages_distributions().get(top, [])
        if names:
            return f"{names[0]}=={importlib.metadata.version(names[0])}"
    return sha256_of_files(python_files(roots), relative_to=roots[0].parent if roots else None)


@functools.cache
def training_code() -> str:
    """A hash of the product's Python files, read once per process."""
    here = Path(__file__).resolve().parent.parent
    roots = [here / package for package in PRODUCT_PACKAGES if (here / package).is_dir()]
    return sha256_of_files(python_files(roots), relative_to=here)


def framework_version(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def code_identity(model_factory: str, callbacks: str | None) -> CodeIdentity:
    """Everything of the code that shapes a trained model, read without importing TensorFlow."""
    return CodeIdentity(
        training_code=training_code(),
        model_factory=module_source("RETRAINER_MODEL_FACTORY", model_factory),
        callbacks=None if callbacks is None else module_source("RETRAINER_CALLBACKS", callbacks),
        tensorflow=framework_version(FRAMEWORKS["tensorflow"]),
        keras=framework_version(FRAMEWORKS["keras"]),
    )
