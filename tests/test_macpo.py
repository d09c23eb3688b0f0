"""``w2s macpo``: who learns from whom and the perplexity filter on hand-made agent outputs; the
agents as LoRA adapters over one copy of each base model; the whole loop through the CLI on tiny
models; a rerun finds the finished stages in the cache (after a crash, and into a new run
directory); a filter that leaves no pairs; bad input; recipes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import MACPO_MODELS, MACPO_TINY, cli, read_jsonl

from w2s.cli import main
from w2s.config import build_config
from w2s.methods.macpo.agents import Format
from w2s.methods.macpo.config import MACPOConfig, check_config
from w2s.methods.macpo.pairing import (
    candidates,
    contrastive_pairs,
    perplexity,
    perplexity_filter,
    positive_sources,
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "macpo"

pytestmark = pytest.mark.usefixtures("one_thread")

T1, T2, S = MACPO_MODELS
TINY = MACPO_TINY
LEARNERS = ("teacher1", "teacher2", "student")


# ---- pure steps on hand-made agent outputs ---------------------------------------------------


def hand_made_answers() -> tuple[list[dict], dict[str, dict[str, str]]]:
    """Three prompts; every agent's answer says who wrote it and to which prompt."""
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(3)]
    answers = {f"{who}-{pol}": {p["id"]: f"{who}-{pol} answers {p['id']}" for p in prompts}
               for who in LEARNERS for pol in ("pos", "neg")}
    answers["teacher2-pos"]["p1"] = "   "       # an empty answer is no candidate
    answers["teacher1-neg"]["p2"] = ""          # no familiar negative: no pair for that prompt
    return prompts, answers


def test_who_learns_from_whom_and_which_answer_is_rejected():
    teachers = ["teacher1", "teacher2"]
    assert positive_sources("student", teachers) == ["teacher1-pos", "teacher2-pos"]
    assert positive_sources("teacher1", teachers) == ["student-pos", "teacher2-pos"]
    assert positive_sources("teacher2", teachers) == ["student-pos", "teacher1-pos"]
    with pytest.raises(ValueError):
        positive_sources("teacher3", teachers)

    prompts, answers = hand_made_answers()
    for learner in LEARNERS:
        cands = candidates(learner, prompts, answers, teachers)
        sources = positive_sources(learner, teachers)
        # every candidate is a POSITIVE answer of an agent other than the learner
        assert {c["source"] for c in cands} == set(sources)
        assert all(c["response"] == answers[c["source"]][c["id"]] for c in cands)
        assert all(not c["source"].startswith(learner) for c in cands)
        scored = [dict(c, perplexity=1.0 + k) for k, c in enumerate(cands)]
        pairs = contrastive_pairs(learner, perplexity_filter(scored, "none"),
                                  answers[f"{learner}-neg"])
        for p in pairs:
            assert p["chosen"] == answers[p["chosen_from"]][p["id"]]
            assert p["chosen_from"] in sources and p["chosen_from"].endswith("-pos")
            # the rejected answer is the learner's OWN negative agent's, to the same prompt
            assert p["rejected_from"] == f"{learner}-neg"
            assert p["rejected"] == f"{learner}-neg answers {p['id']}"
        expected = sum(1 for c in cands if answers[f"{learner}-neg"][c["id"]].strip())
        assert len(pairs) == expected
    # exact counts: the student sees teacher1 on p0..p2 and teacher2 on p0, p2 (p1 empty)
    student = candidates("student", prompts, answers, teachers)
    assert [(c["id"], c["source"]) for c in student] == [
        ("p0", "teacher1-pos"), ("p0", "teacher2-pos"), ("p1", "teacher1-pos"),
        ("p2", "teacher1-pos"), ("p2", "teacher2-pos")]
    # teacher1 has no negative answer to p2, so its two p2 candidates give no pair
    t1 = candidates("teacher1", prompts, answers, teachers)
    t1_pairs = contrastive_pairs("teacher1", perplexity_filter(
        [dict(c, perplexity=2.0) for c in t1], "none"), answers["teacher1-neg"])
    assert sorted({p["id"] for p in t1_pairs}) == ["p0", "p1"]
    # a chosen answer equal to the rejected one is no pair
    same = [{"id": "p0", "prompt": "q", "source": "student-pos", "response": "x",
             "perplexity": 1.5, "kept": True}]
    assert contrastive_pairs("teacher1", same, {"p0": "x"}) == []


def test_perplexity_filter_keeps_exactly_the_k_it_should():
    assert perplexity(-math.log(4.0) * 3, 3) == pytest.approx(4.0)
    assert perplexity(-1.0, 0) == math.inf
    ppl = {("a", "s1"): 5.0, ("a", "s2"): 2.0, ("a", "s3"): 9.0,
           ("b", "s1"): 3.0, ("b", "s2"): 3.0, ("b", "s3"): 1.5,
           ("c", "s1"): 7.0}
    scored = [{"id": i, "source": s, "response": f"{i}{s}", "prompt": i, "perplexity": v}
              for (i, s), v in ppl.items()]

    def kept(rule, k=1, max_perplexity=None):
        out = perplexity_filter(scored, rule, k, max_perplexity)
        assert [r["perplexity"] for r in out] == [r["perplexity"] for r in scored]  # all rows
        return {(r["id"], r["source"]) for r in out if r["kept"]}

    assert kept("lowest", 1) == {("a", "s2"), ("b", "s3"), ("c", "s1")}
    # k = 2: the two lowest per prompt; b's tie at 3.0 keeps... both (1.5 and the first 3.0)
    assert kept("lowest", 2) == {("a", "s2"), ("a", "s1"), ("b", "s3"), ("b", "s1"),
                                 ("c", "s1")}
    assert kept("lowest", 5) == set(ppl)  # more than there are: all of them
    assert kept("lowest-global", 3) == {("b", "s3"), ("a", "s2"), ("b", "s1")}  # 1.5, 2, 3 (1st)
    assert kept("threshold", max_perplexity=3.0) == {("a", "s2"), ("b", "s1"), ("b", "s2"),
                                                     ("b", "s3")}
    assert kept("threshold", max_perplexity=1.0) == set()
    assert kept("none") == set(ppl)
    assert all(len([r for r in perplexity_filter(scored, "lowest", k) if r["kept"]]) ==
               sum(min(k, n) for n in (3, 3, 1)) for k in (1, 2, 3))
    with pytest.raises(ValueError):
        perplexity_filter(scored, "highest")


def test_each_model_formats_its_own_prompts():
    chat = Format(templated=True)
    assert (chat.chat, chat.sep, chat.text("hi")) == (True, "", "hi")
    hh = Format(templated=False, prompt_format="hh")
    prompt = "\n\nHuman: hi\n\nAssistant:"
    assert (hh.chat, hh.sep, hh.text(prompt)) == (False, " ", prompt)
    assert hh.clean(" Hello there.\n\nHuman: and you?") == "Hello there."
    plain = Format(templated=False, prompt_format="plain")
    assert plain.text("hi") == "USER: hi ASSISTANT:"
    assert plain.clean(" Sure. USER: more") == "Sure."
    assert chat.clean("  USER: stays  ") == "USER: stays"  # a template ends answers by EOS


# ---- agents: LoRA adapters over one copy of each base model ----------------------------------


def test_agents_share_one_copy_of_each_base_model(tmp_path):
    from w2s.methods.macpo.agents import base_parameters
    from w2s.methods.macpo.experiment import MACPO
    from w2s.models.tiny import tiny_param_count

    cfg = build_config(MACPOConfig, overrides={
        "weak": "tiny:llama-1x32,tiny:gpt2-1x32", "strong": "tiny:llama-2x32",
        "task": "toy-preference", "n_train": "24", "n_test": "6"})
    exp = MACPO(cfg, check_config(cfg))
    exp.load_data()
    exp.load_agents()
    assert list(exp.bases) == ["teacher1", "teacher2", "student"]
    for learner, tiny in (("teacher1", "llama-1x32"), ("teacher2", "gpt2-1x32"),
                          ("student", "llama-2x32")):
        base = exp.bases[learner]
        assert base.agents == [f"{learner}-pos", f"{learner}-neg"]
        assert list(base.model.peft_config) == base.agents  # no stray "default" adapter
        adapter = sum(v.numel() for v in base.state(base.agents[0]).values())
        total = sum(p.numel() for p in base.model.parameters())
        # one base copy plus two small adapters, not two models
        assert base_parameters(base.model) == tiny_param_count(tiny)
        assert total == tiny_param_count(tiny) + 2 * adapter
        assert adapter < tiny_param_count(tiny) / 4
    # the query/value projections, as the authors (GPT-2 fuses them into c_attn)
    assert exp.bases["teacher1"].lora.targets == ["q_proj", "v_proj"]
    assert exp.bases["teacher2"].lora.targets == ["c_attn"]

    base = exp.bases["student"]
    ids = torch.tensor([[257, 104, 105, 33]])
    pointers = {n: p.data_ptr() for n, p in base.model.named_parameters() if "lora_" not in n}
    with torch.no_grad():
        for name, p in base.model.named_parameters():  # give student-pos its own update
            if "lora_B" in name and "student-pos" in name:
                p.normal_(0, 0.5)
        base.use("student-pos")
        pos = base.model(ids).logits
        base.use("student-neg")
        neg = base.model(ids).logits
        with base.model.disable_adapter():
            plain = base.model(ids).logits
    assert not torch.allclose(pos, neg)  # two agents ...
    assert torch.allclose(neg, plain)    # (neg is still the base: LoRA B starts at zero)
    assert pointers == {n: p.data_ptr() for n, p in base.model.named_parameters()
                        if "lora_" not in n}  # ... over the same base tensors
    # an adapter saved and loaded round-trips; copy() makes the neg agent the pos one
    base.save("student-pos", tmp_path / "pos.safetensors")
    base.copy("student-pos", "student-neg")
    with torch.no_grad():
        base.use("student-neg")
        assert torch.allclose(base.model(ids).logits, pos)
        for name, p in base.model.named_parameters():
            if "lora_" in name and "student-pos" in name:
                p.zero_()
        base.load("student-pos", tmp_path / "pos.safetensors")
        base.use("student-pos")
        assert torch.allclose(base.model(ids).logits, pos)


def test_dpo_reference_can_be_the_adapter_it_starts_from():
    """The preference.py building block: reference log-probs with the active adapter (MACPO's
    default: pi_ref = the learner as it was before the iteration) or with adapters disabled."""
    from w2s.models import LoraSettings, load_causal_lm
    from w2s.train.preference import encode_pairs, reference_logprobs, score_items

    model, tok = load_causal_lm("tiny:llama-1x32", lora=LoraSettings(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    examples = encode_pairs(tok, [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}],
                            max_len=64)
    on = reference_logprobs(model, [dict(e) for e in examples], tok.pad_token_id, adapters=True)
    off = reference_logprobs(model, [dict(e) for e in examples], tok.pad_token_id)
    sums, _ = score_items(model, [examples[0]["chosen"], examples[0]["rejected"]],
                          tok.pad_token_id)
    based, _ = score_items(model, [examples[0]["chosen"], examples[0]["rejected"]],
                           tok.pad_token_id, reference=True)
    assert [on[0]["ref_chosen"], on[0]["ref_rejected"]] == pytest.approx(sums)
    assert [off[0]["ref_chosen"], off[0]["ref_rejected"]] == pytest.approx(based)
    assert on[0]["ref_chosen"] != pytest.approx(off[0]["ref_chosen"])


# ---- the loop through the CLI ------------------------------------------------------------------


def test_two_iterations_through_the_cli(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    assert cli(["macpo", *TINY, "--iterations", "2", "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "macpo" and metrics["status"] == "ok"
    for key in ("win_rate", "win_rate_se", "gold_reward", "baseline_gold_reward", "iterations",
                "initial", "judge", "teachers", "student"):
        assert key in metrics
    assert [it["iteration"] for it in metrics["iterations"]] == [1, 2]
    assert metrics["win_rate"] == metrics["iterations"][-1]["win_rate"]
    assert 0.0 <= metrics["win_rate"] <= 100.0
    assert metrics["gold_reward"] == metrics["iterations"][-1]["gold_reward"]
    assert metrics["teachers"] == [T1, T2] and metrics["student"] == S
    assert set(metrics["iterations"][0]["teachers"]) == {"teacher1", "teacher2"}
    assert metrics["judge"]["judge"] == "vader"

    q_w2s = {r["id"]: r["prompt"] for r in read_jsonl(run_dir / "data" / "q_w2s.jsonl")}
    for t in (1, 2):
        it = run_dir / f"iter{t}"
        gens = {f"{lrn}-{pol}": {r["id"]: r["response"]
                                 for r in read_jsonl(it / f"gen-{lrn}-{pol}.jsonl")}
                for lrn in LEARNERS for pol in ("pos", "neg")}
        assert all(set(g) == set(q_w2s) for g in gens.values())  # every agent answered Q_w2s
        for learner in LEARNERS:
            pairs = read_jsonl(it / f"pairs-{learner}.jsonl")
            scored = read_jsonl(it / f"perplexity-{learner}.jsonl")
            assert pairs and metrics["iterations"][t - 1]["pairs"][learner] == len(pairs)
            sources = set(positive_sources(learner, ["teacher1", "teacher2"]))
            for p in pairs:  # the files say who gave which answer, and they did
                assert p["chosen_from"] in sources
                assert p["chosen"] == gens[p["chosen_from"]][p["id"]]
                assert p["rejected"] == gens[f"{learner}-neg"][p["id"]]
                assert p["prompt"] == q_w2s[p["id"]]
            # lowest, k 1: at most one kept candidate per prompt, the least perplexing one
            for pid in {r["id"] for r in scored}:
                mine = [r for r in scored if r["id"] == pid]
                kept = [r for r in mine if r["kept"]]
                assert len(kept) == 1
                assert kept[0]["perplexity"] == min(r["perplexity"] for r in mine)
            assert (it / "adapters" / f"{learner}-pos.safetensors").is_file()
            assert (it / f"test-{learner}-pos.jsonl").is_file()
            assert (it / f"judgments-{learner}.jsonl").is_file()
    # each learner's DPO continued from its previous adapter: iteration 2 trained again
    assert all(metrics["iterations"][1]["training"][lrn]["steps"] == 2 for lrn in LEARNERS)
    # every stage was built now (a fresh cache) and counted; no in-progress checkpoint is left
    stages = metrics["compute"]["stages"]
    assert "init/sft/student-neg" in stages and "iter2/dpo/student" in stages
    assert not any(s["cached"] for s in stages.values())
    assert not any((cache_dir / "inprogress").glob("macpo-*"))
    # `w2s report` plots the iterations
    assert cli(["report", str(run_dir), "--out", str(tmp_path / "report.md")]) == 0


def test_resume_after_a_crash_redoes_no_finished_stage(tmp_path, monkeypatch, cache_dir):
    import w2s.models.generate as generate_module
    import w2s.train as train_module
    from w2s.runs import Cache

    run_dir = tmp_path / "run"
    args = ["macpo", *TINY, "--run-dir", str(run_dir)]
    real_sft, real_dpo, real_gen = (train_module.train_sft, train_module.train_dpo,
                                    generate_module.generate)

    def crash_on_student(*a, **kw):
        if "iter1/dpo/student" in kw.get("description", ""):
            raise RuntimeError("simulated kill during the student's DPO")
        return real_dpo(*a, **kw)

    monkeypatch.setattr(train_module, "train_dpo", crash_on_student)
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(args)
    assert not (run_dir / "metrics.json").exists()
    done = {r["stage"] for r in read_jsonl(run_dir / "log.jsonl") if r.get("status") == "finished"}
    assert "iter1/dpo/teacher2" in done and "iter1/dpo/student" not in done
    kinds = {entry.name.rsplit("-", 1)[0] for entry in Cache(cache_dir).entries()}
    assert "macpo-iter1-dpo-teacher2" in kinds and "macpo-iter1-dpo-student" not in kinds
    gen_file = run_dir / "iter1" / "gen-student-pos.jsonl"
    before = gen_file.stat().st_mtime_ns

    calls: dict[str, list[str]] = {"sft": [], "dpo": [], "gen": []}

    def counting(kind, real):
        def wrapped(*a, **kw):
            calls[kind].append(kw.get("description", ""))
            return real(*a, **kw)
        return wrapped

    monkeypatch.setattr(train_module, "train_sft", counting("sft", real_sft))
    monkeypatch.setattr(train_module, "train_dpo", counting("dpo", real_dpo))
    monkeypatch.setattr(generate_module, "generate", counting("gen", real_gen))
    assert cli(args) == 0
    assert calls["sft"] == []                                      # init not redone
    assert [d.split(" ")[0] for d in calls["dpo"]] == ["iter1/dpo/student"]  # only the rest
    assert len(calls["gen"]) == 3  # the iteration's test answers; Q_w2s answers were kept
    assert gen_file.stat().st_mtime_ns == before
    log = read_jsonl(run_dir / "log.jsonl")
    skipped = {r["stage"] for r in log if "finished earlier" in str(r.get("status", ""))}
    assert {"init/sft/teacher1-pos", "init/sft/student-neg", "iter1/dpo/teacher1"} <= skipped
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iterations"][0]["training"]["student"]["steps"] == 2

    # the same command into a new run directory: every stage comes from the cache, and the run
    # directory holds the same files and figures
    for made in calls.values():
        made.clear()
    again = tmp_path / "again"
    assert cli(["macpo", *TINY, "--run-dir", str(again)]) == 0
    assert calls == {"sft": [], "dpo": [], "gen": []}
    second = json.loads((again / "metrics.json").read_text())
    assert all(s["cached"] for name, s in second["compute"]["stages"].items() if name != "main")
    assert (second["win_rate"], second["gold_reward"], second["iterations"]) == (
        metrics["win_rate"], metrics["gold_reward"], metrics["iterations"])
    for name in ("iter1/gen-student-pos.jsonl", "iter1/pairs-student.jsonl",
                 "iter1/judgments-student.jsonl", "init/sft-student-pos.jsonl"):
        assert read_jsonl(again / name) == read_jsonl(run_dir / name)
    assert (again / "iter1" / "adapters" / "student-pos.safetensors").read_bytes() == (
        run_dir / "iter1" / "adapters" / "student-pos.safetensors").read_bytes()


def test_a_filter_that_leaves_no_pairs_stops_then_skips_with_the_flag(tmp_path, capsys,
                                                                      cache_dir):
    run_dir = tmp_path / "run"
    args = ["macpo", *TINY, "--filter-rule", "threshold", "--max-perplexity", "1.0001",
            "--run-dir", str(run_dir)]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err.startswith("error: ")
    assert "left teacher1 no contrastive pairs" in err and "--skip-empty" in err
    assert "iter1/perplexity-teacher1.jsonl" in err
    assert not (run_dir / "metrics.json").exists()
    scored = read_jsonl(run_dir / "iter1" / "perplexity-teacher1.jsonl")
    assert scored and not any(r["kept"] for r in scored)  # the file shows why
    assert read_jsonl(run_dir / "iter1" / "pairs-teacher1.jsonl") == []
    # the same run with the flag resumes and skips the learners without pairs; with another
    # judge too (a pairwise one, and VADER for the gold reward): only evaluations are redone
    judges = ["--judge", "llm:tiny:llama-1x32", "--gold-judge", "vader"]
    with pytest.warns(UserWarning, match="not trained in this iteration"):
        assert cli([*args, "--skip-empty", *judges]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    training = metrics["iterations"][0]["training"]
    assert all(training[lrn]["skipped"] == "no pairs" for lrn in LEARNERS)
    assert metrics["iterations"][0]["pairs"] == {lrn: 0 for lrn in LEARNERS}
    log = read_jsonl(run_dir / "log.jsonl")
    skipped = {r["stage"] for r in log if "finished earlier" in str(r.get("status", ""))}
    assert {f"init/sft/{lrn}-{pol}" for lrn in LEARNERS for pol in ("pos", "neg")} <= skipped
    assert metrics["judge"]["kind"] == "pairwise" and metrics["gold_judge"]["judge"] == "vader"
    student = metrics["iterations"][0]["student"]
    assert student["gold_reward"] is not None and student["gold_win_rate"] is not None
    gold = read_jsonl(run_dir / "iter1" / "gold-student.jsonl")
    assert len(gold) == metrics["n_test_prompts"]
    assert student["gold_reward"] == pytest.approx(
        sum(r["candidate_score"] for r in gold) / len(gold))
    judged = read_jsonl(run_dir / "init" / "judgments-teacher1.jsonl")
    assert "verdict_candidate_first" in judged[0]  # the init evaluation was judged again


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case, extra, message", [
    ("no teachers", ["--weak", " "], "at least one weak teacher"),
    ("zero iterations", ["--iterations", "0"], "iterations must be at least 1"),
    ("filter keeps nothing", ["--filter-rule", "threshold", "--max-perplexity", "1"],
     "keeps nothing"),
    ("threshold without a value", ["--filter-rule", "threshold"], "needs --max-perplexity"),
    ("value without threshold", ["--max-perplexity", "5"], "only applies"),
    ("k of zero", ["--filter-k", "0"], "filter_k must be at least 1"),
    ("student is a teacher", ["--strong", T1], "distinct models"),
    ("teacher twice", ["--weak", f"{T1},{T1}"], "distinct models"),
    ("precisions differ", ["--dpo-mixed-precision", "bf16"], "differ"),
    ("not a preference task", ["--task", "toy-sentiment"], "needs a preference task"),
    ("bad judge", ["--judge", "oracle:x"], "unknown judge kind"),
    ("gold judge not a reward", ["--gold-judge", "llm:tiny:llama-1x32"], "needs a reward judge"),
    ("unknown backend", ["--backend", "vllmm"], "did you mean 'vllm'"),
    ("vllm memory", ["--vllm-memory", "1.5"], "fraction of GPU memory"),
    ("unknown SFT answers", ["--student-sft-answers", "best"],
     "'student_sft_answers' must be one of ['all', 'random', 'lowest_perplexity']"),
    ("unknown prompt format", ["--prompt-format", "alpaca"],
     "'prompt_format' must be one of ['chat_template', 'vicuna']"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, extra, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli(["macpo", *TINY, *extra, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    assert message in err
    assert not run_dir.exists()


# ---- recipes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipes_parse_and_validate(recipe):
    cfg = build_config(MACPOConfig, RECIPES / recipe)
    plan = check_config(cfg)
    assert len(plan["weak"]) >= 2 and cfg.iterations >= 2
    text = (RECIPES / recipe).read_text()
    assert "/home/" not in text and "/Users/" not in text  # no machine paths


def test_the_papers_command_resolves_as_written():
    """`w2s macpo --weak llama-2-7b,mistral-7b,llama-3-8b --strong llama-2-70b --task hh-helpful
    --iterations 3`: every name is a registry alias with its hub id (no weights are loaded)."""
    from w2s.models import resolve_model

    cfg = build_config(MACPOConfig, None, {"weak": "llama-2-7b,mistral-7b,llama-3-8b",
                                           "strong": "llama-2-70b", "task": "hh-helpful",
                                           "iterations": "3"})
    plan = check_config(cfg)
    assert plan["weak"] == ["llama-2-7b", "mistral-7b", "llama-3-8b"]
    assert resolve_model("llama-2-7b").location == "meta-llama/Llama-2-7b-hf"
    assert resolve_model("llama-2-70b").location == "meta-llama/Llama-2-70b-hf"
    assert resolve_model("llama-2-70b").size_b > 10 * resolve_model("llama-2-7b").size_b


# ---- the vllm backend (a stand-in vllm module: no vLLM or GPU here) ----------------------------


def test_vllm_backend_generates_every_agent_through_one_lora_engine_per_base(tmp_path,
                                                                             monkeypatch):
    """`--backend vllm`: each base model gets ONE LoRA-enabled engine for the whole
    run; each agent's answers come from its adapter exported as it is at that moment (a new
    request id each time, so vLLM cannot serve stale cached weights); the answers are the
    engine's; the temporary adapter folders are gone afterwards."""
    import sys
    import types

    from safetensors.torch import load_file

    import w2s.models.generate as gen
    from w2s.models import load_causal_lm

    folders = {}
    for name in ("tiny:llama-1x32", "tiny:gpt2-1x32", "tiny:llama-2x32"):
        model, tok = load_causal_lm(name, seed=0)
        folders[name] = tmp_path / "models" / name.split(":")[1]
        model.save_pretrained(folders[name])
        tok.save_pretrained(folders[name])
    weak = f"{folders['tiny:llama-1x32']},{folders['tiny:gpt2-1x32']}"
    strong = str(folders["tiny:llama-2x32"])

    engines, calls = [], []

    class LLM:
        def __init__(self, model, seed, **kwargs):
            engines.append({"model": model, **kwargs})
            self.model = model

        def generate(self, prompts, params, lora_request=None):
            folder = Path(lora_request.lora_path)
            calls.append({"engine": self.model, "agent": lora_request.lora_name,
                          "id": lora_request.lora_int_id,
                          "r": json.loads((folder / "adapter_config.json").read_text())["r"],
                          "weights": load_file(str(folder / "adapter_model.safetensors")),
                          "n": len(prompts), "seed": params["seed"]})
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text=f"answer {i} of {lora_request.lora_name} {len(calls)}")])
                for i in range(len(prompts))]

    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, rid, path: types.SimpleNamespace(
        lora_name=name, lora_int_id=rid, lora_path=path)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(
        LLM=LLM, SamplingParams=lambda **kw: kw))
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    monkeypatch.setattr(gen, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(gen, "_ENGINES", {})

    args = list(TINY)
    args[args.index("--weak") + 1], args[args.index("--strong") + 1] = weak, strong
    run_dir = tmp_path / "run"
    assert cli(["macpo", *args, "--iterations", "2", "--backend", "vllm",
                "--skip-empty", "--run-dir", str(run_dir)]) == 0

    assert sorted(e["model"] for e in engines) == sorted(str(f) for f in folders.values())
    assert all(e["enable_lora"] and e["max_lora_rank"] == 8 and e["max_loras"] == 1
               and e["gpu_memory_utilization"] == 0.4 for e in engines)
    assert len({c["id"] for c in calls}) == len(calls)  # a new request id every call
    assert all(c["r"] == 8 for c in calls)
    # the initial answers come from each weak agent's adapter as SFT left it
    init = {c["agent"]: c for c in calls[:4]}
    assert sorted(init) == ["teacher1-neg", "teacher1-pos", "teacher2-neg", "teacher2-pos"]
    for agent, call in init.items():
        saved = load_file(str(run_dir / "init" / "adapters" / f"{agent}.safetensors"))
        assert set(saved) == set(call["weights"])
        for key, value in saved.items():
            torch.testing.assert_close(call["weights"][key], value, rtol=0, atol=0)
    assert init["teacher1-pos"]["engine"] == str(folders["tiny:llama-1x32"])
    # iteration 1: all six agents answer Q_w2s with seed 0 + 1; the files hold the engine's text
    first = [c for c in calls if c["seed"] == 1 and c["n"] == len(read_jsonl(run_dir / "data" /
                                                                      "q_w2s.jsonl"))]
    assert {c["agent"] for c in first} >= {"student-pos", "student-neg", "teacher2-neg"}
    gens = read_jsonl(run_dir / "iter1" / "gen-student-pos.jsonl")
    assert all(r["response"].startswith("answer ") and "of student-pos" in r["response"]
               for r in gens)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    env = json.loads((run_dir / "env.json").read_text())
    assert env["generation"] == {"backend": "vllm", "requested_backend": "vllm"}
    assert metrics["status"] == "ok" and not (run_dir / ".vllm").exists()


def test_vllm_backend_falls_back_to_hf_with_the_reason(tmp_path, monkeypatch):
    """Tiny models are built in memory, so vLLM could not load them even where it runs: a
    warning says so and the hf backend generates; env.json records both."""
    import w2s.models.generate as gen

    monkeypatch.setattr(gen, "vllm_available", lambda: (True, ""))
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="vllm loads a hub id or a folder, which tiny:"):
        assert cli(["macpo", *TINY, "--backend", "vllm", "--run-dir", str(run_dir)]) == 0
    env = json.loads((run_dir / "env.json").read_text())
    assert env["generation"] == {"backend": "hf", "requested_backend": "vllm"}
    assert read_jsonl(run_dir / "iter1" / "gen-student-pos.jsonl")
