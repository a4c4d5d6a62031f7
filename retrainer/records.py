"""The small typed records the pipeline's stages hand each other.

Heavy things (images, models) stay on disk or in the store; these records only say where they are,
so every stage can be logged, retried and tested on its own.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from retrainer.layout import SAVED_MODEL_DIR
from retrainer.settings import TrainingConfig


class RefusedObject(BaseModel):
    """An object of the data that was not copied, and why: listed in the log and the report."""

    key: str
    reason: str


class ListedObject(BaseModel):
    """One object of the data as the listing saw it."""

    key: str
    etag: str
    size: int


LISTING = TypeAdapter(list[ListedObject])


class DataSnapshot(BaseModel):
    """The data as one listing saw it: nothing is downloaded to know this."""

    source_url: str
    fingerprint: str = Field(description="sha256 over every object's key, ETag and size")
    file_count: int
    listing_path: Path = Field(description="JSON list of ListedObject, local to this worker")
    refused: list[RefusedObject] = Field(
        default_factory=list, description="objects not used: unsafe keys, links, vanished"
    )

    def read_listing(self) -> list[ListedObject]:
        return LISTING.validate_json(self.listing_path.read_bytes())


# Raise when the checks, the decoding or the shard format change: everything is prepared again.
# 2: records placed in shards by their split position, not in listing (class) order.
PREPARATION_VERSION = 2


class PreparationSpec(BaseModel):
    """Everything that shapes a prepared image and its verdict: the preprocessing contract.

    `retrainer.data.image` enacts it: images are decoded with `channels` channels, resized to
    `image_size` squared with `resize_method`, rounded and kept as `dtype`.
    """

    image_size: int
    channels: Literal[3] = 3
    resize_method: Literal["bilinear"] = "bilinear"
    dtype: Literal["uint8"] = "uint8"
    max_image_bytes: int
    max_image_pixels: int
    version: int = PREPARATION_VERSION

    @classmethod
    def of(cls, config: TrainingConfig) -> PreparationSpec:
        return cls(
            image_size=config.image_size,
            max_image_bytes=config.max_image_bytes,
            max_image_pixels=config.max_image_pixels,
        )

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class PreparedObject(BaseModel):
    """One source object, prepared: its verdict and, when usable, the shard holding its pixels
    and its fingerprints (`retrainer.data.fingerprints`)."""

    etag: str
    size: int
    problem: str | None = Field(None, description="why it cannot train; None when it can")
    shard: str | None = Field(None, description="sha256 of the shard holding its record")
    exact: str | None = Field(None, description="exact fingerprint of its prepared pixels")
    perceptual: str | None = Field(None, description="perceptual fingerprint: 8x8 grey, in hex")
    first_seen: datetime | None = Field(
        None, description="when a night first prepared it: which of two copies came first"
    )

    @property
    def fingerprinted(self) -> bool:
        """Usable and fingerprinted, or unusable: nothing left to prepare. Entries of an index
        from before the fingerprints are prepared again, once."""
        return self.problem is not None or self.exact is not None


class ShardInfo(BaseModel):
    size: int
    records: int = Field(description="records written, live or not")


class PreparedIndex(BaseModel):
    """`index.json` of a prepared dataset: every object's verdict, and the shards holding pixels."""

    source_url: str
    spec: PreparationSpec
    objects: dict[str, PreparedObject] = Field(default_factory=dict)
    shards: dict[str, ShardInfo] = Field(default_factory=dict)


class PreparationChunk(BaseModel):
    """One unit of preparation work, written into one new shard; runs on any worker."""

    data_url: str
    prepared_url: str = Field(description="the store and prefix of the prepared dataset")
    spec: PreparationSpec
    objects: list[ListedObject] = Field(description="new or changed source objects to prepare")
    carried: dict[str, dict[str, PreparedObject]] = Field(
        default_factory=dict,
        description="verdicts whose records are kept from mostly dead shards (compaction), by "
        "shard and key",
    )
    night: datetime = Field(description="when this night planned it: the first_seen it gives")
    keep_in: Path | None = Field(
        None, description="the local shards folder, when the chunk runs on the training worker"
    )


class PreparedChunk(BaseModel):
    """What one chunk made: the verdicts of its objects and the shard it wrote, if any."""

    objects: dict[str, PreparedObject]
    shard: str | None
    shard_info: ShardInfo | None
    refused: list[RefusedObject] = Field(default_factory=list)


class PreparedData(BaseModel):
    """The prepared dataset as of this run's listing; its index is copied into the run folder."""

    snapshot: DataSnapshot
    prepared_url: str
    spec: PreparationSpec
    index_path: Path = Field(description="the PreparedIndex, local to this worker")
    prepared: int = Field(description="objects prepared (or carried by compaction) by this run")
    reused: int = Field(description="objects whose verdict and pixels were already in the store")
    shards_written: int
    refused: list[RefusedObject] = Field(
        default_factory=list, description="the listing's refusals and objects that vanished"
    )

    def read_index(self) -> PreparedIndex:
        return PreparedIndex.model_validate_json(self.index_path.read_bytes())


class CodeIdentity(BaseModel):
    """The code that shapes a trained model, as `retrainer.user_code` reads it: part of the work
    key, so a changed model factory trains and a changed README does not."""

    training_code: str = Field(description="sha256 over the product's Python files")
    model_factory: str = Field(
        description="the factory's source: a sha256 of its package's Python files, its "
        "distribution's version when installed, or 'retrainer' for the built-in models"
    )
    callbacks: str | None = Field(None, description="the same for RETRAINER_CALLBACKS")
    tensorflow: str
    keras: str

    def describe(self) -> str:
        """`training code 1a2b3c4d5e6f, model factory 9f8e7d6c5b4a, tensorflow==2.21.0, ...`"""

        def short(source: str) -> str:
            return source.removeprefix("sha256:")[:12]

        parts = [f"training code {short(self.training_code)}"]
        parts.append(f"model factory {short(self.model_factory)}")
        if self.callbacks is not None:
            parts.append(f"callbacks {short(self.callbacks)}")
        return ", ".join([*parts, self.tensorflow, self.keras])


class Work(BaseModel):
    """One training job's identity: the same data, configuration and code give the same key.

    Computed once per run; the skip check, the checkpoints and the manifest all use it.
    """

    key: str
    data_fingerprint: str
    config: TrainingConfig
    code: CodeIdentity
    code_version: str = Field(description="the commit the code came from, for the manifest")


class QuarantinedFile(BaseModel):
    path: str
    reason: str


class UsableImage(BaseModel):
    """One image that trains: its key, the ETag it was prepared from, the shard, its class."""

    key: str
    etag: str
    shard: str
    label: int
    first_seen: datetime | None = Field(None, description="when a night first prepared it")
    copies: int | None = Field(
        None, description="its group of copies (the same photograph under other keys), if any"
    )


class LabelConflict(BaseModel):
    """Copies of one photograph filed under different classes."""

    keys: list[str]
    classes: list[str]
    quarantined: bool


USABLE = TypeAdapter(list[UsableImage])


class ValidatedData(BaseModel):
    """Images that decode, grouped by class, and the files set aside."""

    prepared: PreparedData
    class_names: list[str]
    images_per_class: dict[str, int]
    usable_path: Path = Field(description="JSON list of UsableImage, local to this worker")
    quarantined: list[QuarantinedFile] = Field(default_factory=list)
    label_conflicts: list[LabelConflict] = Field(default_factory=list)
    class_change: str | None = Field(None, description="how the classes differ from the champion's")

    def read_usable(self) -> list[UsableImage]:
        return USABLE.validate_json(self.usable_path.read_bytes())


# A subset up to this size is read from the shards once and held in memory (uint8; twice while
# tf.data shuffles it), so later epochs cost no parsing: on a GPU node the input, not the model,
# would otherwise set the pace (bench.feed). Larger subsets stream from the shards every epoch.
INPUT_MEMORY_BUDGET = 1 << 30


class DataSplit(BaseModel):
    """The train/validation/test split on disk, and the batch size the input function uses."""

    split_path: Path = Field(
        description="the SplitFile (retrainer.data.splits), local to this worker"
    )
    class_names: list[str]
    preprocessing: PreparationSpec = Field(description="how every image was prepared")
    batch_size: int
    train_count: int
    validation_count: int
    test_count: int = Field(description="test images the gate scores (copies left out)")
    validation_fraction: float
    test_fraction: float
    train_per_class: dict[str, int]
    validation_per_class: dict[str, int]
    test_per_class: dict[str, int]
    held_out: int = Field(0, description="copies of test images kept out of training, validation")
    memory_budget: int = Field(
        INPUT_MEMORY_BUDGET, description="bytes of a subset the input function may hold in memory"
    )
    test_left_out: int = Field(0, description="test images left out of the gate: a copy trained")
    data_fingerprint: str

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size


class TrainedModel(BaseModel):
    """The candidate, in this run's local folder (on this worker) until it is published."""

    model_path: Path
    history_path: Path
    tensorboard_dir: Path
    device: str
    model_description: str = Field("", description="which model: built-in, factory or backbone")
    started_from: str = Field(description="the champion it was warm-started from, or a fresh model")
    resumed_from_epoch: int = Field(0, description="epochs restored from a checkpoint")
    epochs_run: int
    started_at: datetime
    finished_at: datetime
    diverged: str | None = Field(
        None, description="why training diverged (a NaN loss): such a model is never promoted"
    )
    stopped_early: bool = Field(
        False, description="early stopping ended it; the best epoch's weights were kept"
    )
    kept_epoch: int = Field(description="the epoch whose weights the model has (1-based)")
    still_improving: bool = Field(description="val_loss was at its best in the last epoch")
    images_per_second: float | None = Field(
        None, description="training images per second of `fit` (validation included) this run"
    )
    input_images_per_second: float | None = Field(
        None, description="what the shards stream at without a model; None: held in memory"
    )


class ModelScores(BaseModel):
    """A model's scores on one split (the test split, unless said otherwise)."""

    loss: float
    accuracy: float
    macro_f1: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion_matrix: list[list[int]]

    def headline(self, prefix: str = "test") -> dict[str, float]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_macro_f1": self.macro_f1,
        }


class PairedTest(BaseModel):
    """Candidate minus champion on the same test images, and whether the difference is real."""

    metric: str = Field(description="accuracy, macro_f1, loss or recall[<class>]")
    difference: float = Field(description="candidate minus champion (for loss, > 0 is worse)")
    method: Literal["mcnemar", "bootstrap"]
    p_value: float | None = Field(None, description="McNemar's exact two-sided p-value")
    interval: tuple[float, float] | None = Field(None, description="bootstrap interval")
    discordant: tuple[int, int] | None = Field(
        None, description="images only the candidate / only the champion got right"
    )
    images: int
    significantly_better: bool
    significantly_worse: bool
    too_small: bool = Field(description="too few images for any difference to be significant")

    def describe(self) -> str:
        """`McNemar p=0.0386 (10 vs 2 of 360)` or `95% CI [-0.0210, +0.0040]`."""
        if self.too_small:
            return f"{self.images} image(s): too few for any difference to be significant"
        if self.method == "mcnemar":
            only_candidate, only_champion = self.discordant or (0, 0)
            return (
                f"McNemar p={self.p_value:.4f} ({only_candidate} vs {only_champion} of "
                f"{self.images})"
            )
        low, high = self.interval or (0.0, 0.0)
        return f"bootstrap CI [{low:+.4f}, {high:+.4f}]"

    def in_words(self) -> str:
        """The same evidence, short, for a reader who does not know the tests: is it real?"""
        if self.too_small:
            return f"too few images ({self.images}) to tell"
        verdict = (
            "better, not chance"
            if self.significantly_better
            else "worse, not chance"
            if self.significantly_worse
            else "could be chance"
        )
        if self.method == "mcnemar":
            only_candidate, only_champion = self.discordant or (0, 0)
            if not only_candidate and not only_champion:
                return "no difference"
            return f"{verdict} ({only_candidate} vs {only_champion} images, p={self.p_value:.2g})"
        low, high = self.interval or (0.0, 0.0)
        return f"{verdict} (95%: {low:+.3f} to {high:+.3f})"


class Evaluation(BaseModel):
    """What the gate judges: both models on the test split, and how sure each difference is."""

    candidate: ModelScores = Field(description="the candidate on the test split")
    candidate_validation: ModelScores | None = Field(
        None, description="the candidate on the validation split early stopping chose it on"
    )
    champion: ModelScores | None = Field(None, description="the champion on the same images")
    champion_version: str | None = None
    note: str = Field("", description="how the champion was (or could not be) compared")
    tests: dict[str, PairedTest] = Field(default_factory=dict)
    test_images: int = 0
    copies: str = Field("", description="test images left out and copies held out, in words")


class GateCheck(BaseModel):
    metric: str
    value: float
    threshold: float
    higher_is_better: bool
    passed: bool
    champion_value: float | None = None
    comparison: str = Field("", description="how the threshold was derived from the champion")
    evidence: str = Field("", description="the paired test of the difference, in words")
    within_noise: bool = Field(
        False, description="beyond the bound, yet passed: the drop is not significant"
    )
    statement: str = Field("", description="the check in words, when it is not a bound")

    def describe(self) -> str:
        """`test_accuracy 0.8100 < champion 0.8600 - 0.0100 (McNemar p=0.0386 (2 vs 10 of
        360))`: the check in words, as it came out."""
        if self.statement:
            return self.statement
        holds = (
            self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        )
        operator = {
            (True, True): ">=",
            (True, False): "<",
            (False, True): "<=",
            (False, False): ">",
        }[(self.higher_is_better, holds)]
        bound = self.comparison or f"{self.threshold:.4f}"
        words = f"{self.metric} {self.value:.4f} {operator} {bound}"
        if self.evidence:
            words += f" ({self.evidence})"
        if self.within_noise:
            words += ": not significantly worse, passed"
        return words


class FileEntry(BaseModel):
    sha256: str
    size: int


class ServingSignature(BaseModel):
    """The exported SavedModel's signature: what a server sends and gets back."""

    directory: str = Field(SAVED_MODEL_DIR, description="folder of the version holding it")
    name: str = "serving_default"
    inputs: dict[str, str]
    outputs: dict[str, str]


class Manifest(BaseModel):
    """`manifest.json` of a published version: what it is, what made it, and every file's hash.

    Written last among a version's files: a version without one is not (fully) published.
    """

    files: dict[str, FileEntry]
    data_fingerprint: str
    class_names: list[str]
    train_images: int
    validation_images: int
    test_images: int = Field(0, description="0 for versions from before the test split")
    parameters: dict[str, Any]
    device: str
    started_from: str
    resumed_from_epoch: int
    epochs_run: int
    git_commit: str
    work_key: str
    code: CodeIdentity | None = Field(None, description="None for versions from before it")
    packages: dict[str, str]
    run_id: str
    started_at: datetime
    finished_at: datetime
    preprocessing: PreparationSpec | None = Field(
        None, description="how an image becomes the model's input; None before it was recorded"
    )
    serving: ServingSignature | None = Field(
        None, description="the SavedModel for serving; None for versions from before it"
    )


class ChampionRecord(BaseModel):
    """The champion as this run read it, once: warm start, gate and promotion all use this.

    `etag` is the ETag of `champion.json` at that read; the promotion's compare-and-swap uses it
    (passed from this record, never through the gate's decision), so a champion that changes
    under the run is never silently replaced.
    """

    version: str
    etag: str
    class_names: list[str]
    work_key: str
    model_key: str = Field(description="store key of the model file")
    model_sha256: str = Field(description="the manifest's hash, checked before the model is loaded")
    test_fraction: float | None = Field(
        None, description="its test split; None when it was trained before there was one"
    )


class WorkRecord(BaseModel):
    """`models/<name>/works/<work key>.json`: how the last training of this exact work ended.

    `withdrawn`: its version was champion until an operator rolled it back or promoted another by
    hand; like a rejected work, it is not trained again unless the run is forced.
    """

    work_key: str
    version: str
    status: Literal["promoted", "rejected", "conflict", "withdrawn"]
    reason: str
    finished_at: datetime


class GateDecision(BaseModel):
    passed: bool
    reason: str = Field(description="the decision in one sentence")
    checks: list[GateCheck]
    candidate: ModelScores = Field(description="the candidate on the test split")
    candidate_validation: ModelScores | None = Field(
        None, description="the candidate on the validation split early stopping chose it on"
    )
    champion: ModelScores | None = Field(None, description="the champion on the same images")
    champion_version: str | None
    champion_note: str = Field("", description="how the champion was (or could not be) compared")
    paired_tests: list[PairedTest] = Field(default_factory=list)
    test_images: int = 0
    copies: str = Field("", description="test images left out and copies held out, in words")
    significance_level: float = 0.05


class Publication(BaseModel):
    """How the run ended: promoted, rejected, lost a promotion race, or skipped."""

    status: Literal["promoted", "rejected", "conflict", "skipped"]
    model_name: str
    version: str | None
    version_url: str | None
    files: list[str]
    champion_version: str | None
    message: str

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    @property
    def outcome(self) -> str:
        """`Promoted`, `Rejected`, `Conflict` or `Skipped`: the run's final state, the report's
        title, the CLI's last line."""
        return self.status.capitalize()
