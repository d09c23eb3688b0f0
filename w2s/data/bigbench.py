"""``bigbench:<task>``: real tasks read offline from the BIG-bench source archive.

The pip sdist ``bigbench==1.0.0`` (358 MB, Apache-2.0; each task's data keeps its source's
terms) holds every JSON task as the member ``bigbench-1.0.0/bigbench/benchmark_tasks/<task>/
task.json``, where ``<task>`` may be a sub-task path (``multiemo/all_text_en``,
``hhh_alignment/harmless``). The archive is found, in order:

1. ``$W2S_BIGBENCH_ARCHIVE`` (a path to the .tar.gz);
2. the w2s cache (``$W2S_CACHE``, entry ``bigbench-archive-*``);
3. downloaded once into the cache with
   ``python -m pip download --no-deps bigbench==1.0.0 -d <cache entry>`` (~35 s: package
   registries are reachable where hubs are not).

Reading a task scans the gzip stream once (~8 s); its task.json is then cached under a key made
of the archive's sha256 and the task path, so later loads take milliseconds.

Conversion (``{"examples": [{"input": ..., "target_scores": {option: score}}]}``):

- every example has the same options -> **classification**; label = the index of the top-scored
  option in the label list: ``labels=[...]`` if given (examples whose answer is not listed are
  dropped), else a preset (``multiemo/*``: negative, positive - neutral and ambivalent reviews
  dropped), else the two options ordered no/false/negative first (``strategyqa``: No, Yes;
  ``fact_checker/*``: false, true). More than two options need ``labels=``.
- options differ between examples (multiple choice), and always for ``hhh_alignment/*`` ->
  **preference**: chosen = the top-scored option, one pair per other option. Tasks written as Human/Assistant
  dialogues (``hhh_alignment``) get HH-style prompts (``"Human: ...\\n\\nAssistant:"``).
- examples with a ``target`` and no scores (generative tasks, ``gem/xsum``) -> **prompts**:
  prompt = input, reference = the first target.
- a parent task without examples (``hhh_alignment``, ``fact_checker``) loads all its sub-tasks.

Exact duplicate inputs are dropped (keeping the first; an input with conflicting labels is
dropped entirely) so no text sits on both sides of the train/test split; ``meta["dropped"]``
counts them. ``#prompts`` gives a prompts view (:func:`~w2s.data.core.as_prompts`):
``bigbench:multiemo/all_text_en#prompts`` = review openings (``prefix_words``, default 8) for
sentiment steering, registered as ``multiemo-prompts``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import random
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

from w2s.data.core import KINDS, TaskData, as_prompts, pick
from w2s.data.registry import _call, register_task, split_in_memory
from w2s.errors import W2SError, did_you_mean
from w2s.runs import Cache, file_hash, write_json

PACKAGE = "bigbench==1.0.0"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_ENV = "W2S_BIGBENCH_ARCHIVE"
TASKS_DIR = "/bigbench/benchmark_tasks/"

LABEL_PRESETS = {"multiemo/*": ["negative", "positive"]}
"""Label lists for tasks with more than two options (fnmatch patterns on the task path)."""

KIND_PRESETS = {"hhh_alignment/*": "preference"}
"""Tasks read as a given kind whatever their options look like (an HHH sub-task whose examples
happened to share both options must still be pairs, not classes)."""

NEGATIVE_FIRST = ("no", "false", "negative", "incorrect", "wrong", "0")
"""Two-option tasks put an option named like this at label 0, the other at 1."""


# --------------------------------------------------------------------------------------------
# the archive


def _archive_key(cache: Cache) -> str:
    return cache.key("bigbench-archive", package=PACKAGE)


def archive_status() -> str:
    """``w2s cache`` when the archive is at hand (env var or cache), else how it will come."""
    env = os.environ.get(ARCHIVE_ENV)
    if env and Path(env).is_file():
        return "w2s cache"
    cache = Cache()
    if cache.get(_archive_key(cache)) is not None:
        return "w2s cache"
    return "pip download (358 MB, once)"


def archive_path() -> Path:
    """The archive: ``$W2S_BIGBENCH_ARCHIVE``, else the cache, else downloaded into the cache."""
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise W2SError(f"{ARCHIVE_ENV}={env} is not a file; point it at {ARCHIVE_NAME} "
                           f"(`pip download --no-deps {PACKAGE}`) or unset it")
        return path
    cache = Cache()
    key = _archive_key(cache)
    entry = cache.get(key)
    if entry is None:
        with cache.put(key, meta={"package": PACKAGE}) as tmp:
            download_archive(tmp)
        entry = cache.get(key)
    return entry / ARCHIVE_NAME


ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
"""sha256 of bigbench-1.0.0.tar.gz as PyPI serves it: a download is checked against it."""

INDEX_URL = "https://pypi.org/simple/"


def download_archive(dest: Path) -> Path:
    """Download the archive into ``dest`` once (358 MB, ~1-2 min) and check its sha256.

    First ``pip download --no-deps bigbench==1.0.0`` (pip knows your index, proxy and
    certificates). Recent pips refuse that sdist while preparing its metadata (it declares a
    ``file://`` dependency), so when pip fails the file is fetched from the package index's
    simple API instead (``$PIP_INDEX_URL``, else PyPI).
    """
    print(f"w2s: downloading {PACKAGE} (358 MB), once, into {dest.parent} ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = dest / ARCHIVE_NAME
    if result.returncode != 0 or not archive.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        pip_reason = lines[-1] if lines else f"exit code {result.returncode}"
        archive.unlink(missing_ok=True)
        try:
            _download_from_index(archive)
        except OSError as e:
            raise W2SError(f"could not download {PACKAGE}: pip said '{pip_reason}', and the "
                           f"index said '{e}'; download {ARCHIVE_NAME} where PyPI is reachable "
                           f"and set {ARCHIVE_ENV} to it") from None
    digest = file_hash(archive, length=64)
    if digest != ARCHIVE_SHA256:
        archive.unlink(missing_ok=True)
        raise W2SError(f"the downloaded {ARCHIVE_NAME} has sha256 {digest[:16]}..., not PyPI's "
                       f"{ARCHIVE_SHA256[:16]}...; try again, or set {ARCHIVE_ENV} to a good copy")
    return archive


def _download_from_index(archive: Path) -> None:
    """Fetch the sdist's URL from the simple API (PEP 691 JSON) and stream it to ``archive``."""
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", INDEX_URL).rstrip("/") + "/"
    request = urllib.request.Request(index + "bigbench/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response).get("files", [])
    urls = [f["url"] for f in files if f.get("filename") == ARCHIVE_NAME]
    if not urls:
        raise OSError(f"{index} lists no {ARCHIVE_NAME}")
    partial = archive.with_suffix(".part")
    with urllib.request.urlopen(urls[0], timeout=60) as response, open(partial, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
    os.replace(partial, archive)


def archive_sha(path: Path) -> str:
    """sha256 of the archive, computed once per (path, size, mtime) and memoised in the cache."""
    stat = path.stat()
    cache = Cache()
    key = cache.key("bigbench-archive-sha", path=str(path.resolve()), size=stat.st_size,
                    mtime=stat.st_mtime_ns)
    entry = cache.get(key)
    if entry is None:
        with cache.put(key) as tmp:
            (tmp / "sha256").write_text(file_hash(path, 64))
        entry = cache.get(key)
    return (entry / "sha256").read_text().strip()


def _task_of(member: str) -> str | None:
    """``.../bigbench/benchmark_tasks/<task>/task.json`` -> ``<task>``; other members -> None."""
    if not member.endswith("/task.json") or TASKS_DIR not in member:
        return None
    return member.split(TASKS_DIR, 1)[1][: -len("/task.json")]


def _scan(archive: Path, wanted: set[str], need_index: bool) -> tuple[dict[str, bytes], list]:
    """One pass over the archive: the wanted tasks' task.json bytes and every task name."""
    found: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf:
                task = _task_of(member.name) if member.isfile() else None
                if task is None:
                    continue
                names.append(task)
                if task in wanted:
                    found[task] = tf.extractfile(member).read()
                    if not need_index and len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise W2SError(f"{archive} is not a readable BIG-bench archive ({e}); delete it and "
                       f"download it again (`pip download --no-deps {PACKAGE}`)") from None
    return found, names


def task_names(archive: Path | None = None) -> list[str]:
    """Every task path with a task.json in the archive (cached after the first scan)."""
    archive = archive or archive_path()
    cache = Cache()
    key = cache.key("bigbench-index", archive=archive_sha(archive))
    entry = cache.get(key)
    if entry is None:
        _, names = _scan(archive, set(), need_index=True)
        _store_index(cache, key, names)
        entry = cache.get(key)
    return json.loads((entry / "names.json").read_text())


def _store_index(cache: Cache, key: str, names: list[str]) -> None:
    with cache.put(key) as tmp:
        write_json(tmp / "names.json", sorted(names))


def read_tasks(tasks: list[str], archive: Path | None = None,
               missing_ok: bool = False) -> dict[str, dict]:
    """The parsed task.json of each task path, from the cache or one scan of the archive.
    A task without a task.json is an error, or (``missing_ok``) absent from the result."""
    archive = archive or archive_path()
    sha = archive_sha(archive)
    cache = Cache()
    keys = {t: cache.key("bigbench-task", archive=sha, task=t) for t in tasks}
    missing = {t for t in tasks if cache.get(keys[t]) is None}
    index_key = cache.key("bigbench-index", archive=sha)
    index = cache.get(index_key)
    if index is not None:  # the index says which missing tasks are not in the archive at all
        absent = missing - set(json.loads((index / "names.json").read_text()))
        if absent and not missing_ok:
            raise _unknown_task(sorted(absent)[0], task_names(archive))
        missing -= absent
    if missing:
        need_index = index is None
        found, names = _scan(archive, missing, need_index)
        if need_index:
            _store_index(cache, index_key, names)
        for task, raw in found.items():
            with cache.put(keys[task], meta={"task": task}) as tmp:
                (tmp / "task.json").write_bytes(raw)
        if not missing_ok:
            for task in sorted(missing - set(found)):
                raise _unknown_task(task, task_names(archive))
    out = {}
    for task in tasks:
        if cache.get(keys[task]) is None:  # missing_ok and not in the archive
            continue
        try:
            out[task] = json.loads((cache.get(keys[task]) / "task.json").read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise W2SError(f"BIG-bench task '{task}': task.json is not valid JSON ({e.msg}); "
                           "the archive may be damaged - download it again") from None
    return out


def _unknown_task(task: str, known: list[str]) -> W2SError:
    return W2SError(f"no JSON task '{task}' in the BIG-bench archive{did_you_mean(task, known)} "
                    "(programmatic tasks have no task.json; sub-tasks are paths like "
                    "multiemo/all_text_en)")


# --------------------------------------------------------------------------------------------
# conversion


def _top(scores: dict) -> str | None:
    """The single top-scored option, or None on a tie."""
    best = max(scores.values())
    tops = [k for k, v in scores.items() if v == best]
    return tops[0] if len(tops) == 1 else None


def label_names_for(task: str, options: set[str], labels: list[str] | None) -> list[str]:
    """The ordered label list of a classification task (see the module docstring)."""
    if labels:
        unknown = [x for x in labels if x not in options]
        if unknown:
            raise W2SError(f"BIG-bench task '{task}' has no option {unknown[0]!r}; its options "
                           f"are {sorted(options)}")
        return list(labels)
    for pattern, preset in LABEL_PRESETS.items():
        if fnmatch.fnmatch(task, pattern) and set(preset) <= options:
            return list(preset)
    if len(options) == 2:
        a, b = sorted(options)
        return [b, a] if b.strip().lower() in NEGATIVE_FIRST else [a, b]
    raise W2SError(f"BIG-bench task '{task}' has {len(options)} options {sorted(options)}; pick "
                   "and order the classes with labels=[...], e.g. load_task(name, "
                   f"labels={sorted(options)[:2]})")


def convert_task(task: str, data: dict, labels: list[str] | None = None) -> TaskData:
    """One task.json as TaskData (all rows, no split)."""
    examples = data.get("examples") or []
    if not examples:
        raise W2SError(f"BIG-bench task '{task}' has no examples; name one of its sub-tasks")
    scored = [ex for ex in examples if isinstance(ex.get("target_scores"), dict)
              and ex["target_scores"]]
    meta = {"source": "bigbench", "task": task, "package": PACKAGE, "prompt_format": "plain",
            "examples": len(examples)}
    if len(scored) == len(examples):
        option_sets = {frozenset(ex["target_scores"]) for ex in examples}
        preset = next((k for p, k in KIND_PRESETS.items() if fnmatch.fnmatch(task, p)), None)
        if len(option_sets) == 1 and preset != "preference":
            names = label_names_for(task, set(next(iter(option_sets))), labels)
            rows, dropped = _classification_rows(task, examples, names)
            return TaskData(f"bigbench:{task}", "classification", rows,
                            {**meta, "label_names": names, "dropped": dropped})
        hh = str(data.get("example_input_prefix", "")).strip().startswith("Human:")
        rows, dropped = _preference_rows(task, examples, hh)
        return TaskData(f"bigbench:{task}", "preference", rows,
                        {**meta, "prompt_format": "hh" if hh else "plain", "dropped": dropped})
    if scored:
        raise W2SError(f"BIG-bench task '{task}' mixes scored and free-text examples; w2s reads "
                       "tasks that are all one or the other")
    rows, empty = [], 0
    for i, ex in enumerate(examples):
        if not str(ex.get("input") or "").strip():
            empty += 1
            continue
        target = ex.get("target")
        reference = target[0] if isinstance(target, list) and target else target
        rows.append({"id": f"{task}:{i}", "prompt": str(ex["input"]).strip(),
                     "reference": reference if isinstance(reference, str) else None})
    return TaskData(f"bigbench:{task}", "prompts", rows, {**meta, "dropped": {"empty_input": empty}})


def _classification_rows(task: str, examples: list[dict], names: list[str]):
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    rows: list[dict] = []
    dropped = {"empty_input": 0, "not_in_labels": 0, "tied_scores": 0, "duplicate_input": 0,
               "conflicting_labels": 0}
    for i, ex in enumerate(examples):
        if not str(ex.get("input") or "").strip():
            dropped["empty_input"] += 1
            continue
        top = _top(ex["target_scores"])
        if top is None:
            dropped["tied_scores"] += 1
            continue
        if top not in names:
            dropped["not_in_labels"] += 1
            continue
        text, label = str(ex["input"]).strip(), names.index(top)
        if text in first:
            dropped["duplicate_input"] += 1
            if rows[first[text]]["label"] != label:
                conflicting.add(text)
            continue
        first[text] = len(rows)
        rows.append({"id": f"{task}:{i}", "text": text, "label": label})
    if conflicting:
        dropped["conflicting_labels"] = len(conflicting)
        rows = [r for r in rows if r["text"] not in conflicting]
    return rows, dropped


def _preference_rows(task: str, examples: list[dict], hh: bool):
    rows, seen = [], set()
    dropped = {"empty_input": 0, "tied_scores": 0, "duplicate_pair": 0}
    for i, ex in enumerate(examples):
        if not str(ex.get("input") or "").strip():
            dropped["empty_input"] += 1
            continue
        scores = ex["target_scores"]
        top = _top(scores)
        if top is None:
            dropped["tied_scores"] += 1
            continue
        text = str(ex["input"]).strip()
        prompt = f"Human: {text}\n\nAssistant:" if hh else text
        for j, (option, score) in enumerate(scores.items()):
            if option == top or score >= scores[top]:
                continue
            pair = (prompt, top.strip(), option.strip())
            if pair in seen:
                dropped["duplicate_pair"] += 1
                continue
            seen.add(pair)
            rows.append({"id": f"{task}:{i}-{j}", "prompt": prompt, "chosen": pair[1],
                         "rejected": pair[2]})
    return rows, dropped


# --------------------------------------------------------------------------------------------
# loading


def load_bigbench(spec: str, *, split: str = "train", n: int | None = None, seed: int = 0,
                  labels: list[str] | None = None, prefix_words: int = 8) -> TaskData:
    """Load ``<task>[#prompts]`` (the part after ``bigbench:``), split 80/20 (fixed seed, rows
    sharing an input kept together), optionally viewed as prompts, then sampled to ``n``.

    labels: the classes in order (a list, or a comma-separated string), for tasks with more than
    two options; prefix_words: prompt length of the ``#prompts`` view of a classification task.
    """
    task, _, view = spec.partition("#")
    task = task.strip().strip("/")
    if not task:
        raise W2SError("bigbench: needs a task path, e.g. bigbench:strategyqa or "
                       "bigbench:multiemo/all_text_en")
    if isinstance(labels, str):  # "negative,positive" from a command line
        labels = [x.strip() for x in labels.split(",") if x.strip()]
    if view and view not in KINDS:
        raise W2SError(f"bigbench:{spec}: unknown view '#{view}'; use #prompts")
    data = _load_all(task, labels)
    if view and view not in ("prompts", data.kind):
        raise W2SError(f"bigbench:{spec}: a {data.kind} task has no #{view} view; use #prompts")
    data = split_in_memory(dataclasses.replace(data, name=f"bigbench:{spec}"), split, None, seed)
    if view == "prompts":
        data = as_prompts(data, prefix_words)
    return data.subset(n, seed)


def _load_all(task: str, labels: list[str] | None) -> TaskData:
    """A task, or all sub-tasks of a parent task, converted and concatenated."""
    archive = archive_path()
    parsed = read_tasks([task], archive, missing_ok=True).get(task)
    if parsed and parsed.get("examples"):
        data = convert_task(task, parsed, labels)
        return dataclasses.replace(data, meta={**data.meta, "archive_sha": archive_sha(archive)})
    known = task_names(archive)
    children = sorted(t for t in known if t.startswith(task + "/"))
    if not children:
        if parsed is None:
            raise _unknown_task(task, known)
        raise W2SError(f"BIG-bench task '{task}' has no examples and no sub-tasks")
    parts = [convert_task(t, d, labels) for t, d in read_tasks(children, archive).items()]
    kinds = {p.kind for p in parts}
    label_lists = {tuple(p.meta.get("label_names") or ()) for p in parts}
    if len(kinds) > 1 or len(label_lists) > 1:
        raise W2SError(f"the sub-tasks of '{task}' differ in kind or labels ({sorted(kinds)}, "
                       f"{sorted(label_lists)}); load them one by one")
    meta = {**parts[0].meta, "task": task, "subtasks": children,
            "examples": sum(p.meta["examples"] for p in parts),
            "archive_sha": archive_sha(archive),
            "dropped": {c.meta["task"]: c.meta.get("dropped") for c in parts}}
    return TaskData(f"bigbench:{task}", parts[0].kind, [r for p in parts for r in p.rows], meta)


def _alias(alias: str, spec: str):
    def load(*, split: str = "train", n: int | None = None, seed: int = 0, **options) -> TaskData:
        data = _call(load_bigbench, alias, spec, split=split, n=n, seed=seed, **options)
        return dataclasses.replace(data, name=alias, meta={**data.meta, "bigbench": spec})

    load.__doc__ = f"The ``{alias}`` task: ``bigbench:{spec}``."
    return load


for _name, _spec, _kind, _description in [
    ("multiemo", "multiemo/all_text_en", "classification",
     "BIG-bench multiemo English reviews, positive vs negative (neutral/ambivalent dropped)"),
    ("multiemo-prompts", "multiemo/all_text_en#prompts", "prompts",
     "first 8 words of multiemo reviews as prompts (label kept), for sentiment steering"),
    ("strategyqa", "strategyqa", "classification",
     "BIG-bench StrategyQA yes/no questions (label 1 = yes)"),
    ("fever", "fact_checker/fever", "classification",
     "BIG-bench fact_checker/fever claims, true vs false (label 1 = true)"),
    ("hhh-alignment", "hhh_alignment", "preference",
     "BIG-bench HHH alignment pairs: harmless, helpful, honest, other (Anthropic)"),
]:
    register_task(_name, kind=_kind, source="bigbench", description=_description,
                  license="Apache-2.0 (archive); data keeps its source's terms",
                  notes=f"bigbench:{_spec}")(_alias(_name, _spec))


def sentiment_pairs(rows: list[dict], *, prefix_words: int = 8, response_words: int = 40,
                    seed: int = 0) -> list[dict]:
    """Preference pairs from labelled reviews (``multiemo-pairs``): the same opening, a POSITIVE
    continuation preferred over a NEGATIVE one.

    For each review with enough words: prompt = its first ``prefix_words`` words; its own next
    ``response_words`` words are one side, the continuation of a review of the other polarity
    (drawn with ``seed``) the other; chosen = the positive side. Real text on both sides, and a
    preference that the data's own labels define and a sentiment judge (VADER) can see.
    """
    def split(text: str) -> tuple[str, str]:
        words = text.split()
        return " ".join(words[:prefix_words]), " ".join(words[prefix_words:prefix_words +
                                                              response_words])

    usable = [r for r in rows if len(r["text"].split()) >= prefix_words + 8]
    by_label = {label: [r for r in usable if r["label"] == label] for label in (0, 1)}
    if not by_label[0] or not by_label[1]:
        raise W2SError("multiemo-pairs needs reviews of both polarities in the split")
    rng = random.Random(seed)
    pairs = []
    for r in usable:
        prompt, own = split(r["text"])
        other = split(pick(rng, by_label[1 - r["label"]])["text"])[1]
        chosen, rejected = (own, other) if r["label"] == 1 else (other, own)
        pairs.append({"id": f"{r['id']}:pair", "prompt": prompt, "chosen": chosen,
                      "rejected": rejected, "label": r["label"]})
    return pairs


@register_task("multiemo-pairs", kind="preference", source="bigbench",
               description="multiemo review openings with a positive (chosen) and a negative "
                           "(rejected) real continuation: sentiment preference pairs",
               license="Apache-2.0 (archive); data keeps its source's terms",
               notes="bigbench:multiemo/all_text_en, see w2s.data.bigbench.sentiment_pairs")
def load_multiemo_pairs(*, split: str = "train", n: int | None = None, seed: int = 0,
                        prefix_words: int = 8, response_words: int = 40) -> TaskData:
    """The ``multiemo-pairs`` task: :func:`sentiment_pairs` of the multiemo ``split`` (pairs
    never mix reviews of the train and test splits)."""
    reviews = load_bigbench("multiemo/all_text_en", split=split)
    rows = sentiment_pairs(reviews.rows, prefix_words=prefix_words,
                           response_words=response_words)
    data = TaskData("multiemo-pairs", "preference", rows,
                    {**reviews.meta, "prompt_format": "plain", "view": "sentiment pairs",
                     "prefix_words": prefix_words, "response_words": response_words})
    return data.subset(n, seed)
