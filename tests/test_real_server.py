"""The ``api:`` judge and the ``api:`` search base against a REAL OpenAI-compatible server:
``transformers serve`` (extra ``transformers[serving]``) started here on 127.0.0.1, serving a
tiny model saved in the test. Not a hand-written stub: chat completions for the judge, legacy
completions for the search base, a server that ignores ``n`` (as this one does), an unknown
model refused by the server, and a server that goes away.

The judge's model is built to answer "1" to anything: every layer's output projections are
zeroed, so the last hidden state is the current token's embedding, and the output head maps
every token but "1" to "1" and "1" to the end of the text. A judge that always names the first
position must score every pair a tie under the both-orders rule: the test checks exactly that.

``make test`` (and CI) installs the serving extra and sets W2S_REQUIRE_SERVING=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import free_port, read_jsonl, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SERVE = Path(sys.executable).with_name("transformers")


def _require_serving():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        if os.environ.get("W2S_REQUIRE_SERVING") == "1":
            pytest.fail("W2S_REQUIRE_SERVING=1 but transformers[serving] is not installed")
        pytest.skip("transformers[serving] is not installed (pip install -e '.[serving]')")


def _answers_one(folder: Path) -> Path:
    """A tiny llama that answers "1" (then stops) whatever it is asked, saved to ``folder``."""
    from w2s.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama-1x32", device="cpu", seed=0)
    one = tok.encode("1", add_special_tokens=False)
    assert len(one) == 1
    one, eos = one[0], tok.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        h = emb.shape[1]
        e0, e1 = torch.zeros(h), torch.zeros(h)
        e0[0], e1[1] = 1.0, 1.0
        emb.copy_(e0.expand_as(emb))
        emb[one] = e1
        model.lm_head.weight.zero_()
        model.lm_head.weight[one] = 50 * e0
        model.lm_head.weight[eos] = 50 * e1
    model.config.tie_word_embeddings = False
    # room for AlpacaEval's ~1,300-token judge prompt (rotary positions: nothing to learn)
    model.config.max_position_embeddings = tok.model_max_length = 4096
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``transformers serve`` on 127.0.0.1 with the tiny model preloaded: (url, model name)."""
    _require_serving()
    if not SERVE.exists():
        pytest.skip(f"no transformers CLI next to {sys.executable}")
    folder = _answers_one(tmp_path_factory.mktemp("served") / "answers-one")
    port = free_port()
    log = open(folder.parent / "serve.log", "w")  # noqa: SIM115 (closed below)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(SERVE), "serve", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("transformers serve did not start:\n"
                        + (folder.parent / "serve.log").read_text()[-3000:])
        time.sleep(0.5)
    yield f"{url}/v1", str(folder), proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _pairs(tmp_path) -> tuple[Path, Path]:
    prompts = ["Name a colour.", "Say hello.", "Count to three."]
    cand = [{"id": str(i), "prompt": p, "response": f"candidate answer {i}"}
            for i, p in enumerate(prompts)]
    base = [{"id": str(i), "prompt": p, "response": f"baseline {i}"} for i, p in enumerate(prompts)]
    for name, rows in (("cand", cand), ("base", base)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "cand.jsonl", tmp_path / "base.jsonl"


def test_api_judge_on_a_real_server_rules_position_bias_out(served, tmp_path, capsys):
    url, model, _ = served
    cand, base = _pairs(tmp_path)
    cache = tmp_path / "judgments"
    args = ["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
            "--judge", f"api:{url}#{model}", "--judge-cache", str(cache)]
    code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = read_jsonl(tmp_path / "run" / "judgments.jsonl")
    # the served model names the first position in both orders: every pair is a tie
    assert [(r["verdict_candidate_first"], r["verdict_baseline_first"]) for r in rows] == \
        [(1, 1)] * 3
    assert m["win_rate"] == 50.0 and m["ties"] == 3 and m["order_disagreements"] == 3
    assert m.get("unparsed", 0) == 0 and m.get("cached", 0) == 0
    # a rerun asks the server nothing: every judgment comes from the cache
    code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "again")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["cached"] == 6 and again["win_rate"] == 50.0


def test_api_search_base_on_a_real_server_that_ignores_n(served, tmp_path, capsys):
    """The tiny search recipe with its base behind ``transformers serve``, as a new user would
    run it: the server answers one completion per request whatever n asks, so the rest are
    asked one by one, and the run says how many requests that took."""
    url, model, _ = served
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "search" / "tiny.yaml"
    run_dir = tmp_path / "search"
    code, _, err = run_cli(["search", "--recipe", str(recipe), "--base", f"api:{url}#{model}",
                            "--n-prompts", "2", "--max-new-tokens", "6", "--decoder",
                            "cbs,sample", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["base"]["kind"] == "api" and m["base"]["model"] == model
    assert m["base"]["fallback_requests"] > 0
    assert m["base"]["requests"] > m["base"]["fallback_requests"]
    assert len(read_jsonl(run_dir / "generations-cbs.jsonl")) == 2


def test_alpacaevals_annotator_needs_a_server_that_returns_logprobs(served, tmp_path, capsys):
    """transformers serve ignores logprobs: AlpacaEval's annotator says so in one line."""
    url, model, _ = served
    rows = [{"instruction": f"Say {w}.", "output": w, "generator": g}
            for g in ("ref", "me") for w in ("yes", "no")]
    for name, part in (("ref", rows[:2]), ("cand", rows[2:])):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    (tmp_path / "df_gamed.csv").write_text(  # the columns AlpacaEval's file has
        "index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline,model\n"
        "0,0.4,0.5,0.1,False,g\n1,0.6,-0.5,-0.1,False,g\n")
    code, _, err = run_cli(["eval", "alpacaeval", "--candidate", str(tmp_path / "cand.json"),
                            "--baseline", str(tmp_path / "ref.json"), "--judge",
                            f"api:{url}#{model}", "--annotator", "alpacaeval", "--no-cache",
                            "--alpacaeval-data", str(tmp_path), "--run-dir",
                            str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "without logprobs" in err and not (tmp_path / "run").exists()


def test_an_unknown_model_is_refused_in_one_line(served, tmp_path, capsys):
    url, _, _ = served
    cand, base = _pairs(tmp_path)
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
                            "--judge", f"api:{url}#no-such-model", "--no-cache",
                            "--max-retries", "0", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "api judge" in err and not (tmp_path / "run").exists()


def test_a_server_that_goes_away_stops_the_run_in_one_line(served, tmp_path, capsys):
    """Last in this module: it stops the shared server."""
    url, model, proc = served
    proc.terminate()
    proc.wait(timeout=20)
    cand, base = _pairs(tmp_path)
    code, _, err = run_cli(["eval", "winrate", "--candidate", str(cand), "--baseline", str(base),
                            "--judge", f"api:{url}#{model}", "--no-cache", "--max-retries", "1",
                            "--timeout", "2", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot be reached" in err and "2 attempts" in err
    assert not (tmp_path / "run").exists()
