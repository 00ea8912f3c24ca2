"""Workers of one study on a real PostgreSQL, as a team's runners start them: four at once on an empty
database, then one killed mid-trial and a new one started alone, which finishes the budget. Small params:
a thousand images, one epoch of the MLP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import copy_repository, run, set_params, user_env
from optuna.trial import TrialState
from services import postgres

pytestmark = pytest.mark.slow

TINY = {
    "preprocess": {"val_size": 500, "limit": 1000},
    "train": {"model": "mlp", "epochs": 1, "batch_size": 64},
}
SPACE = {"train.learning_rate": {"type": "float", "low": 0.0005, "high": 0.01, "log": True}}
HEARTBEAT_S = "2"  # a dead worker's trial is failed after 4 heartbeats: 8 s


def _repository(dest: Path, trials: int) -> Path:
    repo = copy_repository(dest)
    set_params(repo, **TINY, tune={"study": "team", "trials": trials, "pruner": None, "space": SPACE})
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "a study"], repo)
    run(["dvc", "repro", "preprocess"], repo)  # as a runner's `dvc pull`: the data stages are done
    return repo


def _worker(repo: Path, name: str, storage: str, log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            ["mnist-tune", "--worker", name, "--storage", storage],
            cwd=repo,
            env=user_env(MNIST_TUNE_HEARTBEAT_S=HEARTBEAT_S),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _ghosts(repo: Path) -> list[str]:
    """Experiments `dvc exp show` lists as running, and DVC's temporary workspaces left on disk."""
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-pager"], repo).stdout)
    running = [
        e.get("name") or e["rev"]
        for commit in shown
        for e in commit.get("experiments") or []
        if any(rev.get("executor") for rev in e.get("revs", []))
    ]
    workspaces = [p.name for p in (repo / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*")]
    return running + workspaces


def test_workers_started_at_once_share_one_budget_and_outlive_a_killed_one(tmp_path):
    with postgres(("optuna",)) as server:
        storage = server.uri("optuna")
        repo = _repository(tmp_path / "repo", trials=4)

        # four workers at once on an empty database: Optuna's tables are created once, the budget is exact
        workers = [_worker(repo, f"w{n}", storage, tmp_path / f"w{n}.log") for n in range(4)]
        for n, worker in enumerate(workers):
            assert worker.wait(timeout=600) == 0, (tmp_path / f"w{n}.log").read_text()[-4000:]
        trials = optuna.load_study(study_name="team", storage=storage).get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 4, [(t.number, t.state) for t in trials]
        assert all(t.user_attrs.get("surplus") for t in trials if t not in complete)  # refused, ran nothing
        assert len({t.params["train.learning_rate"] for t in complete}) == 4  # the samplers differ

        # a worker killed mid-trial, then a new one alone: the dead trial is failed and run again
        set_params(repo, tune={"trials": 5})
        lost = _worker(repo, "lost", storage, tmp_path / "lost.log")
        deadline = time.monotonic() + 300
        while not (started := re.search(r"trial (\d+) \(", (tmp_path / "lost.log").read_text())) or not list(
            (repo / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*")
        ):
            assert lost.poll() is None and time.monotonic() < deadline, (tmp_path / "lost.log").read_text()
            time.sleep(0.5)
        number = int(started.group(1))
        time.sleep(3)  # training under way
        os.killpg(lost.pid, signal.SIGKILL)
        lost.wait()
        assert _ghosts(repo)  # what a killed `dvc exp run --temp` leaves

        alone = run(
            ["mnist-tune", "--worker", "lost", "--storage", storage],
            repo,
            env={"MNIST_TUNE_HEARTBEAT_S": "2"},
        )
        trials = optuna.load_study(study_name="team", storage=storage).get_trials()
        by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
        dead = trials[number]
        assert dead.state == TrialState.FAIL and not dead.user_attrs.get("surplus"), alone.stderr
        (retried,) = [t for t in by_state[TrialState.COMPLETE] if t.number > number]
        assert retried.params == dead.params and f"trial {number}'s again" in alone.stderr
        assert len(by_state[TrialState.COMPLETE]) == 5
        assert _ghosts(repo) == [], alone.stderr
        names = sorted(t.user_attrs["experiment"] for t in by_state[TrialState.COMPLETE])
        assert sorted(run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()) == names

        # a wrong password: one line, no traceback, no password
        wrong = storage.replace(f":{server.password}@", ":not-the-password@")
        refused = run(["mnist-tune", "--best", "--storage", wrong], repo, check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert [line for line in refused.stderr.splitlines() if line.startswith("error:")], refused.stderr
        assert "not-the-password" not in refused.stderr and "password authentication failed" in refused.stderr
