"""The image contract: what a model input is, and which files can become one.

Every image, for training, evaluation and serving alike, goes through the functions here, driven
by the `PreparationSpec` (size, channels, resize method, limits): decoded by TensorFlow's own
decoder, resized to `image_size` squared, rounded and kept as uint8. The serving signature runs
the same functions inside the SavedModel, so a served file is read exactly as a training one was.

A file is refused before any pixel is decoded when its size or its header says it cannot be an
image within the limits; the decode itself is the last check: Pillow, which reads the header,
accepts more than TensorFlow decodes (1-bit and run-length-encoded BMPs, PNGs with bad checksums).
"""

from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from retrainer.records import PreparationSpec

if TYPE_CHECKING:
    import tensorflow as tf

# The formats tf.io.decode_image reads.
ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}


def input_shape(spec: PreparationSpec) -> tuple[int, int, int]:
    """The shape of one model input: height, width, channels."""
    return (spec.image_size, spec.image_size, spec.channels)


def size_problem(size: int, spec: PreparationSpec) -> str | None:
    """Why a file of `size` bytes cannot be a training image, or None."""
    if size == 0:
        return "empty file"
    if size > spec.max_image_bytes:
        return f"{size:,} bytes, more than RETRAINER_MAX_IMAGE_BYTES ({spec.max_image_bytes:,})"
    return None


def header_problem(contents: bytes, spec: PreparationSpec) -> str | None:
    """Why these bytes cannot be a training image, judged from their size and header alone."""
    if problem := size_problem(len(contents), spec):
        return problem
    try:
        # Opening reads the header only: format and declared size, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(contents)) as image:
                image_format, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:
        return f"declares too many pixels to decode safely ({error})"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"does not decode: {error}"
    if image_format not in ACCEPTED_FORMATS:
        return f"format {image_format} is not one of JPEG, PNG, GIF, BMP"
    if width * height > spec.max_image_pixels:
        return (
            f"declares {width}x{height} pixels, more than RETRAINER_MAX_IMAGE_PIXELS "
            f"({spec.max_image_pixels:,})"
        )
    return None


def model_input(contents: tf.Tensor, spec: PreparationSpec) -> tf.Tensor:
    """Encoded image bytes to the model's input: decoded, resized, rounded to uint8."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=spec.channels, expand_animations=False)
    resized = tf.image.resize(image, (spec.image_size, spec.image_size), method=spec.resize_method)
    return tf.cast(tf.round(resized), tf.uint8)


def within_limits(contents: tf.Tensor, spec: PreparationSpec) -> tf.Tensor:
    """The encoded bytes, once their length and the pixels their header declares are within the
    limits every training image passed; InvalidArgumentError ("refused: ...") otherwise.

    The serving signature's guard: a few hundred bytes can declare 20000x20000 pixels, which
    the decoder would allocate (1.2 GB) before finding out the rest is missing.
    """
    import tensorflow as tf

    length = tf.cast(tf.strings.length(contents), tf.int64)
    too_long = tf.debugging.assert_less_equal(
        length,
        tf.constant(spec.max_image_bytes, tf.int64),
        message=f"refused: more than {spec.max_image_bytes:,} bytes (RETRAINER_MAX_IMAGE_BYTES)",
    )
    accepted = tf.debugging.assert_equal(
        accepted_format(contents),
        True,
        message="refused: not a JPEG, PNG, GIF or BMP file (the formats training accepts)",
    )
    with tf.control_dependencies([accepted]):
        width, height = declared_size(contents)
    too_large = tf.debugging.assert_less_equal(
        width * height,
        tf.constant(spec.max_image_pixels, tf.int64),
        message=f"refused: declares more than {spec.max_image_pixels:,} pixels "
        "(RETRAINER_MAX_IMAGE_PIXELS)",
    )
    with tf.control_dependencies([too_long, too_large]):
        return tf.identity(contents)


# How each accepted format's files begin.
SIGNATURES = {
    "PNG": b"\x89PNG\r\n\x1a\n",
    "GIF": b"GIF8",
    "BMP": b"BM",
    "JPEG": b"\xff\xd8\xff",
}


def accepted_format(contents: tf.Tensor) -> tf.Tensor:
    """Whether the bytes begin as a file of ACCEPTED_FORMATS does (the decoder would also read
    WebP, whose header is not checked: refused instead, as training refuses it)."""
    import tensorflow as tf

    return tf.reduce_any(
        [
            tf.equal(tf.strings.substr(contents, 0, len(signature)), signature)
            for signature in SIGNATURES.values()
        ]
    )


def declared_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Width and height (int64) as the header of a PNG, GIF, BMP or JPEG file declares them,
    read without decoding a pixel; (0, 0) for anything else (the decoder refuses it). For a
    GIF, the largest of its screen and of every frame: the decoder allocates each frame."""
    import tensorflow as tf

    header = tf.strings.join([tf.strings.substr(contents, 0, 32), tf.constant(b"\0" * 32)])

    def number(offset: int, width: int, big_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(header, offset, width), tf.uint8)
        digits = tf.cast(raw if big_endian else tf.reverse(raw, [0]), tf.int64)
        return tf.reduce_sum(digits * (256 ** tf.range(width - 1, -1, -1, dtype=tf.int64)))

    def signed32(value: tf.Tensor) -> tf.Tensor:  # BMP heights are negative for top-down rows
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0]

    return tf.case(
        [
            (
                tf.equal(tf.strings.substr(header, 0, 8), SIGNATURES["PNG"]),
                lambda: (number(16, 4, True), number(20, 4, True)),
            ),
            (
                tf.equal(tf.strings.substr(header, 0, 4), SIGNATURES["GIF"]),
                lambda: largest_gif_frame(contents),
            ),
            (
                tf.equal(tf.strings.substr(header, 0, 2), SIGNATURES["BMP"]),
                lambda: (signed32(number(18, 4, False)), signed32(number(22, 4, False))),
            ),
            (tf.equal(tf.strings.substr(header, 0, 3), SIGNATURES["JPEG"]), jpeg),
        ],
        default=lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
    )


def largest_gif_frame(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Width and height (int64) of the largest of a GIF's logical screen and its frames, walking
    its blocks without decoding: a 1x1 screen may hold a 12000x12000 frame."""
    import tensorflow as tf

    length = tf.cast(tf.strings.length(contents), tf.int64)

    def byte(position: tf.Tensor) -> tf.Tensor:
        return tf.cond(
            position < length,
            lambda: tf.cast(
                tf.io.decode_raw(tf.strings.substr(contents, position, 1), tf.uint8)[0], tf.int64
            ),
            lambda: tf.constant(0, tf.int64),
        )

    def little_endian16(position: tf.Tensor) -> tf.Tensor:
        return byte(position) + 256 * byte(position + 1)

    def color_table(flags: tf.Tensor) -> tf.Tensor:  # present when bit 7 is set
        return tf.where(flags >= 128, 3 * 2 ** (flags % 8 + 1), tf.constant(0, tf.int64))

    def after_sub_blocks(position: tf.Tensor) -> tf.Tensor:
        """Past a chain of sub-blocks (a size byte, that many bytes; a zero size ends it)."""
        return (
            tf.while_loop(
                lambda at: tf.logical_and(at < length, byte(at) > 0),
                lambda at: [at + byte(at) + 1],
                [position],
            )[0]
            + 1
        )

    def step(
        position: tf.Tensor, width: tf.Tensor, height: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        def frame() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            frame_width, frame_height = little_endian16(position + 5), little_endian16(position + 7)
            larger = frame_width * frame_height > width * height
            data = position + 10 + color_table(byte(position + 9)) + 1  # + the LZW code size
            return (
                after_sub_blocks(data),
                tf.where(larger, frame_width, width),
                tf.where(larger, frame_height, height),
            )

        def extension() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            return after_sub_blocks(position + 2), width, height

        return tf.cond(tf.equal(byte(position), 0x2C), frame, extension)

    def more_blocks(position: tf.Tensor, width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
        block = byte(position)
        return tf.logical_and(
            position < length, tf.logical_or(tf.equal(block, 0x2C), tf.equal(block, 0x21))
        )

    screen_width, screen_height = (
        little_endian16(tf.constant(6, tf.int64)),
        little_endian16(tf.constant(8, tf.int64)),
    )
    first_block = 13 + color_table(byte(tf.constant(10, tf.int64)))
    _, width, height = tf.while_loop(more_blocks, step, [first_block, screen_width, screen_height])
    return width, height


def decode_failure(error: tf.errors.OpError) -> str:
    """TensorFlow's decode error in one line: why a file cannot train (or be served)."""
    # Eager: "{{function_node ...}} Invalid PNG data, size 852 [Op:DecodeImage] name: ".
    # In a graph (the SavedModel) the reason follows "Graph execution error:" and the node.
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines()]
    reason = next((line for line in lines if line and not line.startswith(noise)), lines[0])
    message = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", reason)
    # A limit of `within_limits`: "assertion failed: [refused: ...] [Condition x <= y ...".
    if refused := re.search(r"\[(refused: [^\]]*)\]", message):
        return refused.group(1)
    return f"does not decode: {message}"
