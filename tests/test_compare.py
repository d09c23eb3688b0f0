"""``w2s compare`` on tiny models: every entry on one pair and one judge, the table against the
entries' own figures, ``w2s eval compare`` recomputing it, resume after a kill, entries that
cannot run listed with their reason, bad input refused; the table's pure functions by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import cli, read_jsonl, run_cli

from w2s.methods.compare.table import _gap, pair_with_base, pareto_front

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_small_test_set")

WEAK, STRONG = "tiny:llama-1x32+toy-preference@5", "tiny:llama-2x32+toy-preference@5"
STEPS = {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8, "lr": 1.0e-3}
RECIPE = {
    "weak": WEAK, "strong": STRONG, "task": "toy-preference", "n_train": 16, "n_eval": 6,
    "samples_per_prompt": 2, "mode": "full", "max_len": 96, "judge": "vader",
    "max_new_tokens": 8, "temperature": 1.0, "gen_batch_size": 16, "score_batch_size": 16,
    "expo_alphas": [0.5, 1.0], "weak_dpo": STEPS, "ceiling_dpo": STEPS, "sft": STEPS,
    "entries": {
        "wspo": {"granularity": "sequence", "strong_train": STEPS},
        "weak-label": {"n_labelled": 4, "n_unlabelled": 8},
        "search": {"w": 2, "k": 2, "l": 4, "bon_n": 4,
                   "genarm_train": {**STEPS, "warmup_ratio": 0.0}},
        "macpo": {"iterations": 1, "sft": STEPS, "dpo": STEPS},
    },
}


def recipe(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One comparison with every entry (a module fixture: the tests below read it)."""
    import os

    root = tmp_path_factory.mktemp("compare")
    old = os.environ.get("W2S_CACHE")
    os.environ["W2S_CACHE"] = str(root / "cache")
    try:
        assert cli(["compare", "--recipe", str(recipe(root)), "--run-dir",
                    str(root / "run")]) == 0
    finally:
        if old is None:
            os.environ.pop("W2S_CACHE", None)
        else:
            os.environ["W2S_CACHE"] = old
    return root / "run"


# ---- the whole comparison ----------------------------------------------------------------------


def test_every_entry_runs_as_an_ordinary_run_and_the_table_says_what_each_one_says(full_run):
    entries = load(full_run / "entries.json")
    assert [n for n, e in entries.items() if e["status"] != "ok"] == []
    table = load(full_run / "table.json")
    rows = {r["entry"]: r for r in table["rows"]}
    assert list(rows) == list(entries)                      # every entry, in order
    # each entry is an ordinary run of its method, its config saved as a recipe beside it
    for name, method in (("wspo", "wspo"), ("weak_label", "weak-label"), ("macpo", "macpo"),
                         ("bon", "search"), ("expo_wspo", "expo"), ("strong", None)):
        metrics = load(full_run / entries[name]["run"] / "metrics.json")
        assert metrics["status"] == "ok"
        if method:
            assert metrics["method"] == method
            assert (full_run / "entries" / f"{Path(entries[name]['run']).name}.yaml").is_file()
    # the strong model's answers ARE the baseline WSPO and weak-label judged against: their own
    # win rates (against their start) are the table's
    strong = read_jsonl(full_run / "entries/strong/generations.jsonl")
    for run in ("wspo/generations_before.jsonl", "weak_label/generations-before.jsonl"):
        assert read_jsonl(full_run / "entries" / run) == strong
    for name in ("wspo", "weak_label"):
        assert rows[name]["win_rate"] == rows[name]["own"]["win_rate"]
    # every entry's gold reward is its own run's (VADER on the same answers)
    for name in ("wspo", "weak_label", "bon", "cbs", "eft", "genarm", "macpo", "expo_wspo",
                 "expo_dpo"):
        assert rows[name]["gold_reward"] == pytest.approx(rows[name]["own"]["gold_reward"],
                                                          abs=1e-12)
    # the search decoders' own win rates are against search's own sampling, and say so
    assert rows["cbs"]["own"]["win_rate"] == load(
        full_run / "entries/search/metrics.json")["win_rate_cbs"]
    assert "sampling" in rows["cbs"]["own"]["baseline"]
    # gap recovered on the gold reward, by its definition
    s, c = rows["strong"]["gold_reward"], rows["ceiling"]["gold_reward"]
    assert table["gap_basis"] == "gold_reward"
    if c > s:
        assert rows["wspo"]["gap_recovered"] == pytest.approx(
            (rows["wspo"]["gold_reward"] - s) / (c - s))
    else:
        assert rows["wspo"]["gap_recovered"] is None and "ceiling" in rows["wspo"][
            "gap_recovered_reason"]
    assert rows["strong"]["win_rate"] == 50.0


def test_the_weak_alignment_is_made_once_and_its_compute_counts_for_its_users(full_run):
    entries = load(full_run / "entries.json")
    rows = {r["entry"]: r for r in load(full_run / "table.json")["rows"]}
    wspo = load(full_run / "entries/wspo/metrics.json")
    assert wspo["stages"]["weak_dpo"]["skipped"] == "--weak-aligned given"   # WSPO reused it
    assert wspo["weak_aligned"] == load(full_run / "entries/search/metrics.json")["tuned"]
    shared = entries["wspo"]["shared"]["weak_alignment"]
    assert shared["training_tokens"] > 0
    own = wspo["compute"]["total"]["backward_tokens"] - wspo["compute"]["stages"].get(
        "pretrain", {}).get("backward_tokens", 0)
    assert rows["wspo"]["compute"]["training_tokens"] == own + shared["training_tokens"]
    assert rows["wspo"]["compute"]["includes"] == ["weak_alignment"]
    # a decoding entry is charged its own decoder's stage of the shared search run
    search = load(full_run / "entries/search/metrics.json")["compute"]["stages"]
    assert rows["cbs"]["compute"]["generated_tokens"] == search["decode_cbs"]["generated_tokens"]
    assert rows["genarm"]["compute"]["training_tokens"] == search["genarm_arm"]["backward_tokens"]
    # ExPO over WSPO carries WSPO's compute too
    assert rows["expo_wspo"]["compute"]["training_tokens"] == rows["wspo"]["compute"][
        "training_tokens"]
    # metrics.json: the compute of every run once, the shared stage once
    total = load(full_run / "metrics.json")["compute"]
    assert "shared/weak_alignment" in total["stages"]
    assert total["total"]["backward_tokens"] == sum(s.get("backward_tokens", 0)
                                                    for s in total["stages"].values())


def test_eval_compare_recomputes_the_table_from_the_stored_files(full_run, tmp_path, capsys):
    code, out, _ = run_cli(["eval", "compare", str(full_run), "--out", str(tmp_path / "again")],
                           capsys)
    assert code == 0 and "wspo" in out
    stored, again = load(full_run / "table.json"), load(tmp_path / "again/table.json")
    assert again["rows"] == stored["rows"]
    assert (tmp_path / "again/table.md").read_text() == (full_run / "table.md").read_text()
    for png in ("quality-vs-compute.png", "win-rate.png"):
        assert (full_run / png).stat().st_size > 1000
    assert read_jsonl(tmp_path / "again/judgments/wspo.jsonl") == read_jsonl(
        full_run / "judgments/wspo.jsonl")
    md = (full_run / "table.md").read_text()
    assert "| wspo | training |" in md and "Judge: `vader`" in md


# ---- resume --------------------------------------------------------------------------------------


def test_a_killed_compare_resumes_at_the_entry_it_reached(tmp_path, cache_dir, monkeypatch):
    import w2s.methods.wspo.experiment as wspo

    args = ["compare", "--recipe", str(recipe(tmp_path)), "--methods", "strong,ceiling,wspo",
            "--run-dir", str(tmp_path / "run")]
    real = wspo.run

    def killed(cfg):
        raise KeyboardInterrupt   # what a killed process leaves: nothing after this point

    monkeypatch.setattr(wspo, "run", killed)
    assert cli(args) == 130   # the CLI's answer to an interrupt
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    entries = load(run / "entries.json")
    assert [entries[n]["status"] for n in ("strong", "ceiling", "wspo")] == \
        ["ok", "ok", "pending"]
    before = {n: (run / f"entries/{n}/metrics.json").stat().st_mtime_ns
              for n in ("strong", "ceiling")}
    monkeypatch.setattr(wspo, "run", real)
    assert cli(args) == 0
    assert {n: (run / f"entries/{n}/metrics.json").stat().st_mtime_ns
            for n in ("strong", "ceiling")} == before          # not run again
    events = [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == "entry"]
    assert [e["entry"] for e in events] == ["strong", "ceiling", "wspo", "wspo"]
    rows = {r["entry"]: r for r in load(run / "table.json")["rows"]}
    assert rows["wspo"]["status"] == "ok" and rows["bon"]["status"] == "skipped"
    # a finished comparison is not overwritten; another config in its directory is refused
    assert cli(args) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text())
    code = cli(["compare", "--recipe", str(recipe(tmp_path)), "--n-eval", "5",
                "--run-dir", str(other)])
    assert code == 2


# ---- entries that cannot run, bad input ---------------------------------------------------------


def test_entries_that_cannot_run_are_listed_with_the_reason(tmp_path, capsys):
    code, out, err = run_cli(["compare", "--recipe", str(recipe(tmp_path)), "--methods",
                              "strong,expo_dpo,eft", "--strong", "smollm2-135m-instruct",
                              "--dry-run"], capsys)
    if "not in the local Hugging Face cache" in err:   # pragma: no cover - offline package absent
        pytest.skip("smollm2-135m-instruct is not installed here")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "needs the ceiling entry, which is not selected" in lines["expo_dpo"]
    assert "different vocabularies" in lines["eft"]
    assert "not selected (--methods)" in lines["wspo"]
    assert "runs here" in lines["strong"]


def test_a_dry_run_shows_every_entry_and_writes_nothing(tmp_path, capsys):
    code, out, _ = run_cli(["compare", "--recipe", str(recipe(tmp_path)), "--dry-run",
                            "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0
    assert "w2s wspo --recipe <run>/entries/wspo.yaml" in out
    assert "16 training pairs, 6 held-out prompts x 2" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes, message", [
    ({"entries": {"dpo": {"beta": 1}}}, "entries: unknown method 'dpo'"),
    ({"entries": {"wspo": {"task": "hh"}}}, "entries.wspo sets task, which the comparison shares"),
    ({"entries": {"wspo": {"gama": 0.2}}}, "the wspo entry's config: unknown key 'gama'"),
    ({"task": "toy-sentiment"}, "compare needs a preference task"),
    ({"methods": ["strong", "dpo"]}, "must be one of"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, changes, message):
    code, _, err = run_cli(["compare", "--recipe", str(recipe(tmp_path, **changes)),
                            "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_eval_compare_refuses_a_folder_that_is_not_a_comparison(tmp_path, capsys):
    code, _, err = run_cli(["eval", "compare", str(tmp_path)], capsys)
    assert code == 2 and "not a `w2s compare` run directory" in err


# ---- the table's pure functions ------------------------------------------------------------------


def test_answers_pair_with_the_strong_models_answers_to_the_same_prompt_in_order():
    base = [{"id": "a#0", "prompt": "a", "response": "x"}, {"id": "a#1", "prompt": "a",
            "response": "y"}, {"id": "b", "prompt": "b", "response": "z"}]
    entry = [{"id": "1", "prompt": "b", "response": "B"}, {"id": "2", "prompt": "a",
             "response": "A0"}, {"id": "3", "prompt": "a", "response": "A1"},
             {"id": "4", "prompt": "a", "response": "A2"}, {"id": "5", "prompt": "c",
             "response": "C"}]
    pairs, unmatched = pair_with_base(entry, base)
    assert [(k, e["response"], b["response"]) for k, e, b in pairs] == \
        [("b", "B", "z"), ("a#0", "A0", "x"), ("a#1", "A1", "y")]
    assert unmatched == 2   # a third answer to 'a', and a prompt the strong model never saw


def test_gap_recovered_by_hand_and_null_with_its_reason():
    rows = [{"entry": "strong", "status": "ok", "gold_reward": 0.2},
            {"entry": "ceiling", "status": "ok", "gold_reward": 0.6},
            {"entry": "wspo", "status": "ok", "gold_reward": 0.5},
            {"entry": "bon", "status": "skipped", "reason": "x"}]
    _gap(rows, "gold_reward")
    assert [r.get("gap_recovered") for r in rows] == [0.0, 1.0, pytest.approx(0.75), None]
    flat = [dict(r, gold_reward=0.2) if r["entry"] == "ceiling" else dict(r) for r in rows[:3]]
    _gap(flat, "gold_reward")
    assert flat[2]["gap_recovered"] is None
    assert "does not beat the strong model" in flat[2]["gap_recovered_reason"]
    missing = [dict(rows[0]), {"entry": "ceiling", "status": "skipped",
                               "reason": "not selected (--methods)"}, dict(rows[2])]
    _gap(missing, "gold_reward")
    assert missing[2]["gap_recovered_reason"] == "no ceiling: not selected (--methods)"


def test_the_pareto_front_is_the_undominated_points():
    points = [("a", 10, 0.5), ("b", 20, 0.4), ("c", 30, 0.7), ("d", 5, 0.1), ("e", 30, 0.6)]
    assert pareto_front(points) == ["a", "c", "d"]
