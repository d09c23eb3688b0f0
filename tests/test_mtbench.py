"""MT-Bench single-answer grading: the rating parser on FastChat-style judgments, the judge
prompts against FastChat's own (tests/fixtures holds its four single-answer prompts, verbatim
from fastchat/llm_judge/data/judge_prompts.jsonl), the figures by hand, and ``w2s eval mtbench``
end to end against an OpenAI-compatible server started here on 127.0.0.1 (the judgment cache,
bad input, offline)."""

import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import LocalServer, read_jsonl, run_cli

from w2s.errors import W2SError
from w2s.evaluation.benchmarks import mtbench
from w2s.evaluation.benchmarks.mtbench import (
    JUDGE_PROMPTS,
    judge_prompt,
    load_answers,
    load_questions,
    mtbench_figures,
    parse_rating,
)

FIXTURE = Path(__file__).parent / "fixtures" / "fastchat_single_judge_prompts.jsonl"
FASTCHAT = {d["name"]: d for d in map(json.loads, FIXTURE.read_text().splitlines())}

WRITING = {"question_id": 81, "category": "writing",
           "turns": ["Write a haiku about rain.", "Now make it about snow."]}
MATH = {"question_id": 111, "category": "math",
        "turns": ["What is 2 + 3?", "And 2 * 3?"]}
ANSWERS = {81: ["Soft rain on the roof", "Snow falls without sound"], 111: ["5", "6"]}
REFERENCES = {111: ["2 + 3 = 5", "2 * 3 = 6"]}


# --------------------------------------------------------------------------------------------
# the rating


@pytest.mark.parametrize("text, score", [
    ("The answer is clear and correct. Rating: [[7]]", 7),
    ("[[8.5]]", 8.5),
    ("Rating: [7]", 7),                          # FastChat's backup pattern
    ("[2] is a footnote; Rating: [[9]]", 9),     # the [[x]] pattern comes first
    ("[[3]] at first, then [[9]]", 3),           # the first match counts
    ("Rating: [[10]]", 10),
    ("Rating: 7/10", -1),
    ("Rating: [[seven]]", -1),
    ("", -1),
    (None, -1),
])
def test_parse_rating_as_fastchat(text, score):
    got = parse_rating(text)
    assert got == score and type(got) is type(score)


# --------------------------------------------------------------------------------------------
# the judge prompts


def fastchat_user_prompt(name, question, answer, ref=None, multi_turn=False):
    """FastChat's run_judge_single, rewritten here from its source: the template's fields."""
    kwargs = {}
    if ref is not None:
        kwargs["ref_answer_1"] = ref[0]
        if multi_turn:
            kwargs["ref_answer_2"] = ref[1]
    template = FASTCHAT[name]["prompt_template"]
    if multi_turn:
        return template.format(question_1=question["turns"][0], question_2=question["turns"][1],
                               answer_1=answer[0], answer_2=answer[1], **kwargs)
    return template.format(question=question["turns"][0], answer=answer[0], **kwargs)


def test_the_prompts_are_fastchats_verbatim():
    assert set(JUDGE_PROMPTS) == set(FASTCHAT)
    for name, spec in JUDGE_PROMPTS.items():
        for key in ("system_prompt", "prompt_template", "output_format"):
            assert spec[key] == FASTCHAT[name][key], (name, key)


def test_turn_1_prompt_is_fastchats():
    p = judge_prompt(WRITING, ANSWERS[81], 1)
    assert (p.name, p.turn, p.category) == ("single-v1", 1, "writing")
    assert p.system == "You are a helpful assistant."
    assert p.user == fastchat_user_prompt("single-v1", WRITING, ANSWERS[81])
    assert p.user.startswith("[Instruction]\nPlease act as an impartial judge")
    assert p.user.endswith("\n\n[Question]\nWrite a haiku about rain.\n\n[The Start of "
                           "Assistant's Answer]\nSoft rain on the roof\n[The End of "
                           "Assistant's Answer]")


def test_turn_2_prompt_is_fastchats():
    p = judge_prompt(WRITING, ANSWERS[81], 2)
    assert p.name == "single-v1-multi-turn"
    assert p.system == FASTCHAT["single-v1-multi-turn"]["system_prompt"]
    assert p.user == fastchat_user_prompt("single-v1-multi-turn", WRITING, ANSWERS[81],
                                          multi_turn=True)
    assert p.user == ("<|The Start of Assistant A's Conversation with User|>\n\n### User:\n"
                      "Write a haiku about rain.\n\n### Assistant A:\nSoft rain on the roof\n\n"
                      "### User:\nNow make it about snow.\n\n### Assistant A:\nSnow falls "
                      "without sound\n\n<|The End of Assistant A's Conversation with User|>")


def test_math_prompts_show_the_reference():
    one = judge_prompt(MATH, ANSWERS[111], 1, REFERENCES[111])
    two = judge_prompt(MATH, ANSWERS[111], 2, REFERENCES[111])
    assert (one.name, two.name) == ("single-math-v1", "single-math-v1-multi-turn")
    assert one.user == fastchat_user_prompt("single-math-v1", MATH, ANSWERS[111],
                                            REFERENCES[111])
    assert two.user == fastchat_user_prompt("single-math-v1-multi-turn", MATH, ANSWERS[111],
                                            REFERENCES[111], multi_turn=True)
    assert "[The Start of Reference Answer]\n2 + 3 = 5\n[The End of Reference Answer]" in one.user
    assert "### Reference answer:\n2 * 3 = 6\n\n<|The End of Reference Answer|>" in two.user
    assert two.system == FASTCHAT["single-math-v1-multi-turn"]["system_prompt"]
    for category in ("reasoning", "coding"):
        assert judge_prompt({**MATH, "category": category}, ANSWERS[111], 1,
                            REFERENCES[111]).name == "single-math-v1"
    with pytest.raises(W2SError, match="--references PATH"):
        judge_prompt(MATH, ANSWERS[111], 1)


# --------------------------------------------------------------------------------------------
# the figures


def test_figures_by_hand():
    rows = [{"turn": 1, "category": "writing", "score": 8},
            {"turn": 1, "category": "math", "score": -1},
            {"turn": 1, "category": "math", "score": 3},
            {"turn": 2, "category": "writing", "score": 6},
            {"turn": 2, "category": "math", "score": 7.5},
            {"turn": 2, "category": "math", "score": -1}]
    m = mtbench_figures(rows)
    # by hand: turn 1 = (8 + 3) / 2; turn 2 = (6 + 7.5) / 2; overall = the four valid scores
    assert m["turn_1"] == pytest.approx(5.5) and m["turn_2"] == pytest.approx(6.75)
    assert m["mtbench_score"] == pytest.approx((8 + 3 + 6 + 7.5) / 4)
    assert m["categories"]["writing"] == {"mean": 7.0, "scored": 2, "failed": 0}
    assert m["categories"]["math"] == {"mean": pytest.approx(5.25), "scored": 2, "failed": 2}
    assert (m["n"], m["scored"], m["failed"]) == (6, 4, 2)
    # the overall mean pools valid scores; it is not the mean of the two turn means
    uneven = mtbench_figures([{"turn": 1, "category": "c", "score": 8},
                              {"turn": 1, "category": "c", "score": -1},
                              {"turn": 2, "category": "c", "score": 6},
                              {"turn": 2, "category": "c", "score": 7}])
    assert uneven["mtbench_score"] == pytest.approx(7.0) and uneven["turn_2"] == 6.5
    none = mtbench_figures([{"turn": 1, "category": "c", "score": -1}])
    assert none["mtbench_score"] is None and none["failed"] == 1


# --------------------------------------------------------------------------------------------
# end to end against a local OpenAI-compatible server


class CannedJudge(LocalServer):
    """/v1/chat/completions on 127.0.0.1 answering each judge prompt with a canned judgment:
    general turn 1 "[[6]]", math turn 1 "[[4]]", general turn 2 "[8]" (FastChat's backup
    pattern), math turn 2 no rating at all."""

    def __init__(self):
        self.payloads = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.payloads.append(payload)
                user = payload["messages"][-1]["content"]
                if "[The Start of Reference Answer]" in user:
                    text = "The answer matches the reference. Rating: [[4]]"
                elif "<|The Start of Reference Answer|>" in user:
                    text = "I cannot decide."
                elif "[Question]" in user:
                    text = "Helpful and clear. Rating: [[6]]"
                else:
                    text = "A good follow-up. Rating: [8]"
                body = json.dumps({"choices": [{"message": {"role": "assistant",
                                                            "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)


@pytest.fixture
def judge_server():
    server = CannedJudge()
    yield server
    server.close()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer_rows(answers, model_id="my-model"):
    return [mtbench.answer_record(qid, model_id, turns, tstamp=0.0)
            for qid, turns in answers.items()]


@pytest.fixture
def files(tmp_path):
    return {"questions": write_jsonl(tmp_path / "question.jsonl", [WRITING, MATH]),
            "answers": write_jsonl(tmp_path / "answers.jsonl", answer_rows(ANSWERS)),
            "references": write_jsonl(tmp_path / "gpt-4.jsonl",
                                      answer_rows(REFERENCES, "gpt-4"))}


def mtbench_args(files, judge, run_dir, *extra):
    return ["eval", "mtbench", "--answers", str(files["answers"]), "--judge", judge,
            "--questions", str(files["questions"]), "--references", str(files["references"]),
            "--run-dir", str(run_dir), *extra]


def test_cli_mtbench_end_to_end_and_the_cache(judge_server, files, tmp_path, capsys):
    judge = f"api:{judge_server.url}#gpt-4"
    cache = tmp_path / "judge-cache"
    run = tmp_path / "r1"
    code, out, err = run_cli(mtbench_args(files, judge, run, "--judge-cache", str(cache)), capsys)
    assert code == 0, err
    assert "MT-Bench score" in out and "1 of 4 judgments had no readable" in out
    m = json.loads((run / "metrics.json").read_text())
    # by hand: turn 1 = (6 + 4) / 2; turn 2 = 8 (math's turn 2 failed); overall = 18 / 3
    assert m["method"] == "mtbench" and m["headline"] == ["mtbench_score"]
    assert m["turn_1"] == 5.0 and m["turn_2"] == 8.0 and m["mtbench_score"] == 6.0
    assert m["categories"]["writing"]["mean"] == 7.0 and m["categories"]["math"]["mean"] == 4.0
    assert (m["n"], m["scored"], m["failed"], m["cached"]) == (4, 3, 1, 0)
    assert m["model"] == "my-model"
    # what the server was sent: FastChat's judge call
    assert len(judge_server.payloads) == 4
    for p in judge_server.payloads:
        assert p["model"] == "gpt-4" and p["temperature"] == 0 and p["max_tokens"] == 2048
        assert [x["role"] for x in p["messages"]] == ["system", "user"]
    sent = {(p["messages"][0]["content"], p["messages"][1]["content"])
            for p in judge_server.payloads}
    expected = {(FASTCHAT["single-v1"]["system_prompt"],
                 fastchat_user_prompt("single-v1", WRITING, ANSWERS[81])),
                (FASTCHAT["single-math-v1-multi-turn"]["system_prompt"],
                 fastchat_user_prompt("single-math-v1-multi-turn", MATH, ANSWERS[111],
                                      REFERENCES[111], multi_turn=True))}
    assert expected <= sent
    judged = read_jsonl(run / "judgments.jsonl")
    assert [(r["question_id"], r["turn"], r["judge_prompt"], r["score"]) for r in judged] == [
        (81, 1, "single-v1", 6), (81, 2, "single-v1-multi-turn", 8),
        (111, 1, "single-math-v1", 4), (111, 2, "single-math-v1-multi-turn", -1)]
    assert judged[3]["judgment"] == "I cannot decide." and judged[0]["category"] == "writing"
    env = json.loads((run / "env.json").read_text())
    assert env["judge"]["model"] == "gpt-4" and env["judge"]["temperature"] == 0
    assert env["prompt_templates"] == {n: mtbench.template_hash(n) for n in JUDGE_PROMPTS}
    assert set(env["data_hashes"]) == {"answers", "questions", "references"}
    # the rerun is answered from the judgment cache: no request at all
    code, _, err = run_cli(mtbench_args(files, judge, tmp_path / "r2", "--judge-cache",
                                        str(cache), "--json"), capsys)
    assert code == 0, err
    assert len(judge_server.payloads) == 4
    again = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert again["cached"] == 4 and again["mtbench_score"] == 6.0


def test_a_changed_template_is_judged_anew(judge_server, files, tmp_path, monkeypatch):
    judge = f"api:{judge_server.url}#gpt-4"
    kwargs = {"questions": files["questions"], "references": files["references"],
              "cache": tmp_path / "c"}
    mtbench.eval_mtbench(files["answers"], judge, run_dir=tmp_path / "a", **kwargs)
    # the same prompt texts, but the template's record changed: its hash is in the key
    changed = {**JUDGE_PROMPTS["single-v1"], "note": "edited"}
    monkeypatch.setitem(JUDGE_PROMPTS, "single-v1", changed)
    m, _ = mtbench.eval_mtbench(files["answers"], judge, run_dir=tmp_path / "b", **kwargs)
    assert len(judge_server.payloads) == 4 + 1 and m["cached"] == 3  # only single-v1 again
    sent = judge_server.payloads[-1]["messages"]
    assert sent[1]["content"] == judge_server.payloads[0]["messages"][1]["content"]


@pytest.mark.parametrize("case, needle", [
    ("missing answers", "does not exist"),
    ("unknown question id", "answers for question ids that are not in the questions: 999"),
    ("no references", "have none; pass --references PATH"),
    ("unanswered question", "no answer to questions 111"),
    ("one-turn answer", "fewer turns than the questions"),
    ("reward judge", "MT-Bench needs a judge that writes judgments"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(judge_server, files, tmp_path, capsys,
                                                         case, needle):
    judge = f"api:{judge_server.url}#gpt-4"
    args = mtbench_args(files, judge, tmp_path / "run", "--no-cache")
    if case == "missing answers":
        args[args.index("--answers") + 1] = str(tmp_path / "nope.jsonl")
    elif case == "unknown question id":
        write_jsonl(files["answers"], answer_rows({**ANSWERS, 999: ["a", "b"]}))
    elif case == "no references":
        i = args.index("--references")
        del args[i:i + 2]
    elif case == "unanswered question":
        write_jsonl(files["answers"], answer_rows({81: ANSWERS[81]}))
    elif case == "one-turn answer":
        write_jsonl(files["answers"], answer_rows({81: ANSWERS[81], 111: ["5"]}))
    else:
        args[args.index("--judge") + 1] = "vader"
    code, _, err = run_cli(args, capsys)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists() and judge_server.payloads == []


def test_questions_offline_is_one_line_naming_the_fix(files, tmp_path, capsys):
    with pytest.raises(W2SError, match=r"lighteval/mt-bench.*pass --questions PATH"):
        load_questions(None)
    code, _, err = run_cli(["eval", "mtbench", "--answers", str(files["answers"]), "--judge",
                            "api:http://127.0.0.1:9/v1#m", "--run-dir", str(tmp_path / "r")],
                           capsys)
    assert code == 2 and "--questions PATH" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_files_in_fastchats_formats(tmp_path):
    hub_style = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "stem", "prompt": ["a?", "b?"], "reference": []}])
    assert load_questions(hub_style) == [{"question_id": 1, "category": "stem",
                                          "turns": ["a?", "b?"]}]
    twice = write_jsonl(tmp_path / "a.jsonl", answer_rows({1: ["old", "old"]})
                        + answer_rows({1: ["new", "new"]}))
    assert load_answers(twice)[1]["turns"] == ["new", "new"]  # the last row, as FastChat
    for bad, needle in (([{"question_id": 1, "turns": ["x"]}], "needs question_id, category"),
                        ([WRITING, WRITING], "appears twice")):
        with pytest.raises(W2SError, match=needle):
            load_questions(write_jsonl(tmp_path / "bad.jsonl", bad))
    with pytest.raises(W2SError, match="choices"):
        load_answers(write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "turns": ["x"]}]))


# --------------------------------------------------------------------------------------------
# the local judge writes its judgment greedily


def test_llm_judge_writes_judgments_greedily(files, tmp_path, capsys):
    from w2s.evaluation.judges import build_judge
    from w2s.models import format_chat
    from w2s.models.generate import SamplingConfig, generate

    judge = build_judge("llm:tiny:llama-1x32", device="cpu", batch_size=2, cache=tmp_path / "c")
    assert format_chat(judge.tokenizer, "U", system="S") == "<|system|>S</s><|user|>U</s><|assistant|>"
    prompts = [("Rate it.", "Q: hi A: hello"), ("Rate it.", "Q: 1+1 A: 2"), ("Judge.", "Q: x")]
    out = judge.write_judgments(prompts, template="t@0", max_tokens=8)
    assert [o["template"] for o in out] == ["t@0"] * 3
    for (system, user), o in zip(prompts, out, strict=True):
        (direct,) = generate(judge.model, judge.tokenizer, [user],
                             SamplingConfig(max_new_tokens=8, temperature=0.0), system=system)
        assert o["text"] == direct
    again = judge.write_judgments(prompts, template="t@0", max_tokens=8)  # from the cache
    assert [a["text"] for a in again] == [o["text"] for o in out]
    assert all(a["cached"] for a in again) and judge.requests == 3
    # MT-Bench's prompts are longer than the tiny model's 512 positions: one line, exit 2
    code, _, err = run_cli(mtbench_args(files, "llm:tiny:llama-1x32", tmp_path / "r",
                                        "--device", "cpu"), capsys)
    assert code == 2 and "more than tiny:llama-1x32 takes (512)" in err
    assert not (tmp_path / "r").exists()


def test_format_chat_system_fallbacks():
    """A template without a system role (Gemma's) and plain text get the system message two
    newlines before the prompt, in the user turn."""
    from w2s.models import format_chat

    class NoSystemRole:
        chat_template = "user-only"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return f"<user>{messages[0]['content']}</user><model>"

    class Plain:
        chat_template = None

    assert format_chat(NoSystemRole(), "U", system="S\n\n") == "<user>S\n\nU</user><model>"
    assert format_chat(Plain(), "U", "R", system="S") == "S\n\nUR"
    assert format_chat(Plain(), "U") == "U"


def test_judge_repeats_on_mtbench(judge_server, files, tmp_path, capsys):
    """--judge-repeats 2: the api judge grades everything twice (8 requests, the second repeat
    cached apart); its canned ratings agree, so the median is the single run's 6.0, spread 0."""
    judge = f"api:{judge_server.url}#gpt-4"
    run = tmp_path / "rep"
    code, out, err = run_cli(mtbench_args(files, judge, run, "--judge-cache",
                                          str(tmp_path / "c"), "--judge-repeats", "2"), capsys)
    assert code == 0, err
    m = json.loads((run / "metrics.json").read_text())
    per = m["judge_robustness"]["per_judge"][judge]
    assert per["values"] == [6.0, 6.0] and per["spread"] == 0.0 and m["mtbench_score"] == 6.0
    assert len(judge_server.payloads) == 8 and (run / "judgments-0-r1.jsonl").is_file()
    assert "mtbench_score by judge" in out


def test_a_local_judge_grades_end_to_end_offline(files, tmp_path, capsys):
    """Offline, local files, a local llm: judge: every turn is graded (a tiny model writes no
    readable rating: each is counted as failed, none is dropped silently)."""
    from helpers import long_context_judge

    judge = f"llm:{long_context_judge(tmp_path / 'judge')}"
    code, _, err = run_cli(mtbench_args(files, judge, tmp_path / "run", "--max-tokens", "8",
                                        "--device", "cpu"), capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n"] == 4 and m["scored"] + m["failed"] == 4
    assert len(read_jsonl(tmp_path / "run" / "judgments.jsonl")) == 4
    assert m["judge"]["kind"] == "llm" and m["judge"]["decoding"] == "greedy"
