"""A stage run as a program skips the interpreter's teardown once its work is done (stages/__init__.py),
and loses nothing by it: its exit handlers run, its buffered output is flushed, and only a finished stage
does it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from conftest import REPO, user_env

# After the real check_params stage has run as `__main__`: buffered stdout, an exit handler registered after
# the stage's, and an object whose destructor runs only if the interpreter tears the module down.
AFTER_A_STAGE = textwrap.dedent(
    """
    import atexit, runpy, sys
    sys.argv = ["check_params"]
    runpy.run_module("stages.check_params", run_name="__main__", alter_sys=True)
    print("kept", end="")
    atexit.register(lambda: print(" and flushed", end=""))

    class Teardown:
        def __del__(self):
            print(" (torn down)", end="")

    witness = Teardown()
    """
)


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    env = user_env(PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)  # a pipe, block-buffered as for DVC's and CI's logs
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_finished_stage_skips_teardown_but_keeps_its_output_and_exit_handlers(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    done = run_python(AFTER_A_STAGE, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "params.checked").is_file()
    assert "time: imports" in done.stderr
    assert done.stdout == "kept and flushed"  # piped stdout is block-buffered: lost unless flushed


def test_the_same_code_outside_a_stage_keeps_the_normal_teardown(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    # The stage's code runs, but `__main__` stays the `-c` program: pytest importing a stage is like this.
    done = run_python(AFTER_A_STAGE.replace("alter_sys=True", "alter_sys=False"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "time: imports" in done.stderr
    assert done.stdout == "kept and flushed (torn down)"


def test_only_a_stage_process_skips_teardown_so_other_exit_codes_survive(tmp_path):
    done = run_python("import sys, stages; stages.finished(); sys.exit(3)", tmp_path)
    assert done.returncode == 3


def test_exit_handlers_registered_before_the_stages_import_still_run(tmp_path):
    # what coverage's subprocess hook or a sitecustomize does: a handler from interpreter start-up, which
    # would run after the stage's own and be skipped by its fast exit
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    early = 'import atexit; atexit.register(lambda: print(" and the early handler ran", end=""))\n'
    done = run_python(early + AFTER_A_STAGE, tmp_path)
    assert done.returncode == 0, done.stderr
    # every handler ran, in order; the teardown is not skipped then
    assert done.stdout == "kept and flushed and the early handler ran (torn down)"
