"""Model factories that live outside the retrainer package, as a user's would."""

from __future__ import annotations

import os

import keras
import tensorflow as tf


def tiny_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A user's own compiled model: the flow must use it as it is."""
    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(16, 3, activation="relu", name="user_conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes, activation="softmax", name="user_head"),
        ],
        name="user_tiny_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def uncompiled_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A user's model left to the product to compile."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def exploding_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Weights so large the logits overflow: the loss is NaN from the first batch."""
    huge = keras.initializers.Constant(1e30)
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(8, kernel_initializer=huge)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=huge)(x)
    return keras.Model(inputs, outputs, name="exploding")


def five_outputs(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A factory that ignores `num_classes`: five outputs whatever the data."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x), name="five")


class AllocatesTooMuch(keras.layers.Layer):
    """Fails in training as a card without enough memory does."""

    def call(self, inputs: object, training: bool | None = None) -> object:
        if training:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return inputs


def out_of_memory(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = AllocatesTooMuch()(keras.layers.GlobalAveragePooling2D()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def logits_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The TensorFlow tutorials' style: `Dense(n)` without softmax, a loss `from_logits=True`."""
    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),
        ],
        name="user_logits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def small_logits(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A logits head whose first answers all lie in [0, 1] (0.2 each), as a fresh one may."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255)(inputs))
    head = keras.layers.Dense(
        num_classes, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(0.2)
    )
    return keras.Model(inputs, head(x))


def sigmoid_head(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A multi-label head: each output in [0, 1] on its own."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="sigmoid")(x))


def one_hot_loss(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    model = tiny_cnn(input_shape, num_classes)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


class EpochFile(keras.callbacks.Callback):
    """Writes one line per finished epoch to the file in $USER_CALLBACK_FILE, as a logger would."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        with open(os.environ["USER_CALLBACK_FILE"], "a") as file:
            file.write(f"{epoch + 1} {(logs or {}).get('loss', float('nan')):.6f}\n")


def epoch_file_writer() -> list[keras.callbacks.Callback]:
    return [EpochFile()]


def not_callbacks() -> object:
    return "a string"
