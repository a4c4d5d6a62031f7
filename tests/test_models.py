"""The model factory contract: what a model gets and gives, and what its compile keeps."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from retrainer.errors import SettingsError
from retrainer.models import build_from_factory, compile_model, user_callbacks
from retrainer.settings import DEFAULT_LEARNING_RATE, TrainingConfig

SHAPE = (16, 16, 3)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def built(factory: str, **settings: object):  # type: ignore[no-untyped-def]
    config = TrainingConfig(model_factory=f"tests.user_models:{factory}", **settings)
    return build_from_factory(config.model_factory, SHAPE, 3, config), config


def random_pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(5, *SHAPE), dtype=np.uint8)


def test_a_logits_head_gets_a_softmax_and_its_loss_takes_probabilities() -> None:
    factory_model, _ = built("logits_cnn")
    assert factory_model.wrapped_logits
    outputs = keras.ops.convert_to_numpy(factory_model.model(random_pixels()))
    assert np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-5) and outputs.min() >= 0
    assert factory_model.own_compile is not None
    assert factory_model.own_compile.loss == "sparse_categorical_crossentropy"


def test_a_logits_head_whose_first_answers_look_like_probabilities_is_still_logits() -> None:
    factory_model, _ = built("small_logits")
    assert factory_model.wrapped_logits


def test_a_softmax_head_is_taken_as_it_is() -> None:
    factory_model, _ = built("tiny_cnn")
    assert not factory_model.wrapped_logits
    assert factory_model.model.name == "user_tiny_cnn"


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        ("sigmoid_head", "do not sum to 1 (a sigmoid head?)"),
        ("one_hot_loss", "wants one-hot labels"),
    ],
)
def test_a_head_or_loss_that_cannot_learn_one_class_per_image_is_refused(
    factory: str, words: str
) -> None:
    with pytest.raises(SettingsError, match=r"^RETRAINER_MODEL_FACTORY: ") as raised:
        built(factory)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def compiled(factory: str, **settings: object) -> keras.Model:
    factory_model, config = built(factory, **settings)
    model = factory_model.model
    compile_model(model, config.learning_rate, config, factory_model.own_compile)
    return model


def test_a_compiled_factory_keeps_its_optimizer_and_rate_unless_a_rate_is_set() -> None:
    own = compiled("tiny_cnn")
    assert float(own.optimizer.learning_rate) == pytest.approx(0.01)  # the factory's Adam(0.01)
    overridden = compiled("tiny_cnn", learning_rate=0.5)
    assert float(overridden.optimizer.learning_rate) == pytest.approx(0.5)


def test_steps_per_execution_and_xla_apply_to_a_compiled_factory() -> None:
    model = compiled("tiny_cnn", steps_per_execution=7, xla=True)
    assert model.steps_per_execution == 7
    assert model.jit_compile is True


def test_an_uncompiled_factory_trains_with_adam_at_the_default_rate() -> None:
    factory_model, config = built("uncompiled_cnn")
    model = factory_model.model
    compile_model(model, config.learning_rate, config, factory_model.own_compile)
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(DEFAULT_LEARNING_RATE)


def test_callbacks_must_be_a_list_of_keras_callbacks() -> None:
    assert type(user_callbacks("tests.user_models:epoch_file_writer")[0]).__name__ == "EpochFile"
    with pytest.raises(SettingsError, match=r"^RETRAINER_CALLBACKS: .* must return a list"):
        user_callbacks("tests.user_models:not_callbacks")


@pytest.mark.parametrize("factory", ["uncompiled_cnn", "compiled_cnn", "logits_cnn"])
def test_the_readmes_example_factories_train_with_the_example_callbacks(
    factory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("MY_METRICS_CSV", str(tmp_path / "metrics.csv"))
    config = TrainingConfig(
        model_factory=f"my_models.factories:{factory}", callbacks="my_models.callbacks:nightly"
    )
    factory_model = build_from_factory(config.model_factory, SHAPE, 3, config)
    model = factory_model.model
    compile_model(model, config.learning_rate, config, factory_model.own_compile)
    labels = np.arange(30) % 3
    history = model.fit(
        np.repeat(random_pixels(), 6, axis=0),
        labels,
        epochs=2,
        callbacks=user_callbacks(config.callbacks),
        verbose=0,
    )
    assert len(history.history["loss"]) == 2
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3  # a header, 2 epochs
    outputs = keras.ops.convert_to_numpy(model(random_pixels()))
    assert np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-5)
