"""The code a run trains with: what changes the work key, and what does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retrainer import user_code
from retrainer.errors import SettingsError
from retrainer.freshness import identify_work
from retrainer.settings import TrainingConfig

FACTORY = textwrap.dedent(
    """
    import keras

    def build(input_shape, num_classes):
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Conv2D(64, 3)(keras.layers.Rescaling(1 / 255)(inputs))
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
    """
)


@pytest.fixture
def users_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's package on PYTHONPATH, as a notebook's code copied beside the product."""
    package = tmp_path / "their_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cnn.py").write_text(FACTORY)
    (package / "helpers.py").write_text("FILTERS = 64\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def key_of(factory: str = "their_models.cnn:build") -> str:
    return identify_work("data", TrainingConfig(model_factory=factory)).key


def test_a_change_to_the_factory_or_a_helper_beside_it_is_new_work(users_package: Path) -> None:
    before = key_of()
    (users_package / "cnn.py").write_text(FACTORY.replace("64", "128"))
    after_factory = key_of()
    (users_package / "helpers.py").write_text("FILTERS = 128\n")
    after_helper = key_of()
    assert len({before, after_factory, after_helper}) == 3


def test_the_same_factory_source_is_the_same_work(users_package: Path) -> None:
    before = key_of()
    (users_package / "notes.md").write_text("a note beside the code is not code\n")
    assert key_of() == before


def test_the_users_module_is_found_without_running_it(users_package: Path) -> None:
    (users_package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    assert user_code.module_source("X", "their_models.cnn:build").startswith("sha256:")
    assert "their_models" not in sys.modules


def test_a_missing_module_is_one_line_naming_the_setting(users_package: Path) -> None:
    with pytest.raises(SettingsError, match=r"^RETRAINER_MODEL_FACTORY: cannot find module "):
        user_code.module_source("RETRAINER_MODEL_FACTORY", "their_models.cnnn:build")


def test_an_installed_package_is_named_by_its_version() -> None:
    assert user_code.module_source("X", "keras.applications:MobileNetV3Small").startswith("keras==")


def test_docs_only_changes_keep_the_work_and_code_changes_make_new_work(tmp_path: Path) -> None:
    """The training code's hash, computed in a copy of the product as a fresh process would."""
    product = Path(user_code.__file__).resolve().parent.parent
    copy = tmp_path / "product"
    for package in user_code.PRODUCT_PACKAGES:
        shutil.copytree(product / package, copy / package, ignore=shutil.ignore_patterns("*.pyc"))
    (copy / "README.md").write_text("# retrainer\n")

    def training_code() -> str:
        answer = subprocess.run(
            [
                sys.executable,
                "-c",
                "from retrainer import user_code; print(user_code.training_code())",
            ],
            cwd=copy,
            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        return answer.stdout.strip()

    before = training_code()
    (copy / "README.md").write_text("# retrainer\n\nNew words, same code.\n")
    (copy / "prefect.yaml").write_text("# a deployment file\n")
    assert training_code() == before
    with (copy / "retrainer" / "training.py").open("a") as file:
        file.write("\n# a changed line of training code\n")
    assert training_code() != before
