"""retrainer: retrain a Keras image classifier on a schedule; ship only a model proven better."""

import logging
import os
from importlib import metadata

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) would bury the run's own log
# lines; errors still show. A user's explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    __version__ = metadata.version("retrainer")
except metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "unknown"

# Stage functions log to whatever they are given: a Prefect run logger in a task, a plain logger in
# tests and benchmarks.
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]
