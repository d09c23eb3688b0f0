"""Run directories and the content-hash cache.

Every method writes one self-describing run directory::

    runs/<method>/<timestamp>-<confighash>/
        config.yaml         the resolved config (recipe + flags), enough to rerun it
        env.json            package versions, git sha, device, world size, seeds, data hashes
        log.jsonl           one JSON object per logged event (training steps, stages)
        predictions.jsonl   per-example outputs (classification methods), or
        generations.jsonl   per-example generations (generation methods)
        metrics.json        written LAST and atomically; its presence means the run succeeded

``metrics.json`` always has ``method``, ``status``, ``pgr``, ``win_rate`` and ``deception_score``
(null where the method has none) beside the method's own figures. A run that fails leaves no
``metrics.json``; a run that fails on bad input (:class:`~w2s.errors.W2SError`) leaves nothing.

Expensive intermediates go to the content-hash cache, :mod:`w2s.cache` (:class:`Cache`,
:func:`cached_stage`); this module re-exports it with its file and process helpers, so
``from w2s.runs import Cache, cached_stage`` keeps working.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from w2s import compute
from w2s.cache import (  # noqa: F401  (re-exported: runs and the cache are used together)
    Cache,
    Stage,
    _jsonable,
    atomic_write_text,
    barrier,
    cache_root,
    cached_stage,
    canonical_json,
    content_hash,
    file_hash,
    is_main_process,
    read_jsonl,
    world_size,
    write_json,
)
from w2s.errors import W2SError

SCHEMA_KEYS = ("method", "status", "headline", "gold_reward", "baseline_gold_reward",
               "world_size", "compute")
"""Keys every metrics.json carries beyond the method's own figures (:meth:`Run.finish`):

- ``method``, ``status`` (``ok``), ``world_size`` (processes of the launch);
- ``headline``: the names of the method's headline figures (its spec's ``headline``, e.g.
  ``["pgr"]``), each of them a key of metrics.json too;
- ``gold_reward`` / ``baseline_gold_reward``: the mean gold reward of the method's candidate and
  of its baseline, where the method has a gold judge;
- ``compute``: what the run spent per stage (:func:`w2s.compute.record`).

Naming rule for undefined figures: a headline figure or gold reward that is null comes with
``<key>_reason``, a sentence saying why (:func:`null_reason` reads it).

Optional: ``variant``, a short label when the run's figures are NOT the paper's (a w2s
extension, e.g. WSPO's sequence-level loss); ``w2s report`` shows it beside the method.
"""


def null_reason(metrics: dict, key: str) -> str | None:
    """Why ``metrics[key]`` is null (``<key>_reason``), or None."""
    return metrics.get(f"{key}_reason")


# --------------------------------------------------------------------------------------------
# environment


def git_sha() -> str | None:
    """The commit of the w2s checkout (None when not in a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


PACKAGES = ("w2s", "torch", "transformers", "datasets", "accelerate", "peft", "typer", "rich",
            "pyyaml", "numpy", "safetensors", "tokenizers", "gguf", "vaderSentiment", "vllm",
            "deepspeed")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """What hardware this process sees."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return info


def environment(**extra: Any) -> dict[str, Any]:
    """Everything about the machine and software that could change a result."""
    env = {
        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "git_sha": git_sha(),
        "packages": package_versions(),
        "device": device_info(),
        "world_size": world_size(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "cache_dir": str(cache_root()),
    }
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# run directories


def default_run_dir(method: str, config: Any, root: str | os.PathLike = "runs") -> Path:
    """``runs/<method>/<timestamp>-<confighash>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / method / f"{stamp}-{content_hash(config, 8)}"


class Run:
    """One run directory. Create with :meth:`Run.start`, finish with :meth:`Run.finish`.

    Use it as a context manager so a failure is recorded correctly::

        with Run.start("generalize", cfg, run_dir=cfg.run_dir) as run:
            run.log({"stage": "weak", "acc": 0.71})
            run.write_rows("predictions.jsonl", rows)
            run.finish({"pgr": 0.4, ...})

    - a :class:`W2SError` inside the block removes the directory this run created (bad input
      leaves nothing half-written) and re-raises -- unless the method called :meth:`keep`
      first: once a run holds expensive work (trained models, decoded answers, finished
      stages), a later one-line error keeps the directory and says so;
    - any other exception leaves the directory (for inspection and resume) but no metrics.json;
    - on non-main processes every write is a no-op, so only rank 0 writes the record.
    """

    def __init__(self, method: str, path: Path, created: bool, main: bool = True,
                 headline: tuple[str, ...] = ()):
        self.method = method
        self.headline = tuple(headline)
        self.path = path
        self._created = created
        self.main = main
        self.finished = False
        self.kept: str | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(cls, method: str, config: Any, run_dir: str | os.PathLike | None = None,
              env_extra: dict | None = None, resume: bool = True,
              headline: tuple[str, ...] = ()) -> Run:
        """Create (or reopen, for resume) a run directory and write config.yaml and env.json.

        ``headline``: the method's headline figures (its spec's), which metrics.json will hold
        (null with a reason when the run does not give them). Compute counting starts here.

        An existing directory that already holds a finished run (metrics.json) is refused, so a
        result is never silently overwritten; one without metrics.json is reopened (resume).
        """
        import yaml

        path = Path(run_dir) if run_dir else default_run_dir(method, config)
        main = is_main_process()
        if (path / "metrics.json").exists():
            raise W2SError(f"run directory {path} already holds a finished run; "
                           "pass another --run-dir or delete it")
        created = not path.exists()
        if not resume and not created and any(path.iterdir()):
            raise W2SError(f"run directory {path} is not empty; pass another --run-dir")
        run = cls(method, path, created, main, headline)
        compute.reset()
        if main:
            path.mkdir(parents=True, exist_ok=True)
            cfg = _jsonable(config)
            atomic_write_text(path / "config.yaml",
                              yaml.safe_dump({"method": method, **cfg}, sort_keys=False))
            write_json(path / "env.json", environment(**(env_extra or {})))
        return run

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if not self.finished:
                raise RuntimeError(f"run {self.path} ended without Run.finish()")
            return False
        if issubclass(exc_type, W2SError) and self.kept is not None:
            exc.args = (f"{exc} [{self.path} keeps {self.kept}]",)
        if self.main:
            if issubclass(exc_type, W2SError) and self._created and self.kept is None:
                shutil.rmtree(self.path, ignore_errors=True)
            elif self.path.exists():
                self.log({"event": "failed", "error": f"{exc_type.__name__}: {exc}"})
        return False

    def keep(self, what: str) -> None:
        """From now on a one-line error (:class:`W2SError`) keeps this directory, without
        metrics.json, and its message ends with ``[<run dir> keeps <what>]``: call it once the
        run holds work that is expensive to redo (what a rerun resumes from, or what
        ``w2s eval`` can still judge)."""
        self.kept = what

    # -- writing -----------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one JSON line to log.jsonl (with a timestamp)."""
        if not self.main:
            return
        rec = {"time": _dt.datetime.now().isoformat(timespec="seconds"), **_jsonable(record)}
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def write_rows(self, name: str, rows: Iterable[dict]) -> Path:
        """Atomically write per-example rows as JSONL (predictions.jsonl, generations.jsonl)."""
        target = self.path / name
        if self.main:
            text = "".join(json.dumps(_jsonable(r)) + "\n" for r in rows)
            atomic_write_text(target, text)
        return target

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path / name
        if self.main:
            write_json(target, obj)
        return target

    def finish(self, metrics: dict, status: str = "ok") -> dict:
        """Write metrics.json last and atomically, in the shared schema (:data:`SCHEMA_KEYS`):
        the method's own figures plus method, status, headline, gold rewards, world size and
        compute; every null headline figure or gold reward gets its ``<key>_reason``."""
        full: dict[str, Any] = {"method": self.method, "status": status,
                                "headline": list(self.headline)}
        full.update({key: None for key in self.headline})
        full.update(gold_reward=None, baseline_gold_reward=None, world_size=world_size())
        full.update(_jsonable(metrics))
        full["compute"] = _jsonable(metrics.get("compute") or compute.record())
        for key in (*self.headline, "gold_reward", "baseline_gold_reward"):
            if full.get(key) is None and not full.get(f"{key}_reason"):
                full[f"{key}_reason"] = (f"{self.method} gives no gold reward here (no gold "
                                         "judge for this task)" if "gold" in key else
                                         f"{self.method} did not record {key}")
        if self.main:
            write_json(self.path / "metrics.json", full)
        self.finished = True
        global _LAST_FINISHED
        _LAST_FINISHED = self.path
        return full


_LAST_FINISHED: Path | None = None


def last_finished_run() -> Path | None:
    """The directory of the run this process finished last (what the CLI points the user at
    after a method returns); None before any."""
    return _LAST_FINISHED


def find_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """All run directories under ``root`` (those with a config.yaml), newest first."""
    root = Path(root)
    if not root.exists():
        return []
    dirs = {p.parent for p in root.rglob("config.yaml")}
    return sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)


def run_summary(path: Path, keys: Iterable[str] = ()) -> dict[str, Any]:
    """One run directory's method, status and figures ``keys`` (status 'incomplete' without
    metrics.json; figures it lacks are None)."""
    metrics_path = path / "metrics.json"
    out: dict[str, Any] = {"run": str(path)}
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        out.update({k: m.get(k) for k in ("method", "status", *keys)})
    else:
        import yaml

        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
        out.update({"method": cfg.get("method"), "status": "incomplete"})
        out.update({k: None for k in keys})
    return out
