from __future__ import annotations

import logging
from pathlib import Path

import pytest

from retrainer.errors import SettingsError
from retrainer.freshness import identify_work
from retrainer.settings import RetrainParameters, TrainingConfig, load_settings


def test_defaults_point_the_data_at_the_demo_dataset_in_the_store() -> None:
    settings = load_settings()
    assert settings.store_url == "./.retrainer/store"
    assert settings.resolved_data_url == "./.retrainer/store/datasets/digits"
    assert settings.epochs == 30
    assert settings.model_name == "demo"


def test_environment_variables_set_nested_gate_values_and_keep_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", "s3://models-bucket/team")
    monkeypatch.setenv("RETRAINER_GATE__ACCURACY__THRESHOLD", "0.9")
    monkeypatch.setenv("RETRAINER_EPOCHS", "3")
    settings = load_settings()
    assert settings.gate.accuracy.threshold == 0.9
    assert settings.gate.accuracy.max_regression == 0.01
    assert settings.epochs == 3
    assert settings.resolved_data_url == "s3://models-bucket/team/datasets/digits"


def test_dotenv_file_is_read(isolated_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_settings / ".env").write_text("RETRAINER_MODEL_NAME=flowers\n")
    assert load_settings().model_name == "flowers"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RETRAINER_EPOCHS", "0", "RETRAINER_EPOCHS: Input should be greater than or equal to 1"),
        ("RETRAINER_STORE_URL", "ftp://host/models", "RETRAINER_STORE_URL: unknown URL scheme"),
        ("RETRAINER_DATA_URL", "s3://ab", "RETRAINER_DATA_URL: 'ab' in 's3://ab' is not a bucket"),
        (
            "RETRAINER_DATA_URL",
            "file://nas/photos",
            "RETRAINER_DATA_URL: 'file://nas/photos' names a folder on 'nas'",
        ),
        ("RETRAINER_MODEL_NAME", "My Model", "RETRAINER_MODEL_NAME: 'My Model' is not a model"),
        (
            "RETRAINER_GATE__ACCURACY__THRESHOLD",
            "2",
            "RETRAINER_GATE__ACCURACY__THRESHOLD: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_value_gives_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_two_bad_values_give_two_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAINER_EPOCHS", "0")
    monkeypatch.setenv("RETRAINER_BATCH_SIZE", "-1")
    with pytest.raises(SettingsError) as error:
        load_settings()
    lines = str(error.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["RETRAINER_EPOCHS", "RETRAINER_BATCH_SIZE"]


def test_parameters_override_settings_and_leave_the_rest() -> None:
    settings = load_settings().with_parameters(RetrainParameters(epochs=2, min_accuracy=0.5))
    assert settings.epochs == 2
    assert settings.gate.accuracy.threshold == 0.5
    assert settings.batch_size == 32


def test_parameters_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        RetrainParameters(epochs=0)
    with pytest.raises(ValueError, match="greater than 0"):
        RetrainParameters(learning_rate=-0.1)


def test_every_training_setting_and_any_new_one_enters_the_work_key() -> None:
    class WithLater(TrainingConfig):
        later: bool = False  # a setting added later, with no list to update

    base = identify_work("fingerprint", WithLater())
    assert identify_work("fingerprint", WithLater(later=True)).key != base.key
    changed = {
        "epochs": 11,
        "batch_size": 64,
        "image_size": 48,
        "learning_rate": 0.01,
        "validation_fraction": 0.25,
        "test_fraction": 0.25,
        "seed": 7,
        "model_factory": "tests.user_models:tiny_cnn",
        "callbacks": "tests.user_models:epoch_file_writer",
        "warm_start": "never",
        "mixed_precision": "on",
        "xla": True,
        "early_stopping_patience": 2,
        "max_image_bytes": 1000,
        "max_image_pixels": 1000,
        "class_weights": "none",
        "augment_flip": "horizontal",
        "augment_rotation": 0.1,
        "augment_zoom": 0.1,
        "augment_contrast": 0.1,
        "on_label_conflict": "train",
        "steps_per_execution": 8,
        # A backbone is valid only with its weights: both change together.
        "backbone": {"backbone": "mobilenet_v3_small", "backbone_weights": "imagenet"},
        "backbone_weights": "s3://weights-bucket/b0.weights.h5",
        "fine_tune_epochs": 2,
        "fine_tune_learning_rate": 1e-4,
    }
    assert set(changed) == set(TrainingConfig.model_fields)
    for name, value in changed.items():
        fields = value if isinstance(value, dict) else {name: value}
        other = identify_work("fingerprint", WithLater(**fields))
        assert other.key != base.key, name
    assert identify_work("other data", WithLater()).key != base.key


def test_the_training_config_is_read_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAINER_EPOCHS", "3")
    monkeypatch.setenv("RETRAINER_TEST_FRACTION", "0.3")
    config = load_settings().training_config()
    assert (config.epochs, config.test_fraction) == (3, 0.3)
    assert type(config) is TrainingConfig


def test_run_parameters_take_their_bounds_from_the_settings_they_override() -> None:
    bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    parameters = RetrainParameters.model_json_schema()["properties"]
    settings = TrainingConfig.model_json_schema()["properties"]
    for name in ("epochs", "batch_size", "learning_rate"):
        given = parameters[name]
        # A setting that may be left unset (learning_rate) has its type and bounds in anyOf.
        setting = next(iter(settings[name].get("anyOf", [])), settings[name])
        expected = {key: value for key, value in setting.items() if key in bounds}
        assert expected and {key: given[key] for key in given if key in bounds} == expected, name
        assert given["type"] == setting["type"], name
        assert given["description"].startswith(settings[name]["description"].rstrip(".")), name


def test_a_misspelt_setting_in_the_environment_is_refused_naming_the_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_GATE__ACCURACY__TRESHOLD", "0.9")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "RETRAINER_GATE__ACCURACY__TRESHOLD (in the environment) is not a setting: did you mean "
        "RETRAINER_GATE__ACCURACY__THRESHOLD?"
    )


def test_a_misspelt_setting_in_dot_env_is_refused_naming_the_real_one(
    isolated_settings: Path,
) -> None:
    (isolated_settings / ".env").write_text("RETRAINER_EPOCH=5\nRETRAINER_BATCH_SIZE=8\n")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "RETRAINER_EPOCH (in .env) is not a setting: did you mean RETRAINER_EPOCHS?"
    )


def test_the_deployment_variables_beside_the_settings_are_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RETRAINER_GIT_URL", "RETRAINER_CODE_DIR", "RETRAINER_WORK_POOL"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("RETRAINER_GATE__MACRO_F1__THRESHOLD", "0.5")
    assert load_settings().gate.macro_f1.threshold == 0.5


def test_a_run_parameter_chooses_a_backbone_in_place_of_the_settings_factory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:tiny_cnn")
    monkeypatch.setenv("RETRAINER_BACKBONE_WEIGHTS", "imagenet")
    worker = load_settings()
    experiment = worker.with_parameters(RetrainParameters(backbone="mobilenet_v3_small"))
    assert experiment.model_choice == "backbone mobilenet_v3_small"
    assert experiment.model_factory == "retrainer.models:build_default_model"
    assert worker.model_choice == "model factory tests.user_models:tiny_cnn"


def test_a_run_parameter_chooses_a_factory_in_place_of_the_settings_backbone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_BACKBONE", "efficientnet_v2_b0")
    monkeypatch.setenv("RETRAINER_BACKBONE_WEIGHTS", "imagenet")
    experiment = load_settings().with_parameters(
        RetrainParameters(model_factory="tests.user_models:tiny_cnn")
    )
    assert experiment.model_choice == "model factory tests.user_models:tiny_cnn"


def test_a_backbone_chosen_for_one_run_still_needs_its_weights() -> None:
    with pytest.raises(SettingsError, match="needs RETRAINER_BACKBONE_WEIGHTS"):
        load_settings().with_parameters(RetrainParameters(backbone="mobilenet_v3_small"))


def test_a_job_variables_backbone_wins_over_the_factory_in_dot_env_and_says_so(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (isolated_settings / ".env").write_text("RETRAINER_MODEL_FACTORY=tests.user_models:tiny_cnn\n")
    monkeypatch.setenv("RETRAINER_BACKBONE", "mobilenet_v3_small")
    monkeypatch.setenv("RETRAINER_BACKBONE_WEIGHTS", "imagenet")
    monkeypatch.setenv("RETRAINER_IMAGE_SIZE", "64")
    with caplog.at_level(logging.INFO, logger="retrainer.settings"):
        settings = load_settings()
    assert settings.model_choice == "backbone mobilenet_v3_small"
    assert (
        "RETRAINER_BACKBONE from the environment chooses the model; RETRAINER_MODEL_FACTORY in "
        ".env is set aside"
    ) in caplog.text


def test_a_job_variables_factory_wins_over_the_backbone_in_dot_env(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated_settings / ".env").write_text(
        "RETRAINER_BACKBONE=mobilenet_v3_small\nRETRAINER_BACKBONE_WEIGHTS=imagenet\n"
    )
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:tiny_cnn")
    assert load_settings().model_choice == "model factory tests.user_models:tiny_cnn"


def test_a_factory_and_a_backbone_in_the_same_place_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:tiny_cnn")
    monkeypatch.setenv("RETRAINER_BACKBONE", "mobilenet_v3_small")
    monkeypatch.setenv("RETRAINER_BACKBONE_WEIGHTS", "imagenet")
    with pytest.raises(SettingsError, match="both choose the model"):
        load_settings()
