"""GenARM in ``w2s search``: the preset's one-step distribution against an independent
computation (and the paper's product form), the autoregressive reward model's training stage
(cached: a second run trains nothing; its reward ranks the training pairs better than before),
the CLI on the tiny recipe, bad input in one line, and the recipes. The ARM loss by hand is in
tests/test_preference.py (``test_arm_loss_by_hand``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from test_logits import PROMPTS, independent_probs, three_models
from test_search import SMALL

from w2s.config import build_config
from w2s.methods.search.config import SearchConfig, genarm_init, preset_weights, role_model
from w2s.methods.search.logits import LogitEngine
from w2s.methods.search.text import filter_logits

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "search"
TINY_ARM = ["--decoder", "genarm", "--genarm-task", "toy-sentiment-pairs", "--genarm-n", "16",
            "--genarm-max-len", "96", "--genarm-train-max-steps", "2",
            "--genarm-train-batch-size", "8",
            "--genarm-train-micro-batch-size", "8", "--genarm-train-lr", "1e-3"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_preset_and_its_roles():
    cfg = build_config(SearchConfig, None, {"base": "B", "tuned": "T", "untuned": "U",
                                            "genarm_alpha": "1.5"})
    assert preset_weights("genarm", cfg) == [("base", 1.0), ("arm", 1.5)]
    assert genarm_init(cfg) == "U" and role_model(cfg, "arm") == ""   # nothing trained yet
    assert role_model(cfg, "arm", "/cache/arm") == "/cache/arm"
    given = build_config(SearchConfig, None, {"base": "B", "tuned": "T", "genarm_model": "ARM",
                                              "genarm_init": "I"})
    assert role_model(given, "arm") == "ARM" and genarm_init(given) == "I"
    assert (cfg.genarm_beta_r, cfg.genarm_alpha, SearchConfig().genarm_alpha) == (0.05, 1.5, 1.0)


@pytest.mark.parametrize("alpha, temperature, top_k, top_p", [(1.0, 1.0, 0, 1.0),
                                                              (2.5, 0.7, 40, 0.9)])
def test_one_step_distribution_equals_an_independent_computation(alpha, temperature, top_k,
                                                                 top_p):
    """The terms the run builds for ``genarm`` (experiment.logit_terms) against plain forwards:
    log_softmax(base) + alpha log_softmax(ARM), then temperature / top-k / top-p; at T=1 with no
    filter that is the paper's pi_base * pi_ARM^alpha, renormalised."""
    from w2s.methods.search.experiment import logit_terms

    base, arm, _, tok = three_models()
    cfg = build_config(SearchConfig, None, {"base": "B", "tuned": "T", "genarm_alpha": alpha,
                                            "base_prompt": "Review: {prompt}"})
    models = {"lms": {"B": (base, tok), "ARM": (arm, tok)}, "arm": "ARM"}
    terms = logit_terms("genarm", cfg, models)
    assert [(t.role, t.name, t.weight, t.template) for t in terms] == [
        ("base", "B", 1.0, "Review: {prompt}"), ("arm", "ARM", alpha, "{prompt}")]
    engine = LogitEngine(terms, chat=False)
    engine.start(PROMPTS)
    ours = filter_logits(engine.scores(), temperature, top_k, top_p).softmax(-1)
    ref = independent_probs([base, arm], [1.0, alpha], tok, PROMPTS,
                            ["Review: {prompt}", "{prompt}"], temperature, top_k, top_p)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    if temperature == 1.0 and not top_k and top_p == 1.0:   # the product form, in probabilities
        from w2s.methods.search.text import encode_prompt

        rows = []
        for p in PROMPTS:
            with torch.no_grad():
                pb = base(torch.tensor([encode_prompt(tok, "Review: " + p, False)])
                          ).logits[0, -1].double().softmax(-1)
                pr = arm(torch.tensor([encode_prompt(tok, p, False)])
                         ).logits[0, -1].double().softmax(-1)
            q = pb * pr ** alpha
            rows.append(q / q.sum())
        torch.testing.assert_close(ours.double(), torch.stack(rows), atol=1e-5, rtol=1e-4)


def _arm_cfg(**extra):
    return build_config(SearchConfig, None, {
        "base": "tiny:llama-1x32", "tuned": "tiny:llama-1x32", "untuned": "tiny:llama-1x32",
        "genarm_task": "toy-sentiment-pairs", "genarm_n": 32, "genarm_max_len": 96,
        "chat": False, "device": "cpu", "genarm_train.max_steps": 12,
        "genarm_train.batch_size": 16, "genarm_train.micro_batch_size": 16,
        "genarm_train.lr": 5e-3, "genarm_train.warmup_ratio": 0.0, **extra})


def _reward_ranking(model_name: str, cfg, rows) -> tuple[float, float]:
    """Mean reward margin beta_r (log pi(w) - log pi(l)) and the share of pairs ranked right."""
    from w2s.models import load_causal_lm
    from w2s.train.preference import encode_pairs, score_items

    model, tok = load_causal_lm(model_name, device="cpu")
    pairs = encode_pairs(tok, rows, max_len=cfg.genarm_max_len, chat=False)
    c, _ = score_items(model, [p["chosen"] for p in pairs], tok.pad_token_id)
    r, _ = score_items(model, [p["rejected"] for p in pairs], tok.pad_token_id)
    margins = [cfg.genarm_beta_r * (a - b) for a, b in zip(c, r, strict=True)]
    return sum(margins) / len(margins), sum(m > 0 for m in margins) / len(margins)


def test_the_arm_stage_trains_once_and_its_reward_prefers_chosen(cache_dir, monkeypatch):
    from w2s.methods.search import genarm

    cfg = _arm_cfg()
    spec = genarm.plan_arm(cfg)
    assert spec["init"] == "tiny:llama-1x32" and len(spec["rows"]) == 32
    logs: list[dict] = []
    path = genarm.arm_model(cfg, spec, log=logs.append)
    stage = [r for r in logs if "cached" in r]
    assert stage == [{"stage": "genarm_arm", "cached": False, "key": stage[0]["key"],
                      "path": path, "steps": 12, "final_loss": stage[0]["final_loss"],
                      "resumed_from": None}]
    assert Path(path).parent == cache_dir and (Path(path) / "config.json").exists()
    assert json.loads((Path(path) / "train.json").read_text())["pairs"] == 32
    assert any("reward_accuracy" in r for r in logs)   # the shared trainer's step records
    # behaviour: the trained ARM's reward ranks its training pairs better than the init's
    before_margin, before_acc = _reward_ranking(spec["init"], cfg, spec["rows"])
    after_margin, after_acc = _reward_ranking(path, cfg, spec["rows"])
    assert after_margin > before_margin + 0.5 and after_acc > before_acc
    assert after_acc >= 0.9, (before_acc, after_acc)
    # a second run trains nothing: the stage is found (the trainer is never called)
    import w2s.train

    monkeypatch.setattr(w2s.train, "train_dpo", lambda *a, **k: pytest.fail("trained again"))
    again: list[dict] = []
    assert genarm.arm_model(cfg, genarm.plan_arm(cfg), log=again.append) == path
    assert again == [{"stage": "genarm_arm", "cached": True, "key": stage[0]["key"],
                      "path": path}]
    # ... and anything that determines the ARM is in its key
    keys = {genarm.stage_parts(c, genarm.plan_arm(c)).__repr__() for c in (
        cfg, _arm_cfg(genarm_beta_r=0.1), _arm_cfg(genarm_n=16), _arm_cfg(genarm_max_len=64),
        _arm_cfg(**{"genarm_train.lr": 1e-3}), _arm_cfg(genarm_init="tiny:llama-1x32+toy-sentiment@20"))}
    assert len(keys) == 6
    given = _arm_cfg(genarm_model=path)
    assert genarm.arm_model(given, genarm.plan_arm(given)) == path


def test_cli_runs_genarm_on_the_tiny_recipe_and_reruns_from_the_cache(tmp_path, capsys,
                                                                     cache_dir):
    runs = [tmp_path / "run1", tmp_path / "run2"]
    for run_dir in runs:
        code, _, err = run_cli(["search", *SMALL, "--n-prompts", "3", "--max-new-tokens", "6",
                                *TINY_ARM, "--run-dir", str(run_dir)], capsys)
        assert code == 0, err
    first, second = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert set(first["decoders"]) == {"sample", "genarm"} and first["headline_decoder"] == "genarm"
    g = first["decoders"]["genarm"]
    arm = first["genarm"]["arm"]
    assert Path(arm).parent == cache_dir
    assert g["settings"] == {"alpha": 1.0, "beta_r": 0.05, "terms": [
        {"role": "base", "model": SMALL[3], "weight": 1.0},
        {"role": "arm", "model": arm, "weight": 1.0}]}
    assert g["win_rate_vs_sample"] is not None and g["gold_reward_mean"] is not None
    assert g["compute"]["guide_tokens_scored"] == g["compute"]["base_tokens"] > 0
    assert first["genarm"]["stage"]["cached"] is False and first["genarm"]["stage"]["steps"] == 2
    assert first["genarm"]["init"] == SMALL[SMALL.index("--untuned") + 1]
    assert first["compute"]["stages"]["genarm_arm"]["cached"] is False
    # the rerun found the ARM: no training, the same answers
    assert second["genarm"]["stage"]["cached"] is True and second["genarm"]["arm"] == arm
    assert second["compute"]["stages"]["genarm_arm"]["cached"] is True
    assert second["compute"]["stages"]["genarm_arm"]["backward_tokens"] == 0
    read = [[json.loads(line)["response"] for line in (r / "generations-genarm.jsonl").open()]
            for r in runs]
    assert read[0] == read[1]


def test_genarm_refuses_bad_input_in_one_line(tmp_path, capsys):
    from test_search import saved_bpe_model

    other = saved_bpe_model(tmp_path / "bpe")
    capsys.readouterr()
    for extra, message in [
        (["--decoder", "genarm"], "decoder genarm needs a preference task"),
        (["--decoder", "genarm", "--genarm-task", "toy-prompts"], "is a prompts task"),
        (["--decoder", "genarm", "--genarm-model", other], "needs one vocabulary"),
        (["--decoder", "genarm", "--genarm-task", "toy-sentiment-pairs", "--genarm-init", other],
         "needs one vocabulary"),
        (["--decoder", "genarm", "--genarm-task", "toy-sentiment-pairs", "--genarm-beta-r", "0"],
         "--genarm-beta-r"),
    ]:
        run_dir = tmp_path / "run"
        code, _, err = run_cli(["search", *SMALL, *extra, "--run-dir", str(run_dir)], capsys)
        assert code == 2 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and not run_dir.exists(), extra


def test_the_genarm_recipes():
    tiny = build_config(SearchConfig, RECIPES / "tiny-logits.yaml")
    assert "genarm" in tiny.decoder and tiny.genarm_task == "toy-sentiment-pairs"
    assert tiny.genarm_train.max_steps == 60
    paper = build_config(SearchConfig, RECIPES / "genarm-tulu2-70b.yaml")
    assert (paper.base, paper.untuned, genarm_init(paper), paper.genarm_task) == (
        "allenai/tulu-2-70b", "allenai/tulu-2-7b", "allenai/tulu-2-7b", "ultrafeedback")
    assert (paper.genarm_beta_r, paper.genarm_alpha, paper.genarm_max_len) == (0.1, 1.0, 2048)
    t = paper.genarm_train
    assert (t.lr, t.epochs, t.batch_size, t.scheduler, t.warmup_ratio, t.weight_decay) == (
        5e-7, 3.0, 32, "linear", 0.1, 0.0)
    assert (paper.temperature, paper.top_p, paper.top_k, paper.chat) == (1.0, 1.0, 0, False)
    assert paper.base_prompt == paper.small_prompt == "<|user|>\n{prompt}\n<|assistant|>\n"
