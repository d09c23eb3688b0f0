"""``w2s generate --benchmark``: answers in each benchmark's own file format, MT-Bench's
per-category temperatures and two-turn conversations, read back by the benchmarks' readers,
and bad input (no prompts offline, no chat template, unknown benchmark) refused in one line."""

from __future__ import annotations

import json

import pytest
from helpers import read_jsonl, run_cli

from w2s.evaluation.benchmarks import answers as ans
from w2s.evaluation.benchmarks.arenahard import read_answers
from w2s.evaluation.benchmarks.mtbench import load_answers
from w2s.evaluation.generations import read_generations

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "tiny:llama-1x32"
QUICK = ["--model", MODEL, "--max-new-tokens", "6", "--device", "cpu"]


def test_alpacaeval_answers_keep_the_eval_sets_order(tmp_path, capsys):
    rows = [{"instruction": f"Write {w}.", "dataset": "toy"} for w in ("a poem", "a list", "x")]
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    out = tmp_path / "outputs" / "mine.json"
    code, stdout, err = run_cli(["generate", *QUICK, "--benchmark", "alpacaeval", "--prompts",
                                 str(tmp_path / "eval.json"), "--name", "my-model", "--out",
                                 str(out), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    written = json.loads(out.read_text())
    assert [r["instruction"] for r in written] == [r["instruction"] for r in rows]
    assert {r["generator"] for r in written} == {"my-model"}
    assert all(r["dataset"] == "toy" and isinstance(r["output"], str) for r in written)
    assert json.loads((tmp_path / "run" / "model_outputs.json").read_text()) == written
    assert len(read_generations(out)) == 3  # what `w2s eval alpacaeval` reads
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_answers"] == 3 and m["temperatures"] == [0.0] and m["max_new_tokens"] == 6
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["chat_template"] and env["chat_template_hash"]
    assert "3 answers from my-model" in stdout


def test_mtbench_answers_two_turns_at_fastchats_temperatures(tmp_path, capsys):
    from w2s.models import format_chat, load_causal_lm
    from w2s.models.generate import SamplingConfig, generate

    questions = [{"question_id": 81, "category": "writing", "turns": ["Write a haiku.",
                                                                       "Now make it rhyme."]},
                 {"question_id": 111, "category": "math", "turns": ["What is 2+2?",
                                                                     "And times 3?"]}]
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    code, _, err = run_cli(["generate", *QUICK, "--benchmark", "mtbench", "--prompts",
                            str(tmp_path / "question.jsonl"), "--run-dir", str(tmp_path / "run")],
                           capsys)
    assert code == 0, err
    written = load_answers(tmp_path / "run" / "model_answer.jsonl")
    assert set(written) == {81, 111} and all(len(a["turns"]) == 2 for a in written.values())
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["temperatures"] == [0.0, 0.7] and m["n_answers"] == 4
    # math is greedy: turn 1 is what the model says to the question alone in its chat template
    model, tok = load_causal_lm(MODEL, device="cpu", seed=0)
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    assert written[111]["turns"][0] == generate(model, tok, ["What is 2+2?"], greedy)[0].strip()
    # turn 2 is asked in the conversation that holds turn 1 and the model's own answer
    convo = [{"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": written[111]["turns"][0]},
             {"role": "user", "content": "And times 3?"}]
    text = format_chat(tok, convo)
    assert written[111]["turns"][0] in text and text.count("And times 3?") == 1
    assert written[111]["turns"][1] == generate(model, tok, [convo], greedy)[0].strip()


def test_arenahard_answers_in_its_v01_format(tmp_path, capsys):
    questions = [{"question_id": f"q{i}", "category": "arena-hard-v0.1", "cluster": "c",
                  "turns": [{"content": f"Explain thing {i}."}]} for i in range(2)]
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    code, _, err = run_cli(["generate", *QUICK, "--benchmark", "arenahard", "--prompts",
                            str(tmp_path / "question.jsonl"), "--run-dir", str(tmp_path / "run")],
                           capsys)
    assert code == 0, err
    path = tmp_path / "run" / "model_answer.jsonl"
    name, answers = read_answers(path)
    assert name == "tiny-llama-1x32" and set(answers) == {"q0", "q1"}
    rows = read_jsonl(path)
    assert all(set(r["conv_metadata"]) == {"header_count", "list_count", "bold_count"}
               for r in rows)
    assert m_temps(tmp_path / "run") == [0.0]


def m_temps(run_dir) -> list:
    return json.loads((run_dir / "metrics.json").read_text())["temperatures"]


def test_temperature_override_and_mtbench_defaults():
    assert ans.temperature_for("mtbench", "stem", None) == 0.1
    assert ans.temperature_for("mtbench", "a-new-category", None) == 0.7  # FastChat's default
    assert ans.temperature_for("alpacaeval", None, None) == 0.0
    assert ans.temperature_for("mtbench", "writing", 0.0) == 0.0


def test_no_prompts_offline_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for bench in ("alpacaeval", "arenahard"):
        code, _, err = run_cli(["generate", *QUICK, "--benchmark", bench, "--run-dir",
                                str(tmp_path / bench)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--prompts PATH" in err and not (tmp_path / bench).exists()


def test_a_model_without_a_chat_template_is_refused(tmp_path, capsys):
    from w2s.models import load_causal_lm

    model, tok = load_causal_lm(MODEL, device="cpu", seed=0)
    tok.chat_template = None
    folder = tmp_path / "base-model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    (tmp_path / "eval.json").write_text(json.dumps([{"instruction": "Hi."}]))
    code, _, err = run_cli(["generate", "--model", str(folder), "--benchmark", "alpacaeval",
                            "--prompts", str(tmp_path / "eval.json"), "--run-dir",
                            str(tmp_path / "run")], capsys)
    assert code == 2 and "no chat template" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needle", [
    (["--benchmark", "helm"], "unknown benchmark 'helm'"),
    (["--benchmark", "alpacaeval", "--prompts", "nowhere.json"], "no such file"),
    (["--benchmark", "alpacaeval", "--limit", "0"], "--limit must be >= 1"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, needle):
    code, _, err = run_cli(["generate", *QUICK, *args, "--run-dir", str(tmp_path / "run")],
                           capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
