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

Expensive intermediates (trained checkpoints, weak labels, reference log-probs, converted models)
go to a :class:`Cache` keyed by a hash of everything that determines them, never by hand-made
names: change any input and the key changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from w2s import compute
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
"""


def null_reason(metrics: dict, key: str) -> str | None:
    """Why ``metrics[key]`` is null (``<key>_reason``), or None."""
    return metrics.get(f"{key}_reason")


# --------------------------------------------------------------------------------------------
# small helpers


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj``, hex, truncated to ``length``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 of a file's bytes (streamed), hex, truncated."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600, so
    run records stay readable on shared clusters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a bad line is a W2SError naming file and line."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise W2SError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
    return rows


def is_main_process() -> bool:
    """True on the process that writes run records (rank 0, or no distributed launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait for every process of a distributed launch (a no-op without one)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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


# --------------------------------------------------------------------------------------------
# content-hash cache


def cache_root() -> Path:
    """``$W2S_CACHE``, else ``$XDG_CACHE_HOME/w2s``, else ``~/.cache/w2s``."""
    if os.environ.get("W2S_CACHE"):
        return Path(os.environ["W2S_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "w2s"


class Cache:
    """A directory of immutable entries, each keyed by a hash of everything that made it.

    ::

        cache = Cache()
        key = cache.key("weak_ceiling", model=spec, data=data_hash, train=train_cfg, seed=0)
        path = cache.get(key)                 # a Path, or None on a miss
        if path is None:
            with cache.put(key) as tmp:       # fill a temp dir; renamed into place on success
                save_model(tmp)
            path = cache.get(key)

    An entry appears only once complete (temp dir + rename), so a killed process never leaves a
    corrupt entry; a crash inside ``put`` discards the temp dir.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else cache_root()

    def key(self, kind: str, **parts: Any) -> str:
        """``<kind>-<hash of parts>``: kind is for humans, the hash for identity."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in kind)
        return f"{safe}-{content_hash(parts, 20)}"

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        return p if (p / ".complete").exists() else None

    @contextlib.contextmanager
    def put(self, key: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield a temporary directory; on success it becomes the entry ``key`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key}-"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; entries are shared
        try:
            yield tmp
            write_json(tmp / ".complete", {"key": key, "meta": meta or {},
                                            "time": _dt.datetime.now().isoformat()})
            final = self.path(key)
            if final.exists():  # another process finished first, or a stale partial entry
                if (final / ".complete").exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                # lost a race: another process (another rank of the same launch, say) renamed
                # its copy into place between the check and the rename. Entries are
                # content-addressed, so theirs is as good as ours.
                if not (final / ".complete").exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def put_once(self, key: str, meta: dict | None = None) -> Iterator[Path]:
        """:meth:`put` for code that runs on EVERY process of a launch (torchrun, accelerate).

        Rank 0 fills and publishes the entry; the other ranks get a scratch folder that is thrown
        away (transformers writes nothing on them anyway); then every rank waits until the entry
        is published, so ``get(key)`` works everywhere afterwards.
        """
        if is_main_process():
            with self.put(key, meta) as tmp:
                yield tmp
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f"w2s-scratch-{key}-"))
            try:
                yield scratch
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        barrier()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` (``<root>/.locks/<key>.lock``, fcntl).

        For independent processes sharing one cache (the jobs of a fanned-out sweep, two
        sweeps at once): whoever takes the lock second waits, then should look again::

            if cache.get(key) is None:
                with cache.lock(key):
                    if cache.get(key) is None:   # still missing: we build it
                        ...

        The ranks of ONE distributed launch coordinate through barriers instead (a rank
        blocked on a lock while another waits in a collective would deadlock), so inside such a
        launch, and where fcntl does not exist, this is a no-op.
        """
        if world_size() > 1:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Path | None]:
        """``with cache.claim(key) as found:`` -- ``found`` is the entry when it exists (after
        waiting for another process that was building it); None means "build it now": the
        caller holds the key's :meth:`lock` until the block ends, so no two processes build the
        same entry at once (they would share its in-progress checkpoints)."""
        found = self.get(key)
        if found is not None:
            yield found
            return
        with self.lock(key):
            yield self.get(key)

    def entries(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.iterdir() if (p / ".complete").exists())


# --------------------------------------------------------------------------------------------
# cached stages: the one protocol every expensive step of every method goes through


class Stage:
    """One cached, resumable step of an experiment (see :func:`cached_stage`).

    - ``key``: the cache key (kind + hash of everything that determines the result);
    - ``path``: the finished entry, or None while it still has to be built;
    - ``progress``: ``<cache>/inprogress/<key>``, where a training checkpoints so that an
      interrupted build resumes there (the same folder on every process and every rerun).
    """

    def __init__(self, cache: Cache, key: str):
        self.cache = cache
        self.key = key
        self.path: Path | None = cache.get(key)
        self.progress = cache.root / "inprogress" / key

    @property
    def done(self) -> bool:
        """The entry exists (built earlier, or by another process while this one waited)."""
        return self.path is not None

    def publish(self, write, meta: dict | None = None) -> Path:
        """Make the entry: ``write(folder)`` fills it on the main process (the other ranks of a
        launch skip it), it is renamed into place atomically, every rank waits for it, and the
        stage's in-progress checkpoints are removed. Returns the entry's path."""
        if is_main_process():
            with self.cache.put(self.key, meta) as tmp:
                write(tmp)
        self.clear_progress()
        self.path = self.cache.get(self.key)
        if self.path is None:  # pragma: no cover - a shared cache folder the ranks do not share
            raise W2SError(f"cache entry {self.key} is missing after it was written; every "
                           "process of a launch must see the same W2S_CACHE folder")
        return self.path

    def clear_progress(self) -> None:
        """Remove the stage's in-progress checkpoints on the main process; every rank waits.
        :meth:`publish` does it; a stage whose product is no cache entry (a training whose model
        goes to the run directory) calls it once that product is safe, keeping the checkpoints
        for a rerun until then."""
        if is_main_process():
            shutil.rmtree(self.progress, ignore_errors=True)
        barrier()


@contextlib.contextmanager
def cached_stage(cache: Cache, kind: str, label: str | None = None, /,
                 **parts: Any) -> Iterator[Stage]:
    """The cache protocol of one expensive step, for every method and on every process::

        with cached_stage(cache, "generalize-weak-xent", "weak", model=..., data=...) as st:
            if not st.done:
                model = train(..., checkpoint_dir=st.progress)      # resumes if interrupted
                st.publish(lambda folder: save(model, folder), meta={"model": ...})
        result = read(st.path)

    - the key is ``cache.key(kind, **parts)``: change any part and the stage is built anew;
    - independent processes sharing the cache (a sweep's jobs, two runs at once) build an entry
      once: the first holds the key's lock while it builds, the others wait and then find it;
      the ranks of one launch build together and publish from rank 0 (:meth:`Stage.publish`);
    - the block's work is counted as the compute stage ``label`` (default ``kind``), marked
      cached when the entry was found (:mod:`w2s.compute`);
    - a failure inside the block publishes nothing: the in-progress checkpoints stay for the
      rerun, and the cache holds no half-written entry.
    """
    key = cache.key(kind, **parts)
    with compute.stage(label or kind), cache.claim(key):
        stage = Stage(cache, key)
        if stage.done:
            compute.mark_cached()
        yield stage
