"""``w2s eval arenahard``: Arena-Hard-Auto's verdict parsing, battles, Bradley-Terry and bootstrap.

Every figure is checked against a value computed here another way: the BT rating of a model
that only meets the baseline in closed form (400 * log10 of its wins over its losses, a tie half
of each), the bootstrap by redrawing the same seeded resamples by hand, the style-control fit
against scikit-learn's logistic regression on the matrix v0.1's code builds (rows duplicated,
a tie one win and one loss), and the end-to-end score from the canned verdicts of a judge
server on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from helpers import LocalServer, read_jsonl, run_cli

from w2s.errors import W2SError
from w2s.evaluation.benchmarks import arenahard as ah
from w2s.evaluation.benchmarks.arenahard_score import (
    arena_score,
    battles_from_games,
    compute_mle_elo,
    fit_logistic,
    game_scores,
    predict_win_rate,
    standardise,
    style_features,
)


def test_parse_verdict_v01_one_regex_and_ask_again():
    assert ah.parse_verdict("My final verdict is [[A>B]]", "v0.1") == ("A>B", False)
    assert ah.parse_verdict("[[B>>A]] ... again [[B>>A]]", "v0.1") == ("B>>A", False)
    assert ah.parse_verdict("[[A>B]] or maybe [[B>A]]", "v0.1") == (None, False)
    assert ah.parse_verdict("no label here", "v0.1") == (None, True)
    assert ah.parse_verdict("[A>B] single brackets", "v0.1") == (None, True)
    assert ah.parse_verdict("[[a>b]] lower case", "v0.1") == (None, True)


def test_parse_verdict_v2_upper_case_last_match_two_patterns():
    assert ah.parse_verdict("[[A>B]] first, then final [[B>A]]", "v2") == ("B>A", False)
    assert ah.parse_verdict("my verdict: [[a=b]]", "v2") == ("A=B", False)
    assert ah.parse_verdict("verdict [B>>A] in single brackets", "v2") == ("B>>A", False)
    assert ah.parse_verdict("[[A>B]] beats the single [B>A] pattern", "v2") == ("A>B", False)
    assert ah.parse_verdict("nothing", "v2") == (None, False)
    with pytest.raises(W2SError, match="v0.1, v2"):
        ah.parse_verdict("[[A>B]]", "v3")


def test_prompts_are_arena_hards():
    assert ah.system_prompt("v0.1", "creative_writing") == ah.OG_ARENA_HARD_PROMPT
    assert ah.system_prompt("v2", "creative_writing") == ah.CREATIVE_WRITING_PROMPT
    assert ah.system_prompt("v2", "hard_prompt") == ah.OG_ARENA_HARD_PROMPT
    assert "Begin your evaluation by generating your own answer" in ah.OG_ARENA_HARD_PROMPT
    assert "generating your own answer" not in ah.CREATIVE_WRITING_PROMPT
    assert ah.OG_ARENA_HARD_PROMPT.endswith('Example output: "My final verdict is tie: [[A=B]]".')
    text = ah.judge_prompt("Q?", "first {x}", "second")
    assert text == ("<|User Prompt|>\nQ?\n\n<|The Start of Assistant A's Answer|>\nfirst {x}\n"
                    "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's "
                    "Answer|>\nsecond\n<|The End of Assistant B's Answer|>")


def test_game_scores_and_weights():
    assert game_scores("A>>B", True, "v0.1") == [1.0, 1.0, 1.0]     # the model is A: strong win
    assert game_scores("A>>B", False, "v0.1") == [0.0, 0.0, 0.0]    # the baseline is A
    assert game_scores("A=B", False, "v2") == [0.5]
    assert game_scores("B<A", True, "v2") == [1.0]                  # only v2 knows B<A ...
    assert game_scores("B<A", True, "v0.1") is None                 # ... v0.1 leaves it out
    assert game_scores("B<<A", False, "v2") == [0.0] * 3
    assert game_scores(None, True, "v2") is None
    assert game_scores("A>>B", True, "v2", weight=1) == [1.0]


def test_battles_order_and_unparsed_games():
    games = [("q1", "A>>B", "A>B"), ("q2", None, "B>>A"), ("q3", "A=B", "B>A")]
    v01 = battles_from_games(games, "v0.1")
    # v0.1: game 1 (baseline A) then game 2 (model A); q2's unparsed game alone is left out
    assert v01["scores"] == [0, 0, 0, 1, 0, 0, 0, 0.5, 0]
    assert v01["question_ids"] == ["q1"] * 4 + ["q2"] * 3 + ["q3"] * 2
    assert v01["n_unparsed"] == 1 and v01["n_questions_dropped"] == 0 and v01["n_games"] == 6
    v2 = battles_from_games(games, "v2")
    # v2: game 2 then game 1; q2 is dropped whole
    assert v2["scores"] == [1, 0, 0, 0, 0, 0.5]
    assert v2["n_unparsed"] == 1 and v2["n_questions_dropped"] == 1


def test_bt_rating_in_closed_form():
    wins, losses, ties = 30, 12, 6
    winner = ["model_b"] * wins + ["model_a"] * losses + ["tie"] * ties
    n = len(winner)
    ratings = compute_mle_elo(["base"] * n, ["m"] * n, winner, "base")
    expected = 400 * math.log10((wins + ties / 2) / (losses + ties / 2))
    assert ratings["base"] == 1000.0
    assert ratings["m"] - 1000 == pytest.approx(expected, abs=1e-6)
    assert 100 * predict_win_rate(ratings["m"]) == pytest.approx(100 * (wins + 3) / n, abs=1e-6)
    # two models against the baseline: each one's rating is its own closed form
    ratings = compute_mle_elo(["base"] * 20, ["m"] * 10 + ["k"] * 10,
                              ["model_b"] * 8 + ["model_a"] * 2 + ["model_b"] * 3
                              + ["model_a"] * 7, "base")
    assert ratings["m"] - 1000 == pytest.approx(400 * math.log10(8 / 2), abs=1e-6)
    assert ratings["k"] - 1000 == pytest.approx(400 * math.log10(3 / 7), abs=1e-6)


def _scores(n=60, seed=0):
    return np.random.default_rng(seed).choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.1, 0.6])


def test_v01_bootstrap_redrawn_by_hand():
    s = _scores()
    got = arena_score(s, "v0.1", n_boot=50, seed=7)
    rng = np.random.RandomState(7)

    def rating(x):  # the closed form again
        w, t = np.sum(x == 1), np.sum(x == 0.5)
        return 400 * math.log10((w + t / 2) / (len(x) - w - t / 2))

    boot = [rating(s[rng.randint(0, len(s), len(s))]) for _ in range(50)]
    assert got["score"] == pytest.approx(100 * (np.sum(s == 1) + np.sum(s == 0.5) / 2) / len(s))
    assert got["ci_low"] == pytest.approx(100 * predict_win_rate(1000 + np.percentile(boot, 2.5)))
    assert got["ci_high"] == pytest.approx(100 * predict_win_rate(1000 + np.percentile(boot, 97.5)))
    assert got["ci_level"] == 0.95
    assert arena_score(s, "v0.1", n_boot=50, seed=7) == got           # deterministic
    assert arena_score(s, "v0.1", n_boot=50, seed=8)["ci_low"] != got["ci_low"]


def test_v2_bootstrap_mean_and_90_percent_interval():
    s = _scores(seed=1)
    got = arena_score(s, "v2", n_boot=40, seed=3)
    rng = np.random.RandomState(3)
    means = [s[rng.randint(0, len(s), len(s))].mean() for _ in range(40)]
    assert got["score"] == pytest.approx(100 * np.mean(means))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(
        (100 * np.percentile(means, 5), 100 * np.percentile(means, 95)))
    assert got["ci_level"] == pytest.approx(0.9)


def test_markdown_counts_skip_code_blocks():
    text = "# T\n## S\n- a\n* b\n1. c\n**x** and __y__\n```\n# code\n- item\n```\n#nospace"
    counts = ah.markdown_counts(text)
    assert counts["header_count"] == {"h1": 1, "h2": 1, "h3": 0, "h4": 0, "h5": 0, "h6": 0}
    assert counts["list_count"] == {"ordered": 1, "unordered": 2}
    assert counts["bold_count"] == {"**": 1, "__": 1}
    meta = ah.style_metadata(text, {"token_len": 40}, None)
    assert meta == {"token_len": 40, "header_count": 2, "list_count": 3, "bold_count": 2}
    assert ah.style_metadata(text, None, None) is None          # no tokens: no style control
    assert ah.style_metadata(text, None, len)["token_len"] == len(text)


def test_style_features_by_hand():
    m, b = [100, 2, 4, 0], [50, 0, 1, 3]
    v01 = style_features([m], [b], "v0.1")[0]
    assert v01 == pytest.approx([(50 - 100) / 151, (0 - 2) / 3, (1 - 4) / 6, (3 - 0) / 4])
    v2 = style_features([m], [b], "v2")[0]
    dm, db = np.array(m[1:]) / 101, np.array(b[1:]) / 51
    assert v2 == pytest.approx([50 / 150, *((dm - db) / (dm + db + 1))])
    Z, names = standardise(np.array([[1.0, 5, 2], [3, 5, 4], [2, 5, 9]]), "v2")
    assert names == ["length", "list"]                          # the constant column left out
    assert Z[:, 0] == pytest.approx([-1, 1, 0])                 # sample std (ddof 1)


def test_v01_style_fit_matches_sklearn_on_their_matrix():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(5)
    n = 80
    s = _scores(n, seed=2)
    raw = style_features(rng.integers(1, 500, (n, 4)), rng.integers(1, 500, (n, 4)), "v0.1")
    got = arena_score(s, "v0.1", features=raw, n_boot=3)
    # their construct_style_matrices: battles duplicated, A (the baseline) +ln 10, B -ln 10,
    # y = "A wins", a tie a win in the first copy and a loss in the second
    z = (raw - raw.mean(0)) / raw.std(0)
    X = np.vstack([np.column_stack([np.full(n, math.log(10)), np.full(n, -math.log(10)), z])] * 2)
    y = np.concatenate([(s == 0) | (s == 0.5), s == 0]).astype(float)
    lr = sklearn.LogisticRegression(fit_intercept=False, tol=1e-12, max_iter=10000).fit(X, y)
    diff = 400 * (lr.coef_[0][1] - lr.coef_[0][0])
    assert got["score"] == pytest.approx(100 * predict_win_rate(1000 + diff), abs=1e-6)
    assert list(got["style_coefficients"].values()) == pytest.approx(lr.coef_[0][2:], abs=1e-6)


def test_style_control_removes_a_preference_explained_by_length():
    # the model is much longer on a fifth of the questions (where it wins) and a little shorter
    # elsewhere (where it loses more often than not): P(win) = sigmoid(2 z), z the standardised
    # length feature, no model term. Its preference is all length, so style control gives ~50.
    rng = np.random.default_rng(11)
    n = 4000
    longer = rng.random(n) < 0.2
    model_len = np.where(longer, 900, 400).astype(float)
    base_len = np.where(longer, 100, 500).astype(float)
    raw = style_features(np.column_stack([model_len, np.zeros((n, 3))]),
                         np.column_stack([base_len, np.zeros((n, 3))]), "v2")
    z = (raw[:, 0] - raw[:, 0].mean()) / raw[:, 0].std(ddof=1)
    s = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(float)
    plain = arena_score(s, "v2", n_boot=20)
    style = arena_score(s, "v2", features=raw, n_boot=20)
    assert plain["score"] < 45
    assert style["score"] == pytest.approx(50, abs=2.5)
    assert style["style_features"] == ["length"] and style["style_coefficients"]["length"] > 1


def test_fit_logistic_penalty_and_soft_targets():
    X = np.array([[1.0], [1.0], [1.0], [1.0]])
    beta = fit_logistic(X, [1, 1, 0.5, 0])       # 2.5 of 4: logit 2.5/1.5
    assert beta[0] == pytest.approx(math.log(2.5 / 1.5), abs=1e-9)
    # L2: the gradient 4 sigmoid(b) - 2.5 + b vanishes
    b = fit_logistic(X, [1, 1, 0.5, 0], l2=1.0)[0]
    assert 4 / (1 + math.exp(-b)) - 2.5 + b == pytest.approx(0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# end to end against a judge server on 127.0.0.1


class CannedJudge(LocalServer):
    """Chat completions answering from the answer shown as assistant A: "STRONG" -> A>>B,
    "GOOD" -> A>B, "BIAS" -> always A>B (position bias), "MUTE" -> no label when the model is
    B (v0.1 asks again and gets A=B); the baseline's "meh" in A -> the verdict for the model in
    B, mirrored."""

    def __init__(self):
        self.chat_requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.chat_requests += 1
                msgs = payload["messages"]
                assert msgs[0]["role"] == "system" and "impartial judge" in msgs[0]["content"]
                if msgs[-1]["content"] == ah.FOLLOW_UP:
                    text = "Then: [[A=B]]"
                else:
                    user = msgs[-1]["content"]
                    a = user.split("<|The Start of Assistant A's Answer|>\n", 1)[1]
                    a, b = a.split("\n<|The End of Assistant A's Answer|>", 1)
                    model = a if not a.startswith("meh") else b
                    if "BIAS" in model:
                        text = "My final verdict is [[A>B]]"
                    elif "MUTE" in model:
                        text = "Hard to say." if model == b else "[[A<<B]] and so [[B>A]]"
                    else:
                        strong = ">>" if "STRONG" in model else ">"
                        text = (f"My final verdict is [[A{strong}B]]" if model == a
                                else f"My final verdict is [[B{strong}A]]")
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


def _files(tmp_path, v2_format=True):
    kinds = ["STRONG", "GOOD", "BIAS", "MUTE"]
    qs, ans, base = [], [], []
    for i, kind in enumerate(kinds):
        qid = f"q{i}"
        qs.append({"uid": qid, "category": "hard_prompt", "prompt": f"Question {i}?"})
        for rows, name, text, tokens in ((ans, "my-model", f"{kind} answer {i}", 100 + 50 * i),
                                         (base, "o3-mini", f"meh {i}", 120)):
            meta = {"token_len": tokens, "header_count": {"h1": i % 2},
                    "list_count": {"ordered": i}, "bold_count": {"**": (i * 7) % 3}}
            if v2_format:
                rows.append({"uid": qid, "model": name, "metadata": meta, "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": {"answer": text}}]})
            else:
                rows.append({"question_id": qid, "model_id": name,
                             "choices": [{"index": 0, "turns": [{"content": text}]}]})
    paths = [tmp_path / n for n in ("question.jsonl", "model.jsonl", "baseline.jsonl")]
    for path, rows in zip(paths, (qs, ans, base), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _args(server, paths, run_dir, *extra):
    q, a, b = paths
    return ["eval", "arenahard", "--answers", str(a), "--baseline", str(b), "--questions",
            str(q), "--judge", f"api:{server.url}#gpt-4.1", "--run-dir", str(run_dir), *extra]


def test_cli_v2_end_to_end_and_cache(judge_server, tmp_path, capsys):
    paths = _files(tmp_path)
    code, out, err = run_cli(_args(judge_server, paths, tmp_path / "r1"), capsys)
    assert code == 0, err
    assert judge_server.chat_requests == 8                         # 4 questions x 2 games
    m = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    # battles (v2: game 2 then game 1): STRONG 3 + 3 wins, GOOD 1 + 1, BIAS a win (model as A)
    # and a loss (baseline as A); MUTE's game 1 has no label: the question is dropped
    s = np.array([1.0] * 6 + [1, 1] + [1, 0])
    rng = np.random.RandomState(42)
    means = [s[rng.randint(0, 10, 10)].mean() for _ in range(100)]
    assert m["score"] == pytest.approx(100 * np.mean(means))
    assert m["ci_low"] == pytest.approx(100 * np.percentile(means, 5))
    assert m["n_games"] == 8 and m["n_unparsed"] == 1 and m["n_questions_dropped"] == 1
    assert m["n_battles"] == 10 and m["setting"] == "v2" and m["category"] == "hard_prompt"
    assert m["model"] == "my-model" and m["baseline_model"] == "o3-mini"
    assert m["style_controlled_score"] is not None and m["style_controlled_score_reason"] is None
    assert m["judge"]["max_tokens"] == 16000 and m["cached"] == 0
    rows = read_jsonl(tmp_path / "r1" / "judgments.jsonl")
    assert [(r["question_id"], r["game"], r["model_a"]) for r in rows[:2]] == [
        ("q0", 1, "o3-mini"), ("q0", 2, "my-model")]
    assert rows[0]["verdict"] == "B>>A" and rows[1]["verdict"] == "A>>B"
    env = json.loads((tmp_path / "r1" / "env.json").read_text())
    assert env["judge"]["model"] == "gpt-4.1" and env["template_hash"]
    assert set(env["data_hashes"]) == {"answers", "baseline", "questions"}
    # the rerun is answered from the judgment cache: no request
    code, out, err = run_cli(_args(judge_server, paths, tmp_path / "r2", "--json"), capsys)
    assert code == 0, err
    assert judge_server.chat_requests == 8
    m2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m2["score"] == m["score"] and m2["cached"] == 8 and m2["judge_requests"] == 0


def test_cli_v01_asks_again_and_scores_by_bt(judge_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ah, "token_counter", lambda setting: None)   # as offline
    paths = _files(tmp_path, v2_format=False)
    code, out, err = run_cli(_args(judge_server, paths, tmp_path / "r", "--setting", "v0.1"),
                             capsys)
    assert code == 0, err
    assert judge_server.chat_requests == 9                  # MUTE's game 1 asked a second time
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # v0.1: MUTE game 1 -> A=B after asking again (a tie); its game 2 names two labels
    # ([[A<<B]], [[B>A]]): no verdict, left out alone. 9 wins, 1 loss, 1 tie.
    assert m["n_unparsed"] == 1 and m["n_battles"] == 11
    assert m["score"] == pytest.approx(100 * 9.5 / 11, abs=1e-6)
    assert m["ci_level"] == 0.95 and m["judge"]["max_tokens"] == 4096
    assert m["style_controlled_score"] is None and "tiktoken" in m["style_controlled_score_reason"]
    mute = [r for r in read_jsonl(tmp_path / "r" / "judgments.jsonl") if r["question_id"] == "q3"]
    assert mute[0]["replies"] == 2 and mute[0]["verdict"] == "A=B"
    assert mute[0]["judgment"] == "\nHard to say.\nThen: [[A=B]]"


@pytest.mark.parametrize("case,needle", [
    ("reward", "generative judge"), ("setting", "v0.1, v2"), ("missing", "no such file"),
    ("noquestions", "--questions"), ("category", "no question of category")])
def test_bad_input_is_one_line_and_no_run_dir(case, needle, judge_server, tmp_path, capsys):
    paths = _files(tmp_path, v2_format=case != "noquestions")
    args = _args(judge_server, paths, tmp_path / "run")
    if case == "reward":
        args[args.index("--judge") + 1] = "reward:length"
    elif case == "setting":
        args += ["--setting", "v3"]
    elif case == "missing":
        args[args.index("--answers") + 1] = str(tmp_path / "nope.jsonl")
    elif case == "noquestions":
        i = args.index("--questions")
        del args[i:i + 2]
    else:
        args += ["--category", "math"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "run").exists() and judge_server.chat_requests == 0


def test_generate_judgment_is_cached(judge_server, tmp_path):
    from w2s.evaluation.judges.generate import build_generative_judge, generate_judgment

    judge = build_generative_judge(f"api:{judge_server.url}#j", cache=tmp_path / "c")
    user = ah.judge_prompt("Q", "GOOD one", "meh two")
    assert generate_judgment(judge, ah.OG_ARENA_HARD_PROMPT, user) == "My final verdict is [[A>B]]"
    assert generate_judgment(judge, ah.OG_ARENA_HARD_PROMPT, user).endswith("[[A>B]]")
    assert judge_server.chat_requests == 1 and judge.requests == 1
    with pytest.raises(W2SError, match="generative judge"):
        build_generative_judge("rm:tiny:llama-1x32")


def test_llm_judge_writes_greedily_and_caches(tmp_path):
    from w2s.console import register_model_builders
    from w2s.evaluation.judges.generate import build_generative_judge, generate_judgment

    register_model_builders()
    judge = build_generative_judge("llm:tiny:llama-1x32", cache=tmp_path / "c", device="cpu")
    system = ah.OG_ARENA_HARD_PROMPT[:200]  # the whole prompt is more than its 512 positions
    first = generate_judgment(judge, system, "Q", max_tokens=6)
    assert generate_judgment(judge, system, "Q", max_tokens=6) == first
    assert judge.requests == 1
    with pytest.raises(W2SError, match=r"more than tiny:llama-1x32 takes \(512\)"):
        generate_judgment(judge, ah.OG_ARENA_HARD_PROMPT, "Q", max_tokens=6)
    ident = judge.writer_identity()
    assert ident["judge"] == "llm:tiny:llama-1x32" and ident["decoding"] == "greedy"


def test_two_judges_and_their_agreement_on_arena_hard(judge_server, tmp_path, capsys):
    """--judges: a second judge (the same server under another model name, so its own cache
    entries) judges the same 8 games; the same verdicts: agreement 1 and the same score."""
    paths = _files(tmp_path)
    other = f"api:{judge_server.url}#judge-two"
    code, out, err = run_cli(_args(judge_server, paths, tmp_path / "r", "--judges", other),
                             capsys)
    assert code == 0, err
    assert judge_server.chat_requests == 16
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    rec = m["judge_robustness"]
    assert rec["figure"] == "score" and len(rec["judges"]) == 2
    (pair,) = rec["agreement"].values()
    assert pair["items"] == 8 - 1 and pair["agreement"] == 1.0  # MUTE's unparsed game: None
    assert rec["per_judge"][other]["median"] == m["score"]
    assert (tmp_path / "r" / "judgments-1-r0.jsonl").is_file()


def test_a_local_judge_end_to_end_offline(tmp_path, capsys):
    """Offline, local files, a local llm: judge: every game is judged; a tiny model names no
    verdict, so every game is unparsed and counted, and the score says why it is missing."""
    from helpers import long_context_judge

    q, a, b = _files(tmp_path)
    judge = f"llm:{long_context_judge(tmp_path / 'judge')}"
    code, _, err = run_cli(["eval", "arenahard", "--answers", str(a), "--baseline", str(b),
                            "--questions", str(q), "--judge", judge, "--max-tokens", "8",
                            "--device", "cpu", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_games"] == 8 and len(read_jsonl(tmp_path / "run" / "judgments.jsonl")) == 8
    assert m["judge"]["kind"] == "llm"
    if m["n_unparsed"] == 8:
        assert m["score"] is None and m["n_battles"] == 0
