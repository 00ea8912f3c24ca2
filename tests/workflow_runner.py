"""A GitHub Actions job run on this machine the way GitHub's runner runs it, so that tests execute the
workflows themselves rather than lint them.

Reproduced: the steps in order; `run:` scripts under the shell GitHub picks (`bash -e {0}` by default,
`bash --noprofile --norc -eo pipefail {0}` for `shell: bash`) in the checkout; the workflow's, job's and
step's `env` over what earlier steps wrote to GITHUB_ENV; GITHUB_PATH, GITHUB_OUTPUT and
GITHUB_STEP_SUMMARY; `${{ }}` expressions over `github`, `inputs`, `secrets` and `vars` (unset ones are
empty), `env`, `steps`, `runner` and `matrix` (a job with a `strategy.matrix` is one Job per entry of
`matrix_of`), with `||`, `&&`, `!`, `==`, `!=` and the status functions; `if:`; a failed step skips the
rest unless their `if:` asks for them. Actions map to local equivalents (`ACTIONS`): checkout clones the
bare origin, setup-python puts a given Python first on PATH, upload-artifact checks that the listed paths
exist. Anything else raises, so the workflow cannot outgrow what the tests run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ------------------------------------------------------------------------------------------ expressions

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>\|\||&&|==|!=|!|\(|\)|,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_*][A-Za-z0-9_-]*)*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"unsupported expression: {text!r} (at {text[position:]!r})")
        kind = match.lastgroup
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


def _truthy(value: Any) -> bool:
    return value not in (None, "", 0, False)


class _Parser:
    """GitHub's expression grammar, as far as workflows here use it: `a || b` is the first truthy operand."""

    def __init__(self, text: str, lookup: Callable[[str], Any], functions: Mapping[str, Callable[[], Any]]):
        self.tokens, self.lookup, self.functions, self.text = _tokens(text), lookup, functions, text

    def parse(self) -> Any:
        value = self._or()
        if self.tokens:
            raise ValueError(f"unsupported expression: {self.text!r}")
        return value

    def _take(self, value: str) -> bool:
        if self.tokens and self.tokens[0] == ("op", value):
            self.tokens.pop(0)
            return True
        return False

    def _or(self) -> Any:
        value = self._and()
        while self._take("||"):
            other = self._and()
            value = value if _truthy(value) else other
        return value

    def _and(self) -> Any:
        value = self._compare()
        while self._take("&&"):
            other = self._compare()
            value = other if _truthy(value) else value
        return value

    def _compare(self) -> Any:
        value = self._unary()
        for op in ("==", "!="):
            if self._take(op):
                other = self._unary()
                equal = str(value if value is not None else "").lower() == str(other or "").lower()
                return equal if op == "==" else not equal
        return value

    def _unary(self) -> Any:
        if self._take("!"):
            return not _truthy(self._unary())
        if self._take("("):
            value = self._or()
            if not self._take(")"):
                raise ValueError(f"unbalanced parentheses: {self.text!r}")
            return value
        if not self.tokens:
            raise ValueError(f"incomplete expression: {self.text!r}")
        kind, token = self.tokens.pop(0)
        if kind == "str":
            return token[1:-1].replace("''", "'")
        if kind == "num":
            return float(token) if "." in token else int(token)
        if kind == "name" and token in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token]
        if kind == "name" and self._take("("):
            if token not in self.functions or not self._take(")"):
                raise ValueError(f"unsupported function in {self.text!r}: {token}")
            return self.functions[token]()
        if kind == "name":
            return self.lookup(token)
        raise ValueError(f"unsupported expression: {self.text!r}")


# ------------------------------------------------------------------------------------------ the matrix


def matrix_of(workflow: Path, job: str) -> list[dict[str, Any]]:
    """The entries of a job's `strategy.matrix`, one per job GitHub starts (none: the job runs once), in
    GitHub's order: every combination of the lists, the first key varying slowest. `include`, `exclude`
    and expressions in place of a list are not reproduced, and raise."""
    spec = yaml.safe_load(workflow.read_text())["jobs"][job]
    matrix = (spec.get("strategy") or {}).get("matrix")
    if not matrix:
        return []
    unsupported = [
        key for key, values in matrix.items() if key in ("include", "exclude") or not isinstance(values, list)
    ]
    if unsupported:
        raise NotImplementedError(f"matrix keys the runner does not reproduce: {unsupported}")
    entries: list[dict[str, Any]] = [{}]
    for key, values in matrix.items():
        entries = [entry | {key: value} for entry in entries for value in values]
    return entries


# ------------------------------------------------------------------------------------------ the job


@dataclass
class StepResult:
    name: str
    outcome: str  # success | failure | skipped
    seconds: float
    log: str


@dataclass
class JobResult:
    conclusion: str  # success | failure
    steps: list[StepResult]
    summary: str
    workspace: Path
    seconds: float

    @property
    def log(self) -> str:
        return "\n".join(f"--- {s.name} ({s.outcome}, {s.seconds:.0f} s)\n{s.log}" for s in self.steps)

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.outcome != "skipped"]


@dataclass
class Repository:
    """What GitHub keeps between runs of a workflow: the origin, the secrets and variables, the
    artifacts (per run id, so that a re-run finds its first attempt's)."""

    origin: Path  # a bare git repository
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    artifacts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    name: str = "team/mnist-pipeline"


def _env_file(path: Path) -> dict[str, str]:
    """GITHUB_ENV / GITHUB_OUTPUT: `NAME=value` lines, or `NAME<<DELIMITER` ... `DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    while lines:
        line = lines.pop(0)
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            while lines and lines[0] != delimiter:
                body.append(lines.pop(0))
            if not lines:
                raise ValueError(f"{path.name}: no closing {delimiter!r} for {name}")
            lines.pop(0)
            values[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        elif line.strip():
            raise ValueError(f"{path.name}: malformed line {line!r}")
    return values


class Job:
    """One run (one attempt) of one job of a workflow file."""

    def __init__(
        self,
        workflow: Path,
        job: str,
        repository: Repository,
        root: Path,
        *,
        event: str,
        inputs: Mapping[str, str] | None = None,
        run_id: int,
        run_attempt: int = 1,
        python_bin: list[Path],
        before_step: Callable[[str, dict[str, str]], None] | None = None,
        step_timeout_s: float = 900,
        matrix: Mapping[str, Any] | None = None,
    ):
        document = yaml.safe_load(workflow.read_text())
        self.workflow_env = document.get("env") or {}
        self.top_defaults = (document.get("defaults") or {}).get("run", {})
        self.spec = document["jobs"][job]
        combinations = matrix_of(workflow, job)
        if combinations and matrix not in combinations:
            raise ValueError(f"job {job!r} runs once per matrix entry: pass one of {combinations}")
        self.matrix = dict(matrix or {})
        declared = (document[True].get("workflow_dispatch") or {}).get("inputs") or {}
        # a scheduled run has no inputs: `inputs.x` is empty, not the dispatch default
        self.inputs = {name: "" for name in declared}
        if event == "workflow_dispatch":
            self.inputs |= {name: str(spec.get("default", "")) for name, spec in declared.items()}
        self.inputs |= dict(inputs or {})
        unknown = set(self.inputs) - set(declared)
        if unknown:
            raise ValueError(f"inputs the workflow does not declare: {sorted(unknown)}")
        self.repository, self.event = repository, event
        self.run_id, self.run_attempt = str(run_id), str(run_attempt)
        self.python_bin, self.before_step, self.step_timeout_s = python_bin, before_step, step_timeout_s
        self.root = root
        self.workspace = root / "work" / repository.name.split("/")[1]
        self.temp = root / "temp"
        self.extra_env: dict[str, str] = {}  # from GITHUB_ENV
        self.extra_path: list[str] = []  # from GITHUB_PATH, newest first
        self.steps_context: dict[str, dict[str, Any]] = {}
        self.summary: list[str] = []
        self.failed = False

    # -------------------------------------------------------------------------------------- expressions

    def _github(self) -> dict[str, str]:
        """The `github` context; the runner also sets each as GITHUB_<KEY> (GITHUB_RUN_ID, ...)."""
        return {
            "run_id": self.run_id,
            "run_attempt": self.run_attempt,
            "event_name": self.event,
            "ref": "refs/heads/main",
            "ref_name": "main",
            "repository": self.repository.name,
            "server_url": "https://github.com",
            "workspace": str(self.workspace),
        }

    def _contexts(self, env: Mapping[str, str]) -> dict[str, Any]:
        return {
            "github": self._github(),
            "inputs": self.inputs,
            "secrets": self.repository.secrets,
            "vars": self.repository.variables,
            "env": dict(env),
            "steps": self.steps_context,
            "runner": {"temp": str(self.temp), "os": "Linux", "arch": "X64"},
            "matrix": self.matrix,
        }

    def evaluate(self, expression: str, env: Mapping[str, str]) -> Any:
        contexts = self._contexts(env)

        def lookup(name: str) -> Any:
            value: Any = contexts
            for part in name.split("."):
                if not isinstance(value, Mapping):
                    return None
                if part not in value and value is contexts:
                    raise ValueError(f"unknown context {part!r} in {expression!r}")
                value = value.get(part)
            return value

        functions = {
            "success": lambda: not self.failed,
            "failure": lambda: self.failed,
            "always": lambda: True,
            "cancelled": lambda: False,
        }
        return _Parser(expression, lookup, functions).parse()

    def interpolate(self, text: Any, env: Mapping[str, str]) -> str:
        if isinstance(text, bool):  # YAML's `true` in `with:` reaches an action as the string "true"
            return str(text).lower()

        def replace(match: re.Match) -> str:
            value = self.evaluate(match.group(1), env)
            if isinstance(value, bool):
                return str(value).lower()
            return "" if value is None else str(value)

        return re.sub(r"\$\{\{(.*?)\}\}", replace, str(text))

    def _should_run(self, step: Mapping[str, Any], env: Mapping[str, str]) -> bool:
        condition = step.get("if")
        if condition is None:
            return not self.failed
        text = str(condition).strip()
        if text.startswith("${{") and text.endswith("}}"):
            text = text[3:-2]
        if not re.search(r"\b(success|failure|always|cancelled)\(", text):
            text = f"success() && ({text})"
        return _truthy(self.evaluate(text, env))

    # -------------------------------------------------------------------------------------- running

    def _base_env(self) -> dict[str, str]:
        """The runner service's own environment: no variables of the test's shell leak into the job."""
        keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "USER")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        env["PATH"] = os.pathsep.join([*self.extra_path, "/usr/local/bin", "/usr/bin", "/bin"])
        env |= {"CI": "true", "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(self.temp)}
        return env | {f"GITHUB_{key.upper()}": value for key, value in self._github().items()}

    def _step_env(self, step: Mapping[str, Any]) -> dict[str, str]:
        env = self._base_env() | self.extra_env  # `env:` blocks win over GITHUB_ENV, as on GitHub
        for block in (self.workflow_env, self.spec.get("env") or {}, step.get("env") or {}):
            for key, value in block.items():
                env[key] = self.interpolate(value, env)
        return env

    def run(self) -> JobResult:
        started = time.monotonic()
        shutil.rmtree(self.root, ignore_errors=True)
        self.temp.mkdir(parents=True)
        results = []
        for index, step in enumerate(self.spec["steps"]):
            name = step.get("name") or step.get("uses") or step["run"].splitlines()[0]
            env = self._step_env(step)
            if not self._should_run(step, env):
                results.append(StepResult(name, "skipped", 0.0, ""))
                continue
            if self.before_step:
                self.before_step(name, env)
            files = {
                key: self.temp / f"{key.lower()}_{index}"
                for key in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")
            }
            for path in files.values():
                path.touch()
            env |= {key: str(path) for key, path in files.items()}
            step_started = time.monotonic()
            try:
                code, log = self._run_step(step, env, index)
            except subprocess.TimeoutExpired as exc:
                code, log = 124, f"{exc.output or ''}\n(step timed out after {self.step_timeout_s:.0f} s)"
            outcome = "success" if code == 0 else "failure"
            results.append(StepResult(name, outcome, time.monotonic() - step_started, log))
            self.extra_env |= _env_file(files["GITHUB_ENV"])
            self.extra_path[:0] = reversed(files["GITHUB_PATH"].read_text().split())
            self.summary.append(files["GITHUB_STEP_SUMMARY"].read_text())
            if "id" in step:
                self.steps_context[step["id"]] = {
                    "outputs": _env_file(files["GITHUB_OUTPUT"]),
                    "outcome": outcome,
                    "conclusion": outcome,
                }
            if code != 0 and not step.get("continue-on-error"):
                self.failed = True
        return JobResult(
            "failure" if self.failed else "success",
            results,
            "".join(self.summary),
            self.workspace,
            time.monotonic() - started,
        )

    def _run_step(self, step: Mapping[str, Any], env: dict[str, str], index: int) -> tuple[int, str]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            if action not in ACTIONS:
                raise NotImplementedError(f"no local equivalent of {step['uses']}")
            inputs = {key: self.interpolate(value, env) for key, value in (step.get("with") or {}).items()}
            return ACTIONS[action](self, inputs, env)
        shell = step.get("shell") or (self.spec.get("defaults") or {}).get("run", {}).get("shell")
        shell = shell or self.top_defaults.get("shell")
        script = self.temp / f"step_{index}.sh"
        script.write_text(self.interpolate(step["run"], env))
        if shell is None:
            command = ["bash", "-e", str(script)]
        elif shell == "bash":
            command = ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)]
        else:
            raise NotImplementedError(f"shell {shell!r}")
        cwd = self.workspace / self.interpolate(step.get("working-directory", "."), env)
        done = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=self.step_timeout_s,
            check=False,
        )
        return done.returncode, done.stdout


# ------------------------------------------------------------------------------------------ actions


def warm_runner_python(root: Path) -> list[Path]:
    """What setup-python leaves on a warm runner: a Python whose environment already holds the tested
    versions (this test's packages, seen through a .pth, their scripts next on PATH), so the workflow's
    own install step runs for real but downloads nothing. Python's version is this one's."""
    venv = root / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    layered = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(layered, "_layered_on_tests.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    return [venv / "bin", Path(sys.executable).parent]


def _checkout(job: Job, inputs: Mapping[str, str], env: Mapping[str, str]) -> tuple[int, str]:
    depth = int(inputs.get("fetch-depth", "1") or 0)
    command = ["git", "clone", "--quiet", "--branch", "main"]
    if depth:
        command += ["--depth", str(depth)]
    command += [f"file://{job.repository.origin}", str(job.workspace)]
    job.workspace.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def _setup_python(job: Job, inputs: Mapping[str, str], env: Mapping[str, str]) -> tuple[int, str]:
    """The runner's Python, first on PATH, as setup-python leaves it; its pip cache needs the file named."""
    dependency_file = inputs.get("cache-dependency-path")
    if inputs.get("cache") and dependency_file and not (job.workspace / dependency_file).exists():
        return 1, f"cache-dependency-path {dependency_file} does not exist"
    job.extra_path[:0] = [str(path) for path in job.python_bin]
    return 0, f"python {inputs.get('python-version')}: {job.python_bin[0]}"


def _upload_artifact(job: Job, inputs: Mapping[str, str], env: Mapping[str, str]) -> tuple[int, str]:
    key = (job.run_id, inputs["name"])
    if key in job.repository.artifacts and inputs.get("overwrite", "false") != "true":
        return 1, f"an artifact named {inputs['name']!r} already exists in run {job.run_id}"
    found = []
    for pattern in filter(None, (line.strip() for line in inputs["path"].splitlines())):
        matched = (
            job.workspace.glob(pattern.rstrip("/"))
            if any(c in pattern for c in "*?[")
            else [job.workspace / pattern.rstrip("/")]
        )
        found += [str(m) for m in matched if m.is_file() or (m.is_dir() and any(m.iterdir()))]
    if not found:
        level = inputs.get("if-no-files-found", "warn")
        return (1 if level == "error" else 0), f"no files found for {inputs['path']!r}"
    job.repository.artifacts[key] = found
    return 0, f"uploaded {inputs['name']}: {len(found)} paths"


ACTIONS: dict[str, Callable[[Job, Mapping[str, str], Mapping[str, str]], tuple[int, str]]] = {
    "actions/checkout": _checkout,
    "actions/setup-python": _setup_python,
    "actions/upload-artifact": _upload_artifact,
}
