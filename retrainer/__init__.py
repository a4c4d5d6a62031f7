"""retrainer: retrain a Keras image classifier on a schedule; ship only a model proven better."""

import logging
import os
from importlib import metadata

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) would bury the run's own log
# lines; errors still show. A user's explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The stages log to their module loggers (`retrainer.*`, at INFO). In a flow run Prefect sends
# them to the run log as it does its own (its "extra loggers" setting, read when Prefect is first
# imported: the deployment and the image set it too, for workers that import Prefect first).
# Outside a run (tests, notebooks, benchmarks) they are plain loggers, and Prefect stays quiet.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", __name__)
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger(__name__).setLevel(logging.INFO)

try:
    __version__ = metadata.version("retrainer")
except metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "unknown"
