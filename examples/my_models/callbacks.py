"""Callbacks `fit` calls besides retrainer's own: RETRAINER_CALLBACKS=my_models.callbacks:nightly.
The function takes no arguments and returns a list of Keras callbacks."""

from __future__ import annotations

import os

import keras


def nightly() -> list[keras.callbacks.Callback]:
    """A CSV of every epoch's metrics (an MLflow or W&B logger goes here the same way) and a
    learning rate that halves every 10 epochs."""
    return [
        keras.callbacks.CSVLogger(os.environ.get("MY_METRICS_CSV", "metrics.csv"), append=True),
        keras.callbacks.LearningRateScheduler(
            lambda epoch, rate: rate * 0.5 if epoch and epoch % 10 == 0 else rate
        ),
    ]
