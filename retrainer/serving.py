"""Serving: every version leaves with a SavedModel that takes encoded image bytes.

The decode and resize training applied (`retrainer.data.image.model_input`, the function that
prepared every training image) are inside its serving signature, so whoever serves
the model sends a file's bytes and gets class probabilities and the class names: nothing to
re-write, nothing to get subtly wrong. The champion is also copied where TensorFlow Serving looks:
`serving/<model>/<integer version>/`, the integer growing with every promotion and rollback, so
TF Serving always serves the champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrainer.errors import BadInput
from retrainer.records import PreparationSpec, ServingSignature
from retrainer.registry import ModelRegistry

if TYPE_CHECKING:
    import keras

SERVING_SIGNATURE = ServingSignature(
    name="serving_default",
    inputs={"image_bytes": "string [batch]: encoded JPEG, PNG, GIF or BMP files"},
    outputs={
        "probabilities": "float32 [batch, classes]",
        "class_names": "string [batch, classes]: the class of each probability",
    },
)


def export_serving_model(
    model_path: Path, class_names: list[str], spec: PreparationSpec, destination: Path
) -> Path:
    """Write the SavedModel of the Keras model at `model_path` to `destination`."""
    import keras
    import tensorflow as tf

    from retrainer.data.image import model_input, within_limits

    model = in_float32(keras.models.load_model(model_path, compile=False))
    names = tf.constant(class_names)
    size = spec.image_size

    def prepare(contents: tf.Tensor) -> tf.Tensor:
        return model_input(within_limits(contents, spec), spec)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            prepare,
            image_bytes,
            fn_output_signature=tf.TensorSpec((size, size, spec.channels), tf.uint8),
            # One image decoded at a time: a request of many files within the limits holds one
            # decoded file at once, not ten.
            parallel_iterations=1,
        )
        probabilities = tf.cast(model(images, training=False), tf.float32)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "class_names": tf.tile(names[tf.newaxis], [batch, 1]),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SERVING_SIGNATURE.name, fn=serve)
    archive.write_out(str(destination), verbose=False)
    return destination


def in_float32(model: keras.Model) -> keras.Model:
    """The model computing in float32, with its weights: a model trained in mixed precision
    would otherwise serve in float16 or bfloat16, slow on most CPU servers. Its variables are
    float32 under any mixed policy, so the weights carry over as they are."""
    import keras

    def float32_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if "dtype" in config:  # operations such as Add have none: they follow their inputs
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def download_serving_model(registry: ModelRegistry, version: str, models_dir: Path) -> Path:
    """The version's SavedModel on this disk, every file checked against its manifest."""
    manifest = registry.manifest(version)
    if manifest.serving is None:
        raise BadInput(
            f"version {version} of '{registry.model_name}' was published before versions carried "
            "a SavedModel: pick a newer version with --version, or retrain"
        )
    source = f"{manifest.serving.directory}/"
    folder = models_dir / version / manifest.serving.directory
    for name, entry in manifest.files.items():
        if name.startswith(source):
            destination = folder / name[len(source) :]
            registry.download_checked(
                registry.keys.version_file(version, name), entry.sha256, destination
            )
    return folder


@dataclass(frozen=True)
class Prediction:
    image: Path
    class_name: str | None
    probability: float
    problem: str | None = None  # why the file could not be classified


def predict_files(saved_model: Path, images: list[Path]) -> list[Prediction]:
    """Each image through the SavedModel's serving signature, as a server would send it."""
    import tensorflow as tf

    from retrainer.data.image import decode_failure

    serve = tf.saved_model.load(str(saved_model)).signatures[SERVING_SIGNATURE.name]
    predictions = []
    for image in images:
        try:
            outputs = serve(image_bytes=tf.constant([image.read_bytes()]))
        except OSError as error:
            predictions.append(Prediction(image, None, 0.0, f"cannot be read: {error}"))
            continue
        except tf.errors.InvalidArgumentError as error:
            predictions.append(Prediction(image, None, 0.0, decode_failure(error)))
            continue
        probabilities = outputs["probabilities"].numpy()[0]
        best = int(probabilities.argmax())
        name = outputs["class_names"].numpy()[0][best].decode()
        predictions.append(Prediction(image, name, float(probabilities[best])))
    return predictions
