"""TensorFlow, started quietly: a run's output starts with our own lines.

TensorFlow's C++ start-up writes straight to the process's stderr (absl warnings, CUDA probing,
oneDNN notices), below Python's logging. Its import and first device listing therefore run with
stderr captured: its start-up lines are kept (the reasons a GPU could not be used go into the
device line, in words) and anything else written meanwhile is passed through. Set
RETRAINER_TENSORFLOW_LOGS=true to see everything as TensorFlow writes it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# "I0000 00:00:1795928645.920767   13367 cudart_stub.cc:31] Could not find cuda drivers ..."
START_UP_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (?P<message>.*)$")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# A line of our logging as Prefect formats it ("06:10:40.335 | INFO | ..."), never TensorFlow's.
OUR_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")
GPU_WORDS = ("cuda", "cuinit", "gpu", "libcud", "nvidia", "driver")


@dataclass(frozen=True)
class StartUp:
    gpus: int
    gpu_messages: tuple[str, ...]  # what TensorFlow said about GPUs, without its log prefixes


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read().decode(errors="replace").splitlines()


_started: list[StartUp] = []  # this process's start-up, once it happened
# Chunks prepared on threads start TensorFlow together: one captures, the others wait for it.
_starting = threading.Lock()


def start_tensorflow(show_logs: bool = False) -> StartUp:
    """Import TensorFlow and list its GPUs, once per process; say what it said about GPUs.

    `show_logs` (RETRAINER_TENSORFLOW_LOGS) lets its start-up lines through as it writes them;
    the first call in a process decides, later ones get the same start-up.
    """
    with _starting:
        if not _started:
            _started.append(_start(show_logs))
    return _started[0]


def _start(show_logs: bool) -> StartUp:
    if show_logs:
        import tensorflow as tf

        return StartUp(len(tf.config.list_physical_devices("GPU")), ())
    with _captured_stderr() as lines:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    gpu_messages = []
    in_start_up = False  # a start-up line may go on over several lines
    for line in lines:
        if match := START_UP_LINE.match(line):
            in_start_up = True
            message = match["message"]
            if any(word in message.lower() for word in GPU_WORDS):
                gpu_messages.append(message)
        elif line.startswith(ABSL_PREAMBLE) or (in_start_up and not OUR_LOG_LINE.match(line)):
            continue
        else:
            in_start_up = False
            print(line, file=sys.stderr)  # not TensorFlow's start-up: someone else's output
    return StartUp(gpus, tuple(dict.fromkeys(gpu_messages)))
