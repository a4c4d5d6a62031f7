"""The champion contract: can tonight's champion start training, and judge the candidate?

Warm start and the gate ask one question, answered here once (`champion_mismatch`): the same
classes, the same model input (`retrainer.data.image.input_shape`), and for a warm start the same
layers as the model this run builds. The champion's model is fetched in one place
(`load_champion_model`): downloaded once per worker and checked against its manifest's sha256
before Keras reads it. A champion that exists but cannot be fetched or loaded raises
ChampionUnavailable: nothing is decided in its absence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras

from retrainer.data.image import input_shape
from retrainer.errors import SettingsError
from retrainer.records import ChampionRecord, DataSplit
from retrainer.registry import ModelRegistry

logger = logging.getLogger(__name__)


class ChampionUnavailable(RuntimeError):
    """A champion exists but could not be fetched or loaded: nothing may be decided without it."""


@dataclass(frozen=True)
class WarmStart:
    """What training starts from: the champion and its model, or nothing and why not."""

    description: str
    champion: ChampionRecord | None = None
    model: keras.Model | None = None


def champion_mismatch(
    champion: ChampionRecord,
    split: DataSplit,
    champion_model: keras.Model | None = None,
    model: keras.Model | None = None,
) -> str | None:
    """Why the champion cannot judge a candidate on these data (or start `model`); None if it can.

    Before its model is loaded, only the classes are compared: a champion of other classes is
    never downloaded.
    """
    if champion.class_names != split.class_names:
        return (
            f"champion {champion.version} was trained on classes {champion.class_names}, "
            f"not {split.class_names}"
        )
    if champion_model is None:
        return None
    expected = input_shape(split.preprocessing)
    if tuple(champion_model.input_shape[1:]) != expected:
        return (
            f"champion {champion.version} takes inputs {tuple(champion_model.input_shape[1:])}, "
            f"not {expected}"
        )
    if model is not None and [tuple(w.shape) for w in champion_model.weights] != [
        tuple(w.shape) for w in model.weights
    ]:
        return (
            f"champion {champion.version}'s layers differ from those of the model this run "
            "builds (RETRAINER_MODEL_FACTORY or RETRAINER_BACKBONE)"
        )
    return None


def load_champion_model(
    registry: ModelRegistry, champion: ChampionRecord, models_dir: Path
) -> keras.Model:
    """The champion's model, checked against its manifest; ChampionUnavailable otherwise."""
    try:
        path = registry.download_champion_model(champion, models_dir)
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # whatever it was, nothing can be decided without the champion
        raise ChampionUnavailable(
            f"champion {champion.version} could not be loaded, so nothing is promoted: {error}"
        ) from error


def fitting_champion_model(
    registry: ModelRegistry, champion: ChampionRecord, split: DataSplit, models_dir: Path
) -> tuple[keras.Model | None, str | None]:
    """The champion's model when it fits these data; else None and why not."""
    if mismatch := champion_mismatch(champion, split):
        return None, mismatch
    model = load_champion_model(registry, champion, models_dir)
    if mismatch := champion_mismatch(champion, split, model):
        return None, mismatch
    return model, None


def find_warm_start(
    registry: ModelRegistry,
    champion: ChampionRecord | None,
    split: DataSplit,
    policy: str,
    models_dir: Path,
) -> WarmStart:
    """The champion to start from, if the policy wants one and it fits these data."""
    if policy == "never":
        return WarmStart("a fresh model (warm start is off)")
    if champion is None:
        reason = "there is no champion yet"
    else:
        champion_model, mismatch = fitting_champion_model(registry, champion, split, models_dir)
        if champion_model is not None:
            logger.info("Warm start: training continues from champion %s", champion.version)
            return WarmStart(f"champion {champion.version}", champion, champion_model)
        reason = str(mismatch)
    return fresh_model_because(reason, policy)


def fresh_model_because(reason: str, policy: str) -> WarmStart:
    """Training starts from a fresh model; refused when the policy demanded the champion."""
    if policy == "always":
        raise SettingsError(f"RETRAINER_WARM_START=always, but {reason}")
    logger.info("Starting from a fresh model: %s", reason)
    return WarmStart(f"a fresh model ({reason})")
