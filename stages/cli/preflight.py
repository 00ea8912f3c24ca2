"""mnist-preflight: prove in seconds that a run can be recorded and will train where it should.

The scheduled retraining runs it before it pulls data or trains: a tracking server that is down or turns
the credentials away, or a GPU runner whose TensorFlow sees no GPU, then fails the job in its first minutes
with the fix, not after the training it would have wasted.
"""

from __future__ import annotations

import argparse

from stages.core.errors import StageError
from stages.core.runner import run_stage
from stages.tracking import store


def _seen_by(backend: str) -> str:
    if backend == "tensorflow":
        import tensorflow as tf

        return f"TensorFlow {tf.__version__}"
    return f"Keras's {backend} backend"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("gpu", "cpu", "any"),
        default="any",
        help="gpu: fail unless Keras's backend sees a GPU; cpu or any: train on whatever there is",
    )
    args = parser.parse_args(argv)
    experiment_id = store.connect()
    print(
        f"tracking: {store.redact(store.tracking_uri())} answers (experiment {store.EXPERIMENT!r}, "
        f"id {experiment_id})"
    )

    import keras

    from stages.training import hardware

    gpus = hardware.gpu_names()
    if args.device == "gpu" and not gpus:
        raise StageError(
            f"{_seen_by(keras.backend.backend())} sees no GPU: install the CUDA libraries "
            "(`pip install -e '.[gpu]'`) and check the driver with `nvidia-smi`; or, to train on the CPU, "
            "pass --device cpu (the retraining workflow: set the repository variable RETRAIN_DEVICE=cpu)"
        )
    print(f"device: {hardware.describe(gpus)}, Keras {keras.__version__} on {keras.backend.backend()}")


def cli() -> None:
    """Console-script entry point."""
    run_stage(main, tensorflow=True, command=True)


if __name__ == "__main__":
    cli()
