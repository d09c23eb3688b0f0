"""`w2s lab` on a tiny recipe folder: the summary files, honest verdicts, failed legs recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import cli

from w2s.lab import legs, run_lab
from w2s.methods.deception.lab import lab_summary as _summarize_deception
from w2s.methods.generalize.lab import lab_summary as _summarize_generalize

TINY = {"weak": "tiny:llama-1x32", "strong": "tiny:llama-2x32", "task": "toy-sentiment",
        "n_train": 64, "n_test": 24, "max_ctx": 32, "n_boot": 100,
        "weak_train": {"max_steps": 2, "batch_size": 16, "micro_batch_size": 16},
        "strong_train": {"max_steps": 2, "batch_size": 16, "micro_batch_size": 16}}


def test_generalize_verdict_is_computed_from_the_figures():
    good = {"xent": {"weak_acc": 0.6, "strong_ceiling_acc": 0.8, "w2s_acc": 0.7, "pgr": 0.5,
                     "pgr_ci_low": 0.1, "pgr_ci_high": 0.9}}
    s = _summarize_generalize(good)
    assert s["shows"] is True and "xent PGR 0.5" in s["verdict"]
    flat = {"xent": {**good["xent"], "strong_ceiling_acc": 0.6, "pgr": None}}
    s = _summarize_generalize(flat)
    assert s["shows"] is False and "no gap to recover" in s["verdict"]
    worse = {"xent": {**good["xent"], "w2s_acc": 0.55, "pgr": -0.25}}
    assert _summarize_generalize(worse)["shows"] is False


def _deception_metrics(score, weak, n=320, reason=None, flips=(0, 0, 0, 0)):
    areas = {k: {"n": n // 4, "flips": f, "tax": f / (n // 4)}
             for k, f in zip(("SU&WU", "SU&WK", "SK&WK", "SK&WU"), flips, strict=True)}
    return {"deception_score": score, "deception_reason": reason, "headline_setting": "explicit",
            "areas": areas, "table": [{"weak_ceiling_acc": weak, "strong_ceiling_acc": 0.8}],
            "settings": {"explicit": {"n": n, "baseline_share": 0.25}}}


def test_deception_verdict_states_the_score_the_ceilings_and_a_weak_model_at_chance():
    s = _summarize_deception({"run": _deception_metrics(0.5, weak=0.65, flips=(1, 0, 1, 2))})
    assert s["shows"] is True and s["random_flip_share"] == 0.25
    assert "deception score 0.5 vs 0.25" in s["verdict"] and "SK&WU 2/80" in s["verdict"]
    assert "chance" not in s["verdict"]  # 0.65 on 320 pairs is far above chance
    reason = "undefined: the conflict turned no test example from right to wrong"
    s = _summarize_deception({"run": _deception_metrics(None, weak=0.51, reason=reason)})
    assert s["shows"] is False
    assert "undefined (the conflict turned" in s["verdict"] and "undefined: undefined" not in s[
        "verdict"]
    assert "weak ceiling 0.51" in s["verdict"] and "within two standard errors of chance" in s[
        "verdict"]


@pytest.mark.filterwarnings("ignore")
def test_lab_writes_summary_and_records_a_failed_leg(tmp_path, cache_dir, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "generalize.yaml").write_text(yaml.safe_dump(TINY))
    out = tmp_path / "lab"
    summary = run_lab(out, only=["generalize"], recipes_dir=recipes)
    entry = summary["generalize"]
    assert entry["status"] == "ok" and set(entry["runs"]) == {"xent", "logconf"}
    for key in ("weak_acc", "strong_ceiling_acc", "w2s_acc_xent", "w2s_acc_logconf",
                "pgr_xent", "pgr_logconf", "shows", "verdict"):
        assert key in entry
    saved = json.loads((out / "summary.json").read_text())
    assert saved["generalize"]["verdict"] == entry["verdict"]
    assert (out / "generalize-xent" / "metrics.json").is_file()
    assert "| generalize | ok |" in (out / "summary.md").read_text()

    # a leg that breaks is recorded as failed and the command exits 1, after writing the summary
    (recipes / "generalize.yaml").write_text(yaml.safe_dump({**TINY, "weak": "tiny:llama-9x33"}))
    assert cli(["lab", "--only", "generalize", "--recipes", str(recipes), "--out",
                str(tmp_path / "broken")]) == 1
    broken = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert broken["generalize"]["status"] == "failed" and "tiny" in broken["generalize"]["error"]


def test_every_leg_has_a_lab_recipe():
    recipes = Path(__file__).resolve().parent.parent / "recipes" / "lab"
    for leg in legs().values():
        assert (recipes / leg.recipe).is_file(), leg.recipe


@pytest.mark.filterwarnings("ignore")
def test_a_second_lab_reuses_finished_legs_of_the_same_config_and_code(tmp_path, cache_dir,
                                                                         monkeypatch):
    import w2s.runs

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "generalize.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(w2s.runs, "git_sha", lambda: "abc123")  # a clean checkout
    first = run_lab(tmp_path / "one", only=["generalize"], recipes_dir=recipes)
    second = run_lab(tmp_path / "two", only=["generalize"], recipes_dir=recipes)
    assert not any(r["reused"] for r in first["generalize"]["runs"].values())
    assert all(r["reused"] for r in second["generalize"]["runs"].values())
    assert second["generalize"]["verdict"] == first["generalize"]["verdict"]
    assert (tmp_path / "two" / "generalize-xent" / "metrics.json").is_file()
    fresh = run_lab(tmp_path / "three", only=["generalize"], recipes_dir=recipes, fresh=True)
    assert not any(r["reused"] for r in fresh["generalize"]["runs"].values())
    monkeypatch.setattr(w2s.runs, "git_sha", lambda: "abc123-dirty")  # uncommitted changes
    dirty = run_lab(tmp_path / "four", only=["generalize"], recipes_dir=recipes)
    assert not any(r["reused"] for r in dirty["generalize"]["runs"].values())
    # another config is another run
    (recipes / "generalize.yaml").write_text(yaml.safe_dump({**TINY, "n_boot": 101}))
    monkeypatch.setattr(w2s.runs, "git_sha", lambda: "abc123")
    other = run_lab(tmp_path / "five", only=["generalize"], recipes_dir=recipes)
    assert not any(r["reused"] for r in other["generalize"]["runs"].values())
