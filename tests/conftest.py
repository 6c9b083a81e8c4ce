"""Shared fixtures: tiny data, a subprocess runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    # mnist1d is generated once per session into a private cache, never into the user's home.
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Tiny models gain nothing from threads, and oversubscribed OpenMP threads on a busy
    # 2-core CI machine slow training down by an order of magnitude.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run_cli(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run ``gauge ARGS...`` as a real subprocess (``python -m analyses.cli``)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("MPLBACKEND", "Agg")
    full_env["OMP_NUM_THREADS"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "analyses.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_user_errors(cases) -> None:
    """:func:`assert_user_error` for every ``(args, needles)`` case, the subprocesses run side
    by side (one per core: each spends most of its time importing torch)."""
    from concurrent.futures import ThreadPoolExecutor
    cases = list(cases)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        procs = list(pool.map(lambda case: run_cli(*case[0]), cases))
    for (args, needles), proc in zip(cases, procs):
        assert_user_error(proc, *needles)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, exactly one line on stderr containing every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def mnist1d():
    from tickets.data import load_dataset
    return load_dataset("mnist1d")
