"""``w2s reason`` (weak-to-strong reasoning): the selection and pairing rules, ORPO's loss and the
accuracy interval by hand; the CLI end to end on tiny models that have practised arithmetic
(metrics recomputed from the run's files, ``w2s eval pgr`` on the run, a cached rerun), and bad
input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from helpers import cli, flags, read_jsonl

from w2s.evaluation import bootstrap_accuracy, bootstrap_pgr
from w2s.methods.reason.selection import (
    consistent,
    contrast_pairs,
    cut_answer,
    icl_prompt,
    majority_vote,
    same_answer,
    stage1_rows,
)
from w2s.train.losses import orpo_loss

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_small_test_set")

# one model that has practised arithmetic (1,000 corpus steps: ~99% zero-shot, ~50% one-shot) as
# both: the weak SFT barely moves it, so its solutions and the strong model's in-context ones
# agree on some problems and disagree on others, and every stage has data
WEAK = STRONG = "tiny:llama-2x64+toy-arithmetic-corpus@1000"
OPTIONS = {"weak": WEAK, "strong": STRONG, "task": "toy-arithmetic", "n-weak-train": "16",
           "n-w2s": "24", "n-test": "12", "icl-shots": "1", "iterations": "2",
           "mode": "full", "max-len": "160", "max-new-tokens": "48", "gen-batch-size": "24",
           "n-samples": "4", "min-confidence": "0.5", "flip-confidence": "0.5", "n-boot": "50",
           "weak-sft-max-steps": "2", "weak-sft-batch-size": "8",
           "weak-sft-micro-batch-size": "8", "weak-sft-lr": "1e-6",
           "strong-sft-max-steps": "2", "strong-sft-batch-size": "8",
           "strong-sft-micro-batch-size": "8", "strong-sft-lr": "1e-4",
           "pref-max-steps": "2", "pref-batch-size": "4", "pref-micro-batch-size": "4",
           "pref-lr": "1e-4"}


def args(**changes: str) -> list[str]:
    """The tiny test run's flags, with ``changes`` (``n_eval="4"``) applied."""
    return flags(OPTIONS, **changes)



# ---- the pure functions, by hand ---------------------------------------------------------------


def test_consistency_compares_final_answers_not_text():
    assert same_answer("1,000", "1000") and same_answer("0.5", "1/2")
    assert not same_answer(None, None) and not same_answer("3", None)
    weak = ["3 + 4 = 7.\n#### 7", "#### 10", "no idea", "so the answer is 12."]
    icl = ["7", "The answer is 11.", "nothing", "#### 12.0"]
    from w2s.evaluation.checking import extract_answer

    keep = consistent([extract_answer(t) for t in weak], [extract_answer(t) for t in icl])
    assert keep == [0, 3]
    problems = [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(4)]
    rows = stage1_rows(problems, keep, weak, icl, "hybrid")
    assert [(r["id"], r["source"]) for r in rows] == [("p0", "weak"), ("p0", "icl"),
                                                      ("p3", "weak"), ("p3", "icl")]
    assert [r["response"] for r in stage1_rows(problems, keep, weak, icl, "icl")] == ["7",
                                                                                   "#### 12.0"]
    with pytest.raises(ValueError, match="same problems"):
        consistent(["1"], ["1", "2"])


def test_majority_vote_by_hand():
    assert majority_vote(["2", "3", "2.0", None]) == ("2", 0.5, [0, 2], [1, 3])
    # a missing answer is a value of its own; ties go to the one seen first
    assert majority_vote([None, None, "4"]) == (None, 2 / 3, [0, 1], [2])
    assert majority_vote(["5", "6"]) == ("5", 0.5, [0], [1])


def test_contrast_pairs_follow_the_authors_rules():
    rng = random.Random(0)
    samples = ["s0 #### 7", "s1 #### 7", "s2 #### 7", "s3 #### 9", "s4 #### 7"]
    ans = ["7", "7", "7", "9", "7"]                                  # majority 7, share 0.8
    # the weak solution agrees with the majority: it is chosen, against the disagreeing sample
    pairs = contrast_pairs("q", "weak #### 7", "7", samples, ans, rng=rng)
    assert pairs == [{"prompt": "q", "chosen": "weak #### 7", "rejected": "s3 #### 9",
                      "kind": "weak+"}]
    # it disagrees and the majority reaches flip_confidence 0.8: a majority sample beats it
    pairs = contrast_pairs("q", "weak #### 8", "8", samples, ans, max_pairs=3, rng=rng)
    assert len(pairs) == 3 and {p["kind"] for p in pairs} == {"weak-"}
    assert all(p["rejected"] == "weak #### 8" and p["chosen"].endswith("#### 7") for p in pairs)
    assert len({p["chosen"] for p in pairs}) == 3                    # distinct samples
    # the chosen majority samples differ in text: two copies of one give one pair
    twice = ["a #### 7", "a #### 7", "b #### 7", "c #### 7", "d #### 9"]
    pairs = contrast_pairs("q", "w #### 8", "8", twice, ["7", "7", "7", "7", "9"], max_pairs=3,
                           rng=rng)
    assert sorted(p["chosen"] for p in pairs) == ["a #### 7", "b #### 7", "c #### 7"]
    # ... but not when the majority is below it
    assert contrast_pairs("q", "w #### 8", "8", samples, ans, flip_confidence=0.9, rng=rng) == []
    # below min_confidence, or every sample agreeing with the weak one ("too easy"): nothing
    assert contrast_pairs("q", "w", "7", samples[:2] + samples[3:4], ["7", "8", "9"],
                          rng=rng) == []
    assert contrast_pairs("q", "w #### 7", "7", samples[:3], ans[:3], rng=rng) == []
    # a missing majority answer gives nothing either
    assert contrast_pairs("q", "w", None, ["a", "b", "c"], [None, None, "1"], rng=rng) == []
    # self mode: majority sample against a minority one, the weak solution unused
    pairs = contrast_pairs("q", "unused", "8", samples, ans, mode="self", rng=rng)
    assert pairs[0]["kind"] == "self" and pairs[0]["rejected"] == "s3 #### 9"
    assert pairs[0]["chosen"].endswith("#### 7")


def test_demonstrations_are_one_fixed_draw_never_the_problem_itself():
    from w2s.methods.reason.experiment import demos_for

    first = demos_for(0, 50, 4, 0, "icl")
    others = [demos_for(i, 50, 4, 0, "icl") for i in range(50)]
    assert all(i not in d and len(d) == 4 for i, d in enumerate(others))
    # the same demonstrations for every problem that is not one of them (the authors' fixed
    # few-shot prompt); a problem that is one of them gets the spare draw instead
    outside = [d for i, d in enumerate(others) if i not in first]
    assert all(d == outside[0] for d in outside)
    assert demos_for(-1, 50, 4, 0, "icl") == outside[0] != demos_for(-1, 50, 4, 1, "icl")


def test_a_solution_without_a_marked_answer_has_none():
    from w2s.methods.reason.scoring import correctness, final_answer

    assert final_answer("3 * 4 = 12. 1 + 12 = 13") is None           # no "####": no answer
    assert final_answer("3 * 4 = 12.\n#### 12") == "12"
    assert correctness(["so it is 13", "#### 13"], [{"answer": "13"}] * 2) == [False, True]


def test_prompts_and_cutting():
    p = icl_prompt([("Question: a\nAnswer:", " x\n#### 1 ")], "Question: b\nAnswer:")
    assert p == "Question: a\nAnswer: x\n#### 1\n\nQuestion: b\nAnswer:"
    assert cut_answer(" 2 + 2 = 4.\n#### 4\n\nQuestion: next one") == "2 + 2 = 4.\n#### 4"
    assert cut_answer("#### 5 Question: and more") == "#### 5"
    assert cut_answer("3 * 4 = 12.\n#### 12\n\nQu") == "3 * 4 = 12.\n#### 12"


def test_orpo_loss_by_hand():
    # P(w) = 0.5: odds 1, log odds 0; P(l) = 0.2: odds 1/4; sigmoid(log 4) = 4/5
    a_w, a_l = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])
    loss = orpo_loss(a_w, a_l, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2) - 0.1 * math.log(0.8), abs=1e-6)
    # swapping the two makes the odds-ratio term larger: sigmoid(-log 4) = 1/5, and the SFT
    # term is now -log 0.2
    assert orpo_loss(a_l, a_w, beta=0.1).item() == pytest.approx(
        -math.log(0.2) - 0.1 * math.log(0.2), abs=1e-6)
    # a certain response stays finite
    assert torch.isfinite(orpo_loss(torch.tensor([0.0]), torch.tensor([-1.0]))).all()


def test_orpo_objective_trains_through_train_dpo():
    from w2s.models import load_causal_lm
    from w2s.train import TrainConfig, train_dpo

    model, tok = load_causal_lm("tiny:llama-1x32", dtype="fp32", device="cpu")
    rows = [{"prompt": "Question: 1 + 1?\nAnswer:", "chosen": "#### 2", "rejected": "#### 3"}] * 4
    cfg = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=4, max_steps=3, seed=0)
    result = train_dpo(model, tok, rows, cfg, objective="orpo", sep=" ", chat=False)
    assert result.steps == 3 and result.losses[-1] < result.losses[0]


def test_bootstrap_accuracy_by_hand():
    out = bootstrap_accuracy([True, True, False, True], n_boot=0)
    assert out["acc"] == 0.75 and out["ci_low"] is None and out["n"] == 4
    out = bootstrap_accuracy([True] * 30 + [False] * 10, n_boot=500, seed=1)
    assert out["acc"] == 0.75 and out["ci_low"] < 0.75 < out["ci_high"]
    assert bootstrap_accuracy([True] * 5, n_boot=100)["ci_low"] == 1.0


# ---- the CLI end to end ------------------------------------------------------------------------


def _solutions(run_dir: Path, name: str) -> list[dict]:
    return read_jsonl(run_dir / f"solutions-{name}.jsonl")


@pytest.mark.slow
def test_cli_end_to_end_figures_from_files_eval_pgr_and_a_cached_rerun(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli(["reason", *args(), "--run-dir", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["final_model"] == "stage2" and m["iterations"] == 2
    assert set(m["accuracy"]) == {"weak", "strong_ceiling", "full_weak", "stage1_r1_weak",
                                  "stage1_r1_icl", "stage1_r2_hybrid", "stage2"}
    # every accuracy is the mean of its solutions file, recomputed here
    for name, acc in m["accuracy"].items():
        rows = _solutions(run_dir, name.replace("_", "-"))
        assert len(rows) == 12
        assert acc["acc"] == pytest.approx(sum(r["correct"] for r in rows) / 12)
    # PGR of every strong model through the shared bootstrap, from the same files
    weak = [r["correct"] for r in _solutions(run_dir, "weak")]
    ceiling = [r["correct"] for r in _solutions(run_dir, "strong-ceiling")]
    for name, fig in m["pgr_by_stage"].items():
        w2s = [r["correct"] for r in _solutions(run_dir, name.replace("_", "-"))]
        expect = bootstrap_pgr(weak, w2s, ceiling, n_boot=50, seed=0)
        assert fig["pgr"] == expect["pgr"] and fig["reason"] == expect["reason"]
    assert m["pgr"] == m["pgr_by_stage"]["stage2"]["pgr"]
    assert (m["pgr"] is None) == (m["pgr_reason"] is not None)
    # the rounds' data and the pairs' figures agree with pairs.jsonl
    r1, r2 = m["stage1_rounds"]
    assert r1["n_problems"] == r2["n_problems"] == 24 and 0 < r1["n_kept"] <= 24
    pairs = read_jsonl(run_dir / "pairs.jsonl")
    assert m["n_pairs"] == len(pairs) > 0
    assert sum(m["pair_kinds"].values()) == len(pairs)
    assert m["pairs_ordered_right"] == pytest.approx(
        sum(p["chosen_correct"] and not p["rejected_correct"] for p in pairs) / len(pairs))
    assert set(m["stages"]) == {"weak_sft", "weak_answers", "icl_answers", "stage1_r1_weak",
                                "stage1_r1_icl", "stage1_r2_hybrid", "full_weak", "samples",
                                "stage2", "strong_ceiling", "strong_base"}
    base = _solutions(run_dir, "strong-base")
    assert m["strong_base_acc"] == pytest.approx(sum(r["correct"] for r in base) / 12)

    # w2s eval pgr reads the run: one pair per strong model, the same PGR
    capsys.readouterr()
    assert cli(["eval", "pgr", str(run_dir), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == set(m["pgr_by_stage"]) and table["stage2"]["pgr"] == m["pgr"]

    again = tmp_path / "again"
    assert cli(["reason", *args(), "--run-dir", str(again)]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert all(s["cached"] for s in m2["stages"].values()), m2["stages"]
    assert m2["accuracy"] == m["accuracy"] and m2["pgr_by_stage"] == m["pgr_by_stage"]


@pytest.mark.slow
def test_selection_all_is_full_weak_fine_tuning_in_one_round(tmp_path):
    run_dir = tmp_path / "run"
    assert cli(["reason", *args(selection="all", iterations="3", stage2="none"),
                "--run-dir", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["iterations"] == 1 and m["final_model"] == "stage1_r1_weak"
    assert set(m["accuracy"]) == {"weak", "strong_ceiling", "stage1_r1_weak"}
    assert m["stage1_rounds"][0]["n_kept"] == 24 and "icl_answers" not in m["stages"]
    assert m["icl_train2_acc"] is None and "selection all" in m["icl_train2_acc_reason"]


@pytest.mark.slow
def test_lora_zero_shot_orpo_and_self_pairs_run_and_keep_an_adapter(tmp_path):
    run_dir = tmp_path / "run"
    assert cli(["reason", *args(mode="lora", weak_supervision="zero-shot",
                                iterations="1", stage1_data="icl", stage2="orpo", pairs="self",
                                pref_lr="1e-3"),
                "--lora-r", "4", "--lora-alpha", "8", "--run-dir", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "weak_sft" not in m["stages"] and m["final_model"] == "stage2"
    assert set(m["accuracy"]) == {"weak", "strong_ceiling", "full_weak", "stage1_r1_icl",
                                  "stage2"}
    assert m["pair_kinds"] and set(m["pair_kinds"]) == {"self"}
    # the stage-I model stage II started from is kept as a LoRA adapter, not a copy of the model
    from w2s.runs import Cache

    entry = Cache().root / m["stages"]["stage1_r1_icl"]["key"] / "model"
    assert (entry / "adapter_config.json").is_file()
    assert not list(entry.glob("model*.safetensors"))


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, needle", [
    ({"beta": "0"}, "beta"),
    ({"task": "toy-preference"}, "reason needs a reasoning task"),
    ({"n_weak_train": "100000"}, "lower them"),
    ({"icl_shots": "24"}, "lower --icl-shots"),
    ({"flip_confidence": "0.4"}, "raise --flip-confidence"),
    ({"strong": "qwen2-7b"}, "not in the local Hugging Face cache"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(changes, needle, tmp_path, cache_dir,
                                                         capsys):
    run_dir = tmp_path / "run"
    assert cli(["reason", *args(**changes), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not run_dir.exists() and not Path(cache_dir).exists()
