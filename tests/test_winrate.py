"""Win rate: arithmetic and the tie rule, position swap, the length-controlled GLM, the library
entry point and `w2s eval winrate` end to end."""

import json
import math

import numpy as np
import pytest
from helpers import read_jsonl, run_cli

from w2s.errors import W2SError
from w2s.evaluation import (
    evaluate_winrate,
    fit_length_glm,
    length_controlled_win_rate,
    preference_from_scores,
    preference_from_verdicts,
    register_reward,
    win_rate,
)
from w2s.evaluation.judges import PairwiseJudge
from w2s.evaluation.winrate import lc_win_rate_with_reason, outcome_counts

# --------------------------------------------------------------------------------------------
# arithmetic


def test_win_rate_hand_values():
    # scores 100, 100, 0, 50 -> mean 62.5; deviations 37.5, 37.5, -62.5, -12.5 -> sum of
    # squares 6875, sample variance 6875/3, SE = sqrt(6875/3) / sqrt(4)
    value, se = win_rate([2, 2, 1, 1.5])
    assert value == pytest.approx(62.5)
    assert se == pytest.approx(math.sqrt(6875 / 3) / 2)
    assert win_rate([2, 2, 2]) == (100.0, 0.0)
    assert win_rate([1.5] * 4) == (50.0, 0.0)
    v, se1 = win_rate([1])
    assert v == 0.0 and math.isnan(se1)
    assert outcome_counts([2, 2, 1, 1.5]) == {"wins": 2, "ties": 1, "losses": 1, "n": 4}


@pytest.mark.parametrize("bad", [[], [0, 1], [1, 3], [1.2]])
def test_win_rate_rejects_other_encodings(bad):
    with pytest.raises(W2SError):
        win_rate(bad)


def test_tie_rule_both_orders():
    # verdicts name the preferred POSITION; candidate first, then baseline first
    assert preference_from_verdicts(1, 2) == 2.0      # candidate both times
    assert preference_from_verdicts(2, 1) == 1.0      # baseline both times
    assert preference_from_verdicts(1, 1) == 1.5      # always the first position: a tie
    assert preference_from_verdicts(2, 2) == 1.5      # always the second position: a tie
    assert preference_from_verdicts(1, 1.5) == 1.5    # one order undecided: a tie
    assert preference_from_scores(1.0, 0.0) == 2.0
    assert preference_from_scores(0.0, 1.0) == 1.0
    assert preference_from_scores(0.5, 0.5) == 1.5


class FirstPositionJudge(PairwiseJudge):
    """Pure position bias: always says the first output shown is better."""

    def __init__(self):
        super().__init__("test:first")
        self.seen = []

    def compare(self, items):
        self.seen.extend(items)
        return [{"verdict": 1} for _ in items]


class LongerJudge(PairwiseJudge):
    """Content-based: the longer output wins, whichever position it is in."""

    def __init__(self):
        super().__init__("test:longer")

    def compare(self, items):
        return [{"verdict": 1 if len(a) > len(b) else 2 if len(b) > len(a) else 1.5}
                for _, a, b in items]


def rows(responses, prefix="p"):
    return [{"id": str(i), "prompt": f"{prefix}{i}", "response": r}
            for i, r in enumerate(responses)]


def test_position_swap_turns_position_bias_into_ties():
    cand, base = rows(["long answer", "x", "yy"]), rows(["s", "long baseline", "zz"])
    judge = FirstPositionJudge()
    m = evaluate_winrate(cand, base, judge)
    assert (m["wins"], m["ties"], m["losses"], m["win_rate"]) == (0, 3, 0, 50.0)
    assert m["order_disagreements"] == 3
    # every pair was shown both ways round
    assert judge.seen[:3] == [("p0", "long answer", "s"), ("p1", "x", "long baseline"),
                              ("p2", "yy", "zz")]
    assert judge.seen[3:] == [("p0", "s", "long answer"), ("p1", "long baseline", "x"),
                              ("p2", "zz", "yy")]
    m = evaluate_winrate(cand, base, LongerJudge())
    assert (m["wins"], m["ties"], m["losses"]) == (1, 1, 1)
    assert m["win_rate"] == pytest.approx(50.0) and m["order_disagreements"] == 0


# --------------------------------------------------------------------------------------------
# length-controlled win rate


def biased_judgments(seed, n_instr=300, repeats=1, bias=2.5, quality=0.0):
    """Synthetic judgments with a KNOWN length bias: candidates are ~250 characters longer and
    the judge adds ``bias * tanh(standardised length difference)`` to the true logit."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n_instr)
    ids = np.repeat(np.arange(n_instr), repeats)
    base = rng.integers(200, 600, ids.size).astype(float)
    cand = base + rng.normal(250, 200, ids.size).round()
    delta = cand - base
    true_logit = quality + difficulty[ids]
    judge_logit = true_logit + bias * np.tanh(delta / delta.std(ddof=1))
    prefs = np.where(rng.random(ids.size) < 1 / (1 + np.exp(-judge_logit)), 2.0, 1.0)
    unbiased = 100 * np.mean(1 / (1 + np.exp(-true_logit)))
    return prefs, cand, base, ids, unbiased


@pytest.mark.parametrize("repeats", [1, 4])
def test_lc_removes_a_known_length_bias(repeats):
    prefs, cand, base, ids, unbiased = biased_judgments(0, repeats=repeats)
    raw = win_rate(prefs)[0]
    lc = length_controlled_win_rate(prefs, cand, base, ids)
    assert raw - unbiased > 20                       # the judge's length bias inflates raw
    assert abs(lc - unbiased) < 5                    # LC recovers the unbiased rate
    assert abs(lc - unbiased) < abs(raw - unbiased) / 5


def test_lc_without_bias_stays_at_raw():
    # 1200 judgments: with every candidate longer, the length coefficient's noise moves the LC
    # rate by a few points at n = 300; at 1200 it sits near the raw rate
    prefs, cand, base, ids, unbiased = biased_judgments(1, bias=0.0, quality=1.0, repeats=4)
    fit = fit_length_glm(prefs, cand, base, ids)
    assert abs(fit["length_coef"]) < 0.3
    assert fit["lc_win_rate"] == pytest.approx(win_rate(prefs)[0], abs=3)


def test_lc_symmetric_hand_case_is_exactly_half():
    # longer candidate wins 40 of 50, shorter candidate loses 40 of 50: all of it is length, and
    # by symmetry the length-free prediction is exactly 50
    delta = np.array([10] * 50 + [-10] * 50)
    prefs = [2] * 40 + [1] * 10 + [1] * 40 + [2] * 10
    fit = fit_length_glm(prefs, 100 + delta, [100] * 100, list(range(100)))
    assert fit["lc_win_rate"] == pytest.approx(50.0, abs=1e-6)
    assert fit["length_coef"] > 1 and fit["converged"]


def test_lc_with_given_instruction_difficulty():
    prefs, cand, base, ids, unbiased = biased_judgments(2)
    rng = np.random.default_rng(2)
    difficulty = {i: float(v) for i, v in enumerate(rng.normal(0, 1, 300))}
    fit = fit_length_glm(prefs, cand, base, ids, instruction_difficulty=difficulty)
    assert fit["difficulty_coef"] is not None and 0 <= fit["lc_win_rate"] <= 100


def test_lc_needs_enough_rows_and_length_variation():
    fit, reason = lc_win_rate_with_reason([2] * 5, [10] * 5, [5] * 5, list(range(5)))
    assert fit is None and "at least 20" in reason
    fit, reason = lc_win_rate_with_reason([2, 1] * 15, [10] * 30, [5] * 30, list(range(30)))
    assert fit is None and "two distinct" in reason
    with pytest.raises(W2SError, match="vary"):
        length_controlled_win_rate([2, 1], [3, 3], [1, 1], [0, 1])


# --------------------------------------------------------------------------------------------
# library entry point and CLI


@register_reward("test_exclaims")
def exclaims(prompt, response):
    return float(response.count("!"))


def test_evaluate_winrate_with_a_reward_and_a_run(tmp_path):
    from w2s.runs import Run, read_jsonl

    cand = rows(["wow!!", "ok!", "meh", "x"])
    base = rows(["fine!", "ok!", "yes!"])
    with Run.start("search", {"x": 1}, run_dir=tmp_path / "run") as run:
        m = evaluate_winrate(cand, base, "reward:test_exclaims", run=run)
        run.finish({"win_rate": m["win_rate"]})
    # pairs 0: 2 vs 1 win; 1: 1 vs 1 tie; 2: 0 vs 1 loss; row 3 unmatched
    assert (m["wins"], m["ties"], m["losses"], m["n"]) == (1, 1, 1, 3)
    assert m["win_rate"] == pytest.approx(50.0)
    assert m["candidate_reward_mean"] == pytest.approx(1.0)
    assert m["baseline_reward_mean"] == pytest.approx(1.0)
    assert m["unmatched"]["candidate"] == 1 and m["unmatched"]["candidate_first"] == ["3"]
    assert m["lc_win_rate"] is None and "at least 20" in m["lc_win_rate_reason"]
    judged = read_jsonl(tmp_path / "run" / "judgments.jsonl")
    assert [(j["id"], j["candidate_score"], j["baseline_score"], j["preference"])
            for j in judged] == [("0", 2.0, 1.0, 2.0), ("1", 1.0, 1.0, 1.5), ("2", 0.0, 1.0, 1.0)]


def write_jsonl(path, rows_):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    return path


def test_cli_winrate_end_to_end(tmp_path, capsys):
    pytest.importorskip("vaderSentiment")
    happy = ["What a wonderful, delightful film! I loved it.", "Great acting, superb story.",
             "Brilliant and beautiful, a joy to watch."]
    sad = ["A terrible, boring mess. I hated it.", "Awful acting and a dreadful story.",
           "Ugly, painful and sad."]
    n = 24
    cand = write_jsonl(tmp_path / "cand.jsonl",
                       [{"id": i, "prompt": f"Review {i}", "response": happy[i % 3] * (1 + i % 2)}
                        for i in range(n)])
    base = write_jsonl(tmp_path / "base.jsonl",
                       [{"id": i, "prompt": f"Review {i}", "response": sad[i % 3]}
                        for i in range(n + 2)])
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
                              "--judge", "vader", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    assert "win rate" in out and "unmatched" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "winrate" and metrics["status"] == "ok"
    assert metrics["win_rate"] == 100.0 and metrics["wins"] == n and metrics["n"] == n
    assert metrics["unmatched"]["baseline"] == 2 and metrics["unmatched"]["baseline_first"] == \
        ["24", "25"]
    assert metrics["candidate_reward_mean"] > 0.5 > -0.5 > metrics["baseline_reward_mean"]
    assert metrics["lc_win_rate"] is not None
    env = json.loads((run_dir / "env.json").read_text())
    assert env["judge"]["judge"] == "vader" and "vaderSentiment" in env["judge"]["version"]
    assert len((run_dir / "judgments.jsonl").read_text().splitlines()) == n
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("judge, needle", [
    ("gpt4", "unknown judge kind 'gpt4'"),
    ("rm:", "needs what follows"),
    ("cls:model", "cls:MODEL:LABEL"),
    ("reward:nope", "unknown reward function 'nope'"),
])
def test_cli_bad_judge_is_one_line_and_leaves_nothing(tmp_path, capsys, judge, needle):
    f = write_jsonl(tmp_path / "g.jsonl", [{"id": 1, "prompt": "p", "response": "r"}])
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(f), "--baseline", str(f),
                            "--judge", judge, "--run-dir", str(run_dir)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_cli_empty_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    good = write_jsonl(tmp_path / "g.jsonl", [{"id": 1, "prompt": "p", "response": "r"}])
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(empty), "--baseline", str(good),
                            "--judge", "reward:length", "--run-dir", str(tmp_path / "r")],
                           capsys)
    assert code == 2 and "no rows" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_win_rate_se_is_clustered_by_prompt():
    from w2s.evaluation import win_rate

    prefs = [2, 2, 1, 1]  # scores 100, 100, 0, 0: mean 50
    plain = win_rate(prefs)[1]
    assert plain == pytest.approx(math.sqrt(4 * 50 ** 2 / 3) / 2)  # 28.87
    # one judgment per prompt: the clustered SE is exactly the plain one
    assert win_rate(prefs, clusters=["a", "b", "c", "d"])[1] == pytest.approx(plain)
    # two prompts, each answered twice the same way: 2 independent units, not 4
    # sums of deviations per prompt: +100, -100 -> sqrt(2 / 1 * 20000) / 4 = 50
    assert win_rate(prefs, clusters=["a", "a", "b", "b"]) == pytest.approx((50.0, 50.0))
    assert math.isnan(win_rate(prefs, clusters=["a"] * 4)[1])
    with pytest.raises(W2SError, match="3 clusters for 4 preferences"):
        win_rate(prefs, clusters=["a", "b", "c"])


def test_the_lc_figure_says_what_it_is():
    from w2s.evaluation.judges import build_judge
    from w2s.evaluation.winrate import LC_METHOD

    rows = [{"id": str(i), "prompt": f"p{i}", "response": "good " * (i % 3 + 1)} for i in range(4)]
    base = [{"id": str(i), "prompt": f"p{i}", "response": "bad"} for i in range(4)]
    m = evaluate_winrate(rows, base, build_judge("vader"), cache=False)
    assert m["lc_win_rate_method"] == LC_METHOD and "NOT AlpacaEval 2" in LC_METHOD


# ---- judge robustness: --judges, --judge-repeats ----------------------------------------------


def test_robustness_arithmetic_by_hand():
    from w2s.evaluation.robust import agreement, robustness, spread

    s = spread([50.0, 60.0, None, 40.0])
    assert (s["median"], s["min"], s["max"], s["spread"], s["undefined"]) == (50.0, 40.0, 60.0,
                                                                                20.0, 1)
    a = agreement({"x": 2.0, "y": 1.0, "z": 1.5, "w": 2.0}, {"x": 2.0, "y": 2.0, "z": 1.5})
    assert a["items"] == 3 and a["agreement"] == pytest.approx(2 / 3)
    assert a["mean_abs_diff"] == pytest.approx(1 / 3)
    # pearson of (2, 1, 1.5) with (2, 2, 1.5): means 1.5 and 11/6
    x, y = [2, 1, 1.5], [2, 2, 1.5]
    mx, my = 1.5, 11 / 6
    cov = sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True))
    sx = sum((p - mx) ** 2 for p in x) ** 0.5
    sy = sum((q - my) ** 2 for q in y) ** 0.5
    assert a["pearson"] == pytest.approx(cov / (sx * sy))
    assert agreement({"x": "A>B"}, {"x": "A>B"})["pearson"] is None  # labels: agreement only
    rec = robustness({"j1": [50.0], "j2": [40.0, 44.0]}, {"j1": {"x": 2.0}, "j2": {"x": 1.0}},
                     figure="win_rate", deterministic={"j1": True})
    assert rec["per_judge"]["j2"]["median"] == 42.0 and rec["per_judge"]["j1"]["deterministic"]
    assert rec["agreement"]["j1 | j2"]["agreement"] == 0.0


def test_cli_judges_and_repeats(tmp_path, capsys):
    """Two judges on the same pairs: both figures and their agreement; a deterministic judge is
    judged once whatever --judge-repeats says; an api: judge is asked again per repeat."""
    cand = [{"id": str(i), "prompt": f"p{i}", "response": "y" * (i % 5 + 1)} for i in range(8)]
    base = [{"id": str(i), "prompt": f"p{i}", "response": "x" * 3} for i in range(8)]
    for name, rows in (("cand", cand), ("base", base)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["eval", "winrate", "--candidate", str(tmp_path / "cand.jsonl"),
                              "--baseline", str(tmp_path / "base.jsonl"), "--judge",
                              "reward:length", "--judges", "vader", "--judge-repeats", "3",
                              "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    rec = m["judge_robustness"]
    assert rec["judges"] == ["reward:length", "vader"]
    assert [rec["per_judge"][j]["n"] for j in rec["judges"]] == [1, 1]  # deterministic: once
    # length: the candidate is longer in 2 of 8 pairs (4, 5 chars vs 3) and as long in 1
    assert rec["per_judge"]["reward:length"]["median"] == pytest.approx(
        (2 + 0.5 * 2) / 8 * 100)  # i % 5 + 1: lengths 1,2,3,4,5,1,2,3 -> wins 2, ties 2
    assert m["win_rate"] == rec["per_judge"]["reward:length"]["median"]
    length = {r["id"]: r["preference"] for r in read_jsonl(run_dir / "judgments.jsonl")}
    vader = {r["id"]: r["preference"] for r in read_jsonl(run_dir / "judgments-1-r0.jsonl")}
    same = sum(length[k] == vader[k] for k in length) / 8
    assert rec["agreement"]["reward:length | vader"]["agreement"] == pytest.approx(same)
    assert "agreement reward:length | vader" in out
