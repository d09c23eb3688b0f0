"""``w2s macpo``'s settings for the authors' behaviour (docs/fidelity.md, issue 18): which weak
answers the student's initial SFT learns from (``student_sft_answers``) and how every agent
reads a prompt (``prompt_format``); their exact outputs by hand, through the CLI, in the resolved
config and in the cache keys.
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import MACPO_TINY, read_jsonl

from w2s.cli import main
from w2s.config import build_config
from w2s.methods.macpo.agents import Format
from w2s.methods.macpo.config import MACPOConfig, check_config
from w2s.methods.macpo.pairing import pick_sft_answers, sft_candidates
from w2s.models.prompts import VICUNA_SYSTEM, hh_turns, vicuna_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHERS = ["teacher1-pos", "teacher2-pos", "teacher3-pos"]


def candidate_rows(n_prompts: int = 40) -> list[dict]:
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(n_prompts)]
    answers = {t: {p["id"]: f"{t} answers {p['id']}" for p in prompts} for t in TEACHERS}
    answers["teacher2-pos"]["p0"] = "  "   # an empty answer is no candidate
    return sft_candidates(prompts, TEACHERS, answers)


# ---- student_sft_answers -----------------------------------------------------------------------


def test_random_sft_answers_keep_one_per_prompt_deterministically():
    rows = candidate_rows()
    assert len(rows) == 3 * 40 - 1 and {r["teacher"] for r in rows if r["id"] == "p0"} == {
        "teacher1-pos", "teacher3-pos"}
    assert all(r["kept"] for r in pick_sft_answers(rows, "all"))  # the default: every answer

    picked = pick_sft_answers(rows, "random", seed=3, salt="pos")
    kept = [r for r in picked if r["kept"]]
    assert sorted(r["id"] for r in kept) == sorted({r["id"] for r in rows})  # one per prompt
    assert all(r["response"] == f"{r['teacher']} answers {r['id']}" for r in kept)
    assert pick_sft_answers(rows, "random", seed=3, salt="pos") == picked   # the same seed
    # a prompt's draw depends on the seed and its id only, not on the other prompts
    alone = pick_sft_answers([r for r in rows if r["id"] == "p7"], "random", seed=3, salt="pos")
    assert [r["kept"] for r in alone] == [r["kept"] for r in picked if r["id"] == "p7"]
    others = [r["teacher"] for r in pick_sft_answers(rows, "random", seed=4, salt="pos")
              if r["kept"]]
    assert others != [r["teacher"] for r in kept]   # another seed draws other teachers
    assert len({r["teacher"] for r in kept}) == 3    # every teacher gets drawn somewhere
    with pytest.raises(ValueError):
        pick_sft_answers(rows, "best")


def test_lowest_perplexity_picks_the_answer_the_student_scores_best():
    """The student (pretrained on toy-preference text) scores its task's fluent answer far
    better than punctuation noise, whichever teacher gives which; lowest_perplexity keeps the
    fluent one, scored under the student's base model (its agents are not trained yet)."""
    from w2s.methods.macpo.experiment import MACPO

    cfg = build_config(MACPOConfig, overrides={
        "weak": "tiny:llama-1x32,tiny:gpt2-1x32", "strong": "tiny:llama-2x32+toy-preference@5",
        "task": "toy-preference", "n_train": "24", "n_test": "6"})
    exp = MACPO(cfg, check_config(cfg))
    exp.load_data()
    exp.load_agents()
    noise = "~^|{}~^|{} ~^|{}~^|{} ~^|{}"
    prompts = [{"id": r["id"], "prompt": r["prompt"]} for r in exp.labeled[:2]]
    fluent = {p["id"]: r["chosen"] for p, r in zip(prompts, exp.labeled, strict=False)}
    a, b = (p["id"] for p in prompts)
    answers = {"teacher1-pos": {a: noise, b: fluent[b]}, "teacher2-pos": {a: fluent[a], b: noise}}
    rows = exp.perplexities("student", sft_candidates(prompts, list(answers), answers),
                            base=True)
    kept = [r for r in pick_sft_answers(rows, "lowest_perplexity") if r["kept"]]
    assert [(r["id"], r["teacher"]) for r in kept] == [(a, "teacher2-pos"), (b, "teacher1-pos")]
    assert all(r["response"] == fluent[r["id"]] for r in kept)
    for pid in (a, b):
        mine = [r for r in rows if r["id"] == pid]
        assert max(r["perplexity"] for r in mine) > 1.3 * min(r["perplexity"] for r in mine)


# ---- prompt_format -----------------------------------------------------------------------------


def test_vicuna_flattens_a_two_turn_hh_transcript_exactly():
    transcript = ("Human: What is a good name for a cat?\n\nAssistant: Whiskers is a classic."
                  "\n\nHuman: And for a dog?\n\nAssistant:")
    expected = ("A chat between a curious user and an artificial intelligence assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions."
                " USER: What is a good name for a cat? ASSISTANT: Whiskers is a classic.</s>"
                "USER: And for a dog? ASSISTANT:")
    assert hh_turns(transcript) == [("user", "What is a good name for a cat?"),
                                    ("assistant", "Whiskers is a classic."),
                                    ("user", "And for a dog?")]
    assert vicuna_prompt(transcript, hh=True) == expected
    assert vicuna_prompt("Name a cat.") == f"{VICUNA_SYSTEM} USER: Name a cat. ASSISTANT:"
    # every model reads it, templated or not; the answer follows after a space
    for templated in (True, False):
        fmt = Format(templated=templated, prompt_format="hh", style="vicuna", eos="</s>")
        assert (fmt.chat, fmt.sep, fmt.text(transcript)) == (False, " ", expected)
        assert fmt.clean(" Rex. USER: and a fish?") == "Rex."
    llama3 = Format(templated=True, prompt_format="hh", style="vicuna", eos="<|end_of_text|>")
    assert "Whiskers is a classic.<|end_of_text|>USER: And" in llama3.text(transcript)
    # the default is unchanged: the chat template where a tokenizer has one
    assert Format(templated=True, prompt_format="hh").text(transcript) == transcript
    assert Format(templated=True).chat and Format(templated=True).describe() == "chat template"


def test_every_agent_reads_the_vicuna_template_once_asked():
    from w2s.methods.macpo.experiment import MACPO

    overrides = {"weak": "tiny:llama-1x32,tiny:gpt2-1x32", "strong": "tiny:llama-2x32",
                 "task": "toy-preference", "n_train": "24", "n_test": "6"}
    for value, chat in (("chat_template", True), ("vicuna", False)):
        cfg = build_config(MACPOConfig, overrides={**overrides, "prompt_format": value})
        exp = MACPO(cfg, check_config(cfg))
        exp.load_data()
        exp.load_agents()
        table = exp.agents_table()
        for base in exp.bases.values():  # tiny tokenizers have a chat template
            assert base.format.chat is chat
            prompt = exp.q_w2s[0]["prompt"]
            assert base.format.text(prompt) == (
                prompt if chat else f"{VICUNA_SYSTEM} USER: {prompt} ASSISTANT:")
        described = {t["prompt_format"] for t in table.values()}
        assert described == ({"chat template"} if chat else
                             {"vicuna template (system line, USER: ... ASSISTANT: ...</s>; "
                              "no BOS)"})


def test_vicuna_prompts_start_without_a_bos_as_llama_factory():
    """LLaMA-Factory encodes the vicuna template's slots without special tokens: no BOS, in
    training (encode), scoring and generation (the shared generate's encoding)."""
    from tokenizers.processors import TemplateProcessing

    from w2s.models import load_causal_lm
    from w2s.models.generate import _encode
    from w2s.train.preference import encode

    _, tok = load_causal_lm("tiny:llama-1x32", device="cpu")
    bos = tok.convert_tokens_to_ids("<s>")
    # a tokenizer that adds its BOS to plain text, as Llama-2's and Mistral's do
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>",
                                                                                        bos)])
    text = vicuna_prompt("Hi there")
    for fmt, first in ((Format(templated=True, style="vicuna"), None),
                       (Format(templated=False, style="chat_template"), bos)):
        assert fmt.bos is (first is not None)
        ids = encode(tok, text, "Hello.", chat=fmt.chat, sep=fmt.sep, bos=fmt.bos).input_ids
        gen = _encode(tok, [text], fmt.chat, fmt.bos)[0]
        if first is None:
            assert ids[0] != bos and gen[0] != bos
            assert list(ids[:len(gen)]) == gen == tok(text, add_special_tokens=False)["input_ids"]
        else:
            assert ids[0] == bos and gen[0] == bos


# ---- through the CLI: the resolved config and the cache keys -----------------------------------


def test_the_settings_are_recorded_and_rebuild_only_the_stages_they_change(tmp_path,
                                                                         monkeypatch,
                                                                         cache_dir):
    """Each run stops after the initialisation (the evaluation raises). lowest_perplexity keeps
    one answer per prompt, the least perplexing; switching to random rebuilds the student's
    data and SFT but takes every teacher stage from the cache; vicuna rebuilds everything."""
    from w2s.methods.macpo.experiment import MACPO

    def stop(self, t):
        raise RuntimeError("stop after the initialisation")

    monkeypatch.setattr(MACPO, "evaluate", stop)

    def run(name: str, *extra: str) -> tuple[dict, set, set]:
        run_dir = tmp_path / name
        with pytest.raises(RuntimeError, match="stop after"):
            main(["macpo", *MACPO_TINY, *extra, "--run-dir", str(run_dir)])
        log = read_jsonl(run_dir / "log.jsonl")
        built = {r["stage"] for r in log if r.get("status") == "finished"}
        found = {r["stage"] for r in log if r.get("status") == "finished earlier"}
        return yaml.safe_load((run_dir / "config.yaml").read_text()), built, found

    teacher_stages = {f"init/{what}/teacher{i}-{pol}" for what in ("sft", "gen")
                      for i in (1, 2) for pol in ("pos", "neg")}
    student_stages = {"init/sft-answers", "init/sft/student-pos", "init/sft/student-neg"}

    config, built, found = run("lowest", "--student-sft-answers", "lowest_perplexity")
    assert config["student_sft_answers"] == "lowest_perplexity"
    assert config["prompt_format"] == "chat_template"
    assert teacher_stages | student_stages <= built and not found
    lowest = tmp_path / "lowest" / "init"
    for pol in ("pos", "neg"):
        scored = read_jsonl(lowest / f"sft-answers-student-{pol}.jsonl")
        trained = read_jsonl(lowest / f"sft-student-{pol}.jsonl")
        assert len({r["id"] for r in trained}) == len(trained) > 0   # one answer a prompt
        for pid in {r["id"] for r in scored}:
            mine = [r for r in scored if r["id"] == pid]
            kept = [r for r in mine if r["kept"]]
            assert len(kept) == 1
            assert kept[0]["perplexity"] == min(r["perplexity"] for r in mine)
        assert [(r["id"], r["teacher"], r["response"]) for r in trained] == [
            (r["id"], r["teacher"], r["response"]) for r in scored if r["kept"]]

    config, built, found = run("random", "--student-sft-answers", "random")
    assert config["student_sft_answers"] == "random"
    assert built == student_stages and found == teacher_stages   # only the student's stages
    trained = read_jsonl(tmp_path / "random" / "init" / "sft-student-pos.jsonl")
    assert len({r["id"] for r in trained}) == len(trained)

    config, built, found = run("vicuna", "--student-sft-answers", "random",
                               "--prompt-format", "vicuna")
    assert config["prompt_format"] == "vicuna"
    assert teacher_stages | student_stages <= built and not found   # every agent reads anew
    agents = json.loads((tmp_path / "vicuna" / "agents.json").read_text())
    assert all(a["prompt_format"].startswith("vicuna template") for a in agents.values())


def test_the_paper_recipes_use_the_authors_settings():
    from helpers import ROOT

    paper = sorted(p for p in (ROOT / "recipes" / "macpo").glob("*.yaml") if p.name != "tiny.yaml")
    assert len(paper) == 4
    for path in paper:
        cfg = build_config(MACPOConfig, path)
        assert (cfg.student_sft_answers, cfg.prompt_format, cfg.dpo_reference) == (
            "random", "vicuna", "base"), path.name
    defaults = MACPOConfig()
    assert (defaults.student_sft_answers, defaults.prompt_format) == ("all", "chat_template")
