"""Train and evaluate for real, through `dvc repro`, and check what MLflow recorded.

One small run (a stratified subset, one epoch) is shared by the checks of the MLflow record; the
determinism, resume and `dvc exp run` tests each start from that trained copy.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ALL_STAGES,
    REPO,
    SMALL,
    client_for,
    copy_repository,
    ran_stages,
    run,
    run_id_of,
    set_params,
    up_to_date,
    user_env,
)

from stages.tracking.registry import logged_model

pytestmark = pytest.mark.slow

# the `dvc exp show --keep` pattern the README gives for the headline metrics
README_HEADLINE_COLUMNS = re.search(r"--keep '([^']+)'", (REPO / "README.md").read_text()).group(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    repo = copy_repository(tmp_path_factory.mktemp("trained") / "repo")
    set_params(repo, **SMALL)
    result = run(["dvc", "repro"], repo)
    assert ran_stages(result.stdout) == ALL_STAGES
    return repo


def test_outputs_metrics_and_plots(trained):
    train_metrics = json.loads((trained / "metrics" / "train.json").read_text())
    assert train_metrics["epochs"] == 2 and train_metrics["params"]["total"] == trained_params(trained)
    assert 0 <= train_metrics["val"]["accuracy"] <= 1
    evaluation = json.loads((trained / "metrics" / "eval.json").read_text())
    assert set(evaluation) == {"test"}  # the headline only: per class in the CSV
    with (trained / "metrics" / "per_class.csv").open() as fh:
        per_class = list(csv.DictReader(fh))
    assert [r["class"] for r in per_class] == list("0123456789")
    assert sum(int(r["support"]) for r in per_class) == 10_000
    with (trained / "metrics" / "confusion.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10_000
    right = sum(r["actual"] == r["predicted"] for r in rows)
    assert right == 10_000 - evaluation["test"]["errors"]
    assert (trained / "metrics" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained / "metrics" / "misclassified.png").read_bytes()[:4] == b"\x89PNG"
    shown = run(["dvc", "metrics", "show", "--json"], trained).stdout
    assert "test" in shown and "accuracy" in shown
    # every metric file in a 140-column terminal, whole (test, times, validation: what a trial is scored
    # by), and the README's headline columns in 120: no cell cut to "…"
    table = run(["dvc", "metrics", "show"], trained, env={"COLUMNS": "140"}).stdout
    assert max(map(len, table.splitlines())) <= 140 and "test.accuracy" in table and "…" not in table
    assert "val.accuracy" in table
    headline = ["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep", README_HEADLINE_COLUMNS]
    table = run(headline, trained, env={"COLUMNS": "120"}).stdout
    assert max(map(len, table.splitlines())) <= 120 and "train_time_s" in table and "…" not in table
    timing = json.loads((trained / "metrics" / "timing.json").read_text())
    assert timing["train_time_s"] > 0 and "train_time_s" not in train_metrics
    assert up_to_date(trained)


def trained_params(repo: Path) -> int:
    import keras

    return keras.saving.load_model(repo / "data" / "model" / "model.keras").count_params()


def test_mlflow_run_has_params_curves_counts_test_metrics_and_lineage(trained):
    client = client_for(trained)
    run_data = client.get_run(run_id_of(trained))
    params, metrics, tags = run_data.data.params, run_data.data.metrics, run_data.data.tags
    assert run_data.info.status == "FINISHED"
    assert params["train.model"] == "fast_cnn" and params["preprocess.limit"] == "1000"
    assert params["effective.optimizer"] == "adam" and params["effective.epochs"] == "2"
    assert int(params["model.params.total"]) == trained_params(trained)
    assert int(params["model.params.trainable"]) + int(params["model.params.non_trainable"]) == int(
        params["model.params.total"]
    )
    curve = client.get_metric_history(run_data.info.run_id, "val_accuracy")
    assert [m.step for m in curve] == [1, 2]
    evaluation = json.loads((trained / "metrics" / "eval.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(evaluation["test"]["accuracy"])
    head = run(["git", "rev-parse", "HEAD"], trained).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "true"  # params.yaml was edited
    assert tags["git.changed_files"] == "params.yaml"  # dvc.lock and metrics/ are the pipeline's own
    meta = json.loads((trained / "data" / "prepared" / "meta.json").read_text())
    assert tags["data.content_sha256"] == meta["content_sha256"]
    assert tags["device"].startswith(("CPU", "1 x GPU")) and tags["dvc.experiment"] == "(workspace)"
    artifacts = {a.path for a in client.list_artifacts(run_data.info.run_id)}
    assert {"evaluation", "report", "model_summary.txt"} <= artifacts


def test_the_run_has_a_logged_model_with_its_test_metrics_and_its_datasets(trained):
    """MLflow 3's view: a logged model linked to the run, its test figures and the registry version; the
    run's inputs are the three splits, each with its file's MD5 as digest."""
    import hashlib

    import mlflow

    client = client_for(trained)
    run_id = run_id_of(trained)
    experiment = client.get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(
        experiment_ids=[experiment], output_format="list", filter_string=f"source_run_id = '{run_id}'"
    )
    assert [m.name for m in models] == ["model"]
    model = models[0]
    linked = {m.key: m for m in model.metrics}
    evaluation = json.loads((trained / "metrics" / "eval.json").read_text())
    assert linked["test_accuracy"].value == pytest.approx(evaluation["test"]["accuracy"])
    assert linked["test_accuracy"].dataset_name == "mnist/test"
    version = client.search_model_versions(f"name='mnist-classifier' and run_id='{run_id}'")[0]
    assert version.source == f"models:/{model.model_id}"
    info = mlflow.models.get_model_info(model.model_uri)
    columns = ["class", "label", "confidence", "probabilities", "warning"]
    assert info.signature.outputs.input_names() == columns and info.signature.inputs is None
    assert info.saved_input_example_info["type"] == "ndarray"
    inputs = {
        (i.dataset.name, i.tags[0].value): i.dataset.digest
        for i in client.get_run(run_id).inputs.dataset_inputs
    }
    md5 = {
        split: hashlib.md5((trained / "data" / "prepared" / f"{split}.npz").read_bytes()).hexdigest()
        for split in ("train", "val", "test")
    }
    assert inputs == {
        ("mnist/train", "training"): md5["train"],
        ("mnist/val", "validation"): md5["val"],
        ("mnist/test", "testing"): md5["test"],
    }


def test_the_logged_summary_gives_every_layers_parameter_count(trained, tmp_path):
    """The summary parameter counts, whole: a line per layer with its count, then the totals."""
    import keras

    logged = client_for(trained).download_artifacts(run_id_of(trained), "model_summary.txt", str(tmp_path))
    lines = Path(logged).read_text().splitlines()
    model = keras.saving.load_model(trained / "data" / "model" / "model.keras")
    for layer in model.layers:
        [line] = [line for line in lines if line.split()[:2] == [layer.name, type(layer).__name__]]
        assert line.split()[-1] == f"{layer.count_params():,}", line
        assert str(tuple(layer.output.shape)) in line
    assert f"total parameters: {model.count_params():,}" in lines


def test_the_model_carries_the_settings_it_was_trained_with(trained, tmp_path):
    config = json.loads((trained / "data" / "model" / "config.json").read_text())
    meta = json.loads((trained / "data" / "prepared" / "meta.json").read_text())
    assert config["preset"] == "fast_cnn" and config["seed"] == 42
    assert (config["optimizer"], config["schedule"], config["epochs"], config["batch_size"]) == (
        "adam",
        "one_cycle",
        2,
        64,
    )
    assert config["data_content_sha256"] == meta["content_sha256"] and config["splits"] == meta["splits"]
    logged = client_for(trained).download_artifacts(run_id_of(trained), "model_config.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == config


def test_registered_version_predicts_like_the_saved_model(trained):
    import keras
    import mlflow

    client = client_for(trained)
    [version] = client.search_model_versions(f"run_id='{run_id_of(trained)}'")
    assert version.name == "mnist-classifier"
    registered = mlflow.pyfunc.load_model(f"models:/mnist-classifier/{version.version}")
    signature = registered.metadata.signature  # no input schema: every layout reaches the input rule
    assert signature.inputs is None and signature.outputs.input_names()[:2] == ["class", "label"]
    with np.load(trained / "data" / "prepared" / "test.npz") as npz:
        images = npz["x"][:200]
    saved = keras.saving.load_model(trained / "data" / "model" / "model.keras", safe_mode=True)
    answers = registered.predict(images)
    assert answers["class"].tolist() == saved.predict(images, verbose=0).argmax(axis=1).tolist()


def test_rerunning_evaluate_replaces_its_mlflow_table_rather_than_appending_to_it(trained, tmp_path):
    set_params(trained, evaluate={"misclassified_examples": 6})
    result = run(["dvc", "repro"], trained)
    assert ran_stages(result.stdout) == ["check_params", "evaluate", "report"]  # the same run, again
    client = client_for(trained)
    table = client.download_artifacts(run_id_of(trained), "evaluation/per_class.json", str(tmp_path))
    rows = json.loads(Path(table).read_text())["data"]
    assert sorted(str(row[0]) for row in rows) == list("0123456789")  # log_table would append 10 more
    logged = json.loads(client.get_run(run_id_of(trained)).data.tags["mlflow.loggedArtifacts"])
    assert logged == [{"path": "evaluation/per_class.json", "type": "table"}]  # still shown as a table


def test_a_model_pulled_without_its_run_record_finds_its_run_by_hash(trained, tmp_path):
    """After `dvc pull` (a second clone, a CI runner) data/train_run.json is not there: git and DVC do not
    carry it. report and mnist-promote find the run by the model's sha256 instead, or say what to do."""
    run_id = run_id_of(trained)
    record = trained / "data" / "train_run.json"
    saved = record.read_text()
    record.unlink()
    try:
        result = run(["dvc", "repro", "--force", "--single-item", "report"], trained)  # as the workflow does
        assert ran_stages(result.stdout) == ["report"]
        artifacts = {a.path for a in client_for(trained).list_artifacts(run_id, "report")}
        assert (
            "report/report.md" in artifacts
            and run_id in (trained / "data" / "report" / "report.md").read_text()
        )

        elsewhere = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
        refused = run(
            ["dvc", "repro", "--force", "--single-item", "report"], trained, check=False, env=elsewhere
        )
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "no MLflow run in" in refused.stderr and "dvc repro --force train" in refused.stderr
    finally:
        record.write_text(saved)


def test_a_new_training_of_the_same_bytes_gets_a_complete_run_and_a_second_repro_runs_nothing(trained):
    """Edited training code that trains the same model: train makes a new MLflow run, package logs the
    same bytes' model into it, evaluate is skipped (its inputs are the same bytes), and report, which
    metrics/train.json tells what train was made from, records the known evaluation into the new run.
    Then nothing is left to run."""
    client = client_for(trained)
    before = run_id_of(trained)
    train_py = trained / "stages" / "train.py"
    code = train_py.read_text()
    train_py.write_text(code + "\n# an edit that changes nothing the model is made of\n")
    try:
        result = run(["dvc", "repro"], trained)
        assert ran_stages(result.stdout) == ["train", "package", "report"]
        new = run_id_of(trained)
        assert new != before
        evaluation = json.loads((trained / "metrics" / "eval.json").read_text())["test"]
        recorded = client.get_run(new)
        assert recorded.info.status == "FINISHED"
        assert recorded.data.metrics["test_accuracy"] == evaluation["accuracy"]
        assert {a.path for a in client.list_artifacts(new)} >= {"evaluation", "report"}
        assert client.search_model_versions(f"run_id='{new}'")
        assert new in (trained / "data" / "report" / "report.md").read_text()

        again = run(["dvc", "repro"], trained)
        assert ran_stages(again.stdout) == [] and "Data and pipelines are up to date" in again.stdout
        assert up_to_date(trained)
    finally:
        train_py.write_text(code)
    restored = run(["dvc", "repro"], trained)  # the run cache has the code as it was: nothing trains
    assert "train" not in ran_stages(restored.stdout) and up_to_date(trained)


def test_same_commit_and_params_give_identical_metrics(trained):
    first = json.loads((trained / "metrics" / "train.json").read_text())
    history_before = (trained / "metrics" / "train_history.csv").read_text()
    run(["dvc", "repro", "--force", "train"], trained)
    second = json.loads((trained / "metrics" / "train.json").read_text())
    assert (first["train"], first["val"]) == (second["train"], second["val"])
    drop_times = lambda text: [row.rsplit(",", 1)[0] for row in text.splitlines()]  # noqa: E731
    assert drop_times(history_before) == drop_times((trained / "metrics" / "train_history.csv").read_text())


# Runs the real train stage up to model.fit(), then saves the weights it would start from and stops.
INITIAL_WEIGHTS = """
import runpy, sys, keras, numpy as np
target = sys.argv[1]
def fit(self, *args, **kwargs):
    np.savez(target, *self.get_weights())
    raise SystemExit(0)
keras.Model.fit = fit
sys.argv = ["train"]
runpy.run_module("stages.train", run_name="__main__", alter_sys=True)
"""


def test_initial_weights_depend_on_the_seed_alone(trained, tmp_path):
    """The train stage seeds immediately before it builds the model: whatever draws from Python's or
    NumPy's random state before that (MLflow naming a run, a library's import) changes no weight."""
    import random

    from stages.training.presets import PRESETS, Settings, compiled_model

    repo = tmp_path / "repo"  # a copy without the MLflow store, which the other tests share and read
    shutil.copytree(trained, repo, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns"))
    weights_file = tmp_path / "initial.npz"
    run([sys.executable, "-c", INITIAL_WEIGHTS, str(weights_file)], repo, env={"PYTHONPATH": str(repo)})
    with np.load(weights_file) as npz:
        stage_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]

    preset = PRESETS[SMALL["train"]["model"]]
    settings = Settings.for_preset(preset, epochs=SMALL["train"]["epochs"])
    random.random(), np.random.random()  # draws the stage never makes: they must change nothing
    reference = compiled_model(preset, "mnist", settings, 1000, seed=42).get_weights()
    assert len(stage_weights) == len(reference)
    for got, want in zip(stage_weights, reference, strict=True):
        np.testing.assert_array_equal(got, want)


def test_killed_training_resumes_from_its_last_finished_epoch(trained):
    set_params(trained, train={"epochs": 20})
    state = trained / "data" / "train_state"
    previous_model = (trained / "data" / "model" / "model.keras").read_bytes()
    process = subprocess.Popen(
        ["python", "-m", "stages.train"],
        cwd=trained,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not (state / "history.csv").exists() or len((state / "history.csv").read_text().splitlines()) < 3:
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # two epochs recorded: the kill lands mid-training
    process.wait()
    killed_run = (state / "run_id").read_text().strip()
    # the killed run never touched the previous model, and left no partial file where a stage would look
    assert (trained / "data" / "model" / "model.keras").read_bytes() == previous_model
    assert not [p for p in (trained / "data" / "model").iterdir() if p.name.startswith(".model")]

    rerun = run(["dvc", "repro", "train"], trained)
    output = rerun.stdout + rerun.stderr
    assert "resuming MLflow run" in output
    assert "Epoch 1/20" not in output and "Epoch 20/20" in output
    assert run_id_of(trained) == killed_run
    history = list(csv.DictReader((trained / "metrics" / "train_history.csv").open()))
    assert [row["epoch"] for row in history] == [str(epoch) for epoch in range(1, 21)]
    steps = [m.step for m in client_for(trained).get_metric_history(killed_run, "accuracy")]
    assert sorted(set(steps)) == list(range(1, 21))
    assert not state.exists()  # checkpoints are removed after success


def test_dvc_exp_run_in_a_temporary_copy_logs_to_the_repository_store(trained):
    result = run(["dvc", "exp", "run", "--temp", "-S", "train.model=mlp", "-S", "train.epochs=1"], trained)
    assert "train" in ran_stages(result.stdout)
    runs = client_for(trained).search_runs(
        [client_for(trained).get_experiment_by_name("mnist-pipeline").experiment_id],
        filter_string="params.`train.model` = 'mlp'",
    )
    assert len(runs) == 1
    assert runs[0].data.tags["dvc.experiment"] not in ("", "(workspace)")
    model = logged_model(runs[0].info.run_id)  # its files in the repository's mlruns/, not the temp copy's
    artifacts = Path(model.artifact_location.removeprefix("file://"))
    assert artifacts.is_relative_to(trained / "mlruns") and (artifacts / "MLmodel").is_file()
    assert not list((trained / ".dvc" / "tmp").rglob("mlflow.db"))


QUEUED = [("mlp", 2), ("mlp_dropout", 1)]  # started together by `-j 2`: two writers of one sqlite store


def test_queued_experiments_run_two_at_a_time_and_all_log_to_sqlite(trained):
    """`dvc queue start -j 2`: trainings write to one sqlite store at the same time (WAL + busy wait)."""
    for model, epochs in QUEUED:
        run(
            ["dvc", "exp", "run", "--queue", "-S", f"train.model={model}", "-S", f"train.epochs={epochs}"],
            trained,
        )
    # not captured: the workers it starts inherit its output, and one may outlive the queue (DVC/celery)
    started = subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=trained,
        env=user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    assert started.returncode == 0
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], trained).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    run(["dvc", "queue", "stop", "--kill"], trained, check=False)
    assert status.count("Success") == len(QUEUED) and "Failed" not in status, status
    client = client_for(trained)
    experiment = client.get_experiment_by_name("mnist-pipeline").experiment_id
    for model, epochs in QUEUED:
        [queued] = client.search_runs(
            [experiment],
            filter_string=f"params.`train.model` = '{model}' and params.`train.epochs` = '{epochs}'",
        )
        assert queued.info.status == "FINISHED"
        assert "test_accuracy" in queued.data.metrics and "final_val_accuracy" in queued.data.metrics
        steps = [m.step for m in client.get_metric_history(queued.info.run_id, "accuracy")]
        assert steps == list(range(1, epochs + 1))
        assert len(client.search_model_versions(f"run_id='{queued.info.run_id}'")) == 1
        artifacts = {a.path for a in client.list_artifacts(queued.info.run_id)}
        assert {"evaluation", "report"} <= artifacts and logged_model(queued.info.run_id) is not None
