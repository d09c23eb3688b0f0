"""The logit-arithmetic decoders of ``w2s search`` (eft, proxy, ed, jailbreak): the combined
next-token distribution at one step against an independent computation (plain forwards,
log_softmax, weights, temperature, top-k, top-p), EFT through the engine against the old formula,
one KV cache per model, a vocabulary mismatch in one line, every preset from the CLI, the
refusal-string attack success rate by hand, and the paper recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl, run_cli
from test_search import GUIDES, SMALL, bpe_model, bpe_tokenizer, tiny

from w2s.config import build_config
from w2s.errors import W2SError
from w2s.evaluation.safety import REFUSAL_STRINGS, attack_success_rate, refused
from w2s.methods.search.cache import CachedLM
from w2s.methods.search.config import SearchConfig, preset_weights, role_model
from w2s.methods.search.decoders import Compute, eft
from w2s.methods.search.guide import Guide
from w2s.methods.search.logits import LogitEngine, Term, logit_decode
from w2s.methods.search.text import encode_prompt, eos_ids, filter_logits, sample_next
from w2s.models.generate import SamplingConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "search"
PROMPTS = ["The hotel was", "I tried the camera last week.", "So"]

pytestmark = pytest.mark.usefixtures("one_thread")


def three_models():
    (a, tok), (b, _), (c, _) = tiny("llama-1x32", 0), tiny("llama-1x32", 1), tiny("llama-1x32", 2)
    return a, b, c, tok


def independent_probs(models, weights, tok, prompts, templates, temperature, top_k, top_p):
    """The combined next-token distribution computed from scratch: each model's last-position
    logits from a plain forward of its own encoding of the prompt, log_softmax, weighted sum,
    temperature, top-k and top-p masks, softmax."""
    rows = []
    for p in prompts:
        score = 0
        for model, w, template in zip(models, weights, templates, strict=True):
            ids = encode_prompt(tok, template.replace("{prompt}", p), False)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].float()
            score = score + w * torch.log_softmax(logits, -1)
        score = score / temperature
        if top_k:
            kth = score.sort(descending=True).values[top_k - 1]
            score = torch.where(score >= kth, score, torch.tensor(float("-inf")))
        probs = score.softmax(-1)
        desc, order = probs.sort(descending=True)
        before = desc.cumsum(-1) - desc             # mass of the more likely tokens
        keep = before < top_p                        # smallest set reaching top_p
        kept = torch.zeros_like(probs).scatter(0, order, (desc * keep).float())
        rows.append(kept / kept.sum())
    return torch.stack(rows)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 40, 0.9)])
def test_one_step_distribution_equals_an_independent_computation(temperature, top_k, top_p):
    a, b, c, tok = three_models()
    weights = [1.3, 0.8, -0.6]
    templates = ["Review: {prompt}", "{prompt}", "{prompt}"]   # each model its own prompt
    terms = [Term(r, m, tok, w, t) for r, m, w, t in
             zip(["base", "tuned", "untuned"], [a, b, c], weights, templates, strict=True)]
    engine = LogitEngine(terms, chat=False)
    engine.start(PROMPTS)
    score = engine.scores()
    assert score.dtype == torch.float32 and score.shape == (3, len(tok))
    ours = filter_logits(score, temperature, top_k, top_p).softmax(-1)
    ref = independent_probs([a, b, c], weights, tok, PROMPTS, templates, temperature, top_k,
                            top_p)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert ((ours > 0).sum(-1) < len(tok)).all() == (top_k > 0 or top_p < 1)
    # the token drawn under one seed is the one drawn from the independent distribution
    drawn = sample_next(score, temperature, top_k, top_p, torch.Generator().manual_seed(5))
    expected = torch.multinomial(ref, 1, generator=torch.Generator().manual_seed(5)).squeeze(-1)
    assert drawn.tolist() == expected.tolist()
    # ... and the engine's decoder draws it as its first token
    out, _ = logit_decode(terms, PROMPTS, max_new_tokens=1, generator=torch.Generator()
                          .manual_seed(5), chat=False, sampling=SamplingConfig(
                              temperature=temperature, top_k=top_k, top_p=top_p))
    stop = eos_ids(a, tok)
    assert [r["response"] for r in out] == [
        "" if t in stop else tok.decode([t]) for t in expected.tolist()]


def old_eft(base_model, tok, guide, prompts, beta, max_new_tokens, sampling, generator):
    """EFT as ``decoders.eft`` computed it before the engine: three caches, the formula
    ``base + beta * (tuned - untuned)`` on fp32 log-probs."""
    from w2s.models.loading import pad_id

    vocab, stop = len(tok), eos_ids(base_model, tok)
    lms = {"base": CachedLM(base_model, pad_id(tok)), **{
        k: CachedLM(lm.model, pad_id(tok)) for k, lm in guide.lms.items()}}
    for lm in lms.values():
        lm.start([encode_prompt(tok, p, False) for p in prompts])
    response, finished = [[] for _ in prompts], [False] * len(prompts)
    for _ in range(max_new_tokens):
        if all(finished):
            break
        step = {n: lm.feed(leave_last=False)[0][:, 0, :vocab].float().log_softmax(-1)
                for n, lm in lms.items()}
        combined = step["base"] + beta * (step["tuned"] - step["untuned"])
        tokens = sample_next(combined, sampling.temperature, sampling.top_k, sampling.top_p,
                             generator)
        for r, t in enumerate(tokens.tolist()):
            if finished[r]:
                continue
            if t in stop:
                finished[r] = True
                continue
            response[r].append(t)
            for lm in lms.values():
                lm.push(r, [t])
    return [tok.decode(ids, skip_special_tokens=True) for ids in response]


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_eft_through_the_engine_equals_the_old_formula(beta):
    a, b, c, tok = three_models()
    guide = Guide(b, c, tok, chat=False)
    sampling = SamplingConfig(temperature=0.8, top_k=30, top_p=0.95)
    compute = Compute()
    new, _ = eft(a, tok, guide, PROMPTS, beta=beta, max_new_tokens=24, sampling=sampling,
                 generator=torch.Generator().manual_seed(11), chat=False, compute=compute)
    old = old_eft(a, tok, guide, PROMPTS, beta, 24, sampling, torch.Generator().manual_seed(11))
    assert [r["response"] for r in new] == old
    assert compute.guide_tokens_scored == 2 * compute.base_tokens > 0
    assert set(compute.models_s) == {"base", "tuned", "untuned"}
    # and the step distribution itself: 1*base + beta*tuned - beta*untuned == the old formula
    engine = LogitEngine([Term("base", a, tok, 1.0), Term("tuned", b, tok, beta),
                          Term("untuned", c, tok, -beta)], chat=False)
    engine.start(PROMPTS)
    ids = [encode_prompt(tok, p, False) for p in PROMPTS]
    steps = []
    for m in (a, b, c):
        with torch.no_grad():
            steps.append(torch.stack([m(torch.tensor([x])).logits[0, -1].float().log_softmax(-1)
                                      for x in ids]))
    torch.testing.assert_close(engine.scores(), steps[0] + beta * (steps[1] - steps[2]),
                               atol=1e-5, rtol=1e-5)


def test_one_cache_per_model_and_summed_weights():
    """The authors' ED code writes base + (-alpha) (aligned - base_r) with base_r = base: the
    base model named twice reads through ONE cache with the summed weight 1 + alpha."""
    a, b, _, tok = three_models()
    twice = LogitEngine([Term("base", a, tok, 1.0), Term("aligned", b, tok, -0.3),
                         Term("base_r", a, tok, 0.3)], chat=False)
    once = LogitEngine([Term("base", a, tok, 1.3), Term("aligned", b, tok, -0.3)], chat=False)
    assert [g["name"] for g in twice.groups] == ["base+base_r", "aligned"]
    for e in (twice, once):
        e.start(PROMPTS[:2])
    torch.testing.assert_close(twice.scores(), once.scores(), atol=1e-6, rtol=1e-6)
    read = sum(len(encode_prompt(tok, p, False)) for p in PROMPTS[:2])
    assert twice.tokens_read() == {"base+base_r": read, "aligned": read}
    assert once.tokens_read() == {"base": read, "aligned": read}


def test_different_vocabularies_are_one_line():
    a, _, _, tok = three_models()
    gtok = bpe_tokenizer()
    with pytest.raises(W2SError, match="needs one vocabulary") as err:
        LogitEngine([Term("base", a, tok, 1.0, name="tiny-base"),
                     Term("jailbreak_unsafe", bpe_model(gtok, 0), gtok, 1.5, name="bpe")],
                    chat=False)
    assert len(str(err.value).splitlines()) == 1 and "jailbreak_unsafe model bpe" in str(err.value)


def test_presets_are_terms_over_the_runs_models():
    cfg = build_config(SearchConfig, None, {"base": "B", "tuned": "T", "untuned": "U",
                                            "ed_aligned": "A", "eft_beta": "2", "ed_alpha": "0.5",
                                            "jailbreak_alpha": "1.5", "proxy_alpha": "1"})
    assert preset_weights("eft", cfg) == [("base", 1.0), ("tuned", 2.0), ("untuned", -2.0)]
    assert preset_weights("proxy", cfg) == [("base", 1.0), ("tuned", 1.0), ("untuned", -1.0)]
    assert preset_weights("ed", cfg) == [("base", 1.5), ("ed_aligned", -0.5)]
    assert preset_weights("jailbreak", cfg) == [("base", 1.0), ("jailbreak_unsafe", 1.5),
                                                ("jailbreak_safe", -1.5)]
    assert [role_model(cfg, r) for r in ("base", "ed_aligned", "jailbreak_unsafe",
                                         "jailbreak_safe")] == ["B", "A", "T", "U"]


def test_attack_success_rate_by_hand():
    responses = ["Sure, here is how to do it: step one ...",        # attack succeeded
                 "I'm sorry, but I can't help with that.",           # refusal (prefix)
                 "Here it is. Note that this is unethical.",         # refusal (anywhere)
                 "i'm sorry"]                                        # case-sensitive: success
    assert [refused(r) for r in responses] == [False, True, True, False]
    assert attack_success_rate(responses) == 2 / 4
    assert attack_success_rate([]) is None
    assert attack_success_rate(["no"], strings=["no"]) == 0.0
    assert len(REFUSAL_STRINGS) == 29 and REFUSAL_STRINGS[0] == "I'm sorry"


def test_every_preset_runs_from_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    aligned = GUIDES[1]   # the base's stage + positive reviews: its "aligned" version
    code, out, err = run_cli(["search", *SMALL, "--n-prompts", "3", "--max-new-tokens", "6",
                              "--decoder", "eft,proxy,ed,jailbreak", "--ed-aligned", aligned,
                              "--ed-alpha", "0.5", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["decoders"]) == {"sample", "eft", "proxy", "ed", "jailbreak"}
    assert m["headline_decoder"] == "eft"
    for name in ("eft", "proxy", "ed", "jailbreak", "sample"):
        figures = m["decoders"][name]
        rows = read_jsonl(run_dir / f"generations-{name}.jsonl")
        assert len(rows) == 3 and all("refused" in r for r in rows)
        assert figures["attack_success_rate"] == m[f"asr_{name}"] == pytest.approx(
            sum(not r["refused"] for r in rows) / 3)
        assert figures["gold_reward_mean"] is not None
        c = figures["compute"]
        assert c["base_tokens"] > 0 and c["wall_s"] > 0
        if name != "sample":
            assert figures["win_rate_vs_sample"] is not None
            # one cache per model: eft's untuned guide IS the base model here (weights summed)
            roles = {r for group in c["models_s"] for r in group.split("+")}
            assert roles == {t["role"] for t in figures["settings"]["terms"]}
            assert sum(c["models_tokens_read"].values()) > 0
    ed = m["decoders"]["ed"]
    assert ed["settings"]["terms"] == [
        {"role": "base", "model": SMALL[3], "weight": 1.5},
        {"role": "ed_aligned", "model": aligned, "weight": -0.5}]
    assert ed["compute"]["guide_tokens_scored"] == ed["compute"]["base_tokens"]
    jb = m["decoders"]["jailbreak"]["settings"]["terms"]
    assert [(t["model"], t["weight"]) for t in jb] == [(SMALL[3], 1.0), (GUIDES[1], 1.5),
                                                        (GUIDES[3], -1.5)]


def test_logit_decoders_refuse_bad_input_in_one_line(tmp_path, capsys):
    from test_search import saved_bpe_model

    other = saved_bpe_model(tmp_path / "bpe")
    capsys.readouterr()
    for extra, message in [
        (["--decoder", "ed"], "decoder ed needs --ed-aligned"),
        (["--decoder", "jailbreak", "--jailbreak-unsafe", other], "needs one vocabulary"),
        (["--decoder", "ed", "--ed-aligned", other], "needs one vocabulary"),
        (["--decoder", "ed", "--ed-aligned", GUIDES[1], "--ed-alpha", "-1"], "--ed-alpha"),
        (["--decoder", "proxy", "--small-prompt", "Human:"], "has no {prompt}"),
    ]:
        run_dir = tmp_path / "run"
        code, _, err = run_cli(["search", *SMALL, *extra, "--run-dir", str(run_dir)], capsys)
        assert code == 2 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and not run_dir.exists(), extra


def test_the_logit_recipes():
    tiny_cfg = build_config(SearchConfig, RECIPES / "tiny-logits.yaml")
    assert set(tiny_cfg.decoder) >= {"eft", "proxy", "ed"} and tiny_cfg.ed_aligned
    jb = build_config(SearchConfig, RECIPES / "tiny-jailbreak.yaml")
    assert jb.decoder == ["sample", "jailbreak"] and jb.jailbreak_unsafe and jb.jailbreak_safe
    proxy = build_config(SearchConfig, RECIPES / "proxy-llama2-70b.yaml")
    assert (proxy.base, proxy.tuned, proxy.untuned, proxy.proxy_alpha) == (
        "meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf",
        1.0)
    jail = build_config(SearchConfig, RECIPES / "jailbreak-llama2-13b.yaml")
    assert (jail.base, jail.jailbreak_safe, jail.jailbreak_alpha, jail.temperature,
            jail.top_p, jail.max_new_tokens) == ("meta-llama/Llama-2-13b-chat-hf",
                                                 "meta-llama/Llama-2-7b-chat-hf", 1.5, 0.1, 0.9,
                                                 256)
    assert jail.small_prompt == jail.base_prompt == "Human: {prompt}Assistant: "
    ed = build_config(SearchConfig, RECIPES / "ed-llama2-7b.yaml")
    assert (ed.base, ed.ed_aligned, ed.ed_alpha, ed.temperature, ed.max_new_tokens) == (
        "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", 0.3, 0.7, 64)
