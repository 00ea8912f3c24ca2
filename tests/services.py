"""A team's services, started for real on 127.0.0.1 in a test's own folder: a PostgreSQL cluster from
Debian's `postgresql` package, an S3 endpoint (moto's server mode, which DVC's and MLflow's own test suites
use as their S3), and `mlflow server` on both with the basic-auth app, as the README's "A team's server"
sets them up. Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, serving


def _postgres_bin(name: str) -> str:
    """Debian keeps the server's programs under /usr/lib/postgresql/<version>/bin, off PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (.ci/run does)")
    return str(found[-1])


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI machines run as root, so it runs as the package's user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass(frozen=True)
class Postgres:
    port: int
    password: str

    def uri(self, database: str) -> str:
        """SQLAlchemy 2's URI for psycopg 3 (a plain postgresql:// would ask for psycopg2)."""
        return f"postgresql+psycopg://mlflow:{self.password}@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def postgres(databases: tuple[str, ...]) -> Iterator[Postgres]:
    """A private cluster listening on 127.0.0.1 only, with a password-protected user `mlflow` owning
    `databases`."""
    import psycopg

    # its own folder, not under pytest's (private to root): the server runs as `postgres` when we are root
    root = Path(tempfile.mkdtemp(prefix="mnist-pipeline-postgres-"))
    password = secrets.token_urlsafe(12)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    data, port = root / "data", free_port()
    initdb = [
        _postgres_bin("initdb"),
        "-D",
        str(data),
        "-U",
        "mlflow",
        f"--pwfile={root / 'pw'}",
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
    ]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
    pg_ctl = [_postgres_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    subprocess.run(_as_postgres([*pg_ctl, "-o", options, "-w", "start"]), check=True, capture_output=True)
    try:
        server = Postgres(port, password)
        with psycopg.connect(server.uri("postgres").replace("+psycopg", ""), autocommit=True) as connection:
            for database in databases:
                connection.execute(f"CREATE DATABASE {database}")
        yield server
    finally:
        subprocess.run(_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"]), check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class S3:
    endpoint: str
    env: dict[str, str]  # what a client of this endpoint sets


@contextlib.contextmanager
def s3(root: Path, buckets: tuple[str, ...]) -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1, with `buckets` created."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    root.mkdir(parents=True, exist_ok=True)
    with serving(["moto_server", "-H", "127.0.0.1", "-p", str(port)], root, port, "/moto-api/"):
        env = {
            "AWS_ACCESS_KEY_ID": "team-key",
            "AWS_SECRET_ACCESS_KEY": "team-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }
        store = S3(endpoint, env)
        for bucket in buckets:
            s3_client(store).create_bucket(Bucket=bucket)
        yield store


def s3_client(store: S3):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name="us-east-1",
        aws_access_key_id=store.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=store.env["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass(frozen=True)
class TeamServer:
    url: str
    admin: tuple[str, str]
    s3: S3
    database: Postgres  # the server MLflow's store is on, which may hold other databases (`databases`)

    def add_user(self, username: str) -> str:
        """A user the admin created, as the README says; its password."""
        import requests

        password = secrets.token_urlsafe(16)
        answer = requests.post(
            f"{self.url}/api/2.0/mlflow/users/create",
            auth=self.admin,
            timeout=30,
            json={"username": username, "password": password},
        )
        answer.raise_for_status()
        return password


@contextlib.contextmanager
def team_server(root: Path, databases: tuple[str, ...] = ()) -> Iterator[TeamServer]:
    """PostgreSQL + S3 + `mlflow server --app-name basic-auth`, as the README's commands start them; the
    cluster also holds `databases` (e.g. `optuna`, for a study the team's workers share)."""
    with (
        postgres(("mlflow", "mlflow_auth", *databases)) as database,
        s3(root / "s3", ("mlflow", "dvc")) as store,
    ):
        admin = ("admin", secrets.token_urlsafe(16))
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {database.uri('mlflow_auth')}\n"
            f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        port = free_port()
        env = {
            **store.env,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        command = [
            "env",
            *(f"{k}={v}" for k, v in env.items()),
            "mlflow",
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            database.uri("mlflow"),
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        with serving(command, root, port, "/health") as url:
            _wait_for_login(url, admin)
            yield TeamServer(url, admin, store, database)


def _wait_for_login(url: str, admin: tuple[str, str]) -> None:
    """The server answers /health before its auth database is ready; wait until the admin can log in."""
    import requests

    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(
                f"{url}/api/2.0/mlflow/experiments/search?max_results=1", auth=admin, timeout=5
            ).ok:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the MLflow server at {url} does not let its admin in")
        time.sleep(0.5)


def bucket_keys(server: TeamServer, bucket: str) -> list[str]:
    client = s3_client(server.s3)
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=bucket, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]
