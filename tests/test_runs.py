"""Run directories and the content-hash cache."""

import json
import os
from pathlib import Path

import pytest
import yaml

from w2s.errors import W2SError
from w2s.runs import Cache, Run, content_hash, find_runs, run_summary


def test_run_writes_record_and_metrics_last(tmp_path):
    d = tmp_path / "run"
    with Run.start("generalize", {"weak": "gpt2", "seed": 0}, run_dir=d,
                   headline=("pgr",)) as run:
        assert (d / "config.yaml").exists() and (d / "env.json").exists()
        assert not (d / "metrics.json").exists()
        run.log({"stage": "weak", "acc": 0.7})
        run.write_rows("predictions.jsonl", [{"id": "a", "correct": True}])
        run.finish({"pgr": 0.4, "weak_acc": 0.7})
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg == {"method": "generalize", "weak": "gpt2", "seed": 0}
    env = json.loads((d / "env.json").read_text())
    assert "torch" in env["packages"] and env["world_size"] == 1 and "device" in env
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["method"] == "generalize" and metrics["status"] == "ok"
    assert metrics["pgr"] == 0.4 and metrics["headline"] == ["pgr"]
    assert metrics["gold_reward"] is None and metrics["gold_reward_reason"]
    assert metrics["world_size"] == 1 and metrics["compute"]["total"]["wall_s"] >= 0
    assert json.loads((d / "log.jsonl").read_text().splitlines()[0])["acc"] == 0.7


def test_bad_input_leaves_nothing(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(W2SError):
        with Run.start("generalize", {}, run_dir=d):
            raise W2SError("task has one class")
    assert not d.exists()


def test_crash_keeps_dir_without_metrics(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with Run.start("generalize", {}, run_dir=d) as run:
            run.log({"step": 1})
            raise RuntimeError("killed")
    assert d.exists() and not (d / "metrics.json").exists()
    assert "failed" in (d / "log.jsonl").read_text()
    # the same run dir can be reopened to resume
    with Run.start("generalize", {}, run_dir=d) as run:
        run.finish({})
    assert (d / "metrics.json").exists()


def test_finished_run_is_not_overwritten(tmp_path):
    d = tmp_path / "run"
    with Run.start("x", {}, run_dir=d) as run:
        run.finish({})
    with pytest.raises(W2SError, match="already holds a finished run"):
        Run.start("x", {}, run_dir=d)


def test_forgetting_finish_is_a_bug(tmp_path):
    with pytest.raises(RuntimeError, match="without Run.finish"):
        with Run.start("x", {}, run_dir=tmp_path / "r"):
            pass


def test_non_main_process_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    d = tmp_path / "run"
    with Run.start("x", {}, run_dir=d) as run:
        run.log({"a": 1})
        run.finish({"pgr": 1.0})
    assert not d.exists()


def test_find_runs_and_summary(tmp_path):
    with Run.start("generalize", {"a": 1}, run_dir=tmp_path / "generalize" / "r1") as run:
        run.finish({"pgr": 0.25})
    with pytest.raises(RuntimeError):
        with Run.start("wspo", {"a": 2}, run_dir=tmp_path / "wspo" / "r2"):
            raise RuntimeError
    rows = {r["run"]: r for r in (run_summary(p, ["pgr"]) for p in find_runs(tmp_path))}
    assert rows[str(tmp_path / "generalize" / "r1")]["pgr"] == 0.25
    assert rows[str(tmp_path / "wspo" / "r2")]["status"] == "incomplete"


def test_default_run_dir_is_method_stamp_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Run.start("search", {"w": 4}) as run:
        run.finish({})
    (path,) = find_runs(tmp_path / "runs")
    assert path.parent.name == "search"
    assert path.name.endswith(content_hash({"w": 4}, 8))


def test_cache_key_depends_on_every_part(tmp_path):
    cache = Cache(tmp_path)
    k1 = cache.key("weak_ceiling", model="gpt2", seed=0, data="abc")
    assert k1 == cache.key("weak_ceiling", seed=0, data="abc", model="gpt2")  # order-free
    assert k1 != cache.key("weak_ceiling", model="gpt2", seed=1, data="abc")
    assert k1.startswith("weak_ceiling-")


def test_cache_put_get_atomic(tmp_path):
    cache = Cache(tmp_path)
    key = cache.key("labels", x=1)
    assert cache.get(key) is None
    with pytest.raises(ValueError):
        with cache.put(key) as tmp:
            (tmp / "half.bin").write_text("partial")
            raise ValueError("killed mid-write")
    assert cache.get(key) is None
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    with cache.put(key, meta={"n": 3}) as tmp:
        (tmp / "labels.json").write_text("[1, 0]")
    path = cache.get(key)
    assert path is not None and (path / "labels.json").read_text() == "[1, 0]"
    assert cache.entries() == [path]
    # a second writer of the same key keeps the first entry
    with cache.put(key) as tmp:
        (tmp / "labels.json").write_text("[0, 0]")
    assert (cache.get(key) / "labels.json").read_text() == "[1, 0]"


def test_cached_stage_builds_once_and_clears_its_progress(tmp_path):
    """A stage's key is ``cache.key(kind, **parts)``; it builds its entry once, checkpoints in
    ``<cache>/inprogress/<key>``, and publishing removes the checkpoints; a stage whose product
    is no entry keeps them until it calls clear_progress."""
    from w2s.runs import cached_stage

    cache = Cache(tmp_path)
    with cached_stage(cache, "fit", model="m") as st:
        assert not st.done and st.key == cache.key("fit", model="m")
        assert st.progress == tmp_path / "inprogress" / st.key
        st.progress.mkdir(parents=True)
        (st.progress / "step-1").write_text("checkpoint")
        st.publish(lambda folder: (folder / "out.txt").write_text("1"), meta={"n": 1})
    assert st.done and not st.progress.exists() and (st.path / "out.txt").read_text() == "1"
    with cached_stage(cache, "fit", model="m") as again:
        assert again.done and again.path == st.path
    with cached_stage(cache, "train", model="m") as training:
        training.progress.mkdir(parents=True)
    assert training.progress.exists() and not training.done  # kept for a rerun
    training.clear_progress()
    assert not training.progress.exists() and cache.get(training.key) is None


def test_cache_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "c"))
    assert Cache().root == tmp_path / "c"
    assert os.fspath(Cache(tmp_path / "d").root) == os.fspath(tmp_path / "d")


def test_records_are_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        with Run.start("x", {}, run_dir=tmp_path / "r") as run:
            run.finish({})
        cache = Cache(tmp_path / "c")
        with cache.put("k") as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "r" / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert cache.get("k").stat().st_mode & 0o777 == 0o755


def test_cache_put_survives_losing_the_rename_race(tmp_path, monkeypatch):
    """Two ranks of one launch finish the same entry: the one whose rename comes second must
    not fail (the entry is content-addressed) nor leave its temp dir behind."""
    import w2s.runs

    cache = Cache(tmp_path)
    key = cache.key("pretrain", x=1)
    real_replace = os.replace

    def racing_replace(src, dst):
        final = Path(dst)
        if final.name == key and not final.exists():  # the other rank wins, just now
            final.mkdir()
            (final / "w.bin").write_text("theirs")
            (final / ".complete").write_text("{}")
        return real_replace(src, dst)

    monkeypatch.setattr(w2s.runs.os, "replace", racing_replace)
    with cache.put(key) as tmp:
        (tmp / "w.bin").write_text("mine")
    assert (cache.get(key) / "w.bin").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [key]


def test_keep_turns_a_late_one_line_error_into_a_kept_directory(tmp_path):
    from w2s.errors import W2SError
    from w2s.runs import Run

    with pytest.raises(W2SError) as early:
        with Run.start("m", {"a": 1}, run_dir=tmp_path / "early"):
            raise W2SError("bad input")
    assert not (tmp_path / "early").exists() and str(early.value) == "bad input"

    with pytest.raises(W2SError) as late:
        with Run.start("m", {"a": 1}, run_dir=tmp_path / "late") as run:
            run.write_rows("generations.jsonl", [{"id": "1"}])
            run.keep("the answers")
            raise W2SError("the judge's server went away")
    assert str(late.value) == (f"the judge's server went away [{tmp_path / 'late'} keeps "
                               "the answers]")
    kept = tmp_path / "late"
    assert (kept / "generations.jsonl").is_file() and not (kept / "metrics.json").exists()
    assert "failed" in (kept / "log.jsonl").read_text()
