"""``w2s wspo`` on tiny models: the WSPO loss by hand through the pipeline's own tensors (token and
sequence level), gamma's amplification, the pipeline end to end through the CLI, the cache (a
second run does no weak work; an entry from other inputs is refused), the dry run without weights,
resume after a kill, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import cli, flags, read_jsonl

from w2s.cli import main
from w2s.config import build_config
from w2s.errors import W2SError
from w2s.methods.wspo.config import WSPOConfig
from w2s.methods.wspo.experiment import Pipeline, wspo_collate, wspo_examples, wspo_loss_fn
from w2s.methods.wspo.plan import make_plan
from w2s.models import load_causal_lm, tiny_tokenizer
from w2s.runs import Cache, Run
from w2s.train import TrainConfig, train
from w2s.train.losses import wspo_loss
from w2s.train.preference import encode, score_tokens

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_small_test_set")

OPTIONS = {"weak": "tiny:llama-1x32", "strong": "tiny:llama-2x32", "task": "toy-preference",
           "n-train": "16", "n-eval": "6", "judge": "vader", "mode": "full", "max-len": "96",
           "max-new-tokens": "8", "temperature": "1", "gen-batch-size": "8",
           "weak-dpo-max-steps": "2", "weak-dpo-batch-size": "8",
           "weak-dpo-micro-batch-size": "8", "weak-dpo-lr": "1e-3",
           "strong-train-max-steps": "3", "strong-train-batch-size": "8",
           "strong-train-micro-batch-size": "4", "strong-train-lr": "1e-3",
           "strong-train-checkpoint-every": "1"}


def args(**changes: str) -> list[str]:
    """The tiny test run's flags, with ``changes`` (``n_eval="4"``) applied."""
    return flags(OPTIONS, **changes)



def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# ---- the loss by hand, through the pipeline's tensors ------------------------------------------


def _naive(model, item) -> list[float]:
    """log p of every scored response token from a plain fp64 log-softmax over the full logits."""
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return [logp[t - 1, ids[0, t]].item() for t in range(max(item.start, 1), len(ids[0]))]


ROWS = [("Can you help me bake bread?", "Of course, happy to help!"),
        ("How do I cook rice?", "Sure: rinse it, then simmer it."),
        ("Hi", "Hello there, friend.")]


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_wspo_loss_by_hand_through_the_pipeline(granularity):
    gamma = 0.2
    weak_ref, tok = load_causal_lm("tiny:llama-1x32", seed=1)
    weak_aligned, _ = load_causal_lm("tiny:llama-1x32", seed=2)
    strong_ref, _ = load_causal_lm("tiny:llama-2x32", seed=3)
    policy, _ = load_causal_lm("tiny:llama-2x32", seed=4)  # pi_theta, somewhere in training
    pad = tok.pad_token_id
    weak_items = [encode(tok, p, r) for p, r in ROWS]
    # sequence level compares texts, not tokens: give the strong model ANOTHER encoding of the
    # same texts (no chat template), as a strong model with its own tokenizer would have
    strong_items = (weak_items if granularity == "token" else
                    [encode(tok, p, r, chat=False, sep=" ") for p, r in ROWS])

    # what the pipeline computes: weak log-ratios and the reference once, then one policy forward
    ratios = [a - b for a, b in zip(score_tokens(weak_aligned, weak_items, pad),
                                    score_tokens(weak_ref, weak_items, pad), strict=True)]
    reference = score_tokens(strong_ref, strong_items, pad, reference=True)
    batch = wspo_collate(pad, granularity)(wspo_examples(strong_items, ratios, reference,
                                                         granularity))
    out = wspo_loss_fn(gamma, granularity)(policy, batch)

    for k, (w_item, s_item) in enumerate(zip(weak_items, strong_items, strict=True)):
        w = [a - b for a, b in zip(_naive(weak_aligned, w_item), _naive(weak_ref, w_item),
                                   strict=True)]
        p, r = _naive(policy, s_item), _naive(strong_ref, s_item)
        if granularity == "token":
            terms = [(gamma * (pt - rt) - wt) ** 2 for pt, rt, wt in zip(p, r, w, strict=True)]
            expected = sum(terms) / len(terms)
        else:  # length-normalised, each model over its own tokens
            expected = (gamma * (sum(p) / len(p) - sum(r) / len(r)) - sum(w) / len(w)) ** 2
        assert out["loss"][k].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert out["target_log_ratio"][k].item() == pytest.approx(sum(w) / len(w) / gamma,
                                                                   rel=1e-4, abs=1e-6)
    assert out["loss"].requires_grad  # it trains the policy


def test_wspo_loss_ignores_whatever_sits_at_unmasked_positions():
    # padding may hold -inf log-probs: a 0 * inf product would make the loss (or its gradient) NaN
    policy = torch.tensor([[-1.0, -2.0, -math.inf]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -math.inf]])
    weak = torch.tensor([[0.2, 0.2, math.nan]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = wspo_loss(policy, ref, weak, torch.zeros_like(weak), mask, gamma=0.1)
    assert loss.item() == pytest.approx(((0.05 - 0.2) ** 2 + 0.2 ** 2) / 2, abs=1e-7)
    loss.sum().backward()
    assert torch.isfinite(policy.grad).all() and policy.grad[0, 2] == 0


def test_gamma_sets_the_amplification():
    """Trained to convergence, the strong log-ratio of every token is the weak one / gamma."""
    tok = tiny_tokenizer()
    items = [encode(tok, f"Question {i}?", "Yes, indeed.") for i in range(4)]
    weak_ratio = 0.05  # the weak alignment raised every token by 0.05 nats
    achieved = {}
    for gamma in (0.5, 0.25):
        model, _ = load_causal_lm("tiny:llama-1x32", seed=0)
        reference = score_tokens(model, items, tok.pad_token_id, reference=True)
        weak = [torch.full_like(r, weak_ratio) for r in reference]
        config = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=4, max_steps=60,
                             scheduler="constant", max_grad_norm=None, seed=0)
        train(model, wspo_examples(items, weak, reference, "token"),
              loss_fn=wspo_loss_fn(gamma, "token"),
              collate=wspo_collate(tok.pad_token_id, "token"), config=config, progress=False)
        after = score_tokens(model, items, tok.pad_token_id)
        achieved[gamma] = torch.cat([a - r for a, r in zip(after, reference, strict=True)])
    for gamma, ratios in achieved.items():
        assert ratios.mean().item() == pytest.approx(weak_ratio / gamma, rel=0.1)
        assert ratios.std().item() < 0.2 * weak_ratio / gamma  # every token, not just on average
    assert achieved[0.25].mean() / achieved[0.5].mean() == pytest.approx(2.0, rel=0.1)


# ---- the pipeline through the CLI --------------------------------------------------------------


def test_pipeline_end_to_end_then_reuse_of_every_weak_stage(tmp_path, cache_dir, capsys,
                                                            monkeypatch):
    first = tmp_path / "first"
    assert cli(["wspo", *args(), "--run-dir", str(first)]) == 0
    m = metrics_of(first)
    assert m["method"] == "wspo" and m["status"] == "ok"
    for key in ("win_rate", "win_rate_se", "gold_reward_mean", "gold_reward_mean_before",
                "gold_reward_gain", "before", "after", "weak_signal", "training", "stages"):
        assert key in m
    assert 0 <= m["win_rate"] <= 100 and m["n_pairs"] == m["n_prompts"] == 6
    assert m["wins"] + m["ties"] + m["losses"] == 6
    assert m["gold_reward_mean"] == m["after"]["gold_reward_mean"]
    assert m["training"]["steps"] == 3 and m["training"]["global_batch"] == 8
    assert {s: m["stages"][s]["cached"] for s in ("weak_dpo", "weak_ratios", "strong_reference",
                                                   "before")} == dict.fromkeys(
        ("weak_dpo", "weak_ratios", "strong_reference", "before"), False)
    for name in ("config.yaml", "env.json", "log.jsonl", "generations.jsonl",
                 "generations_before.jsonl", "judgments.jsonl", "model/config.json"):
        assert (first / name).is_file(), name
    log = read_jsonl(first / "log.jsonl")
    steps = [r for r in log if r.get("stage") == "wspo" and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("strong_log_ratio" in r and "target_log_ratio" in r for r in steps)
    # the win rate is recomputable from the stored generations
    capsys.readouterr()
    assert cli(["eval", "winrate", "--candidate", str(first / "generations.jsonl"),
                "--baseline", str(first / "generations_before.jsonl"), "--judge", "vader",
                "--json", "--run-dir", str(tmp_path / "winrate")]) == 0
    assert json.loads(capsys.readouterr().out)["win_rate"] == m["win_rate"]

    # a dry run now finds stages 1-4 in the cache
    assert cli(["wspo", *args(gamma="0.3"), "--dry-run"]) == 0
    plan_text = capsys.readouterr().out
    assert plan_text.count("cached: yes") == 4 and "gamma 0.3" in plan_text

    # a second run with another gamma does no weak work at all
    def forbidden(*a, **k):
        raise AssertionError("the second run must take this from the cache")

    monkeypatch.setattr("w2s.train.train_dpo", forbidden)
    monkeypatch.setattr(Pipeline, "_score", forbidden)
    second = tmp_path / "second"
    assert cli(["wspo", *args(gamma="0.3"), "--run-dir", str(second)]) == 0
    m2 = metrics_of(second)
    assert all(m2["stages"][s]["cached"] for s in ("weak_dpo", "weak_ratios", "strong_reference",
                                                    "before"))
    assert m2["weak_signal"] == m["weak_signal"]
    assert ((second / "generations_before.jsonl").read_text()
            == (first / "generations_before.jsonl").read_text())
    assert m2["training"]["final_loss"] != m["training"]["final_loss"]

    # an entry that does not belong to these inputs is refused, not used
    entry = Cache().get(m["stages"]["weak_ratios"]["key"])
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "weak": {"source": "local",
                                                                  "location": "/elsewhere"}}))
    third = tmp_path / "third"
    capsys.readouterr()
    assert cli(["wspo", *args(gamma="0.3"), "--run-dir", str(third)]) == 2
    err = capsys.readouterr().err
    assert "was made from other inputs (weak differ)" in err and str(entry) in err
    assert not third.exists()
    (entry / "meta.json").write_text(json.dumps(meta))
    (entry / "values.safetensors").write_bytes(b"not a tensor file")
    assert cli(["wspo", *args(gamma="0.3"), "--run-dir", str(third)]) == 2
    assert "is unreadable" in capsys.readouterr().err and not third.exists()


def test_cache_keys_name_the_models(tmp_path, cache_dir):
    from w2s.models import save_model

    base = build_config(WSPOConfig, None, {k.replace("-", "_"): v for k, v in OPTIONS.items()})
    plan = make_plan(base)
    other = make_plan(build_config(WSPOConfig, None, {"weak": "tiny:qwen2-1x32", **{
        k.replace("-", "_"): v for k, v in OPTIONS.items() if k != "weak"}}))
    assert plan.keys["weak_dpo"] != other.keys["weak_dpo"]
    assert plan.keys["weak_ratios"] != other.keys["weak_ratios"]
    assert plan.keys["strong_reference"] == other.keys["strong_reference"]  # the same strong
    # a weak-aligned model from a local folder: rewriting the folder gives new keys
    folder = tmp_path / "aligned"
    model, tok = load_causal_lm("tiny:llama-1x32", seed=5)
    save_model(model, tok, folder)
    given = {**{k.replace("-", "_"): v for k, v in OPTIONS.items()}, "weak_aligned": str(folder)}
    before = make_plan(build_config(WSPOConfig, None, given)).keys
    assert before["weak_dpo"] is None  # nothing to align
    model, tok = load_causal_lm("tiny:llama-1x32", seed=6)
    save_model(model, tok, folder)
    assert make_plan(build_config(WSPOConfig, None, given)).keys["weak_ratios"] != \
        before["weak_ratios"]


def test_dry_run_is_offline_and_loads_no_weights(tmp_path, cache_dir, capsys, monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("a dry run must not load weights")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_weights)
    monkeypatch.setattr("w2s.models.load_causal_lm", no_weights)
    monkeypatch.setattr("w2s.models.loading.load_tiny", no_weights)
    monkeypatch.setattr("w2s.models.reward.load_tiny", no_weights)
    monkeypatch.chdir(tmp_path)
    assert cli(["wspo", "--weak", "qwen2-0.5b", "--strong", "qwen2-7b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hub id Qwen/Qwen2-0.5B" in out and "hub id Qwen/Qwen2-7B" in out
    assert "ultrafeedback" in out and "HuggingFaceH4/ultrafeedback_binarized" in out
    for stage in ("1. weak DPO", "2. weak log-ratios", "3. strong reference",
                  "4. strong generations before", "5. WSPO: gamma 0.1", "6. strong generations"):
        assert stage in out
    assert "cached: unknown" in out  # the dataset is not here offline: said, not guessed
    assert list(tmp_path.iterdir()) == []  # nothing written
    # tiny models and an offline task: every key is known, nothing cached yet
    assert cli(["wspo", *args(), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("cached: no") == 4 and "16 training pairs" in out
    assert list(tmp_path.iterdir()) == [] and not cache_dir.exists()


class Killed(Exception):
    """Stands in for a kill in the middle of training."""


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, cache_dir, monkeypatch):
    from safetensors.torch import load_file

    flags = args(strong_train_max_steps="4")
    whole = tmp_path / "whole"
    assert cli(["wspo", *flags, "--run-dir", str(whole)]) == 0

    original = Run.log

    def kill_after_step_2(self, record):
        original(self, record)
        if record.get("stage") == "wspo" and record.get("step") == 2:
            raise Killed

    monkeypatch.setattr(Run, "log", kill_after_step_2)
    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        main(["wspo", *flags, "--run-dir", str(resumed)])
    assert not (resumed / "metrics.json").exists()
    monkeypatch.setattr(Run, "log", original)
    assert cli(["wspo", *flags, "--run-dir", str(resumed)]) == 0
    m = metrics_of(resumed)
    assert m["training"]["resumed_from"] == 2 and m["training"]["steps"] == 4
    assert m["training"]["final_loss"] == metrics_of(whole)["training"]["final_loss"]
    a = load_file(str(whole / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and training really moved the weights (the comparison is not of two untrained models)
    start, _ = load_causal_lm("tiny:llama-2x32")
    assert not torch.equal(a["model.embed_tokens.weight"],
                           start.state_dict()["model.embed_tokens.weight"])


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, needle", [
    ({"gamma": "0"}, "gamma must be > 0"),
    ({"gamma": "-0.5"}, "gamma must be > 0"),
    ({"gamma": "inf"}, "gamma must be > 0 and finite"),
    ({"gamma": "nan"}, "gamma must be > 0 and finite"),
    ({"granularity": "word"}, "granularity' must be one of ['token', 'sequence']"),
    ({"task": "toy-sentiment"}, "wspo needs a preference task"),
    ({"weak_aligned": "tiny:llama-1x32"}, "is the weak model itself"),
    ({"judge": "vibes"}, "unknown judge kind 'vibes'"),
    ({"strong": "qwen2-7b"}, "not in the local Hugging Face cache"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(changes, needle, tmp_path, cache_dir,
                                                         capsys):
    run_dir = tmp_path / "run"
    assert cli(["wspo", *args(**changes), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not run_dir.exists() and not cache_dir.exists()


def test_empty_responses_are_refused(tmp_path, cache_dir, capsys):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "a fine answer", "rejected": "no"} for i in range(20)]
    rows[3]["chosen"] = "   "
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    assert cli(["wspo", *args(task=f"local:{data}"), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "field 'chosen' is empty" in err and not run_dir.exists()


def test_weak_larger_than_strong_warns_but_runs(cache_dir, capsys):
    with pytest.warns(UserWarning, match="larger than the strong model"):
        assert cli(["wspo", *args(weak="tiny:llama-2x32", strong="tiny:llama-1x32"),
                    "--dry-run"]) == 0
    assert "larger than the strong model" in capsys.readouterr().out  # in the plan's notes


def test_token_level_needs_one_tokenizer_sequence_level_does_not(tmp_path, cache_dir, capsys):
    """A strong model whose tokenizer writes prompts differently (another chat template): token
    level is refused before anything runs; sequence level trains across the two encodings."""
    model, tok = load_causal_lm("tiny:llama-2x32", seed=3)
    template = tok.chat_template
    tok.chat_template = template.replace("{{ message['content'] }}", "Q: {{ message['content'] }}")
    assert tok.chat_template != template
    folder = tmp_path / "other-template"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    run_dir = tmp_path / "run"
    assert cli(["wspo", *args(strong=str(folder)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "--granularity token needs" in err and "use --granularity sequence" in err
    assert not run_dir.exists()
    assert cli(["wspo", *args(strong=str(folder), granularity="sequence"),
                "--run-dir", str(run_dir)]) == 0
    m = metrics_of(run_dir)
    assert m["granularity"] == "sequence" and m["training"]["steps"] == 3
    assert m["win_rate"] is not None
    assert "not the paper's" in m["variant"]  # an extension: labelled wherever it is reported
    from w2s.evaluation.report import load_run, table_rows

    assert "not the paper's" in table_rows([load_run(run_dir)])[0]["method"]


def test_plan_refuses_in_python_too():
    cfg = WSPOConfig(weak="tiny:llama-1x32", strong="tiny:llama-2x32", task="toy-preference",
                     judge="vader", gamma=0.0)
    with pytest.raises(W2SError, match="gamma must be > 0"):
        make_plan(cfg)


RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "wspo"


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_is_a_valid_plan_offline(recipe, tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (RECIPES / recipe).read_text()
    assert "/home/" not in text and "/Users/" not in text  # nothing machine-specific
    assert cli(["wspo", "--recipe", str(RECIPES / recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6. strong generations after training" in out
    assert list(tmp_path.iterdir()) == []
    if recipe == "tiny.yaml":
        assert "512 training pairs" in out and "114 held-out test prompts x 4" in out
    else:
        assert "Qwen/Qwen2-7B-Instruct" in out and "Qwen/Qwen2-1.5B-Instruct" in out


def test_vllm_backend_without_vllm_says_so_and_falls_back(tmp_path, cache_dir, capsys):
    """On a machine without vLLM (or a GPU) --backend vllm warns with the reason, generates with
    hf, and records both the backend asked for and the one used."""
    with pytest.warns(UserWarning, match="vllm"):
        code = cli(["wspo", *args(), "--backend", "vllm", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["generation"]["requested_backend"] == "vllm"
    assert m["generation"]["backend"] == "hf"
    assert m["generation"]["max_new_tokens"] == 8
