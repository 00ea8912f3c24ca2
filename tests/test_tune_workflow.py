"""A search shared by machines, executed: `.github/workflows/tune.yml`'s matrix jobs, run at once by
`workflow_runner` as GitHub's runners run them, against a team's real stack (tests/services.py: PostgreSQL
holding MLflow's store and the Optuna study, S3 for artifacts and the DVC remote, `mlflow server` with
basic auth), on small params.

First a worker on a third machine dies (SIGKILL to its whole process group, as when a runner is lost)
while its first trial trains; then the workflow's two matrix jobs share the rest of the study between them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import dvc.api
import optuna
import pytest
import requests
import yaml
from conftest import copy_repository, run, set_params, user_env
from optuna.trial import TrialState
from services import team_server
from workflow_runner import Job, JobResult, Repository, matrix_of, warm_runner_python

pytestmark = pytest.mark.slow

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "tune.yml"
TINY = {
    "preprocess": {"val_size": 500, "limit": 1000},
    "train": {"model": "mlp", "epochs": 2, "batch_size": 64},
    "evaluate": {"misclassified_examples": 4},
}
SPACE = {"train.learning_rate": {"type": "float", "low": 0.0005, "high": 0.005, "log": True}}
TRIALS = 2
HEARTBEAT_S = "2"  # a dead worker's trial is failed after 4 heartbeats: 8 s


def _commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", message], repo)


def _origin(root: Path, server) -> Path:
    """The team's repository: small params, a study of TRIALS trials without pruning, the S3 remote."""
    seed = copy_repository(root / "seed")
    set_params(seed, **TINY, tune={"study": "team", "trials": TRIALS, "pruner": None, "space": SPACE})
    run(["dvc", "remote", "add", "-d", "storage", "s3://dvc/tune"], seed)
    run(["dvc", "remote", "modify", "storage", "endpointurl", server.s3.endpoint], seed)
    run(["dvc", "repro"], seed)  # main's model, trained and pushed, as the retrain workflow leaves it
    run(["dvc", "push"], seed, env=server.s3.env)
    _commit(seed, "A study of small trials, and the team's remote")
    run(["git", "branch", "-M", "main"], seed)
    origin = root / "origin.git"
    run(["git", "clone", "-q", "--bare", str(seed), str(origin)], root)
    return origin


def _api(server, endpoint: str, **body) -> dict:
    answer = requests.post(
        f"{server.url}/api/2.0/mlflow/{endpoint}", auth=server.admin, json=body, timeout=30
    )
    answer.raise_for_status()
    return answer.json()


def _trial_runs(server, study: str) -> dict[int, dict]:
    experiment = requests.get(
        f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "mnist-pipeline"},
        auth=server.admin,
        timeout=30,
    )
    if not experiment.ok:  # not created yet
        return {}
    found = _api(
        server,
        "runs/search",
        experiment_ids=[experiment.json()["experiment"]["experiment_id"]],
        filter=f"tags.`optuna.study` = '{study}'",
        max_results=100,
    ).get("runs", [])
    runs = {}
    for found_run in found:
        tags = {tag["key"]: tag["value"] for tag in found_run["data"].get("tags", [])}
        if "optuna.trial" in tags:
            found_run["tags"] = tags
            found_run["params"] = {p["key"]: p["value"] for p in found_run["data"].get("params", [])}
            found_run["metrics"] = {m["key"]: m["value"] for m in found_run["data"].get("metrics", [])}
            runs[int(tags["optuna.trial"])] = found_run
    return runs


def _wait_for(condition, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _kill_a_worker_mid_trial(root: Path, origin: Path, server, env: dict[str, str]) -> None:
    """A worker on another machine, lost while its first trial trains."""
    machine = root / "lost-machine"
    run(["git", "clone", "-q", str(origin), str(machine)], root)
    run(["dvc", "pull"], machine, env=server.s3.env)  # main's data and model, as a runner pulls them
    with (root / "lost-machine.log").open("w") as log:
        worker = subprocess.Popen(
            ["mnist-tune", "--worker", "lost"],
            cwd=machine,
            env=user_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait_for(lambda: 0 in _trial_runs(server, "team"), "the lost worker's trial to train")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(4 * int(HEARTBEAT_S) + 2)  # its heartbeat is stale now


def test_the_workflows_workers_share_one_study_and_outlive_a_lost_one(tmp_path):
    with team_server(tmp_path / "services", databases=("optuna",)) as server:
        password = server.add_user("tune-bot")
        storage = server.database.uri("optuna")
        origin = _origin(tmp_path, server)
        secrets = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "tune-bot",
            "MLFLOW_TRACKING_PASSWORD": password,
            "OPTUNA_STORAGE": storage,
            "DVC_REMOTE_ACCESS_KEY_ID": server.s3.env["AWS_ACCESS_KEY_ID"],
            "DVC_REMOTE_SECRET_ACCESS_KEY": server.s3.env["AWS_SECRET_ACCESS_KEY"],
        }
        worker_env = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "tune-bot",
            "MLFLOW_TRACKING_PASSWORD": password,
            "MNIST_TUNE_STORAGE": storage,
            "MNIST_TUNE_HEARTBEAT_S": HEARTBEAT_S,
            **server.s3.env,
        }
        _kill_a_worker_mid_trial(tmp_path, origin, server, worker_env)

        repository = Repository(origin, secrets, {"RETRAIN_DEVICE": "cpu"})
        python = warm_runner_python(tmp_path)
        entries = matrix_of(WORKFLOW, "tune")
        assert [entry["worker"] for entry in entries] == [1, 2, 3, 4]
        jobs = [
            Job(
                WORKFLOW,
                "tune",
                repository,
                tmp_path / f"runner-{entry['worker']}",
                event="workflow_dispatch",
                run_id=2001,
                python_bin=python,
                matrix=entry,
                before_step=lambda name, env: env.update(MNIST_TUNE_HEARTBEAT_S=HEARTBEAT_S),
            )
            for entry in entries[:2]  # two runners of the four
        ]
        results: dict[int, JobResult] = {}

        def run_job(index: int) -> None:
            results[index] = jobs[index].run()

        threads = [threading.Thread(target=run_job, args=(index,)) for index in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for index, result in results.items():
            (tmp_path / f"runner-{index + 1}.log").write_text(f"{result.log}\n--- summary\n{result.summary}")
            assert result.conclusion == "success", result.log[-6000:]

        trials = optuna.load_study(study_name="team", storage=storage).get_trials()
        runs = _trial_runs(server, "team")
        best = run(["mnist-tune", "--best"], tmp_path / "lost-machine", env=worker_env).stdout

        # a teammate sees every experiment the workers pushed, and adopts the best
        teammate = tmp_path / "teammate"
        run(["git", "clone", "-q", str(origin), str(teammate)], tmp_path)
        pushed = sorted(
            ref.rsplit("/", 1)[-1]
            for ref in run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], origin).stdout.split()
        )
        run(["dvc", "exp", "pull", "origin", *pushed], teammate, env=server.s3.env)
        shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-pager"], teammate).stdout)
        validation = {  # each experiment's own metrics/train.json, from the teammate's pulled cache
            name: json.loads(dvc.api.read("metrics/train.json", repo=str(teammate), rev=name))["val"][
                "accuracy"
            ]
            for name in pushed
        }
        best_name = next(line.split()[-1] for line in best.splitlines() if line.startswith("  dvc exp apply"))
        run(["dvc", "exp", "apply", best_name], teammate, env=server.s3.env)
        adopted = yaml.safe_load((teammate / "params.yaml").read_text())

    assert trials[0].state == TrialState.FAIL  # the lost worker's: its heartbeat stopped
    ran = [t for t in trials if "experiment" in t.user_attrs and t.number > 0]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * TRIALS, [(t.number, t.state) for t in trials]
    # any other trial was asked for at the very moment the budget ran out: it ran nothing
    assert all(t.state == TrialState.FAIL for t in trials if t not in ran and t.number > 0)
    assert len({t.params["train.learning_rate"] for t in ran}) == TRIALS  # the workers' samplers differ

    names = sorted(t.user_attrs["experiment"] for t in ran)
    assert pushed == names
    for result in results.values():  # both workers ran trials, and pushed them
        assert "Pushed experiments: team-" in result.summary, result.summary
    listed = {e["name"]: e for commit in shown for e in commit.get("experiments") or []}
    assert sorted(listed) == names
    for trial in ran:
        assert validation[trial.user_attrs["experiment"]] == pytest.approx(trial.value)

    assert runs[0]["info"]["status"] == "FAILED" and runs[0]["tags"]["optuna.state"] == "FAIL"
    parents = {runs[t.number]["tags"]["mlflow.parentRunId"] for t in ran}
    assert len(parents) == 1 and runs[0]["tags"]["mlflow.parentRunId"] in parents
    for trial in ran:
        recorded = runs[trial.number]
        assert recorded["info"]["status"] == "FINISHED"
        assert float(recorded["params"]["train.learning_rate"]) == pytest.approx(
            trial.params["train.learning_rate"]
        )
        assert recorded["metrics"]["final_val_accuracy"] == pytest.approx(trial.value)

    best_trial = max(ran, key=lambda t: t.value)
    assert f"best: trial {best_trial.number}, val_accuracy {best_trial.value:.4f}" in best
    assert best_name == best_trial.user_attrs["experiment"]
    assert adopted["train"]["learning_rate"] == pytest.approx(best_trial.params["train.learning_rate"])
