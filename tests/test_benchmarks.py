"""The benchmarks the README quotes still run: each in its quickest mode, in a copy of the repository whose
pipeline ran on a small subset. Only what they write is checked, never their figures: speed goals live in the
benchmarks themselves, not in tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ALL_STAGES, pipeline_run_once, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return pipeline_run_once(tmp_path_factory.mktemp("bench") / "repo")


def bench(repo: Path, script: str, *args: str, env: dict[str, str] | None = None) -> str:
    return run([sys.executable, str(repo / "bench" / script), *args], repo, env=env).stdout


def test_input_path_runs_every_variant(small, tmp_path):
    out = tmp_path / "input_path.json"
    table = bench(
        small, "input_path.py", "--presets", "mlp", "--epochs", "1", "--rounds", "1", "--output", str(out)
    )
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["variant"] for r in runs) == sorted(
        ["arrays_spe1", "arrays", "tf_data", "threads", "bf16"]
    )
    for r in runs:
        assert len(r["epoch_s"]) == 1 and r["last_epoch_images_per_s"] > 0 and 0 <= r["val_accuracy"] <= 1
    assert table.count("| mlp |") == 5


def test_train_speed_quick_runs_both_sides(small, tmp_path):
    out = tmp_path / "train_speed.json"
    table = bench(small, "train_speed.py", "--quick", "--output", str(out))
    runs = json.loads(out.read_text())["runs"]
    expected = [(preset, side) for preset in ("fast_cnn", "mlp") for side in ("pipeline", "tutorial")]
    assert sorted((r["preset"], r["side"]) for r in runs) == expected
    assert all(r["images_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in runs)
    assert "| mlp |" in table and "| fast_cnn |" in table


def test_train_speed_gpu_path_runs_on_jax_and_says_where_it_ran(small, tmp_path):
    # the command the README gives for a GPU machine, here on the CPU: Keras on JAX, side (a) only
    out = tmp_path / "train_speed.json"
    table = bench(
        small,
        "train_speed.py",
        "--tutorial-only",
        "--quick",
        "--output",
        str(out),
        env={"KERAS_BACKEND": "jax"},
    )
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["preset"], r["side"], r["backend"]) for r in runs) == [
        ("fast_cnn", "tutorial", "jax"),
        ("mlp", "tutorial", "jax"),
    ]
    assert all(r["epoch_s"] > 0 and r["device"].startswith("CPU (") for r in runs)
    assert "Tutorial side: CPU (" in table and "on Keras's jax backend" in table


def test_time_to_accuracy_quick_records_every_epoch(small):
    bench(small, "time_to_accuracy.py", "--quick")
    runs = json.loads((small / "bench" / "time_to_accuracy.json").read_text())["runs"]
    assert sorted(r["preset"] for r in runs) == ["cnn", "fast_cnn"]
    for r in runs:
        assert [row["epoch"] for row in r["epochs"]] == [1, 2]
        assert all(0 <= row["test_accuracy"] <= 1 and row["train_s"] > 0 for row in r["epochs"])
        assert 0 <= r["final_test_accuracy"] <= 1  # the saved model's, batch norm settled


def test_overhead_quick_breaks_a_whole_repro_down(small, tmp_path):
    out = tmp_path / "overhead.json"
    table = bench(small, "overhead.py", "--quick", "--output", str(out))
    (result,) = json.loads(out.read_text())["runs"]
    assert [row["stage"] for row in result["stages"]] == ALL_STAGES
    summary = result["summary"]
    assert 0 < summary["fit_s"] < summary["repro_s"] and len(summary["noop_repro_s"]) == 3
    assert len(summary["dvc_version_s"]) == 3 and summary["noop_over_dvc_version"] > 0
    assert summary["stages_run_by_noop_repros"] == [] and summary["dvc_status_after"] == {}
    assert summary["floor"]["imports_floor_s"] > 0
    assert "everything but `model.fit`" in table and "floor of one process per stage" in table


def test_serving_measures_one_image_and_batches_of_32(small, tmp_path):
    out = tmp_path / "serving.json"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{small / 'mlflow.db'}"}
    table = bench(
        small,
        "serving.py",
        "--model",
        "models:/mnist-classifier/1",
        "--requests",
        "12",
        "--batches",
        "3",
        "--output",
        str(out),
        env=env,
    )
    (result,) = json.loads(out.read_text())["runs"]
    assert result["single_image_ms"]["requests"] == 12 and result["batch_32"]["requests"] == 3
    assert 0 < result["single_image_ms"]["p50"] <= result["single_image_ms"]["p90"]
    assert result["batch_32"]["images_per_s"] > 0 and "| 32 images |" in table


def test_predict_times_the_litert_and_keras_paths_beside_importing_tensorflow(small):
    table = bench(small, "predict.py", "--rounds", "1")
    result = json.loads((small / "bench" / "predict.json").read_text())
    assert set(result["medians"]) == {"litert", "keras", "import_tensorflow"}
    assert all(value > 0 for value in result["medians"].values())
    assert "litert_over_import_tensorflow" in table
