"""Models: the built-in CNN, a pretrained backbone, a user's model factory, and the model a run
fits (warm-started from the champion when `retrainer.champion` says it fits)."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from retrainer.champion import WarmStart, champion_mismatch, fresh_model_because
from retrainer.data.image import input_shape
from retrainer.errors import SettingsError
from retrainer.records import DataSplit
from retrainer.settings import DEFAULT_LEARNING_RATE, DEFAULT_MODEL_FACTORY, TrainingConfig
from retrainer.storage import open_store
from retrainer.user_code import load_function

logger = logging.getLogger(__name__)

# Both take pixels in [0, 255] and rescale them themselves (include_preprocessing), so they take
# the prepared uint8 images as they are, in training and in the served model.
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "mobilenet_v3_small": keras.applications.MobileNetV3Small,
    "efficientnet_v2_b0": keras.applications.EfficientNetV2B0,
}
BACKBONE_LAYER = "backbone"
BackboneWeights = Path | Literal["imagenet"]


def build_default_model(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A small CNN that trains from scratch, offline, in seconds on a CPU."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    # float32 output: softmax in float16 loses the small probabilities the loss needs.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name="retrainer_cnn")


def load_backbone_weights(application: keras.Model, backbone: str, weights: Path) -> None:
    """Every weight of the application from the file, or SettingsError.

    Keras loads what matches and only warns about the rest ("Skipping ... will retain their
    freshly-initialized weights"): a partly random backbone must not train in silence.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            application.load_weights(weights)
            problem = next((str(w.message) for w in caught if "Skipping" in str(w.message)), None)
        except (ValueError, OSError) as error:
            problem = str(error)
    if problem:
        raise SettingsError(
            f"RETRAINER_BACKBONE_WEIGHTS: {weights.name} are not the weights of {backbone} "
            f"without its top: {problem.splitlines()[0][:300]}"
        )


def build_transfer_model(
    backbone: str,
    weights: BackboneWeights | None,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> keras.Model:
    """The pretrained backbone, frozen, under a new classifier: the model of the first phase.
    Without weights the backbone is random: only for measuring speed (`retrainer doctor`)."""
    application = BACKBONES[backbone](
        input_shape=input_shape,
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        pooling="avg",
    )
    if isinstance(weights, Path):
        load_backbone_weights(application, backbone, weights)
    # The same layers under one name for every application, for find_backbone (EfficientNetV2
    # takes its name as its architecture, so it cannot be named when built).
    base = keras.Model(application.input, application.output, name=BACKBONE_LAYER)
    base.trainable = False
    inputs = keras.Input(shape=input_shape)
    # training=False keeps BatchNormalization on its pretrained statistics, also once the
    # backbone is fine-tuned: small batches of new images would otherwise wreck them.
    x = base(inputs, training=False)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name=f"retrainer_{backbone}")


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone inside `model` (behind augmentation too), or None."""
    for layer in model.layers:
        if layer.name == BACKBONE_LAYER and isinstance(layer, keras.Model):
            return layer
        if isinstance(layer, keras.Model) and (inner := find_backbone(layer)) is not None:
            return inner
    return None


def fetch_backbone_weights(url: str, cache_dir: Path) -> BackboneWeights:
    """The weights file at `url` on this disk, downloaded once per version of it (its ETag)."""
    if url == "imagenet":
        logger.info("Backbone weights: Keras' ImageNet download (needs internet on this worker)")
        return "imagenet"
    parent, _, name = url.rstrip("/").rpartition("/")
    store = open_store(parent or ".")
    info = store.head(name)
    if info is None:
        raise SettingsError(f"RETRAINER_BACKBONE_WEIGHTS: there is no file at {url}")
    if not name.endswith(".weights.h5"):
        raise SettingsError(
            f"RETRAINER_BACKBONE_WEIGHTS: {name} must be a .weights.h5 file "
            "(keras.applications.<Backbone>(include_top=False).save_weights(...))"
        )
    version = hashlib.sha256(f"{url} {info.etag}".encode()).hexdigest()[:16]
    path = cache_dir / version / name
    if path.exists():
        logger.info("Backbone weights: %s (a copy on this disk)", store.describe(name))
    else:
        store.download(name, path)
        logger.info(
            "Backbone weights: downloaded %s (%.1f MB)", store.describe(name), info.size / 1e6
        )
    return path


@dataclass(frozen=True)
class OwnCompile:
    """What a compiled factory's model keeps: its optimizer and its loss. Steps per execution and
    XLA always come from the settings; its metrics are replaced by accuracy, which the gate and
    the report read."""

    optimizer: keras.optimizers.Optimizer
    loss: object

    def describe(self, learning_rate: float | None) -> str:
        rate = (
            f"learning rate {learning_rate:g} from RETRAINER_LEARNING_RATE"
            if learning_rate is not None
            else "its own learning rate (RETRAINER_LEARNING_RATE not set)"
        )
        optimizer = type(self.optimizer).__name__
        return f"its optimizer {optimizer} with {rate}, its loss {loss_name(self.loss)}"


@dataclass(frozen=True)
class FactoryModel:
    """The factory's model as training takes it: probabilities out, and what its compile keeps
    (None when the factory did not compile it)."""

    model: keras.Model
    own_compile: OwnCompile | None
    wrapped_logits: bool


def loss_name(loss: object) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return str(loss.get_config().get("name", type(loss).__name__))
    return getattr(loss, "__name__", type(loss).__name__)


def loss_takes_logits(loss: object) -> bool:
    return isinstance(loss, keras.losses.Loss) and bool(loss.get_config().get("from_logits"))


def loss_wants_one_hot(loss: object) -> bool:
    name = loss_name(loss)
    return name in ("categorical_crossentropy", "categorical_focal_crossentropy")


def output_kind(model: keras.Model, input_shape: tuple[int, int, int]) -> str:
    """ "probabilities", "logits" or "unnormalised" (a sigmoid head): from the last layer's
    activation when it has one Keras names, else from the model's answer to four random images of
    pixels 0-255 (the input training gives it). A freshly initialised logits head may well answer
    inside [0, 1], so the answer decides only what the layer does not say."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return "probabilities"
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    named = {"softmax": "probabilities", "linear": "logits", "sigmoid": "unnormalised"}
    if activation in named:
        return named[activation]
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, *input_shape), dtype=np.uint8)
    outputs = np.asarray(keras.ops.convert_to_numpy(model(pixels, training=False)), np.float64)
    if outputs.min() < -1e-6 or outputs.max() > 1 + 1e-6:
        return "logits"
    if not np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3):
        return "unnormalised"
    return "probabilities"


def with_softmax(model: keras.Model, input_shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    # float32, as the built-in heads: softmax in float16 loses the small probabilities.
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_softmax")


def check_own_compile(spec: str, model: keras.Model, logits: bool, config: TrainingConfig) -> None:
    """Refuse a compile that cannot train on class-index labels and probabilities."""
    setting = "RETRAINER_MODEL_FACTORY"
    if loss_wants_one_hot(model.loss):
        raise SettingsError(
            f"{setting}: {spec} compiles with {loss_name(model.loss)}, which wants one-hot "
            "labels; labels arrive as class indices: use sparse_categorical_crossentropy"
        )
    if loss_takes_logits(model.loss) and not logits:
        raise SettingsError(
            f"{setting}: {spec} ends in probabilities but its loss has from_logits=True: "
            "drop from_logits (or the softmax)"
        )
    rate = getattr(model.optimizer, "_learning_rate", None)
    if config.learning_rate is not None and isinstance(
        rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        raise SettingsError(
            f"RETRAINER_LEARNING_RATE: {spec}'s optimizer follows a learning-rate schedule, "
            "which a fixed rate cannot replace: unset RETRAINER_LEARNING_RATE (and "
            "--learning-rate)"
        )


def build_from_factory(
    spec: str, input_shape: tuple[int, int, int], num_classes: int, config: TrainingConfig
) -> FactoryModel:
    """The factory's model for this input and these classes; SettingsError when it does not fit.

    A model whose last layer has another number of units than there are classes would fail
    later with a graph error, or worse, train and publish outputs that name no class. A logits
    head (the TensorFlow tutorials' `Dense(n)` with `from_logits=True`) gets a softmax on top, so
    the gate scores, and the served model answers, probabilities; its loss then takes them.
    """
    factory = load_function("RETRAINER_MODEL_FACTORY", spec)
    try:
        model = factory(input_shape, num_classes)
    except Exception as error:  # the user's code: whatever it raises, say whose it is
        raise SettingsError(
            f"RETRAINER_MODEL_FACTORY: {spec} failed for input {input_shape} and {num_classes} "
            f"classes: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, keras.Model):
        raise SettingsError(f"RETRAINER_MODEL_FACTORY: {spec} returned no Keras model")
    units = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if units != num_classes:
        raise SettingsError(
            f"RETRAINER_MODEL_FACTORY: {spec} outputs {units} values for {num_classes} classes "
            "(the classes listed): its last layer must have num_classes units"
        )
    kind = output_kind(model, input_shape)
    if kind == "unnormalised":
        raise SettingsError(
            f"RETRAINER_MODEL_FACTORY: {spec} outputs values in [0, 1] that do not sum to 1 "
            "(a sigmoid head?): one class per image needs a softmax (or logits) head"
        )
    logits = kind == "logits"
    own_compile = None
    if getattr(model, "compiled", False):
        check_own_compile(spec, model, logits, config)
        # A logits loss becomes the same loss over the softmax's probabilities.
        loss = "sparse_categorical_crossentropy" if logits else model.loss
        own_compile = OwnCompile(optimizer=model.optimizer, loss=loss)
    if logits:
        model = with_softmax(model, input_shape)
    return FactoryModel(model=model, own_compile=own_compile, wrapped_logits=logits)


def user_callbacks(spec: str | None) -> list[keras.callbacks.Callback]:
    """The callbacks RETRAINER_CALLBACKS' function returns (none when unset); SettingsError when
    it fails or returns anything but a list of Keras callbacks."""
    if spec is None:
        return []
    function = load_function("RETRAINER_CALLBACKS", spec)
    try:
        callbacks = function()
    except Exception as error:  # the user's code: whatever it raises, say whose it is
        raise SettingsError(
            f"RETRAINER_CALLBACKS: {spec} failed: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(callbacks, list | tuple) or not all(
        isinstance(callback, keras.callbacks.Callback) for callback in callbacks
    ):
        raise SettingsError(
            f"RETRAINER_CALLBACKS: {spec} must return a list of keras.callbacks.Callback "
            f"(got {type(callbacks).__name__})"
        )
    return list(callbacks)


def describe_model(config: TrainingConfig) -> str:
    """Which model a run trains, for its report."""
    if config.backbone != "none":
        return (
            f"{config.backbone} backbone (weights {config.backbone_weights}) under a new "
            f"classifier: {config.epochs} epoch(s) frozen, then {config.fine_tune_epochs} "
            "fine-tuning"
        )
    if config.model_factory == DEFAULT_MODEL_FACTORY:
        return "the built-in CNN"
    return f"model factory {config.model_factory}"


def augmentation_layers(config: TrainingConfig) -> list[keras.layers.Layer]:
    """The configured random transformations; Keras applies them in training only."""
    layers: list[keras.layers.Layer] = []
    if config.augment_flip != "none":
        layers.append(keras.layers.RandomFlip(config.augment_flip, seed=config.seed))
    if config.augment_rotation:
        layers.append(keras.layers.RandomRotation(config.augment_rotation, seed=config.seed))
    if config.augment_zoom:
        layers.append(keras.layers.RandomZoom(config.augment_zoom, seed=config.seed))
    if config.augment_contrast:
        layers.append(keras.layers.RandomContrast(config.augment_contrast, seed=config.seed))
    return layers


def with_augmentation(model: keras.Model, config: TrainingConfig) -> keras.Model:
    """`model` behind the configured augmentation layers, so they travel (inert) with it into
    the exported and served model; `model` itself when none is configured."""
    layers = augmentation_layers(config)
    if not layers:
        return model
    inputs = keras.Input(shape=model.input_shape[1:])
    x = keras.layers.Rescaling(1.0)(inputs)  # uint8 to float, which the random layers want
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, model(x), name=f"augmented_{model.name}")


def compile_model(
    model: keras.Model,
    learning_rate: float | None,
    config: TrainingConfig,
    own: OwnCompile | None = None,
) -> None:
    """Compile for training: Adam at `learning_rate` (the default when None), or a compiled
    factory's own optimizer and loss, at `learning_rate` when one is set. Steps per execution
    and XLA are the settings' in both cases."""
    if own is None:
        optimizer = keras.optimizers.Adam(learning_rate or DEFAULT_LEARNING_RATE)
        loss: object = "sparse_categorical_crossentropy"
    else:
        optimizer, loss = own.optimizer, own.loss
        if learning_rate is not None:
            optimizer.learning_rate = learning_rate
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=["accuracy"],
        jit_compile=config.xla,
        steps_per_execution=steps_per_execution(config),
    )


def steps_per_execution(config: TrainingConfig) -> int:
    """The setting, on one device; one step a call on several: Keras 3.15's multi-step loop fails
    under MirroredStrategy ("You must feed a value for placeholder tensor", tested)."""
    import tensorflow as tf

    one_device = tf.distribute.get_strategy().num_replicas_in_sync == 1
    return config.steps_per_execution if one_device else 1


def start_fine_tuning(model: keras.Model, config: TrainingConfig) -> int:
    """Let the backbone train too, at the fine-tuning rate; the number of weights that now train.

    Compiling again is what makes Keras train the newly trainable weights, with a new optimizer.
    """
    backbone = find_backbone(model)
    if backbone is None:
        raise SettingsError("fine-tuning needs a model built on RETRAINER_BACKBONE")
    backbone.trainable = True
    compile_model(model, config.fine_tune_learning_rate, config)
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def build_model(
    config: TrainingConfig,
    split: DataSplit,
    warm_start: WarmStart,
    backbone_weights: BackboneWeights | None = None,
) -> tuple[keras.Model, str]:
    """The model to fit, compiled, and what it starts from (the champion may not fit after all).

    The model is always built (factory or backbone) under the current precision policy, and a warm
    start loads the champion's weights into it: a champion saved in float32 trains in mixed
    precision when this run asks for it (variables stay float32 under mixed_float16, so the
    weights fit). A backbone starts frozen: its first phase trains the classifier alone.
    """
    shape = input_shape(split.preprocessing)
    classes = len(split.class_names)
    own_compile = None
    if config.backbone == "none":
        built = build_from_factory(config.model_factory, shape, classes, config)
        base, own_compile = built.model, built.own_compile
        say_what_the_factory_gave(config, built)
    elif backbone_weights is None:
        raise SettingsError(f"RETRAINER_BACKBONE={config.backbone}: its weights were not fetched")
    else:
        base = build_transfer_model(config.backbone, backbone_weights, shape, classes)
    model = with_augmentation(base, config)
    started_from = warm_start.description
    if warm_start.champion is not None and warm_start.model is not None:
        champion = warm_start.model
        if mismatch := champion_mismatch(warm_start.champion, split, champion, model):
            started_from = fresh_model_because(mismatch, config.warm_start).description
        else:
            model.set_weights(champion.get_weights())
    compile_model(model, config.learning_rate, config, own_compile)
    return model, started_from


def say_what_the_factory_gave(config: TrainingConfig, built: FactoryModel) -> None:
    if config.model_factory == DEFAULT_MODEL_FACTORY:
        return
    if built.wrapped_logits:
        logger.info(
            "Model factory %s ends in logits: a softmax is added on top, so the gate scores and "
            "the served model answers probabilities",
            config.model_factory,
        )
    if built.own_compile is not None:
        logger.info(
            "Model factory %s compiled its model: training keeps %s; steps per execution %d and "
            "XLA %s come from the settings",
            config.model_factory,
            built.own_compile.describe(config.learning_rate),
            config.steps_per_execution,
            "on" if config.xla else "off",
        )
