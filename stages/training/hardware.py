"""Where training runs, and making it repeatable: seeds, deterministic ops, devices, precision.

The only backend-specific code in the project lives here (model code is `keras.*` only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

import keras

log = logging.getLogger(__name__)
# The CPU features oneDNN and XLA pick kernels by: the same seed gives other bytes where they differ.
KERNEL_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile")


def configure(mixed_precision: bool) -> tuple[str, Any]:
    """Make ops deterministic, pick the device(s); return (device description, scope).

    The scope is a `tf.distribute.MirroredStrategy` scope when several GPUs are visible, else a no-op:
    build and compile the model inside it. Seeding is `presets.compiled_model(seed=)`'s job, right
    before the build.
    """
    backend = keras.backend.backend()
    scope: Any = contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        physical = tf.config.list_physical_devices("GPU")
        for gpu in physical:
            tf.config.experimental.set_memory_growth(gpu, True)
        if len(physical) > 1:
            scope = tf.distribute.MirroredStrategy().scope()
    gpus = gpu_names()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if gpus else "mixed_bfloat16")
    device = describe(gpus)
    precision = keras.mixed_precision.global_policy().name
    log.info("training on %s with the %s backend, precision %s", device, backend, precision)
    return device, scope


def gpu_names() -> list[str]:
    """The GPUs Keras's backend sees, by model name (none on CPU or an unknown backend)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [
            tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")
        ]
    if backend == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    return []


def describe(gpus: list[str]) -> str:
    """`2 x GPU (NVIDIA H100)` or `CPU (16 cores)`: what MLflow's `device` tag and the benchmarks say."""
    if gpus:
        return f"{len(gpus)} x GPU ({', '.join(sorted(set(gpus)))})"
    return f"CPU ({os.cpu_count()} cores)"


def machine_record() -> dict[str, Any]:
    """What the trained bytes depend on beyond code, data and params: the backend and its version, the
    GPUs, the CPU's architecture and the kernel-relevant instruction sets (Linux; elsewhere none known),
    and oneDNN's ISA cap where one is set."""
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "gpus": sorted(gpu_names()),
        "cpu": platform.machine(),
        "cpu_features": cpu_features(),
    } | ({"onednn_max_cpu_isa": isa} if (isa := os.environ.get("ONEDNN_MAX_CPU_ISA")) else {})


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """KERNEL_FEATURES this CPU has, from the kernel's `flags` line (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return [feature for feature in KERNEL_FEATURES if feature in flags]
