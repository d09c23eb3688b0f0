"""``w2s weak-label`` on tiny models: the labelling rule, the agreement-by-bin table and the gap
recovered by hand; the weighted DPO loss by hand (the weight reaches the loss) and weighting
changing the strong model's training; the CLI end to end (metrics, weak_labels.jsonl and the
table recomputed from it), a cached rerun, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import cli, flags, read_jsonl

from w2s.methods.weak_label.experiment import presentation, weak_label_rows
from w2s.methods.weak_label.labels import (
    agreement,
    agreement_by_bin,
    gap_recovered,
    implicit_reward,
    label_pair,
    label_pairs,
    sigmoid,
)

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_small_test_set")

OPTIONS = {"weak": "tiny:llama-1x32", "strong": "tiny:llama-2x32", "task": "toy-preference",
           "n-labelled": "8", "n-unlabelled": "20", "n-eval": "4", "judge": "vader",
           "mode": "full", "max-len": "96", "max-new-tokens": "8", "gen-batch-size": "8",
           "n-bins": "4", "weak-dpo-max-steps": "2", "weak-dpo-batch-size": "8",
           "weak-dpo-micro-batch-size": "8", "weak-dpo-lr": "1e-3",
           "strong-dpo-max-steps": "2", "strong-dpo-batch-size": "8",
           "strong-dpo-micro-batch-size": "8", "strong-dpo-lr": "1e-3"}


def args(**changes: str) -> list[str]:
    """The tiny test run's flags, with ``changes`` (``n_eval="4"``) applied."""
    return flags(OPTIONS, **changes)



# ---- the pure functions, by hand ---------------------------------------------------------------


def test_labelling_rule_by_hand():
    # r = beta * (log pi_w - log pi_ref): 0.1 * (-10 - -12) = 0.2 and 0.1 * (-9 - -8) = -0.1
    r1, r2 = implicit_reward(-10.0, -12.0, 0.1), implicit_reward(-9.0, -8.0, 0.1)
    assert r1 == pytest.approx(0.2) and r2 == pytest.approx(-0.1)
    lab = label_pair(r1, r2)
    assert lab["choice"] == 1 and lab["margin"] == pytest.approx(0.3)
    assert lab["p"] == pytest.approx(1 / (1 + math.exp(-0.3)))        # 0.574442...
    assert label_pair(r2, r1)["choice"] == 2 and label_pair(r2, r1)["p"] == lab["p"]
    assert label_pair(0.5, 0.5) == {"choice": 1, "margin": 0.0, "p": 0.5}   # a tie picks y_1
    assert [x["choice"] for x in label_pairs([1.0, -2.0], [0.0, 3.0])] == [1, 2]
    assert sigmoid(-1000) == 0.0 and sigmoid(1000) == 1.0
    with pytest.raises(ValueError):
        label_pair(float("nan"), 0.0)


def test_weak_label_rows_orient_the_pair_by_the_weak_choice():
    rows = [{"id": "a", "prompt": "q", "chosen": "good", "rejected": "bad"}] * 2
    order = presentation(2, seed=3)
    # pair 0: y_1 wins; pair 1: y_2 wins
    out = weak_label_rows(rows, [{"r_1": 1.0, "r_2": 0.0}, {"r_1": 0.0, "r_2": 1.0}], seed=3)
    for r, o, w in zip(out, order, (1, 2), strict=True):
        assert r["gold_choice"] == o and r["weak_choice"] == w and r["agree"] == (o == w)
        assert r["chosen"] == ("good" if r["agree"] else "bad")
        assert {r["chosen"], r["rejected"]} == {"good", "bad"}


def test_agreement_by_bin_by_hand():
    p = [0.9, 0.55, 0.7, 0.6, 0.8, 0.51, 0.95]
    agree = [1, 0, 1, 0, 1, 1, 1]
    # sorted by p: 0.51(1) 0.55(0) 0.6(0) | 0.7(1) 0.8(1) | 0.9(1) 0.95(1)  (7 = 3 + 2 + 2)
    bins = agreement_by_bin(p, agree, 3)
    assert [b["n"] for b in bins] == [3, 2, 2]
    assert [b["agreement"] for b in bins] == [pytest.approx(1 / 3), 1.0, 1.0]
    assert [(b["p_min"], b["p_max"]) for b in bins] == [(0.51, 0.6), (0.7, 0.8), (0.9, 0.95)]
    assert len(agreement_by_bin([0.6, 0.7], [1, 0], 5)) == 2          # fewer pairs than bins
    assert agreement(agree) == pytest.approx(5 / 7) and agreement([]) is None


def test_gap_recovered_by_hand_and_its_null_cases():
    assert gap_recovered(0.1, 0.25, 0.4)[0] == pytest.approx(0.5)
    assert gap_recovered(0.1, 0.05, 0.4)[0] == pytest.approx(-1 / 6)   # worse than the start
    value, reason = gap_recovered(0.3, 0.5, 0.3)                       # ceiling == start
    assert value is None and "does not beat its start" in reason
    assert gap_recovered(0.3, 0.5, 0.2)[0] is None                     # ceiling below start
    value, reason = gap_recovered(None, 0.5, 0.6)
    assert value is None and "missing" in reason


# ---- the weighted DPO loss ---------------------------------------------------------------------


def test_the_pair_weight_reaches_the_dpo_loss_by_hand():
    from w2s.models import load_causal_lm
    from w2s.train.preference import (
        collate_pairs,
        encode_pairs,
        preference_loss_fn,
        reference_logprobs,
    )

    model, tok = load_causal_lm("tiny:llama-1x32", seed=1)
    ref, _ = load_causal_lm("tiny:llama-1x32", seed=2)   # another reference: h != 0
    rows = [{"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."},
            {"prompt": "Help?", "chosen": "Of course!", "rejected": "No."}]
    examples = reference_logprobs(ref, encode_pairs(tok, rows, max_len=64), tok.pad_token_id)
    for e, w in zip(examples, (0.25, 0.9), strict=True):
        e["weight"] = w
    batch = collate_pairs(examples, tok.pad_token_id)
    assert batch["weight"].tolist() == [0.25, pytest.approx(0.9)]
    losses = preference_loss_fn("dpo", 0.5)(model, batch)["loss"]
    for i, (e, w) in enumerate(zip(examples, (0.25, 0.9), strict=True)):
        logp = {}
        for side in ("chosen", "rejected"):
            ids = torch.tensor([e[side].input_ids])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            logp[side] = sum(lp[t - 1, ids[0, t]].item()
                             for t in range(max(e[side].start, 1), ids.shape[1]))
        h = (logp["chosen"] - e["ref_chosen"]) - (logp["rejected"] - e["ref_rejected"])
        by_hand = w * -math.log(1 / (1 + math.exp(-0.5 * h)))
        assert float(losses[i].detach()) == pytest.approx(by_hand, rel=1e-4)


def test_train_dpo_refuses_bad_weights():
    from w2s.errors import W2SError
    from w2s.models import load_causal_lm
    from w2s.train import TrainConfig, train_dpo

    model, tok = load_causal_lm("tiny:llama-1x32")
    rows = [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}]
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=1, micro_batch_size=1)
    with pytest.raises(W2SError, match="1 preference rows"):
        train_dpo(model, tok, rows, cfg, weights=[1.0, 2.0])
    with pytest.raises(W2SError, match=">= 0"):
        train_dpo(model, tok, rows, cfg, weights=[-1.0])


# ---- the CLI end to end ------------------------------------------------------------------------


def test_cli_end_to_end_then_a_rerun_is_cached(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    assert cli(["weak-label", *args(), "--run-dir", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("label_agreement", "label_agreement_by_bin", "win_rate_weak_vs_start",
                "win_rate_gold_vs_start", "win_rate_weak_vs_gold", "gold_reward_start",
                "gold_reward_weak_labelled", "gold_reward_gold_labelled", "gap_recovered",
                "gap_recovered_reason", "gap_recovered_on", "n_kept"):
        assert key in m, key
    assert (m["gap_recovered"] is None) == (m["gap_recovered_reason"] is not None)
    labels = read_jsonl(run_dir / "weak_labels.jsonl")
    assert len(labels) == 20 and m["n_unlabelled"] == 20
    for r in labels:
        assert set(r) >= {"id", "margin", "p", "weak_choice", "gold_choice", "kept"}
        assert r["p"] == pytest.approx(sigmoid(r["margin"])) and r["p"] >= 0.5
    agree = [r["weak_choice"] == r["gold_choice"] for r in labels]
    assert m["label_agreement"] == pytest.approx(sum(agree) / 20)
    # the table, recomputed from the file independently: sorted by p, 20 pairs in 4 bins of 5
    ranked = sorted(labels, key=lambda r: r["p"])
    expected = [sum(r["weak_choice"] == r["gold_choice"] for r in ranked[5 * b:5 * b + 5]) / 5
                for b in range(4)]
    assert [b["agreement"] for b in m["label_agreement_by_bin"]] == pytest.approx(expected)
    assert [b["n"] for b in m["label_agreement_by_bin"]] == [5] * 4
    assert all(not s["cached"] for k, s in m["stages"].items() if k != "strong_gold")

    again = tmp_path / "again"
    assert cli(["weak-label", *args(), "--run-dir", str(again)]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert all(s["cached"] for s in m2["stages"].values()), m2["stages"]
    assert m2["label_agreement_by_bin"] == m["label_agreement_by_bin"]
    assert m2["win_rate_weak_vs_start"] == m["win_rate_weak_vs_start"]
    assert not (cache_dir / "inprogress").exists() or not any((cache_dir / "inprogress").iterdir())


def test_confidence_weighting_and_the_filter_change_the_strong_training(tmp_path, cache_dir):
    runs = {}
    for name, extra in (("plain", []), ("weighted", ["--confidence-weighting"]),
                        ("filtered", ["--confidence-threshold", "0.5001"])):
        run_dir = tmp_path / name
        assert cli(["weak-label", *args(), *extra, "--run-dir", str(run_dir)]) == 0
        runs[name] = json.loads((run_dir / "metrics.json").read_text())
    plain, weighted = runs["plain"], runs["weighted"]
    assert weighted["stages"]["weak_dpo"]["cached"] and weighted["stages"]["labels"]["cached"]
    assert not weighted["stages"]["strong_weak"]["cached"]          # a new training
    assert (weighted["stages"]["strong_weak"]["key"] != plain["stages"]["strong_weak"]["key"])
    assert weighted["stages"]["strong_gold"]["cached"]              # the ceiling is shared
    # every weight p is below 1, so the weighted loss is smaller than the plain one
    assert (weighted["training"]["strong_weak"]["first_loss"]
            < plain["training"]["strong_weak"]["first_loss"])
    kept = [r["kept"] for r in read_jsonl(tmp_path / "filtered" / "weak_labels.jsonl")]
    assert runs["filtered"]["n_kept"] == sum(kept) <= 20


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, needle", [
    ({"beta": "0"}, "beta must be > 0"),
    ({"confidence_threshold": "1"}, "confidence-threshold"),
    ({"task": "toy-sentiment"}, "weak-label needs a preference task"),
    ({"n_labelled": "100000"}, "lower them"),
    ({"judge": "vibes"}, "unknown judge kind 'vibes'"),
    ({"strong": "qwen2-7b"}, "not in the local Hugging Face cache"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(changes, needle, tmp_path, cache_dir,
                                                         capsys):
    run_dir = tmp_path / "run"
    assert cli(["weak-label", *args(**changes), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not run_dir.exists() and not Path(cache_dir).exists()
