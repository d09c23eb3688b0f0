"""``w2s eval alpacaeval``: AlpacaEval 2's length-controlled win rate, from the alpaca-eval package.

The LC figure is checked two ways on data made here: against the package's own
``get_length_controlled_winrate`` called directly, and against the same GLM fitted in this test
with scikit-learn from a design matrix built by hand (tanh of the standardised length
difference, the instruction difficulty, the not-gamed indicator; the gamed baselines at weight
0.1). The raw win rate and its standard error are computed by hand. ``make test`` (and CI)
installs the package and sets W2S_REQUIRE_ALPACAEVAL=1, so these tests cannot skip there.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from helpers import read_jsonl, run_cli

from w2s.errors import W2SError


def _require_package():
    try:
        import alpaca_eval.metrics.glm_winrate  # noqa: F401
    except ImportError:
        if os.environ.get("W2S_REQUIRE_ALPACAEVAL") == "1":
            pytest.fail("W2S_REQUIRE_ALPACAEVAL=1 but alpaca-eval is not installed "
                        "(pip install -e '.[alpacaeval]')")
        pytest.skip("alpaca-eval is not installed (pip install -e '.[alpacaeval]')")


N = 120  # instructions


def _difficulty() -> np.ndarray:
    return np.random.default_rng(1).normal(size=N)


def _write_gamed(path) -> None:
    """A df_gamed.csv of the real one's columns: two gamed baselines (concise, verbose) whose
    preferences follow their length difference and the instruction's difficulty."""
    import pandas as pd

    rng = np.random.default_rng(2)
    diff = _difficulty()
    rows = []
    for model, sign in (("gpt4_gamed_concise", 1.0), ("gpt4_gamed_verbose", -1.0)):
        for i in range(N):
            d = sign * abs(rng.normal())  # baseline minus model length, standardised
            p = 1 / (1 + math.exp(-(-1.2 * math.tanh(d) + 0.8 * diff[i])))
            rows.append({"model": model, "index": i, "preference": p, "std_delta_len": d,
                         "instruction_difficulty": diff[i], "not_gamed_baseline": False})
    pd.DataFrame(rows).to_csv(path, index=False)


def _answers(seed: int = 3):
    """Baseline and model answers with a real length effect in the preferences."""
    rng = np.random.default_rng(seed)
    base = ["b" * int(rng.integers(50, 400)) for _ in range(N)]
    model = ["m" * int(rng.integers(20, 900)) for _ in range(N)]
    diff = _difficulty()
    prefs = []
    for i in range(N):
        z = 1.5 * math.tanh((len(model[i]) - len(base[i])) / 300) + 0.5 * diff[i] + 0.2
        u = rng.random()
        p = 1 / (1 + math.exp(-z))
        prefs.append(2.0 if u < p * 0.9 else (1.5 if u < p * 0.9 + 0.1 else 1.0))
    return prefs, model, base


def _package_lc(prefs, model, base, positions, gamed):
    """The package's own function, called directly."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate as glm

    df = pd.DataFrame({"preference": prefs, "output_1": base, "output_2": model,
                       "generator_1": "ref", "generator_2": "cand", "annotator": "j"},
                      index=pd.Index(positions))
    old = glm.hf_hub_download
    glm.hf_hub_download = lambda **kw: str(gamed)
    try:
        return glm.get_length_controlled_winrate(df, save_weights_dir=None,
                                                 is_warn_extreme_changes=False)
    finally:
        glm.hf_hub_download = old


def _sklearn_lc(prefs, model, base, positions, gamed) -> float:
    """The length_controlled_v1 GLM fitted here from a hand-built design matrix."""
    import pandas as pd
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    g = pd.read_csv(gamed)
    difficulty = g.drop_duplicates("index").set_index("index")["instruction_difficulty"]
    delta = np.array([len(b) - len(m) for b, m in zip(base, model, strict=True)], float)
    std = delta / delta.std(ddof=1)
    y = np.array(prefs) - 1
    d = difficulty.loc[list(positions)].to_numpy()
    X = np.concatenate([np.stack([np.tanh(std), d, np.ones(len(y))], 1),
                        np.stack([np.tanh(g["std_delta_len"]), g["instruction_difficulty"],
                                  np.zeros(len(g))], 1)])
    y = np.concatenate([y, g["preference"].to_numpy()])
    w = np.concatenate([np.ones(len(prefs)), np.full(len(g), 0.1)])
    # a soft label p is two rows: label 1 with weight w*p, label 0 with weight w*(1-p)
    XX, yy = np.concatenate([X, X]), np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    prob = np.concatenate([y, 1 - y])
    ww = np.concatenate([w, w])
    groups = np.concatenate([np.arange(len(y)), np.arange(len(y))])

    def score(y_true, y_pred, true_prob, true_sample_weight):
        t = np.where(y_true == 1, true_prob, 1 - true_prob)
        p = np.clip(y_pred, 1e-15, 1 - 1e-15)
        return np.mean((t * np.log(p) + (1 - t) * np.log(1 - p)) * true_sample_weight)

    sklearn.set_config(enable_metadata_routing=True)
    scorer = make_scorer(score, response_method="predict_proba").set_score_request(
        true_prob=True, true_sample_weight=True)
    fit = LogisticRegressionCV(cv=GroupKFold(n_splits=5), scoring=scorer, random_state=123,
                               penalty="l1", solver="liblinear", fit_intercept=False)
    fit.set_fit_request(sample_weight=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(XX, yy, sample_weight=ww * prob, groups=groups, true_prob=prob,
                true_sample_weight=ww)
    test = np.stack([np.zeros(len(prefs)), d, np.ones(len(prefs))], 1)
    return float(fit.predict_proba(test)[:, 1].mean() * 100)


def test_lc_equals_the_package_and_an_independent_fit(tmp_path):
    _require_package()
    from w2s.evaluation.benchmarks.alpacaeval import alpacaeval_lc

    gamed = tmp_path / "df_gamed.csv"
    _write_gamed(gamed)
    prefs, model, base = _answers()
    positions = list(range(N))
    ours = alpacaeval_lc(prefs, model, base, positions, gamed=tmp_path)
    theirs = _package_lc(prefs, model, base, positions, gamed)
    assert ours["lc_win_rate"] == pytest.approx(float(theirs["length_controlled_winrate"]),
                                                abs=1e-9)
    assert ours["lc_win_rate_se"] == pytest.approx(float(theirs["lc_standard_error"]), abs=1e-9)
    assert ours["lc_win_rate"] == pytest.approx(_sklearn_lc(prefs, model, base, positions,
                                                            gamed), abs=1e-6)
    # the raw figures, by hand
    x = np.array(prefs) - 1
    assert ours["win_rate"] == pytest.approx(x.mean() * 100)
    assert ours["win_rate_se"] == pytest.approx(x.std(ddof=1) / math.sqrt(N) * 100)
    assert (ours["n_wins"], ours["n_draws"], ours["n_total"]) == (
        int((x > 0.5).sum()), int((x == 0.5).sum()), N)
    # the model's answers are longer and the preferences like length: LC is below raw
    assert ours["lc_win_rate"] < ours["win_rate"] - 1


def test_lc_of_a_subset_finds_each_instruction_by_its_position(tmp_path):
    """Instructions are known to AlpacaEval by their position in the eval set: a subset keeps
    its positions, so each row gets its own difficulty (not that of row 0, 1, ...)."""
    _require_package()
    from w2s.evaluation.benchmarks.alpacaeval import alpacaeval_lc

    gamed = tmp_path / "df_gamed.csv"
    _write_gamed(gamed)
    prefs, model, base = _answers()
    keep = list(range(0, N, 2))
    pick = [[v[i] for i in keep] for v in (prefs, model, base)]
    ours = alpacaeval_lc(*pick, keep, gamed=gamed)
    assert ours["lc_win_rate"] == pytest.approx(
        _sklearn_lc(*pick, keep, gamed), abs=1e-6)
    shifted = _sklearn_lc(*pick, list(range(len(keep))), gamed)
    assert ours["lc_win_rate"] != pytest.approx(shifted, abs=1e-6)


def _files(tmp_path, shuffle: bool = True):
    rng = np.random.default_rng(4)
    base = [{"instruction": f"Question number {i}?", "output": "b" * int(rng.integers(40, 300)),
             "generator": "gpt4_1106_preview", "dataset": "toy"} for i in range(N)]
    cand = [{"instruction": r["instruction"], "output": "m" * int(rng.integers(10, 600)),
             "generator": "my-model", "dataset": "toy"} for r in base]
    if shuffle:  # the candidate's order does not matter; the baseline's sets the positions
        cand = [cand[i] for i in rng.permutation(N)]
    (tmp_path / "ref.json").write_text(json.dumps(base))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    _write_gamed(tmp_path / "df_gamed.csv")
    return tmp_path / "cand.json", tmp_path / "ref.json"


def test_cli_end_to_end_with_a_length_judge(tmp_path, capsys):
    _require_package()
    cand, ref = _files(tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["eval", "alpacaeval", "--candidate", str(cand), "--baseline",
                              str(ref), "--judge", "reward:length", "--alpacaeval-data",
                              str(tmp_path), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = read_jsonl(run_dir / "judgments.jsonl")
    assert len(rows) == N and {r["position"] for r in rows} == set(range(N))
    base = json.loads(ref.read_text())
    for r in rows:  # each judgment sits at its instruction's place in the baseline file
        assert base[r["position"]]["instruction"] == r["prompt"]
    rows.sort(key=lambda r: r["position"])
    cand_by = {c["instruction"]: c["output"] for c in json.loads(cand.read_text())}
    theirs = _package_lc([r["preference"] for r in rows],
                         [cand_by[r["prompt"]] for r in rows],
                         [base[r["position"]]["output"] for r in rows],
                         [r["position"] for r in rows], tmp_path / "df_gamed.csv")
    assert metrics["lc_win_rate"] == pytest.approx(float(theirs["length_controlled_winrate"]))
    assert metrics["win_rate"] == pytest.approx(float(theirs["win_rate"]))
    assert metrics["generator"] == "my-model" and metrics["n"] == N
    assert metrics["lc_win_rate_method"].startswith("alpacaeval length_controlled_v1")
    assert metrics["lc_win_rate_minimal_method"].startswith("minimal length GLM")
    # a judge that prefers the longer answer: the raw win rate is all length; AlpacaEval warns
    from alpaca_eval.metrics.glm_winrate import get_is_extreme_changes

    extreme = bool(get_is_extreme_changes(metrics["win_rate"], metrics["lc_win_rate"]))
    assert metrics["lc_extreme_change"] is extreme
    assert (metrics["lc_warning"] is not None) is extreme
    assert "LC win rate" in out and f"run: {run_dir}" in out
    env = json.loads((run_dir / "env.json").read_text())
    assert env["data_hashes"]["df_gamed.csv"] and env["judge"]["judge"] == "reward:length"


def test_offline_without_the_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    _require_package()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    cand, ref = _files(tmp_path)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(cand), "--baseline",
                            str(ref), "--judge", "reward:length", "--run-dir", str(run_dir)],
                           capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "df_gamed.csv" in err and "tatsu-lab/alpaca_eval" in err and "--alpacaeval-data" in err
    assert not run_dir.exists()


def test_without_the_package_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # import alpaca_eval -> ImportError
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics", None)
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics.glm_winrate", None)
    cand, ref = _files(tmp_path)
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(cand), "--baseline",
                            str(ref), "--judge", "reward:length", "--alpacaeval-data",
                            str(tmp_path), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "w2s[alpacaeval]" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["columns", "position", "folder"])
def test_bad_gamed_file_is_one_line(tmp_path, case):
    _require_package()
    from w2s.evaluation.benchmarks.alpacaeval import alpacaeval_lc

    gamed = tmp_path / "df_gamed.csv"
    _write_gamed(gamed)
    prefs, model, base = _answers()
    positions = list(range(N))
    if case == "columns":
        gamed.write_text("index,preference\n0,0.5\n")
        needle = "no column std_delta_len"
    elif case == "position":
        positions = [p + 1 for p in positions]  # position N is past the file's instructions
        needle = f"position {N} is not in df_gamed.csv"
    else:
        gamed = tmp_path / "nothing-here"
        gamed.mkdir()
        needle = "no df_gamed.csv there"
    with pytest.raises(W2SError, match=needle):
        alpacaeval_lc(prefs, model, base, positions, gamed=gamed)


# ---- AlpacaEval 2's own annotator (weighted_alpaca_eval_gpt4_turbo) ----------------------------


def test_the_annotator_prompt_order_and_parser_are_alpacaevals():
    """The prompt, the seeded order and the log-prob parser against the package's own
    make_prompts + prompt_to_chatml, random_seeded_choice and logprob_parser."""
    _require_package()
    import pandas as pd
    from alpaca_eval import completion_parsers, utils

    from w2s.evaluation.benchmarks import alpacaeval as ae

    row = {"instruction": "Name {two} colours.", "output_1": "Red and blue.",
           "output_2": "Green, {output_1} and gold."}
    prompts, _ = utils.make_prompts(pd.DataFrame([row]), ae.ANNOTATOR_TEMPLATE)
    assert ae.annotator_messages(**row) == utils.prompt_to_chatml(prompts[0])
    for instruction in ("Write a poem.", "2+2?", "Tell me about the moon", "x" * 50):
        assert ae.is_switched(instruction) == utils.random_seeded_choice(
            seed="is_switched_outputs" + instruction + "123", choices=[False, True])
    for top in ({"m": -0.2, "M": -1.8, "The": -5.0}, {"M": -0.01}, {"m": -3.0, "M": -3.0}):
        completion = {"logprobs": {"content": [{"top_logprobs": [
            {"token": t, "logprob": v} for t, v in top.items()]}]}}
        (theirs,) = completion_parsers.logprob_parser(completion, numerator_token="m",
                                                       denominator_tokens=["m", "M"],
                                                       is_binarize=False)
        assert ae.preference_from_logprobs(top) == pytest.approx(theirs)
    assert math.isnan(ae.preference_from_logprobs({"The": -0.1}))


def test_a_local_judge_as_alpacaevals_annotator(tmp_path, capsys):
    """llm: reads the exact log-probs of m and M; the preference is recomputed here from a plain
    forward pass of the same model, with AlpacaEval's swap undone."""
    _require_package()
    from w2s.cli import register_model_builders
    from w2s.evaluation.benchmarks import alpacaeval as ae
    from w2s.models import format_chat, load_causal_lm

    register_model_builders()
    # AlpacaEval's prompt is ~1,300 byte tokens: a tiny llama (rotary, no learned positions)
    # saved with room for it
    model, tok = load_causal_lm("tiny:llama-1x32", device="cpu")
    model.config.max_position_embeddings = tok.model_max_length = 4096
    judge_dir = tmp_path / "judge"
    model.save_pretrained(judge_dir)
    tok.save_pretrained(judge_dir)
    n = 24
    base = [{"instruction": f"Question {i}?", "output": "b" * (10 + i), "generator": "ref"}
            for i in range(n)]
    cand = [{"instruction": r["instruction"], "output": "m" * (5 + 2 * i), "generator": "me"}
            for i, r in enumerate(base)]
    (tmp_path / "ref.json").write_text(json.dumps(base))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    _write_gamed(tmp_path / "df_gamed.csv")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(tmp_path / "cand.json"),
                            "--baseline", str(tmp_path / "ref.json"), "--judge",
                            f"llm:{judge_dir}", "--alpacaeval-data", str(tmp_path),
                            "--run-dir", str(run_dir), "--device", "cpu"], capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    rows = read_jsonl(run_dir / "judgments.jsonl")
    assert m["annotator"] == ae.ANNOTATOR and len(rows) == n
    assert {r["switched"] for r in rows} == {True, False}  # both orders occur over 24 prompts
    for r in rows[:3]:
        i = int(r["prompt"].split()[1].rstrip("?"))
        first, second = ((cand[i]["output"], base[i]["output"]) if r["switched"]
                         else (base[i]["output"], cand[i]["output"]))
        prefix = format_chat(tok, ae.annotator_messages(r["prompt"], first, second))
        lp = {}
        for t in ("m", "M"):
            ids = tok(prefix + t, add_special_tokens=False)["input_ids"]
            n_prompt = len(tok(prefix, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            lp[t] = sum(logits[k - 1, ids[k]].item() for k in range(n_prompt, len(ids)))
        p_m = math.exp(lp["m"]) / (math.exp(lp["m"]) + math.exp(lp["M"]))
        shown = 2 - p_m
        assert r["preference"] == pytest.approx(3 - shown if r["switched"] else shown, abs=1e-5)
    assert m["lc_win_rate_minimal"] is None and "continuous" in m["lc_win_rate_minimal_reason"]
    assert 0 <= m["lc_win_rate"] <= 100


def test_a_reward_judge_cannot_be_the_annotator(tmp_path, capsys):
    _require_package()
    cand, ref = _files(tmp_path)
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(cand), "--baseline",
                            str(ref), "--judge", "reward:length", "--annotator", "alpacaeval",
                            "--alpacaeval-data", str(tmp_path), "--run-dir",
                            str(tmp_path / "run")], capsys)
    assert code == 2 and "cannot be AlpacaEval's annotator" in err
    assert not (tmp_path / "run").exists()


def test_an_api_judge_as_alpacaevals_annotator_reads_top_logprobs(tmp_path, capsys):
    """A server on 127.0.0.1 that answers AlpacaEval's request (max_tokens 1, logprobs, top 5)
    with p(m) = 0.8 whatever it is shown: the preference is 2 - 0.8 = 1.2 in the shown order,
    3 - 1.2 = 1.8 where AlpacaEval swapped the outputs; a rerun asks nothing."""
    _require_package()
    from http.server import BaseHTTPRequestHandler

    from helpers import LocalServer

    from w2s.evaluation.benchmarks import alpacaeval as ae

    asked = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(payload)
            top = [{"token": "m", "logprob": math.log(0.8)},
                   {"token": "M", "logprob": math.log(0.2)}]
            body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                      "content": "m"},
                                            "logprobs": {"content": [{"token": "m",
                                                                      "top_logprobs": top}]}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = LocalServer()
    server.serve(Handler)
    try:
        cand, ref = _files(tmp_path)
        args = ["eval", "alpacaeval", "--candidate", str(cand), "--baseline", str(ref),
                "--judge", f"api:{server.url}#gpt-4-1106-preview", "--alpacaeval-data",
                str(tmp_path)]
        code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "run")], capsys)
        assert code == 0, err
        assert len(asked) == N
        assert all(a["max_tokens"] == 1 and a["logprobs"] is True and a["top_logprobs"] == 5
                   for a in asked)
        assert [m["role"] for m in asked[0]["messages"]] == ["system", "user"]
        rows = read_jsonl(tmp_path / "run" / "judgments.jsonl")
        for r in rows:
            assert r["switched"] == ae.is_switched(r["prompt"])
            assert r["preference"] == pytest.approx(1.8 if r["switched"] else 1.2)
        code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "again")], capsys)
        assert code == 0 and len(asked) == N  # every log-prob came from the judgment cache
    finally:
        server.close()


def test_two_judges_on_alpacaeval_report_both_lc_figures_and_their_agreement(tmp_path, capsys):
    _require_package()
    cand, ref = _files(tmp_path)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(cand), "--baseline",
                            str(ref), "--judge", "reward:length", "--judges", "vader",
                            "--alpacaeval-data", str(tmp_path), "--run-dir", str(run_dir)],
                           capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    rec = m["judge_robustness"]
    assert rec["figure"] == "lc_win_rate" and rec["judges"] == ["reward:length", "vader"]
    assert rec["per_judge"]["reward:length"]["median"] == m["lc_win_rate"]
    second = read_jsonl(run_dir / "judgments-1-r0.jsonl")
    first = {r["id"]: r["preference"] for r in read_jsonl(run_dir / "judgments.jsonl")}
    agree = sum(first[r["id"]] == r["preference"] for r in second) / len(second)
    assert rec["agreement"]["reward:length | vader"]["agreement"] == pytest.approx(agree)
