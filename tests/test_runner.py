"""The stage runner's stderr filter: TensorFlow's start-up lines go, every other line arrives, in order,
also from a process that aborts (a fatal TensorFlow or CUDA error) right after writing why."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from conftest import REPO, user_env

LINES = 3000  # more than a pipe holds, so a filter that dies with the process loses the last ones

ABORTING_CHILD = textwrap.dedent(
    f"""
    import os
    from stages.core.runner import tensorflow_noise_dropped

    with tensorflow_noise_dropped():
        os.write(2, b"I0000 00:00:1796182274.694238  3063 cudart_stub.cc:31] Could not find cuda\\n")
        for i in range({LINES}):
            os.write(2, f"line {{i}}\\n".encode())
        os.write(2, b"F0000 00:00:1.000000    1 cuda_dnn.cc:1] fatal: cuDNN version mismatch, the reason\\n")
        os.abort()
    """
)


def test_the_last_lines_of_an_aborting_process_reach_the_user_in_order():
    env = user_env(PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", ABORTING_CHILD], capture_output=True, env=env, timeout=60)
    assert done.returncode == -signal.SIGABRT
    lines = done.stderr.decode().splitlines()
    assert "cudart_stub" not in done.stderr.decode()
    assert lines[:LINES] == [f"line {i}" for i in range(LINES)]
    assert lines[LINES].endswith("fatal: cuDNN version mismatch, the reason"), lines[LINES:]


FINISHING_CHILD = textwrap.dedent(
    """
    import os, sys
    from stages.core.runner import tensorflow_noise_dropped

    with tensorflow_noise_dropped():
        os.write(2, b"W0000 00:00:1.0   1 cpu_feature_guard.cc:210] This TensorFlow binary is optimized\\n")
        print("from Python", file=sys.stderr)
        os.write(2, b"epoch 1/2\\r")
        os.write(2, b"epoch 2/2\\r")
        os.write(2, b"no newline at the end")
    print("after", file=sys.stderr)
    """
)


def test_a_finishing_process_keeps_every_other_line_and_the_progress_bar():
    env = user_env(PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", FINISHING_CHILD], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"from Python\nepoch 1/2\repoch 2/2\rno newline at the endafter\n"
