"""Devices: where training runs, chosen from the list of GPUs TensorFlow sees.

The plan is made from the device list alone (`plan_devices`), so every choice is testable on a
machine without GPUs; TensorFlow is started only to list the devices.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from retrainer.errors import SettingsError
from retrainer.tensorflow_runtime import start_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf

# Mixed precision by what the GPU has, and what was measured (FACTS.md, one H200): bfloat16 needs
# no loss scaling and has tensor cores from Ampere (8.0) on; Volta and Turing (7.x) have them for
# float16 only. Fine-tuning a pretrained backbone ran slower in bfloat16 (0.56-0.72x on an H200:
# depthwise convolutions), so `auto` keeps float32 for it; `on` asks for mixed precision anyway.
BFLOAT16_MIN_CAPABILITY = (8, 0)
FLOAT16_MIN_CAPABILITY = (7, 0)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSeen:
    """One GPU as TensorFlow describes it."""

    name: str
    capability: tuple[int, int] | None


# An entry of TensorFlow's `cuda_compute_capabilities`: `sm_80` is machine code, `compute_90` PTX.
BUILT_ARCH = re.compile(r"(?P<kind>sm|compute)_(?P<major>\d+)(?P<minor>\d)[a-z]?")


def kernels_for(capability: tuple[int, int], built_for: list[str]) -> str | None:
    """ "machine code", "PTX" or None: what TensorFlow's build has for a GPU of this capability.

    Machine code for X.Y runs on X.Z with Z >= Y; PTX is compiled by the driver at start-up.
    PTX is counted only within its major version: XLA, which Keras uses for `fit`, compiles with
    the ptxas of the CUDA release TensorFlow was built with (12.5 for 2.21), and architectures
    newer than that release (Blackwell, 10.x and 12.x, came with CUDA 12.8) are unknown to it.
    """
    major, minor = capability
    kinds = {
        match["kind"]
        for arch in built_for
        if (match := BUILT_ARCH.fullmatch(arch))
        and int(match["major"]) == major
        and int(match["minor"]) <= minor
    }
    return "machine code" if "sm" in kinds else "PTX" if "compute" in kinds else None


def describe_build(built_for: list[str]) -> str:
    """`machine code for 6.0, 7.0, 8.0, 8.9 and PTX for 9.0`."""

    def listed(prefix: str) -> str:
        versions = [arch.removeprefix(prefix) for arch in built_for if arch.startswith(prefix)]
        return ", ".join(f"{version[:-1]}.{version[-1]}" for version in versions) or "none"

    return f"machine code for {listed('sm_')} and PTX for {listed('compute_')}"


def check_kernels(gpus: list[GpuSeen], built_for: list[str], tensorflow: str) -> str | None:
    """Refuse a GPU the installed TensorFlow has no kernels for (the run would fail after the
    data was fetched); say when the driver will compile kernels from PTX, and why. Returns the
    kind of GPU ("NVIDIA H200 9.0") that compiles from PTX, if any."""
    compiles = None
    for index, gpu in enumerate(gpus):
        if gpu.capability is None:
            continue
        seen = (
            f"GPU {index} ({gpu.name}, compute capability {gpu.capability[0]}.{gpu.capability[1]})"
        )
        kernels = kernels_for(gpu.capability, built_for)
        if kernels is None:
            raise SettingsError(
                f"{seen}: TensorFlow {tensorflow} has no kernels for it "
                f"({describe_build(built_for)}); use a TensorFlow build made for this GPU, or a "
                "supported GPU (README: Supported GPUs)"
            )
        if kernels == "PTX":
            logger.warning(
                "%s: TensorFlow %s has no machine code for it, so the driver compiles its kernels "
                "from PTX at start-up; this can take many minutes the first time, and the compiled "
                "kernels are kept in the CUDA cache (CUDA_CACHE_PATH) for the next start",
                seen,
                tensorflow,
            )
            compiles = f"{gpu.name} {gpu.capability[0]}.{gpu.capability[1]}"
    return compiles


@dataclass(frozen=True)
class DevicePlan:
    """Where and how training runs; chosen from the device list alone, so testable without GPUs."""

    kind: str  # "cpu", "gpu" or "multi-gpu"
    devices: tuple[str, ...]
    precision: str  # "float32", "mixed_float16" or "mixed_bfloat16"
    description: str
    # "NVIDIA H200 9.0": the kind of GPU whose kernels the driver compiles from PTX, if any
    compiles_from_ptx: str | None = None


def plan_devices(
    capabilities: list[tuple[int, int] | None], mixed_precision: str, fine_tuning: bool = False
) -> DevicePlan:
    """`capabilities`: one compute capability per visible GPU (None when unknown)."""
    precision = choose_precision(capabilities, mixed_precision, fine_tuning)
    if not capabilities:
        return DevicePlan(
            "cpu", ("/CPU:0",), precision, f"No GPU found: training on the CPU ({precision})"
        )
    if len(capabilities) == 1:
        return DevicePlan("gpu", ("/GPU:0",), precision, f"Training on 1 GPU (/GPU:0, {precision})")
    devices = tuple(f"/GPU:{index}" for index in range(len(capabilities)))
    return DevicePlan(
        "multi-gpu",
        devices,
        precision,
        f"Training on {len(devices)} GPUs with MirroredStrategy ({precision})",
    )


def choose_precision(
    capabilities: list[tuple[int, int] | None], mixed_precision: str, fine_tuning: bool
) -> str:
    """float32, mixed_bfloat16 or mixed_float16: the slowest GPU decides (None counts as old)."""
    lowest = min((capability or (0, 0) for capability in capabilities), default=None)
    if mixed_precision == "off" or (mixed_precision == "auto" and (lowest is None or fine_tuning)):
        return "float32"
    if lowest is not None and lowest >= BFLOAT16_MIN_CAPABILITY:
        return "mixed_bfloat16"
    if mixed_precision == "on" or (lowest is not None and lowest >= FLOAT16_MIN_CAPABILITY):
        return "mixed_float16"
    return "float32"


def detect_devices(
    mixed_precision: str, device: str = "auto", fine_tuning: bool = False
) -> DevicePlan:
    """The plan for the GPUs TensorFlow can use; without one, TensorFlow's reason, in words.

    `device`: "auto", "gpu" (SettingsError when there is no usable GPU) or "cpu" (GPUs hidden).
    """
    start_up = start_tensorflow()
    import tensorflow as tf

    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
        return plan_devices([], mixed_precision)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        said = "; ".join(start_up.gpu_messages) or "no GPU is visible to it"
        raise SettingsError(
            f"RETRAINER_DEVICE=gpu, but TensorFlow found no usable GPU (TensorFlow said: {said}); "
            "check the node's driver and the image's CUDA libraries, or set RETRAINER_DEVICE=auto"
        )
    seen = []
    for gpu in gpus:
        # Without memory growth TensorFlow reserves the whole card at start-up.
        tf.config.experimental.set_memory_growth(gpu, True)
        details = tf.config.experimental.get_device_details(gpu)
        seen.append(
            GpuSeen(details.get("device_name", gpu.name), details.get("compute_capability"))
        )
    built_for = list(tf.sysconfig.get_build_info().get("cuda_compute_capabilities", []))
    compiles_from_ptx = check_kernels(seen, built_for, tf.__version__)
    plan = plan_devices([gpu.capability for gpu in seen], mixed_precision, fine_tuning)
    plan = replace(plan, compiles_from_ptx=compiles_from_ptx)
    if plan.kind == "cpu" and start_up.gpu_messages:
        said = "; ".join(start_up.gpu_messages)
        plan = replace(plan, description=f"{plan.description}. TensorFlow said: {said}")
    return plan


def strategy_for(plan: DevicePlan) -> tf.distribute.Strategy:
    import tensorflow as tf

    if plan.kind == "multi-gpu":
        return tf.distribute.MirroredStrategy(list(plan.devices))
    if plan.kind == "gpu":
        return tf.distribute.OneDeviceStrategy(plan.devices[0])
    return tf.distribute.get_strategy()
