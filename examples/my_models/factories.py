"""Three model factories, each as a notebook has it; retrainer calls one as
`factory(input_shape, num_classes)` with `input_shape` = (RETRAINER_IMAGE_SIZE,
RETRAINER_IMAGE_SIZE, 3) and `num_classes` = the number of class folders in the data."""

from __future__ import annotations

import keras


def feature_layers(inputs: keras.KerasTensor) -> keras.KerasTensor:
    # Pixels arrive as uint8 values 0-255, unscaled: the model scales them itself, so the served
    # model takes the same pixels (or JPEG bytes, through the serving signature).
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x)


def uncompiled_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Not compiled: retrainer compiles it with Adam at RETRAINER_LEARNING_RATE (0.003 unset)."""
    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(feature_layers(inputs))
    return keras.Model(inputs, outputs, name="my_uncompiled_cnn")


def compiled_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Compiled: training keeps this optimizer (and its rate, unless RETRAINER_LEARNING_RATE is
    set) and this loss; labels arrive as class indices, so the loss is the sparse one."""
    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(feature_layers(inputs))
    model = keras.Model(inputs, outputs, name="my_compiled_cnn")
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def logits_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The TensorFlow tutorials' head: `Dense(num_classes)` without softmax, a `from_logits`
    loss. retrainer adds a softmax on top (and says so in the log), so the gate scores and the
    served model answers probabilities; the loss becomes the same one over them."""
    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.Dense(num_classes)(feature_layers(inputs))
    model = keras.Model(inputs, outputs, name="my_logits_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
