"""The content-hash cache, and the file and process primitives it stands on.

Expensive intermediates (trained checkpoints, weak labels, reference log-probs, converted models)
go to a :class:`Cache` keyed by a hash of everything that determines them, never by hand-made
names: change any input and the key changes. Every expensive step of every method goes through
:func:`cached_stage`, the one protocol (build once across processes, resume from in-progress
checkpoints, publish atomically, count its compute).

Below it: :func:`content_hash` (what keys are made of), atomic writes (:func:`atomic_write_text`,
:func:`write_json`), and the process helpers of a distributed launch (:func:`is_main_process`,
:func:`world_size`, :func:`barrier`). :mod:`w2s.runs` re-exports all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from w2s import compute
from w2s.errors import W2SError

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


def _process_group():
    """``torch.distributed`` when this process is in a launch's process group, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    """Wait for every process of a distributed launch (a no-op without one)."""
    dist = _process_group()
    if dist is not None:
        dist.barrier()


def main_process_says(value: Any) -> Any:
    """Rank 0's ``value`` on every process of a launch (``value`` itself without one).

    For decisions every rank must take alike, e.g. "is this cache entry there yet?": each rank
    looking for itself could see rank 0's entry appear between two looks, skip a stage the others
    build, and leave them waiting in a collective forever."""
    dist = _process_group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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

    def progress(self, key: str) -> Path:
        """``<root>/inprogress/<key>``: where the training of entry ``key`` checkpoints."""
        return self.root / "inprogress" / key

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
        # the ranks of a launch build a stage together or not at all: rank 0 decides
        found = main_process_says(cache.get(key) is not None)
        self.path: Path | None = cache.get(key) if found else None
        if found and self.path is None:  # pragma: no cover - ranks that do not share the cache
            raise W2SError(f"cache entry {key} exists on the main process but not here; every "
                           "process of a launch must see the same W2S_CACHE folder")
        self.progress = cache.progress(key)

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
