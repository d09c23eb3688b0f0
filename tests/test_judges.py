"""Judges: parsing, vader, registered rewards, reward models and classifiers (tiny, saved to a
folder), the local LM judge (checked against a hand-computed log-prob), and the API judge against
an OpenAI-compatible server started here on 127.0.0.1 (retries, refusals, the judgment cache)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from helpers import LocalServer, run_cli

from w2s.errors import W2SError
from w2s.evaluation import build_judge, evaluate_winrate, parse_judge
from w2s.evaluation.judges import parse_verdict
from w2s.evaluation.judges.api import ApiJudge, RateLimiter, chat_url
from w2s.evaluation.judges.rewards import log_odds


def rows(responses):
    return [{"id": str(i), "prompt": f"Write about topic {i}", "response": r}
            for i, r in enumerate(responses)]


# --------------------------------------------------------------------------------------------
# parsing


def test_parse_judge_forms():
    assert parse_judge("vader") == ("vader", {})
    assert parse_judge("reward:length") == ("reward", {"name": "length"})
    assert parse_judge("rm:OpenAssistant/reward-model-deberta-v3-large-v2") == \
        ("rm", {"model": "OpenAssistant/reward-model-deberta-v3-large-v2"})
    assert parse_judge("cls:tiny:llama-1x32:POSITIVE") == \
        ("cls", {"model": "tiny:llama-1x32", "label": "POSITIVE"})
    assert parse_judge("llm:offline:smollm2-135m-instruct") == \
        ("llm", {"model": "offline:smollm2-135m-instruct"})
    assert parse_judge("api:http://127.0.0.1:8000/v1#qwen:7b") == \
        ("api", {"url": "http://127.0.0.1:8000/v1", "model": "qwen:7b"})
    assert parse_judge("api:http://h:1") == ("api", {"url": "http://h:1", "model": None})


@pytest.mark.parametrize("spec", ["", "gpt-4", "vaders", "llm:", "cls:onlymodel", "rmx:foo"])
def test_bad_judge_names_the_valid_forms(spec):
    with pytest.raises(W2SError, match=r"valid forms: vader, reward:NAME, rm:MODEL"):
        parse_judge(spec)


def test_parse_verdict():
    assert parse_verdict("1") == 1 and parse_verdict(" 2.") == 2
    assert parse_verdict("Output (2)") == 2 and parse_verdict("output 1 is better") == 1
    assert parse_verdict("I prefer the second, so: 2") == 2
    assert parse_verdict("1 or 2, hard to say") is None
    assert parse_verdict("") is None and parse_verdict("neither") is None
    assert parse_verdict("12") is None


# --------------------------------------------------------------------------------------------
# reward judges


def test_vader_prefers_positive_text():
    pytest.importorskip("vaderSentiment")
    judge = build_judge("vader")
    pos, neg = judge.score(["p", "p"], ["I love this, it is wonderful and great!",
                                        "I hate this. It is terrible, awful and sad."])
    assert pos > 0.5 and neg < -0.5
    m = evaluate_winrate(rows(["Happy, joyful, excellent day!", "Superb, lovely work."]),
                         rows(["Horrible, miserable failure.", "Dreadful and ugly."]), judge)
    assert m["win_rate"] == 100.0 and m["candidate_reward_mean"] > m["baseline_reward_mean"]
    assert judge.identity()["version"].startswith("vaderSentiment ")


def test_length_reward_and_ties():
    m = evaluate_winrate(rows(["aaaa", "bb", "c"]), rows(["aa", "bb", "ccc"]), "reward:length")
    assert (m["wins"], m["ties"], m["losses"]) == (1, 1, 1)
    assert m["candidate_reward_mean"] == pytest.approx(7 / 3)


def _save_tiny_classifier(path, num_labels, id2label=None):
    from transformers import LlamaForSequenceClassification

    from w2s.models.tiny import tiny_tokenizer, tiny_transformers_config

    config = tiny_transformers_config("llama-1x32")
    config.num_labels = num_labels
    if id2label:
        config.id2label = id2label
        config.label2id = {v: k for k, v in id2label.items()}
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a visible head so scores differ between texts
        model.score.weight.normal_(0, 1)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    return _save_tiny_classifier(tmp_path_factory.mktemp("rm"), 1)


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    return _save_tiny_classifier(tmp_path_factory.mktemp("cls"), 2, {0: "NEGATIVE", 1: "POSITIVE"})


def test_reward_model_judge_scores_the_scalar_head(tiny_rm):
    from transformers import AutoModelForSequenceClassification

    from w2s.models.tiny import tiny_tokenizer

    judge = build_judge(f"rm:{tiny_rm}", device="cpu")
    scores = judge.score(["hi", "hello there"], ["a short one", "x"])
    # by hand: the chat template renders user + assistant turns, the model reads the last token
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_rm).eval()
    tok = tiny_tokenizer()
    for (p, r), s in zip([("hi", "a short one"), ("hello there", "x")], scores, strict=True):
        text = tok.apply_chat_template([{"role": "user", "content": p},
                                        {"role": "assistant", "content": r}], tokenize=False)
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            assert s == pytest.approx(ref(**ids).logits[0, 0].item(), abs=1e-4)
    assert judge.identity()["num_labels"] == 1


def test_reward_model_with_a_non_scalar_head_is_refused(tiny_cls, tmp_path, capsys):
    with pytest.raises(W2SError, match="2-label head, not a scalar reward"):
        build_judge(f"rm:{tiny_cls}")
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"id": 1, "prompt": "p", "response": "r"}) + "\n")
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(f), "--baseline", str(f),
                            "--judge", f"rm:{tiny_cls}", "--run-dir", str(tmp_path / "run")],
                           capsys)
    assert code == 2 and "not a scalar reward" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_classifier_judge_is_log_odds(tiny_cls):
    from transformers import AutoModelForSequenceClassification

    from w2s.models.tiny import tiny_tokenizer

    judge = build_judge(f"cls:{tiny_cls}:positive", device="cpu")
    texts = ["what a great film", "dull"]
    scores = judge.score(["ignored", "ignored"], texts)
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_cls).eval()
    tok = tiny_tokenizer()
    for text, s in zip(texts, scores, strict=True):
        with torch.no_grad():
            p = torch.softmax(ref(**tok(text, return_tensors="pt")).logits[0], -1)
        assert s == pytest.approx((torch.log(p[1]) - torch.log(p[0])).item(), abs=1e-4)
    with pytest.raises(W2SError, match="no label 'NEUTRAL'.*NEGATIVE, POSITIVE"):
        build_judge(f"cls:{tiny_cls}:NEUTRAL")


def test_log_odds_three_labels_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    p = torch.softmax(logits, -1)[0]
    expect = torch.log(p[1]) - torch.log(1 - p[1])
    assert log_odds(logits, 1).item() == pytest.approx(expect.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------
# local LM judge


def test_llm_judge_reads_verdict_logprobs():
    from w2s.evaluation.judges.base import pairwise_prompt
    from w2s.models import format_chat

    judge = build_judge("llm:tiny:llama-1x32", device="cpu", batch_size=2)
    items = [("Say hi", "hi!", "hello"), ("Add 1+1", "2", "3"), ("Name a colour", "red", "blue")]
    out = judge.compare(items)
    # by hand: one forward pass over the templated prompt, next-token log-probs of "1" and "2"
    tok, model = judge.tokenizer, judge.model
    for (instr, a, b), res in zip(items, out, strict=True):
        ids = tok(format_chat(tok, pairwise_prompt(instr, a, b)), add_special_tokens=False,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        margin = (logp[tok.convert_tokens_to_ids("1")] - logp[tok.convert_tokens_to_ids("2")])
        assert res["margin"] == pytest.approx(margin.item(), abs=1e-4)
        assert res["verdict"] == (1 if margin > 0 else 2)
    assert judge.compare(items) == out  # deterministic
    m = evaluate_winrate(rows(["hi!", "2"]), rows(["hello", "3"]), judge)
    assert m["n"] == 2 and m["judge"]["template"] == "w2s-pairwise-v1"


# --------------------------------------------------------------------------------------------
# API judge against a local OpenAI-compatible server


class FakeJudgeServer(LocalServer):
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that prefers the output holding
    "GOOD". Modes: ok; refuse (always ``status``); fail_after (ok for ``k`` chat requests, then
    500); flaky (the first chat request 500, then ok); slow (sleeps past the client timeout)."""

    def __init__(self, mode="ok", status=500, k=0):
        self.mode, self.status, self.k = mode, status, k
        self.chat_requests = 0
        self.model_requests = 0
        self.auth = []
        self.models = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def do_GET(self):
                with server.lock:
                    server.model_requests += 1
                self._send(200, {"data": [{"id": "served-judge"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.chat_requests += 1
                    n = server.chat_requests
                    server.auth.append(self.headers.get("Authorization"))
                    server.models.append(payload.get("model"))
                if server.mode == "refuse" or (server.mode == "fail_after" and n > server.k) \
                        or (server.mode == "flaky" and n == 1):
                    return self._send(server.status, {"error": {"message": "judge overloaded"}})
                if server.mode == "slow":
                    time.sleep(1.0)
                text = payload["messages"][-1]["content"]
                first = text.split("# Output 1", 1)[1].split("# Output 2", 1)[0]
                verdict = "1" if "GOOD" in first else "2"
                if server.mode == "flip" and n > server.k:  # a judge that changed its mind
                    verdict = "2" if verdict == "1" else "1"
                self._send(200, {"choices": [{"message": {"role": "assistant",
                                                          "content": verdict}}]})

        self.serve(Handler)


@pytest.fixture
def server_factory():
    servers = []

    def make(**kwargs):
        s = FakeJudgeServer(**kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def gen_files(tmp_path, n=5):
    cand = tmp_path / "cand.jsonl"
    base = tmp_path / "base.jsonl"
    cand.write_text("".join(json.dumps({"id": i, "prompt": f"Q{i}", "response": f"GOOD {i}"}) + "\n"
                            for i in range(n)))
    base.write_text("".join(json.dumps({"id": i, "prompt": f"Q{i}", "response": f"meh {i}"}) + "\n"
                            for i in range(n)))
    return cand, base


def test_chat_url():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(W2SError, match="not an http"):
        chat_url("h:1")


def test_api_judge_cli_and_cache(server_factory, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("W2S_JUDGE_API_KEY", "sk-test")
    server = server_factory()
    cand, base = gen_files(tmp_path, n=5)
    cache = tmp_path / "judge-cache"
    args = ["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
            "--judge", f"api:{server.url}#judge-7b", "--judge-cache", str(cache)]
    code, out, err = run_cli(args + ["--run-dir", str(tmp_path / "r1")], capsys)
    assert code == 0, err
    m1 = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert m1["win_rate"] == 100.0 and m1["wins"] == 5 and m1["cached"] == 0
    assert server.chat_requests == 10                          # 5 pairs x 2 orders
    assert set(server.auth) == {"Bearer sk-test"} and set(server.models) == {"judge-7b"}
    env = json.loads((tmp_path / "r1" / "env.json").read_text())
    assert env["judge"]["model"] == "judge-7b" and env["judge"]["template"] == "w2s-pairwise-v1"
    assert "sk-test" not in (tmp_path / "r1" / "env.json").read_text()
    # the rerun is answered from the cache: zero requests
    code, out, err = run_cli(args + ["--run-dir", str(tmp_path / "r2")], capsys)
    assert code == 0, err
    assert server.chat_requests == 10 and server.model_requests == 0
    m2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m2["cached"] == 10 and m2["win_rate"] == 100.0
    judged = [json.loads(x) for x in (tmp_path / "r2" / "judgments.jsonl").read_text().splitlines()]
    assert judged[0]["raw_candidate_first"] == "1" and judged[0]["raw_baseline_first"] == "2"


def test_refusing_server_stops_cleanly_and_keeps_the_cache(server_factory, tmp_path, capsys):
    cand, base = gen_files(tmp_path, n=5)
    cache = tmp_path / "judge-cache"
    server = server_factory(mode="fail_after", k=4)
    args = ["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
            "--judge", f"api:{server.url}#m", "--judge-cache", str(cache), "--max-retries", "0",
            "--run-dir", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "HTTP 500" in err and "judge overloaded" in err and "4 judgments kept" in err
    assert not (tmp_path / "r").exists()                       # nothing half-written
    (cache_file,) = cache.glob("*.jsonl")
    assert len(cache_file.read_text().splitlines()) == 1 + 4   # identity header + 4 judgments
    server.mode = "ok"                                          # the server recovers
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert server.chat_requests == 5 + 6                        # only the 6 missing ones asked
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["cached"] == 4


def test_cache_resumes_after_a_failure(server_factory, tmp_path):
    cand, base = rows([f"GOOD {i}" for i in range(5)]), rows([f"meh {i}" for i in range(5)])
    cache = tmp_path / "cache"
    server = server_factory(mode="fail_after", k=4)
    judge = ApiJudge(f"api:{server.url}#m", server.url, "m", cache=cache, max_retries=0)
    with pytest.raises(W2SError, match="4 judgments kept"):
        evaluate_winrate(cand, base, judge)
    server.mode = "ok"                                          # the server recovers
    m = evaluate_winrate(cand, base, judge)
    assert server.chat_requests == 5 + 6                        # 4 ok + 1 refused, then 6 more
    assert m["cached"] == 4 and m["win_rate"] == 100.0
    again = ApiJudge(f"api:{server.url}#m", server.url, "m", cache=cache)
    assert evaluate_winrate(cand, base, again)["cached"] == 10
    assert server.chat_requests == 11


def test_unauthorised_is_not_retried(server_factory, tmp_path, capsys):
    server = server_factory(mode="refuse", status=401)
    cand, base = gen_files(tmp_path, n=2)
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
                            "--judge", f"api:{server.url}#m", "--no-cache", "--max-retries", "3",
                            "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "HTTP 401" in err and "W2S_JUDGE_API_KEY" in err
    assert len(err.strip().splitlines()) == 1
    assert server.chat_requests == 1 and not (tmp_path / "r").exists()


def test_retries_with_backoff_then_succeeds(server_factory):
    server = server_factory(mode="flaky")
    judge = ApiJudge("api", server.url, "m", cache=False, max_retries=2, backoff=0.01)
    out = judge.compare([("Q", "GOOD", "bad")])
    assert out[0]["verdict"] == 1 and server.chat_requests == 2


def test_timeout_is_one_error(server_factory):
    server = server_factory(mode="slow")
    judge = ApiJudge("api", server.url, "m", cache=False, timeout=0.2, max_retries=1,
                     backoff=0.01)
    with pytest.raises(W2SError, match=r"timed out after 0.2s\) after 2 attempts"):
        judge.compare([("Q", "GOOD", "bad")])


def test_model_from_the_server_listing_and_workers(server_factory, tmp_path):
    server = server_factory()
    judge = ApiJudge("api", server.url, None, cache=tmp_path / "c", workers=3)
    m = evaluate_winrate(rows([f"GOOD {i}" for i in range(6)]),
                         rows([f"meh {i}" for i in range(6)]), judge)
    assert m["win_rate"] == 100.0 and server.chat_requests == 12
    assert server.model_requests == 1 and set(server.models) == {"served-judge"}
    assert m["judge"]["served_model"] == "served-judge"


def test_one_api_judge_compares_writes_and_replies_through_one_client(server_factory, tmp_path):
    """The built api: judge is the generative judge too: pairwise verdicts, a batch of written
    judgments and a multi-turn reply all go through its one client (one request count) and its
    one cache folder; a written (system, user) judgment IS the reply to that conversation."""
    from w2s.evaluation.judges import conversation, pairwise_prompt, writes_judgments

    server = server_factory()
    judge = build_judge(f"api:{server.url}#j", cache=tmp_path / "c", workers=2)
    assert writes_judgments(judge)
    good_first, good_second = pairwise_prompt("Q", "GOOD a", "meh"), pairwise_prompt("Q", "x", "GOOD")
    assert judge.compare([("Q", "GOOD a", "meh")])[0]["verdict"] == 1
    written = judge.write_judgments([("S", good_first), ("S", good_second), ("T", good_second)],
                                    template="t@1", max_tokens=16)
    assert [(w["text"], w["cached"], w["template"]) for w in written] == [
        ("1", False, "t@1"), ("2", False, "t@1"), ("2", False, "t@1")]
    talk = [*conversation("S", good_first), {"role": "assistant", "content": "1"},
            {"role": "user", "content": good_second}]
    assert judge.reply(talk, template="t@1", max_tokens=16) == ("2", False)
    assert server.chat_requests == 5 == judge.requests
    assert judge.reply(conversation("S", good_second), template="t@1", max_tokens=16) == ("2", True)
    assert judge.reply(talk, template="t@2", max_tokens=16) == ("2", False)  # a new template
    assert server.chat_requests == 6 == judge.requests
    # one folder, a file for verdicts and one for written judgments
    assert judge.cache.path.parent == judge.writing_cache.path.parent == tmp_path / "c"
    assert len(list((tmp_path / "c").glob("*.jsonl"))) == 2
    ident = judge.writer_identity()
    assert ident["judge"] == f"api:{server.url}#j" and ident["kind"] == "api"
    assert ident["served_model"] == "j" and ident["cache"] == str(judge.writing_cache.path)
    # a fresh judge over the same folder answers everything from it
    again = build_judge(f"api:{server.url}#j", cache=tmp_path / "c")
    assert again.compare([("Q", "GOOD a", "meh")])[0]["cached"]
    assert all(w["cached"] for w in again.write_judgments(
        [("S", good_first), ("T", good_second)], template="t@1", max_tokens=16))
    assert again.reply(talk, template="t@1", max_tokens=16) == ("2", True)
    assert server.chat_requests == 6 and again.requests == 0


def test_llm_judge_written_judgments_are_cached(tmp_path, monkeypatch):
    import w2s.evaluation.judges.llm as llm
    from w2s.evaluation.judges import conversation

    judge = build_judge("llm:tiny:llama-1x32", device="cpu", cache=tmp_path / "c")
    talk = [*conversation("Judge.", "Q: hi A: hello"), {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "And again?"}]
    text, cached = judge.reply(talk, template="t@1", max_tokens=4)
    (written,) = judge.write_judgments([("Judge.", "Q: hi A: hello")], template="t@1",
                                       max_tokens=4)
    assert not cached and not written["cached"] and judge.requests == 2
    monkeypatch.setattr(llm, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert judge.reply(talk, template="t@1", max_tokens=4) == (text, True)
    assert judge.write_judgments([("Judge.", "Q: hi A: hello")], template="t@1",
                                 max_tokens=4) == [{**written, "cached": True}]
    assert judge.requests == 2
    ident = judge.writer_identity()
    assert ident["kind"] == "llm" and ident["decoding"] == "greedy"
    assert ident["cache"] == str(judge.writing_cache.path)
    assert ident["cache"].startswith(str(tmp_path / "c"))


def test_rate_limiter_spaces_requests():
    limiter = RateLimiter(50.0)
    start = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 5 / 50 - 1e-3
    with pytest.raises(W2SError):
        RateLimiter(0)


def test_a_server_that_does_not_speak_http_is_one_error(tmp_path, capsys):
    """Something else listening on the port (an SSH banner here): one line, exit 2, no run dir."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        cand, base = gen_files(tmp_path, n=2)
        code, _, err = run_cli(["eval", "winrate", "--candidate", str(cand), "--baseline",
                                str(base), "--judge", f"api:http://127.0.0.1:{port}#m",
                                "--no-cache", "--max-retries", "1", "--run-dir",
                                str(tmp_path / "r")], capsys)
    finally:
        listener.close()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not an HTTP answer" in err and "after 2 attempts" in err
    assert not (tmp_path / "r").exists()


def test_a_text_judge_can_read_the_prompt_with_the_response():
    """The W2S search authors' IMDB gold reward scores prompt + response (the whole review)."""
    from w2s.evaluation.judges import REWARDS, register_reward

    register_reward("test-echo-length")(lambda prompt, response: len(response))
    plain = build_judge("reward:test-echo-length")
    both = build_judge("reward:test-echo-length", reads="prompt+response")
    assert plain.score(["ab"], ["xyz"]) == [3.0] and both.score(["ab"], ["xyz"]) == [5.0]
    assert "reads" not in plain.identity() and both.identity()["reads"] == "prompt+response"
    with pytest.raises(W2SError, match="a judge reads one of"):
        build_judge("vader", reads="prompt")
    del REWARDS["test-echo-length"]


def test_judge_repeats_ask_an_api_judge_again_and_report_the_median(server_factory, tmp_path,
                                                                   capsys):
    """--judge-repeats 2 with a judge that flips after the first repeat's 8 requests: the
    repeats' win rates are 100 and 0, the figure their median 50; a rerun asks nothing."""
    server = server_factory(mode="flip", k=8)
    cand = [{"id": str(i), "prompt": f"q{i}", "response": f"GOOD {i}"} for i in range(4)]
    base = [{"id": str(i), "prompt": f"q{i}", "response": f"meh {i}"} for i in range(4)]
    for name, rows in (("cand", cand), ("base", base)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "winrate", "--candidate", str(tmp_path / "cand.jsonl"), "--baseline",
            str(tmp_path / "base.jsonl"), "--judge", f"api:{server.url}#j", "--judge-repeats",
            "2", "--judge-cache", str(tmp_path / "cache")]
    code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    per = m["judge_robustness"]["per_judge"][f"api:{server.url}#j"]
    assert per["values"] == [100.0, 0.0] and not per["deterministic"]
    assert m["win_rate"] == 50.0 and m["win_rate_repeat0"] == 100.0
    assert server.chat_requests == 16
    assert (tmp_path / "run" / "judgments-0-r1.jsonl").is_file()
    code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "again")], capsys)
    assert code == 0 and server.chat_requests == 16  # both repeats from the cache
