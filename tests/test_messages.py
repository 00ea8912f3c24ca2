"""Messages say only what is true at that moment, each proved by making the moment happen: an interrupt
before and after a stage's first output, a directory output whose rename fails, a resume hint inside a
temporary experiment copy, and a checkpoint that fails to load for a reason other than its bytes."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, user_env

from stages.core import paths
from stages.core.errors import StageError
from stages.core.io import atomic_path

STAGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stages.core.io import atomic_path
    from stages.core.runner import run_stage

    def main():
        if sys.argv[1] == "after":
            with atomic_path(Path("first.txt")) as tmp:
                tmp.write_text("whole")
        if sys.argv[1] == "nested":  # a directory output, whose files are written atomically inside it
            with atomic_path(Path("report"), directory=True) as folder:
                with atomic_path(folder / "page.md") as tmp:
                    tmp.write_text("whole")
        Path("ready").write_text("")
        time.sleep(60)
        with atomic_path(Path("second.txt")) as tmp:
            tmp.write_text("never")

    run_stage(main, command=sys.argv[2] == "command")
    """
)


def interrupted(tmp_path: Path, moment: str, kind: str = "stage") -> subprocess.CompletedProcess:
    """Run a stage that waits, before or after writing its first output; interrupt it as Ctrl-C would."""
    child = subprocess.Popen(
        [sys.executable, "-c", STAGE, moment, kind],
        cwd=tmp_path,
        env=user_env(PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_an_interrupt_before_any_output_says_none_was_written(tmp_path):
    done = interrupted(tmp_path, "before")
    assert done.returncode == 130
    assert done.stderr.strip() == (
        "error: interrupted before writing any output; `dvc repro` runs this stage again"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]


def test_an_interrupt_after_an_output_names_it_whole(tmp_path):
    done = interrupted(tmp_path, "after")
    assert done.returncode == 130
    assert done.stderr.strip() == (
        "error: interrupted after writing first.txt (each whole) and before its other outputs; "
        "`dvc repro` runs this stage again"
    )
    assert (tmp_path / "first.txt").read_text() == "whole" and not (tmp_path / "second.txt").exists()


def test_an_interrupt_names_a_directory_output_not_the_files_staged_inside_it(tmp_path):
    done = interrupted(tmp_path, "nested")
    assert done.stderr.strip().startswith("error: interrupted after writing report (each whole) and before")
    assert (tmp_path / "report" / "page.md").read_text() == "whole"


def test_an_interrupted_command_claims_nothing_about_stages(tmp_path):
    done = interrupted(tmp_path, "before", "command")
    assert (done.returncode, done.stderr.strip()) == (130, "error: interrupted")


def test_a_directory_output_is_never_removed_before_its_replacement_is_in_place(tmp_path, monkeypatch):
    dest = tmp_path / "report"
    dest.mkdir()
    (dest / "page.md").write_text("earlier")
    real_replace = Path.replace

    def full_disk_for_the_new_one(self, target):
        if self.name.startswith(".report.") and not self.name.startswith(".report.old-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", full_disk_for_the_new_one)
    refused = pytest.raises(StageError, match="nothing was replaced, so the earlier outputs are as they were")
    with refused, atomic_path(dest, directory=True) as staging:
        (staging / "page.md").write_text("new")
    assert (dest / "page.md").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging or set-aside copy left

    monkeypatch.undo()
    with atomic_path(dest, directory=True) as staging:
        (staging / "page.md").write_text("new")
    assert (dest / "page.md").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report"]


def test_a_resume_hint_is_given_only_where_the_checkpoints_outlive_the_run(tmp_path, monkeypatch):
    from stages.train import kept
    from stages.training.state import ResumeState

    state = ResumeState(epoch=3)
    monkeypatch.chdir(tmp_path)
    assert paths.checkpoints_outlive_the_run()
    assert "a rerun resumes from them" in kept(state)
    temporary = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temporary.mkdir(parents=True)
    monkeypatch.chdir(temporary)  # where `dvc exp run --temp` runs train
    assert not paths.checkpoints_outlive_the_run()
    assert "resumes" not in kept(state) and "a rerun starts over" in kept(state)
    assert kept(ResumeState(epoch=0)) == "No epoch had finished, so no training is lost."
