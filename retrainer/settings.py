"""Every setting of retrainer, in one pydantic-settings model.

Settings come from `RETRAINER_*` environment variables or a `.env` file; nested values use `__`
(`RETRAINER_GATE__ACCURACY__THRESHOLD=0.9`). Credentials are deliberately not settings: boto3
finds them through its own chain (environment, profile, instance role), and `AWS_ENDPOINT_URL`
points it at MinIO, R2 or any other S3-compatible store.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrainer.errors import SettingsError, redact
from retrainer.layout import DEMO_DATA, LocalCache

logger = logging.getLogger(__name__)

ENV_PREFIX = "RETRAINER_"
DEFAULT_MODEL_FACTORY = "retrainer.models:build_default_model"
# Keras' MobileNetV3 refuses smaller inputs; EfficientNetV2's blocks shrink them to nothing.
MIN_BACKBONE_IMAGE_SIZE = 32
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_FUNCTION_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
# Where boto3 finds an S3-compatible store's endpoint, the first one set winning.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# The built-in models' and the backbone classifier's Adam learning rate, when none is set.
DEFAULT_LEARNING_RATE = 3e-3


def check_location_url(url: str) -> str:
    """Accept `s3://bucket/prefix`, `file:///path` or a plain local path; refuse anything else."""
    parsed = urlparse(url)
    if "@" in parsed.netloc:
        raise ValueError(
            f"'{redact(url)}' holds credentials: they do not belong in a URL (they would show in "
            "logs); use AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role"
        )
    if parsed.scheme == "s3":
        if not _BUCKET_NAME.match(parsed.netloc) or ".." in parsed.netloc:
            raise ValueError(
                f"'{parsed.netloc}' in '{url}' is not a bucket name: 3 to 63 lower-case "
                "letters, digits, '.' or '-', starting and ending with a letter or digit "
                "(s3://bucket/prefix)"
            )
        return url
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise ValueError(
            f"'{url}' names a folder on '{parsed.netloc}': a file:// URL is a folder on this "
            "machine (file:///path); mount the share and give its local path"
        )
    if parsed.scheme in ("", "file"):
        if not (parsed.path or parsed.netloc):
            raise ValueError("is empty: give s3://bucket/prefix or a local folder")
        return url
    raise ValueError(
        f"unknown URL scheme '{parsed.scheme}://' in '{url}': use s3://bucket/prefix, "
        "file:///path or a local folder"
    )


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ValueError(
            f"'{name}' is not a model name: use lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def check_function_spec(spec: str) -> str:
    if not _FUNCTION_SPEC.match(spec):
        raise ValueError(f"'{spec}' must look like package.module:function")
    return spec


def join_url(base: str, key: str) -> str:
    return base.rstrip("/") + "/" + key.strip("/")


class MetricRule(BaseModel):
    """How one validation metric is judged; every part is optional.

    Regression and improvement follow the metric's direction: for accuracy a regression is a drop,
    for loss a rise.
    """

    threshold: float | None = Field(
        None, ge=0.0, description="absolute bound (min, or max for loss)"
    )
    max_regression: float | None = Field(
        None, ge=0.0, description="largest allowed step back from the champion"
    )
    min_improvement: float | None = Field(
        None, ge=0.0, description="smallest required step forward from the champion"
    )


# One class per metric, so that setting one part (RETRAINER_GATE__ACCURACY__THRESHOLD) keeps the
# defaults of the others.
class AccuracyRule(MetricRule):
    threshold: float | None = Field(
        0.8, ge=0.0, le=1.0, description="Gate: lowest test accuracy accepted."
    )
    max_regression: float | None = Field(0.01, ge=0.0)


class MacroF1Rule(MetricRule):
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_regression: float | None = Field(0.02, ge=0.0)


class GateSettings(BaseModel):
    """What a candidate must show to replace the champion."""

    accuracy: AccuracyRule = Field(default_factory=AccuracyRule)
    macro_f1: MacroF1Rule = Field(default_factory=MacroF1Rule)
    loss: MetricRule = Field(default_factory=MetricRule)
    max_class_recall_drop: float | None = Field(
        0.1, ge=0.0, le=1.0, description="largest drop in any one class's recall"
    )
    significance_level: float = Field(
        0.05, gt=0.0, lt=0.5, description="p-value below which a difference counts as real"
    )
    reject_only_if_significantly_worse: bool = Field(
        True,
        description="a drop beyond max_regression rejects only if it is also significant",
    )
    promote_only_if_significantly_better: bool = Field(
        False,
        description="an improvement must also be significant (with min_improvement, or alone)",
    )
    when_too_small: Literal["keep_champion", "plain"] = Field(
        "keep_champion",
        description="test split too small for any difference to be significant: keep the "
        "champion, or judge by the plain thresholds",
    )
    bootstrap_samples: int = Field(
        2000, ge=100, le=100_000, description="resamples for macro F1 and loss intervals"
    )

    def rules(self) -> dict[str, MetricRule]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss}


class TrainingConfig(BaseModel):
    """Everything that shapes a trained model, and nothing else.

    These are settings (Settings inherits every field) and, all of them, part of the work key: a
    field added here changes the key with no list to keep, so a changed setting is never taken
    for "nothing changed".
    """

    # 30 epochs with a patience of 10: the first defaults above 0.9 on every seed in
    # bench.photos (real photographs); 10 and 5 gave 0.87 on average, 0.80 at worst.
    epochs: int = Field(30, ge=1, le=1000, description="Training epochs.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per training batch.")
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to this square.")
    learning_rate: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=f"Adam learning rate ({DEFAULT_LEARNING_RATE} when not set); a compiled "
        "model factory keeps its own optimizer and its rate unless this is set.",
    )
    validation_fraction: float = Field(
        0.15,
        gt=0.0,
        lt=1.0,
        description="Share of images for validation: early stopping and checkpoint choice.",
    )
    test_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of images for the test split, seen by the gate only.",
    )
    seed: int = Field(42, ge=0, description="Random seed, for repeatable runs.")
    model_factory: str = Field(
        DEFAULT_MODEL_FACTORY,
        description="`module:function` returning a Keras model for (input shape, classes): "
        "see 'Your own model' in the README.",
    )
    callbacks: str | None = Field(
        None,
        description="`module:function` returning a list of Keras callbacks that `fit` calls "
        "too (a metrics logger, a learning-rate schedule).",
    )
    backbone: Literal["none", "mobilenet_v3_small", "efficientnet_v2_b0"] = Field(
        "none",
        description="Transfer learning: this Keras Applications backbone, pretrained, under a new "
        "classifier (instead of RETRAINER_MODEL_FACTORY); its weights come from "
        "RETRAINER_BACKBONE_WEIGHTS. Trained `epochs` with the backbone frozen, then "
        "`fine_tune_epochs` with it training too.",
    )
    backbone_weights: str | None = Field(
        None,
        description="The backbone's pretrained weights: a `.weights.h5` file of the backbone "
        "without its top (s3://bucket/key, file:///path or a path), or 'imagenet' for Keras' "
        "download (the worker needs internet).",
    )
    fine_tune_epochs: int = Field(
        5,
        ge=0,
        le=1000,
        description="With a backbone: epochs after the frozen ones, backbone training too.",
    )
    fine_tune_learning_rate: float = Field(
        1e-5, gt=0.0, le=1.0, description="With a backbone: Adam learning rate while fine-tuning."
    )
    warm_start: Literal["auto", "never", "always"] = Field(
        "auto",
        description="Start from the champion's weights: auto (when its classes and input shape "
        "match), never, or always (fail when impossible).",
    )
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Mixed precision: auto: bfloat16 on GPUs of compute capability 8.0+, float16 "
        "on 7.x, float32 otherwise and when fine-tuning a backbone; on: always (bfloat16 on 8.0+, "
        "else float16); off: float32.",
    )
    xla: bool = Field(False, description="Compile the training step with XLA.")
    steps_per_execution: int = Field(
        32,
        ge=1,
        le=1024,
        description="Training steps Keras runs per call into the compiled step: small models are "
        "bound by Keras' per-step overhead, not the device (bench.feed).",
    )
    early_stopping_patience: int = Field(
        10, ge=0, description="Stop after this many epochs without a better val_loss (0: never)."
    )
    class_weights: Literal["balanced", "none"] = Field(
        "balanced",
        description="balanced: each class weighs in the loss as if the classes were equally "
        "frequent in the training split (weights from its counts); none: every image weighs 1.",
    )
    augment_flip: Literal["none", "horizontal", "horizontal_and_vertical"] = Field(
        "none", description="Random flips in training (inside the model, off when serving)."
    )
    augment_rotation: float = Field(
        0.0, ge=0.0, le=0.5, description="Random rotation in training, as a fraction of a turn."
    )
    augment_zoom: float = Field(
        0.0, ge=0.0, lt=1.0, description="Random zoom in training, as a fraction of the size."
    )
    augment_contrast: float = Field(
        0.0, ge=0.0, lt=1.0, description="Random contrast change in training, as a factor."
    )
    on_label_conflict: Literal["quarantine", "train"] = Field(
        "quarantine",
        description="Copies of one photograph under different classes: quarantine every one of "
        "them (listed in the report), or train each as it is labelled.",
    )
    max_image_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Larger files are quarantined, never read whole."
    )
    max_image_pixels: int = Field(
        64_000_000,
        ge=64,
        description="Images declaring more pixels are quarantined (decompression bombs).",
    )

    @model_validator(mode="after")
    def _some_images_train(self) -> TrainingConfig:
        if self.validation_fraction + self.test_fraction > 0.9:
            raise ValueError(
                "RETRAINER_VALIDATION_FRACTION + RETRAINER_TEST_FRACTION must leave at least 10% "
                f"of the images for training (got {self.validation_fraction} + "
                f"{self.test_fraction})"
            )
        return self

    @field_validator("model_factory", "callbacks")
    @classmethod
    def _function_spec(cls, value: str | None) -> str | None:
        return None if value is None else check_function_spec(value)

    @field_validator("backbone_weights")
    @classmethod
    def _weights_location(cls, value: str | None) -> str | None:
        return value if value in (None, "imagenet") else check_location_url(value)

    @model_validator(mode="after")
    def _backbone_has_weights(self) -> TrainingConfig:
        if self.backbone == "none":
            return self
        if self.backbone_weights is None:
            raise ValueError(
                f"RETRAINER_BACKBONE={self.backbone} needs RETRAINER_BACKBONE_WEIGHTS: the URL of "
                "its pretrained .weights.h5 file, or 'imagenet' on a worker with internet"
            )
        if self.model_factory != DEFAULT_MODEL_FACTORY:
            raise ValueError(
                "RETRAINER_BACKBONE and RETRAINER_MODEL_FACTORY both choose the model: set one"
            )
        if self.image_size < MIN_BACKBONE_IMAGE_SIZE:
            raise ValueError(
                f"RETRAINER_BACKBONE={self.backbone} takes images of at least "
                f"{MIN_BACKBONE_IMAGE_SIZE} px: raise RETRAINER_IMAGE_SIZE "
                f"(now {self.image_size})"
            )
        return self

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole training: with a backbone, the frozen ones and the fine-tuning."""
        return self.epochs + (self.fine_tune_epochs if self.backbone != "none" else 0)


class Settings(TrainingConfig, BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    store_url: str = Field(
        "./.retrainer/store",
        description="Where models are published: s3://bucket/prefix, file:///path or a folder.",
    )
    data_url: str | None = Field(
        None,
        description="Where the images are, one sub-folder per class; default: the demo "
        f"dataset in the store ({DEMO_DATA}).",
    )
    cache_dir: Path = Field(
        Path("./.retrainer/cache"),
        description="Local folder for shards, checkpoints and run files: a cache only.",
    )
    model_name: str = Field("demo", description="Name the model is published under.")
    min_images_per_class: int = Field(5, ge=1, description="Fewer images in a class stop the run.")
    max_quarantined_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of unusable files above which the run stops."
    )
    on_class_change: Literal["fail", "retrain"] = Field(
        "fail",
        description="When the classes differ from the champion's: stop, or train a new head.",
    )
    prepare_workers: int = Field(
        4, ge=1, le=64, description="Chunks of new images prepared at once on this worker."
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler address (tcp://host:8786) of a Dask cluster that prepares the "
        "new images instead of this worker; needs the `dask` extra on both sides.",
    )
    device: Literal["auto", "gpu", "cpu"] = Field(
        "auto",
        description="auto: the GPUs TensorFlow finds, else the CPU; gpu: stop at once, before "
        "any download, when there is none; cpu: never a GPU.",
    )
    flow_timeout_hours: float = Field(
        12.0,
        gt=0,
        description="A run still going after this long is stopped (a hung run would hold the "
        "queue); read when the flow is loaded.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING"] = Field(
        "INFO",
        description="How much a run says: INFO a line per step and epoch; DEBUG also every "
        "checkpoint saved and more.",
    )
    tensorflow_logs: bool = Field(
        False,
        description="Show TensorFlow's own start-up lines (CUDA probing, oneDNN notices); read "
        "when the process starts.",
    )
    lease_seconds: int = Field(
        300,
        ge=10,
        le=86400,
        description="A run holds its model's lease this long, renewed every third of it; a "
        "killed run's lease expires after it (at once on the same machine).",
    )
    gate: GateSettings = Field(default_factory=GateSettings)

    @field_validator("store_url", "data_url")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        return None if value is None else check_location_url(value)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_model_name(value)

    @model_validator(mode="after")
    def _default_data_url(self) -> Settings:
        if self.data_url is None:
            self.data_url = join_url(self.store_url, DEMO_DATA)
        return self

    @property
    def cache(self) -> LocalCache:
        return LocalCache(self.cache_dir)

    @property
    def resolved_data_url(self) -> str:
        assert self.data_url is not None  # filled in by _default_data_url
        return self.data_url

    def training_config(self) -> TrainingConfig:
        """Everything that shapes the trained model; part of the work key and the manifest."""
        return TrainingConfig.model_validate(
            self.model_dump(include=set(TrainingConfig.model_fields))
        )

    def with_parameters(self, parameters: RetrainParameters) -> Settings:
        """These settings, with every parameter a run was given in their place. A model chosen
        for one run (a factory or a backbone) replaces the settings' choice of either, so an
        experiment needs no edit of the worker's settings."""
        given = parameters.model_dump(exclude_none=True, exclude={"min_accuracy", "force"})
        if given.get("backbone", "none") != "none":
            given.setdefault("model_factory", DEFAULT_MODEL_FACTORY)
        if "model_factory" in given:
            given.setdefault("backbone", "none")
        gate = self.gate
        if parameters.min_accuracy is not None:
            accuracy = gate.accuracy.model_copy(update={"threshold": parameters.min_accuracy})
            gate = gate.model_copy(update={"accuracy": accuracy})
        chosen = self.model_copy(update={**given, "gate": gate})
        try:  # the rules across settings (a backbone needs its weights) hold for the mix too
            chosen.training_config()
        except ValidationError as error:
            raise SettingsError(describe_validation_error(error)) from None
        return chosen

    @property
    def model_choice(self) -> str:
        """`backbone mobilenet_v3_small` or `model factory my_models.factories:cnn`."""
        if self.backbone != "none":
            return f"backbone {self.backbone}"
        return f"model factory {self.model_factory}"


BOUND_WORDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def shown_as_setting(kind: type, setting: FieldInfo, variable: str) -> WithJsonSchema:
    """How a run parameter that overrides a setting shows in the Prefect run form and in `--help`:
    one plain field of the setting's type, bounds and description (no None-or-value switch), which
    left empty keeps what the worker's settings say. The form does not show bounds by itself, so
    the description says them."""
    bounded = Annotated[kind, Field(), *setting.metadata]  # type: ignore[valid-type]  # built here
    shown = TypeAdapter[object](bounded).json_schema()
    bounds = ", ".join(f"{word} {shown[key]}" for key, word in BOUND_WORDS.items() if key in shown)
    description = (setting.description or "").rstrip(".") + (f" ({bounds})" if bounds else "")
    default = "" if setting.default is None else f", {setting.default} unless set"
    description += f". Empty: the worker's {variable}{default}."
    return WithJsonSchema({**shown, "description": description})


def unless_none(check: Callable[[str], str]) -> AfterValidator:
    return AfterValidator(lambda value: None if value is None else check(value))


MODEL_NAME = Settings.model_fields["model_name"]
DATA_URL = Settings.model_fields["data_url"]
EPOCHS = TrainingConfig.model_fields["epochs"]
BATCH_SIZE = TrainingConfig.model_fields["batch_size"]
LEARNING_RATE = TrainingConfig.model_fields["learning_rate"]
MIN_ACCURACY = AccuracyRule.model_fields["threshold"]
MODEL_FACTORY = TrainingConfig.model_fields["model_factory"]
BACKBONE = TrainingConfig.model_fields["backbone"]

# The run parameters' types: the flow's signature and RetrainParameters share them, so the form,
# the server's check of a deployment run, the flow's own check and the CLI agree.
ModelNameParameter = Annotated[
    str | None,
    unless_none(check_model_name),
    # The server refuses a bad name before the run starts.
    shown_as_setting(
        str,
        Field(MODEL_NAME.default, pattern=_MODEL_NAME.pattern, description=MODEL_NAME.description),
        "RETRAINER_MODEL_NAME",
    ),
]
DataUrlParameter = Annotated[
    str | None,
    unless_none(check_location_url),
    shown_as_setting(str, DATA_URL, "RETRAINER_DATA_URL"),
]
EpochsParameter = Annotated[
    int | None, *EPOCHS.metadata, shown_as_setting(int, EPOCHS, "RETRAINER_EPOCHS")
]
BatchSizeParameter = Annotated[
    int | None, *BATCH_SIZE.metadata, shown_as_setting(int, BATCH_SIZE, "RETRAINER_BATCH_SIZE")
]
LearningRateParameter = Annotated[
    float | None,
    *LEARNING_RATE.metadata,
    shown_as_setting(float, LEARNING_RATE, "RETRAINER_LEARNING_RATE"),
]
MinAccuracyParameter = Annotated[
    float | None,
    *MIN_ACCURACY.metadata,
    shown_as_setting(float, MIN_ACCURACY, "RETRAINER_GATE__ACCURACY__THRESHOLD"),
]
ModelFactoryParameter = Annotated[
    str | None,
    unless_none(check_function_spec),
    shown_as_setting(str, MODEL_FACTORY, "RETRAINER_MODEL_FACTORY"),
]
BackboneParameter = Annotated[
    Literal["none", "mobilenet_v3_small", "efficientnet_v2_b0"] | None,
    shown_as_setting(
        Literal["none", "mobilenet_v3_small", "efficientnet_v2_b0"], BACKBONE, "RETRAINER_BACKBONE"
    ),
]
ForceParameter = Annotated[
    bool,
    WithJsonSchema(
        {"type": "boolean", "description": "Train even if nothing changed since the champion."}
    ),
]


class RetrainParameters(BaseModel):
    """What a person may change for one run: the flow's parameters, the CLI's `run` options.

    Every field left empty takes its value from the settings.
    """

    model_name: ModelNameParameter = None
    data_url: DataUrlParameter = None
    epochs: EpochsParameter = None
    batch_size: BatchSizeParameter = None
    learning_rate: LearningRateParameter = None
    min_accuracy: MinAccuracyParameter = None
    model_factory: ModelFactoryParameter = None
    backbone: BackboneParameter = None
    force: ForceParameter = False


def describe_validation_error(
    error: ValidationError, style: Literal["variable", "option"] = "variable"
) -> str:
    """One line per bad value, naming what a user sets to fix it, as they type it: the
    environment variable (RETRAINER_GATE__ACCURACY__THRESHOLD) or the option (--batch-size)."""
    lines = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not problem["loc"]:  # a rule across settings: its message names them
            lines.append(message)
            continue
        if style == "option":
            name = "--" + "-".join(str(part).replace("_", "-") for part in problem["loc"])
        else:
            name = ENV_PREFIX + "__".join(str(part).upper() for part in problem["loc"])
        given = problem.get("input")
        suffix = "" if isinstance(given, dict) or given is None else f" (got {redact(repr(given))})"
        lines.append(f"{name}: {message}{suffix}")
    return "\n".join(lines)


MODEL_CHOICES = ("RETRAINER_MODEL_FACTORY", "RETRAINER_BACKBONE")
# Variables with the prefix that are not settings: the deployment's pull step (flows/pull.py), the
# image (deploy/Dockerfile) and `make deploy` read them.
NOT_SETTINGS = {
    "RETRAINER_GIT_URL",
    "RETRAINER_GIT_REF",
    "RETRAINER_GIT_COMMIT",
    "RETRAINER_CODE_DIR",
    "RETRAINER_WORK_POOL",
}


def variable_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """Every variable that sets a field of `model`, nested ones spelled with `__`."""
    names = set()
    for name, field in model.model_fields.items():
        variable = prefix + name.upper()
        names.add(variable)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= variable_names(field.annotation, variable + "__")
    return names


def endpoint_credentials(environment: dict[str, str | None]) -> list[str]:
    """One line per S3 endpoint variable holding a user name or password: boto3 signs every
    request with the AWS credentials and never uses these, and they would reach logs, Prefect's
    database and reports with every message that names the endpoint."""
    return [
        f"{name}: '{redact(value)}' holds credentials: S3 requests are signed with the AWS "
        "credentials, never with these, and they would show in logs; remove them from the URL "
        "(use AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role)"
        for name in ENDPOINT_VARIABLES
        if (value := environment.get(name)) and "@" in urlparse(value).netloc
    ]


def unknown_variables(given: dict[str, str | None], source: str) -> list[str]:
    """One line per `RETRAINER_*` name in `given` that sets nothing, naming the closest setting:
    a typo must not leave a gate at its default in silence."""
    known = variable_names(Settings) | NOT_SETTINGS
    lines = []
    for name in sorted(given):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        closest = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        hint = f": did you mean {closest[0]}?" if closest else ""
        lines.append(f"{name} (in {source}) is not a setting{hint}")
    return lines


def chooses_model(variables: dict[str, str | None]) -> set[str]:
    """Which of RETRAINER_MODEL_FACTORY and RETRAINER_BACKBONE these variables set."""
    chosen = {name: (variables.get(name) or "").strip() for name in MODEL_CHOICES}
    return {name for name, value in chosen.items() if value and value != "none"}


def environment_over_env_file(
    environment: dict[str, str | None], env_file: dict[str, str | None], env_file_name: str
) -> dict[str, object]:
    """The environment's choice of model wins over the other choice in .env: a job variable
    (RETRAINER_BACKBONE for one deployment) need not edit the worker's .env. Both in one place
    is still refused by the settings. Said once in the log."""
    in_environment, in_file = chooses_model(environment), chooses_model(env_file)
    if len(in_environment) != 1 or not (in_file - in_environment):
        return {}
    (winner,), (loser,) = in_environment, in_file - in_environment
    say_once(
        f"{winner} from the environment chooses the model; {loser} in {env_file_name} is set aside"
    )
    return (
        {"model_factory": DEFAULT_MODEL_FACTORY}
        if loser == MODEL_CHOICES[0]
        else {"backbone": "none"}
    )


_said: set[str] = set()


def say_once(line: str) -> None:
    """Settings are read several times a run (flow, tasks, CLI): a note about them, once."""
    if line not in _said:
        _said.add(line)
        logger.info(line)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; bad values, and `RETRAINER_*` names that are no setting,
    raise SettingsError with readable lines."""
    env_file = Path(str(Settings.model_config.get("env_file")))
    environment: dict[str, str | None] = dict(os.environ)
    in_file = dotenv_values(env_file) if env_file.is_file() else {}
    problems = endpoint_credentials(environment)
    problems += unknown_variables(environment, "the environment")
    problems += unknown_variables(in_file, str(env_file))
    if problems:
        raise SettingsError("\n".join(problems))
    overrides = {**environment_over_env_file(environment, in_file, str(env_file)), **overrides}
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
