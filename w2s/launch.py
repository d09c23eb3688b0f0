"""Fan a sweep out: one job per visible GPU, N CPU worker processes, or a Ray cluster.

A sweep (generalize pairs x seeds, deception strong models) is a list of independent jobs, each
an ordinary ``w2s <method> ...`` command with its own run directory. They share the content-hash
cache, so whatever one job trains, a later job (or the sweep's final summary pass) reads instead
of training again. Three launchers:

- ``none``: no fan-out; the method runs its sweep in its own process (the default).
- ``local``: a queue of subprocesses on this machine, one slot per visible GPU
  (``CUDA_VISIBLE_DEVICES`` set to that GPU for the job), or ``workers`` CPU processes when
  there is no GPU. A slot takes the next job as soon as its current one ends.
- ``ray``: one Ray task per job (``num_gpus=1`` when the cluster has GPUs), on the cluster named by
  ``RAY_ADDRESS`` or a local one; every node must see the same w2s install and cache folder
  (``$W2S_CACHE`` on shared storage).

Each job's output goes to ``<log_dir>/<name>.log``; a failed job is reported with the tail of its
log, and the sweep stops with a one-line error naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from w2s.config import config_to_dict
from w2s.errors import W2SError

LAUNCHERS = ("none", "local", "ray")


@dataclass
class Job:
    """One ``w2s`` command: ``argv`` after ``w2s`` (e.g. ``["generalize", "--recipe", ...]``)."""

    name: str
    argv: list[str]


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out (``CUDA_VISIBLE_DEVICES``, else all CUDA devices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a core dependency
        return []


def _command(job: Job) -> list[str]:
    return [sys.executable, "-m", "w2s", *job.argv]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_local(jobs: list[Job], log_dir: Path, *, workers: int = 0,
              log: Callable[[dict], None] | None = None, poll_s: float = 0.2) -> None:
    """Run ``jobs`` as subprocesses: one slot per visible GPU, else ``workers`` (>= 1) CPU slots."""
    gpus = visible_gpus()
    slots: list[str | None] = list(gpus) if gpus else [None] * max(1, workers)
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = list(jobs)
    running: dict[int, tuple[subprocess.Popen, Job, Path, float]] = {}
    failed: list[tuple[Job, Path, int]] = []
    try:
        while queue or running:
            for slot, device in enumerate(slots):
                if slot in running or not queue:
                    continue
                job = queue.pop(0)
                env = dict(os.environ)
                env.pop("WORLD_SIZE", None), env.pop("RANK", None)  # each job is its own launch
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                path = log_dir / f"{job.name}.log"
                with open(path, "w") as out:
                    proc = subprocess.Popen(_command(job), stdout=out, stderr=subprocess.STDOUT,
                                            env=env)
                running[slot] = (proc, job, path, time.perf_counter())
                if log:
                    log({"event": "job started", "job": job.name, "device": device or "cpu",
                         "argv": job.argv})
            for slot, (proc, job, path, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                if log:
                    log({"event": "job finished", "job": job.name, "exit_code": code,
                         "elapsed_s": round(time.perf_counter() - t0, 1)})
                if code != 0:
                    failed.append((job, path, code))
                    queue.clear()  # stop handing out work; let the running jobs end
            time.sleep(poll_s)
    except BaseException:
        for proc, *_ in running.values():
            proc.terminate()
        raise
    if failed:
        job, path, code = failed[0]
        raise W2SError(f"sweep job {job.name} failed (exit {code}): {_tail(path)}; its log is "
                       f"{path}")


def run_ray(jobs: list[Job], log_dir: Path, *, log: Callable[[dict], None] | None = None) -> None:
    """Run ``jobs`` as Ray tasks (``pip install ray``), one GPU each when the cluster has GPUs."""
    try:
        import ray
    except ImportError:
        raise W2SError("launcher ray needs Ray: pip install 'ray[default]' (or use launcher "
                       "local)") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    log_dir.mkdir(parents=True, exist_ok=True)

    @ray.remote(num_gpus=1 if gpus else 0)
    def run_one(command: list[str], path: str) -> int:
        with open(path, "w") as out:
            return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode

    refs = {job.name: run_one.remote(_command(job), str(log_dir / f"{job.name}.log"))
            for job in jobs}
    for job in jobs:
        code = ray.get(refs[job.name])
        if log:
            log({"event": "job finished", "job": job.name, "exit_code": code, "launcher": "ray"})
        if code != 0:
            path = log_dir / f"{job.name}.log"
            raise W2SError(f"sweep job {job.name} failed (exit {code}) on Ray: {_tail(path)}")


def run_jobs(jobs: list[Job], log_dir: Path, *, launcher: str = "local", workers: int = 0,
             log: Callable[[dict], None] | None = None) -> None:
    """Run every job with ``launcher`` (``local`` or ``ray``); a failure is one W2SError."""
    if launcher == "ray":
        return run_ray(jobs, log_dir, log=log)
    if launcher == "local":
        return run_local(jobs, log_dir, workers=workers, log=log)
    raise W2SError(f"unknown launcher '{launcher}'; choose one of {list(LAUNCHERS)}")


def fan_out(method: str, config, jobs: dict[str, dict], run) -> None:
    """Run a sweep's jobs: ``jobs`` maps a job name to the overrides that make it one part of
    the sweep (e.g. ``{"strong": "gpt2-xl", "seeds": [0]}``). Each job is the resolved
    ``config`` plus those overrides, written as a recipe under ``<run>/jobs/`` and run as an
    ordinary ``w2s <method>`` with its own run directory there, by ``config.launcher`` (with
    ``config.workers``). The jobs share the content-hash cache; the caller's own pass over the
    sweep afterwards reads every result from it and writes the table."""
    import yaml

    if len(jobs) < 2:
        run.log({"event": "note", "note": "one job only: no fan-out"})
        return
    jobs_dir = run.path / "jobs"
    todo = []
    for name, overrides in jobs.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        job = {**config_to_dict(config), **overrides, "launcher": "none", "workers": 0,
               "run_dir": str(jobs_dir / safe)}
        recipe = jobs_dir / f"{safe}.yaml"
        if run.main:
            recipe.parent.mkdir(parents=True, exist_ok=True)
            recipe.write_text(yaml.safe_dump(job, sort_keys=False))
        todo.append(Job(safe, [method, "--recipe", str(recipe)]))
    if run.main:
        run.log({"event": "fan-out", "launcher": config.launcher, "jobs": [j.name for j in todo]})
        run_jobs(todo, jobs_dir, launcher=config.launcher, workers=config.workers, log=run.log)
