import ctypes
import gc
import os
import signal
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Processes that live as long as the test process by design (started once, shared by every later use).
PERSISTENT_HELPERS = ('multiprocessing.resource_tracker', 'multiprocessing.forkserver', 'torch._inductor.compile_worker')


@pytest.fixture
def one_thread():
    """One torch thread while the test runs (the scripts' in-process runs on a 2-core machine); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    # On Linux the test process adopts orphaned descendants (a child's child whose parent was killed), so the
    # check below sees them too instead of losing them to init.
    if sys.platform.startswith('linux'):
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _child_pids():
    """This process's children: the kernel's per-thread lists where it keeps them, else a scan of /proc."""
    me = os.getpid()
    tasks = f'/proc/{me}/task'
    if os.path.exists(f'{tasks}/{me}/children'):
        pids = set()
        for tid in os.listdir(tasks):
            try:
                with open(f'{tasks}/{tid}/children') as f:
                    pids.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return pids
    pids = set()
    for entry in os.listdir('/proc') if os.path.isdir('/proc') else []:
        try:
            with open(f'/proc/{entry}/stat') as f:
                if entry.isdigit() and int(f.read().rsplit(')', 1)[1].split()[1]) == me:
                    pids.add(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def _children():
    """{pid: (state, command line)} of this process's children (Linux; empty elsewhere)."""
    found = {}
    for pid in _child_pids():
        try:
            with open(f'/proc/{pid}/stat') as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace').strip()
        except (OSError, IndexError):
            continue
        found[pid] = (state, cmdline)
    return found


def _left_running(ignore=()):
    """Children still running after a grace period, zombies reaped, persistent helpers and ``ignore`` left out."""
    deadline = time.time() + 5
    while True:
        if not _child_pids() - set(ignore):
            return {}
        gc.collect()  # e.g. a DataLoader iterator's workers go when it is collected
        left = {}
        for pid, (state, cmdline) in _children().items():
            if state == 'Z':
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            elif pid not in ignore and not any(h in cmdline for h in PERSISTENT_HELPERS):
                left[pid] = cmdline
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


def _kill(pids):
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fails the test that leaves a child process running (and kills it)."""
    before = set(_children())
    yield
    left = _left_running(ignore=before)
    if left:
        _kill(left)
        pytest.fail(f'the test left {len(left)} process(es) running (now killed): '
                    + '; '.join(f'{pid}: {cmd[:200]}' for pid, cmd in left.items()), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    left = _left_running()
    if left:
        _kill(left)
        print(f'\nERROR: {len(left)} process(es) outlived the test session (now killed): '
              + '; '.join(f'{pid}: {cmd[:200]}' for pid, cmd in left.items()), file=sys.stderr)
        session.exitstatus = 1
