"""Run the steps of a study (training runs, evaluations, data sets) as ordinary commands, a few at a time.

A step is one command and the file it makes; a step whose file exists is not run again (delete it to redo), so an
interrupted study continues where it stopped. Each command is printed as it starts and appended to
``OUT/commands.txt``; its output goes to ``OUT/logs/NAME.log``. Every process gets one CPU thread.
"""
import csv
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ['ROOT', 'Steps', 'summary_rows', 'finished', 'mean_sd']


class Steps:
    """``run(name, command, output)`` -> a future; at most ``jobs`` commands run at a time."""

    def __init__(self, out: str, jobs: int = 2, dry_run: bool = False, prog: str = 'study'):
        self.out, self.dry_run, self.prog = out, dry_run, prog
        os.makedirs(out, exist_ok=True)
        self.pool = ThreadPoolExecutor(jobs)

    def run(self, name: str, command: list, output: str, done=None):
        """``command``: arguments to ``python``; the step counts as done when ``done()`` (default: ``output`` exists).

        ``done()`` is asked now, when the step is planned: plan a step only once the steps it needs have finished.
        """
        done = done or (lambda: os.path.exists(output))

        line = 'python ' + ' '.join(os.path.relpath(c, ROOT) if os.path.isabs(c) and c.startswith(ROOT) else c
                                    for c in command)
        if done() or self.dry_run:
            # Answered here, not in the pool, so a dry run prints its plan in the order it was made.
            print(('[done] ' if done() else '[dry] ') + line, file=sys.stderr)
            finished_step = Future()
            finished_step.set_result(None)
            return finished_step

        def work():
            with open(os.path.join(self.out, 'commands.txt'), 'a') as f:
                f.write(line + '\n')
            print(f'[start {time.strftime("%H:%M:%S")}] {name}: {line}', file=sys.stderr, flush=True)
            log = os.path.join(self.out, 'logs', f'{name}.log')
            os.makedirs(os.path.dirname(log), exist_ok=True)
            start = time.time()
            with open(log, 'w') as f:
                proc = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, OMP_NUM_THREADS='1'))
            if proc.returncode != 0:
                raise SystemExit(f'{self.prog}: error: step {name} failed (exit {proc.returncode}); see {log}')
            print(f'[done {time.strftime("%H:%M:%S")}] {name} in {time.time() - start:.0f}s', file=sys.stderr,
                  flush=True)
        return self.pool.submit(work)


def summary_rows(run_dir: str) -> list:
    """The rows of a training run's summary.csv (dicts of floats), [] if it has none yet."""
    path = os.path.join(run_dir, 'summary.csv')
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def finished(run_dir: str, epochs: int) -> bool:
    """Whether a training run has a summary row for each of its ``epochs`` epochs."""
    return len(summary_rows(run_dir)) >= epochs


def mean_sd(values, digits: int = 2) -> str:
    """'mean ± sd' of the values that are not None ('-' for none; the value alone for one)."""
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'
