"""Subprocesses for the tests: each runs in a process group of its own and the whole group is killed when the test is
done with it, time-out or not, so a stalled child (or its children: bash -> python) cannot outlive its test.
conftest.py checks after every test that nothing was left running."""
import contextlib
import os
import signal
import subprocess

import pytest


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL everything in ``proc``'s process group (it leads one: ``start_new_session``) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def started(cmd, **popen_kwargs):
    """``subprocess.Popen(cmd, **popen_kwargs)`` in a new session; on the way out its whole group is killed."""
    proc = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **popen_kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def run(cmd, timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, but past ``timeout`` the whole
    process group is killed and the test fails with the tail of the child's output."""
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            pytest.fail(f'{[str(c) for c in cmd][:4]} ran past {timeout}s and was killed with its process group:\n'
                        f'{(out or "")[-1500:]}\n{(err or "")[-1500:]}')
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
