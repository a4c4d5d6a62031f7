"""retrainer: retrain a Keras image classifier on a schedule; ship only a model proven better."""

import ctypes
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


def _cap_malloc_arenas() -> None:
    """One glibc malloc arena per core instead of up to eight, unless MALLOC_ARENA_MAX is set.

    glibc gives each new thread an arena of its own until there are eight per core; tf.data's
    threads streaming the shards leave them fragmented, so peak memory grew with the bytes a run
    streamed (bench.memory's stages at 10x the images, on 2 cores: +27.9% with glibc's default,
    +11.6% with two arenas). It applies to arenas made after it: hence here, before any of ours
    start. The image preloads tcmalloc instead, which this leaves alone (README: the GPU node).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc read it at start-up: the user's choice stands
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, Alpine's musl): their allocators are not glibc's arenas
    m_arena_max = -8  # from glibc's <malloc.h>
    libc.mallopt(m_arena_max, max(2, len(os.sched_getaffinity(0))))


_cap_malloc_arenas()

try:
    __version__ = metadata.version("retrainer")
except metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "unknown"
