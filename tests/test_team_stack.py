"""A team's stack, as the README's "A team's server" sets it up, started for real on 127.0.0.1:
`mlflow server` with the basic-auth app on a PostgreSQL store (Debian's package) and artifacts proxied to
S3 (moto's server), a DVC remote on the same S3. The pipeline, the commands and `mlflow models serve` run
against it as a team member would, with the password only in the environment."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from conftest import ALL_STAGES, SMALL, copy_repository, free_port, ran_stages, run, serving, set_params
from services import bucket_keys, team_server

from stages.training.presets import PRESETS

pytestmark = pytest.mark.slow

MODEL = "mnist-classifier"


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    with team_server(root / "services") as server:
        password = server.add_user("pipeline")
        member = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "pipeline",
            "MLFLOW_TRACKING_PASSWORD": password,
        }
        repo = copy_repository(root / "repo")
        set_params(repo, **SMALL)
        yield server, repo, member, password


def test_without_credentials_the_server_refuses_the_pipeline_and_says_what_to_set(team):
    server, repo, _, _ = team
    result = run(["dvc", "repro"], repo, check=False, env={"MLFLOW_TRACKING_URI": server.url})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "asks for a login (HTTP 401)" in result.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in result.stderr
    assert not (repo / "data" / "model").exists()  # refused before training


@pytest.fixture(scope="module")
def trained(team):
    _, repo, member, _ = team
    result = run(["dvc", "repro"], repo, env=member)
    assert ran_stages(result.stdout)[-4:] == ALL_STAGES[-4:]  # train, package, evaluate, report
    return result


def test_dvc_repro_records_the_whole_run_on_the_team_server(team, trained):
    server, repo, member, password = team
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in member.items():
            patch.setenv(key, value)
        run_id = json.loads((repo / "data" / "train_run.json").read_text())["run_id"]
        recorded = client.get_run(run_id)
        params, metrics, tags = recorded.data.params, recorded.data.metrics, recorded.data.tags
        assert (
            params["train.model"] == "fast_cnn"
            and int(params["model.params.total"]) == PRESETS["fast_cnn"].build("mnist").count_params()
        )
        assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]
        evaluation = json.loads((repo / "metrics" / "eval.json").read_text())["test"]
        assert metrics["test_accuracy"] == evaluation["accuracy"]
        versions = client.search_model_versions(f"name='{MODEL}' and run_id='{run_id}'")
        assert len(versions) == 1

    keys = bucket_keys(server, "mlflow")  # the artifacts went through the server into the bucket
    assert any(key.endswith("/model.keras") for key in keys)
    assert any(key.endswith("/report/report.md") for key in keys)
    assert any(key.endswith("/evaluation/confusion.png") for key in keys)

    secret_free = [
        *params.values(),
        *tags.values(),
        trained.stdout,
        trained.stderr,
        (repo / "data" / "report" / "report.md").read_text(),
        (repo / "data" / "report" / "report.html").read_text(),
    ]
    assert not [text for text in secret_free if password in text]


def test_the_commands_and_mlflow_models_serve_work_against_it(team, trained, tmp_path):
    _, repo, member, _ = team
    runs = run(["mnist-runs", "-n", "5"], repo, env=member).stdout
    assert "fast_cnn" in runs.splitlines()[1]
    promoted = run(["mnist-promote"], repo, env=member).stdout
    assert promoted.startswith("promoted:")

    with np.load(repo / "data" / "prepared" / "test.npz") as data:
        images = (data["x"][:3, ..., 0] * 255).round().astype(np.uint8)
    np.savez(tmp_path / "three.npz", x=images)
    predict = ["mnist-predict", "--json", "--model", f"models:/{MODEL}@champion", str(tmp_path / "three.npz")]
    answer = run(predict, repo, env=member)
    assert len(answer.stdout.splitlines()) == 3 and answer.stderr == ""

    port = free_port()
    command = [
        "env",
        *(f"{k}={v}" for k, v in member.items()),
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{MODEL}@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serving(command, tmp_path, port, "/ping") as url:
        body = json.dumps({"inputs": images.tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
    assert [row["class"] for row in served] == [
        json.loads(line)["class"] for line in answer.stdout.splitlines()
    ]


def test_dvc_push_then_a_second_clone_pulls_and_trains_nothing(team, trained, tmp_path):
    server, repo, member, _ = team
    remote = {**server.s3.env, **member}
    run(["dvc", "remote", "add", "-d", "storage", "s3://dvc/mnist-pipeline"], repo)
    run(["dvc", "remote", "modify", "storage", "endpointurl", server.s3.endpoint], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "trained"], repo)
    run(["dvc", "push"], repo, env=remote)
    assert any(key.startswith("mnist-pipeline/files/md5/") for key in bucket_keys(server, "dvc"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone, env=remote)
    again = run(["dvc", "repro"], clone, env=remote)
    # no training: check_params rewrites its uncached marker; report's output came with the pull, so the
    # run on the server, which the first clone completed, gets nothing new
    assert ran_stages(again.stdout) == ["check_params"], again.stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
