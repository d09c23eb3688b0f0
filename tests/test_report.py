"""`w2s report`: the markdown table from hand-made run directories, and the plots."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

from w2s.errors import W2SError
from w2s.evaluation.report import load_run, markdown_table, table_rows, write_report

HEADLINE = {"generalize": ["pgr"], "search": ["win_rate"], "wspo": ["win_rate"],
            "macpo": ["win_rate"], "deception": ["deception_score"]}
ALL_HEADLINE = ("pgr", "win_rate", "deception_score")


def make_run(root, name, metrics=None, method="search", predictions=None):
    """A run directory as the shared metrics.json schema writes it (w2s.runs.SCHEMA_KEYS)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"method": method}))
    if metrics is not None:
        keys = HEADLINE.get(method, [])
        full = {"method": method, "status": "ok", "headline": keys, **dict.fromkeys(keys),
                "gold_reward": None, "baseline_gold_reward": None, "world_size": 1,
                "compute": {"stages": {}, "total": {}}, **metrics}
        (d / "metrics.json").write_text(json.dumps(full))
    if predictions is not None:
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    return d


def pgr_predictions():
    # weak right on 2 of 4, w2s on 3, ceiling on 4 -> PGR (0.75 - 0.5) / (1 - 0.5) = 0.5
    rows = []
    for role, correct in (("weak", [1, 1, 0, 0]), ("w2s", [1, 1, 1, 0]),
                          ("strong_ceiling", [1, 1, 1, 1])):
        rows += [{"id": i, "role": role, "correct": bool(c), "pair": "gpt2->gpt2-xl"}
                 for i, c in enumerate(correct)]
    return rows


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [
        make_run(root, "gen", {"pgr": 0.5}, method="generalize", predictions=pgr_predictions()),
        make_run(root, "search", {"win_rate": 62.5, "win_rate_se": 3.25, "lc_win_rate": 55.0,
                                  "candidate_reward_mean": 0.8, "baseline_reward_mean": 0.1,
                                  "gold_reward": 0.8, "baseline_gold_reward": 0.1,
                                  "unmatched": {"candidate": 0}}),
        make_run(root, "macpo", {"win_rate": 70.0, "iterations": [
            {"iteration": 1, "win_rate": 60.0, "gold_reward": 0.2},
            {"iteration": 2, "win_rate": 70.0, "gold_reward": 0.4}]}, method="macpo"),
        make_run(root, "broken", None, method="wspo"),
    ]


def test_load_run_and_table(runs):
    gen = load_run(runs[0])
    assert gen["pgr"] == 0.5 and gen["pairs"]["gpt2->gpt2-xl"]["pgr"] == pytest.approx(0.5)
    search = load_run(runs[1])
    assert search["figures"] == {"lc_win_rate": 55.0, "candidate_reward_mean": 0.8,
                                 "baseline_reward_mean": 0.1}
    assert search["gold"] == 0.8
    rows = table_rows([gen, search, load_run(runs[3])], ALL_HEADLINE)
    assert rows[0]["pgr"] == "0.5" and rows[0]["win_rate"] == "-"
    assert rows[1]["win_rate"] == "62.5 ± 3.2"   # 3.25 rounds half to even
    assert rows[2]["status"] == "incomplete" and rows[2]["method"] == "wspo"
    md = markdown_table(rows)
    assert md.splitlines()[0] == "| run | method | status | pgr | win_rate | deception_score | " \
                                 "figures |"
    assert len(md.splitlines()) == 2 + 3


def test_report_cli_writes_markdown_and_plots(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["report", *map(str, runs), "--out-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert "w2s report" in out
    md = (out_dir / "report.md").read_text()
    assert "| gen | generalize | ok | 0.5 |" in md
    assert "| search | search | ok | - | 62.5 ± 3.2" in md
    for png in ("pgr.png", "win_rate.png", "gold_reward.png", "iterations.png"):
        assert (out_dir / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert "length-controlled win rate 55.0" in md


def test_report_without_matplotlib_notes_it(runs, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = write_report(runs[:2], tmp_path / "r.md")
    assert result["plots"] == [] and "matplotlib is not installed" in result["note"]
    assert "matplotlib is not installed" in (tmp_path / "r.md").read_text()


def test_report_bad_input(tmp_path, capsys):
    with pytest.raises(W2SError, match="not a run directory"):
        load_run(tmp_path)
    code, _, err = run_cli(["report", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a directory" in err and len(err.strip().splitlines()) == 1


def test_gold_reward_of_every_method_is_read(tmp_path):
    """The gold reward every method records under the schema's keys (gold_reward /
    baseline_gold_reward), whatever its own figures call it."""
    root = tmp_path / "runs"
    wspo = load_run(make_run(root, "wspo", {"win_rate": 56.0, "gold_reward": 0.24,
                                            "baseline_gold_reward": 0.16}, method="wspo"))
    macpo = load_run(make_run(root, "macpo", {"win_rate": 70.0, "gold_reward": 0.4,
                                              "baseline_gold_reward": 0.1}, method="macpo"))
    search = load_run(make_run(root, "search", {"win_rate": 60.0, "gold_reward": 0.66,
                                                "baseline_gold_reward": 0.16}))
    assert (wspo["gold"], wspo["baseline_gold"]) == (0.24, 0.16)
    assert (macpo["gold"], macpo["baseline_gold"]) == (0.4, 0.1)
    assert (search["gold"], search["baseline_gold"]) == (0.66, 0.16)


def test_a_search_run_plots_one_bar_per_decoder(tmp_path):
    """CBS, best-of-N and EFT side by side against sampling: a search run gives one win-rate
    bar per decoder that has one, and one gold-reward bar per decoder, sampling included."""
    from w2s.evaluation.report import _per_decoder

    decoders = {"sample": {"gold_reward_mean": 0.16, "win_rate_vs_sample": None,
                           "win_rate_se": None},
                "cbs": {"gold_reward_mean": 0.66, "win_rate_vs_sample": 78.9, "win_rate_se": 5.0},
                "bon": {"gold_reward_mean": 0.54, "win_rate_vs_sample": 72.7, "win_rate_se": 5.5}}
    run = load_run(make_run(tmp_path / "runs", "s", {"win_rate": 78.9, "decoders": decoders}))
    bars = _per_decoder(run)
    assert [b["name"] for b in bars] == ["s:sample", "s:cbs", "s:bon"]
    assert [b["gold"] for b in bars] == [0.16, 0.66, 0.54]
    assert [b["win_rate"] for b in bars] == [None, 78.9, 72.7]
    assert _per_decoder(load_run(make_run(tmp_path / "runs", "w", {"win_rate": 56.0},
                                          method="wspo")))[0]["name"] == "w"
    pytest.importorskip("matplotlib")
    result = write_report([run["run"]], tmp_path / "out" / "report.md")
    assert {Path(p).name for p in result["plots"]} >= {"win_rate.png", "gold_reward.png"}
