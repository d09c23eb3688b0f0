"""``w2s search``: the KV cache reordered by index and rewound (checked against recomputing from
scratch), incremental guide scores (against from-scratch scores), scoring across tokenizers,
best-of-N = CBS(1, N, inf) and sampling = CBS(1, 1, inf) = HF ``generate`` under one seed,
finished beams kept once, a base model behind an OpenAI-compatible completions server started
here on 127.0.0.1, the CLI end to end, recipes, and bad input."""

from __future__ import annotations

import json
import random
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from helpers import LocalServer, free_port, read_jsonl, run_cli

from w2s.cli import alias_main
from w2s.config import build_config
from w2s.errors import W2SError
from w2s.methods.search.base import ApiBase, HFBase
from w2s.methods.search.cache import CachedLM, reorder_cache
from w2s.methods.search.config import SearchConfig, parse_chunk
from w2s.methods.search.decoders import best_of_n, cbs, plain_sample
from w2s.methods.search.guide import Guide, score_texts
from w2s.methods.search.text import encode_prompt, encode_response
from w2s.models import load_causal_lm
from w2s.models.generate import SamplingConfig, generate
from w2s.models.tiny import build_tiny

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "search"
PROMPTS = ["The hotel was", "I tried the camera last week.", "So, the story of the book"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, seed: int = 0):
    model, tok = load_causal_lm(f"tiny:{name}", device="cpu", seed=seed)
    return model, tok


def with_eos_bias(model, bias: float):
    """The same model with a bias on its output head that makes the EOS token ``bias`` logits
    more likely (a real forward pass, just a model that likes to stop)."""
    head = model.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
        new.bias[model.config.eos_token_id] = bias
    model.lm_head = new
    return model


def bpe_tokenizer():
    """A byte-level BPE tokenizer with merges learnt on toy reviews: another vocabulary than the
    tiny models' one-byte-per-token tokenizer ("great" is one token here, five there)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from w2s.data.synthetic import toy_sentiment_rows

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([r["text"] for r in toy_sentiment_rows(300, 0)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def bpe_model(tok, seed: int):
    """A random 1-layer llama over ``tok``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def scratch_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


# --------------------------------------------------------------------------------------------
# the KV cache


@pytest.mark.parametrize("arch", ["llama-2x32", "gpt2-2x32", "qwen2-2x32"])
def test_reordered_and_rewound_cache_equals_recomputing(arch):
    model = build_tiny(arch, seed=0)
    lm = CachedLM(model, pad_id=256)
    lm.start([[10, 11, 12, 13, 14], [20, 21], [30, 31, 32]])
    lm.push(0, [15, 16])
    lm.push(1, [22])
    lm.feed(leave_last=True)
    lm.select([2, 0, 0, 1])               # drop nothing, copy row 0, move row 2 first
    lm.push(0, [33, 34])
    lm.push(1, [17])
    lm.push(2, [40, 41, 42])
    lm.push(3, [23, 24])
    logits, fed = lm.feed(leave_last=True)
    assert fed == [2, 1, 3, 2]
    assert lm.tokens[1][:7] == lm.tokens[2][:7] == [10, 11, 12, 13, 14, 15, 16]
    for r, tokens in enumerate(lm.tokens):  # logits[r, j] predicts the token after the j-th read
        ref = scratch_logits(model, tokens)
        start = len(tokens) - 1 - fed[r]
        torch.testing.assert_close(logits[r, :fed[r]], ref[start:len(tokens) - 1],
                                   atol=2e-5, rtol=1e-4)
    # take back the last 2 tokens of row 2 and write others: as if they had never been read
    lm.rewind(2, 2)
    lm.push(2, [50, 51])
    lm.push(0, [35])
    logits, fed = lm.feed(leave_last=True)
    assert lm.tokens[2] == [10, 11, 12, 13, 14, 15, 16, 40, 50, 51] and fed[2] == 2
    for r in (0, 2):
        ref = scratch_logits(model, lm.tokens[r])
        n = len(lm.tokens[r])
        torch.testing.assert_close(logits[r, :fed[r]], ref[n - 1 - fed[r]:n - 1],
                                   atol=2e-5, rtol=1e-4)
    # the holes left by padding and rewinding are masked out, not read
    assert lm.mask.shape[1] > max(len(t) for t in lm.tokens)
    assert lm.mask.sum(1).tolist() == [len(t) - 1 for t in lm.tokens]


def test_reorder_cache_on_a_legacy_tuple_cache():
    keys = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).view(3, 2, 4, 5)
    cache = ((keys, keys + 1), (keys + 2, keys + 3))
    out = reorder_cache(cache, torch.tensor([2, 2, 0]))
    assert torch.equal(out[1][0][0], keys[2] + 2) and torch.equal(out[1][0][1], keys[2] + 2)
    assert torch.equal(out[0][1][2], keys[0] + 1) and out[0][0].shape == (3, 2, 4, 5)


# --------------------------------------------------------------------------------------------
# the guide


@pytest.mark.parametrize("chat", [True, False])
def test_incremental_guide_score_equals_from_scratch(chat):
    tuned, tok = tiny("llama-1x32", seed=1)
    untuned, _ = tiny("llama-1x32", seed=2)
    guide = Guide(tuned, untuned, tok, chat=chat)
    guide.start(PROMPTS[:2], rows=[0, 0, 1])
    guide.update([" gr", " ba", "."], [False, False, False])
    guide.select([0, 1, 1, 2])
    read = guide.lms["tuned"].tokens_read
    guide.update([" great", " bad f", " bad.", ". Yes"], [False, False, True, False])
    # only what the chunk added was read (+ the EOS of the finished one), no prefix again
    assert guide.lms["tuned"].tokens_read - read == len("eat" "d f" "d." " Yes") + 1
    guide.select([0, 1, 3])
    texts = [" great fun!", " bad film", ". Yes, nice."]
    scores = guide.update(texts, [True, False, True])
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    ref = score_texts(tuned, untuned, tok, prompts, texts, [True, False, True], chat=chat)
    for key in ("score", "tuned", "untuned"):
        assert scores[key] == pytest.approx(ref[key], abs=2e-4)
    assert min(abs(s) for s in ref["score"]) > 1e-3       # two different guides: V is not 0


def test_the_base_reads_its_template_and_the_guides_the_raw_prompt():
    """The authors' IMDB base reads 'Here is a movie review from imdb: <prompt>' while the
    guides score the continuation of the raw prompt."""
    base_model, base_tok = tiny("llama-1x32", seed=0)
    template = "Here is a movie review from imdb: {prompt}"
    base = HFBase(base_model, base_tok, chat=False, template=template)
    base.start(PROMPTS[:2], [0, 1])
    for row, prompt in enumerate(PROMPTS[:2]):
        read = base.lm.tokens[row]
        assert read == encode_prompt(base_tok, template.replace("{prompt}", prompt), False)
        assert read != encode_prompt(base_tok, prompt, False)
    plain = HFBase(base_model, base_tok, chat=False)
    plain.start(PROMPTS[:1], [0])
    assert plain.lm.tokens[0] == encode_prompt(base_tok, PROMPTS[0], False)


def test_scoring_across_tokenizers_round_trips_the_text():
    base_model, base_tok = tiny("llama-1x32", seed=0)          # one byte per token
    gtok = bpe_tokenizer()                                      # merges: words are tokens
    tuned, untuned = bpe_model(gtok, 1), bpe_model(gtok, 2)
    assert len(gtok) != len(base_tok)
    guide = Guide(tuned, untuned, gtok, chat=True)
    base = HFBase(base_model, base_tok, chat=True)
    results, _ = cbs(base, guide, PROMPTS[:2], w=2, k=2, l=3, max_new_tokens=18,
                     sampling=SamplingConfig(temperature=1.0, top_k=0, top_p=1.0), generator=torch.Generator().manual_seed(0))
    # chunks of 3 bytes cut words (and UTF-8 characters) in two: the guide took tokens back
    assert guide.retokenized > 0
    texts = [r["response"] for r in results]
    ref = score_texts(tuned, untuned, gtok, PROMPTS[:2], texts, [r["finished"] for r in results],
                      chat=True)
    assert [r["score"] for r in results] == pytest.approx(ref["score"], abs=2e-4)
    # the guide read the base model's TEXT: its own tokens decode back to exactly that text
    text = "The hotel was wonderful. The staff felt great."
    p_ids = encode_prompt(gtok, PROMPTS[0], True)
    ids = encode_response(gtok, PROMPTS[0], p_ids, text, True, finished=True)
    assert gtok.decode(ids[:-1]) == text and ids[-1] == gtok.eos_token_id
    assert len(ids) < len(base_tok(text).input_ids)             # really another tokenization


# --------------------------------------------------------------------------------------------
# the decoders


def test_best_of_n_equals_cbs_1_n_inf():
    base_model, tok = tiny("llama-1x32", seed=0)
    tuned, _ = tiny("llama-1x32", seed=1)
    untuned, _ = tiny("llama-1x32", seed=2)
    base, guide = HFBase(base_model, tok, chat=False), Guide(tuned, untuned, tok, chat=False)
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    searched, strace = cbs(base, guide, PROMPTS, w=1, k=5, l=None, max_new_tokens=12,
                           sampling=sampling, generator=torch.Generator().manual_seed(7))
    best, btrace = best_of_n(base, guide, PROMPTS, n=5, max_new_tokens=12, sampling=sampling,
                             generator=torch.Generator().manual_seed(7))
    assert [r["response"] for r in searched] == [r["response"] for r in best]
    assert [r["score"] for r in searched] == pytest.approx([r["score"] for r in best], abs=2e-4)
    for res, rounds in zip(best, btrace, strict=True):  # it is the best of five distinct texts
        (cands,) = rounds
        assert len({c["chunk"] for c in cands}) == 5
        assert res["score"] == max(c["score"] for c in cands)
    assert [len(t) for t in strace] == [1, 1, 1]          # L = inf: one chunk


def test_eos_at_cut_scores_a_cut_candidate_as_ended():
    """The authors append EOS to a candidate cut at max_new_tokens before scoring it: with
    eos_at_cut, CBS's and best-of-N's scores of cut candidates are the from-scratch scores of
    the text + EOS; without it, of the text alone."""
    base_model, tok = tiny("llama-1x32", seed=0)
    tuned, _ = tiny("llama-1x32", seed=1)
    untuned, _ = tiny("llama-1x32", seed=2)
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    scores = {}
    for cut in (False, True):
        for name in ("cbs", "bon"):
            base, guide = HFBase(base_model, tok, chat=False), Guide(tuned, untuned, tok,
                                                                     chat=False)
            kw = dict(max_new_tokens=6, sampling=sampling, eos_at_cut=cut,
                      generator=torch.Generator().manual_seed(3))
            out = (cbs(base, guide, PROMPTS, w=2, k=2, l=3, **kw) if name == "cbs"
                   else best_of_n(base, guide, PROMPTS, n=4, **kw))[0]
            cut_rows = [(p, r) for p, r in zip(PROMPTS, out, strict=True) if not r["finished"]]
            assert cut_rows  # 6 tokens: the tiny models do not stop that soon
            ref = score_texts(tuned, untuned, tok, [p for p, _ in cut_rows],
                              [r["response"] for _, r in cut_rows], [cut] * len(cut_rows),
                              chat=False)
            assert [r["score"] for _, r in cut_rows] == pytest.approx(ref["score"], abs=2e-4)
            scores[name, cut] = [r["score"] for _, r in cut_rows]
    assert scores["bon", True] != pytest.approx(scores["bon", False], abs=1e-3)


def test_sampling_equals_cbs_1_1_inf_and_hf_generate():
    base_model, tok = tiny("llama-1x32", seed=0)
    tuned, _ = tiny("llama-1x32", seed=1)
    guide = Guide(tuned, tiny("llama-1x32", seed=2)[0], tok, chat=False)
    base = HFBase(base_model, tok, chat=False)
    prompts = ["abcdefgh", "ijklmnop", "qrstuvwx"]    # one length: generate keeps their order
    for t, top_k, top_p in [(1.0, 0, 1.0), (0.7, 20, 0.9)]:
        sampling = SamplingConfig(temperature=t, top_k=top_k, top_p=top_p)
        plain, _ = plain_sample(base, prompts, max_new_tokens=16, sampling=sampling,
                                generator=torch.Generator().manual_seed(3))
        searched, _ = cbs(base, guide, prompts, w=1, k=1, l=None, max_new_tokens=16,
                          sampling=sampling, generator=torch.Generator().manual_seed(3))
        hf = generate(base_model, tok, prompts, SamplingConfig(
            max_new_tokens=16, temperature=t, top_k=top_k, top_p=top_p, seed=3), chat=False)
        assert [r["response"] for r in plain] == [r["response"] for r in searched] == hf


def test_finished_beams_are_kept_once():
    base_model = with_eos_bias(tiny("llama-1x32", seed=0)[0], 1.5)   # stops ~2% of steps
    tuned = with_eos_bias(tiny("llama-1x32", seed=1)[0], 3.0)        # ... and V likes stopping
    untuned, tok = tiny("llama-1x32", seed=2)
    base, guide = HFBase(base_model, tok, chat=False), Guide(tuned, untuned, tok, chat=False)
    w, k = 3, 3
    results, traces = cbs(base, guide, PROMPTS, w=w, k=k, l=3, max_new_tokens=30,
                          sampling=SamplingConfig(temperature=1.0, top_k=0, top_p=1.0),
                          generator=torch.Generator().manual_seed(0))
    kept_while_searching = 0
    for res, rounds in zip(results, traces, strict=True):
        ids = [c["beam"] for cands in rounds for c in cands]
        assert len(ids) == len(set(ids))                  # every candidate scored once
        for before, after in zip(rounds, rounds[1:], strict=False):
            alive = [c for c in before if c["selected"] and not c["finished"]]
            finished = [c for c in before if c["selected"] and c["finished"]]
            assert len(after) == k * len(alive)           # finished beams spawn nothing
            assert {c["parent"] for c in after} == {c["beam"] for c in alive}
            kept_while_searching += len(finished)
        # the answer is the best candidate that finished or reached max_new_tokens
        done = [c for cands in rounds for c in cands if c["finished"] or c["tokens"] == 30]
        assert res["score"] == pytest.approx(max(c["score"] for c in done))
        assert res["score_trace"][-1] == res["score"]
    assert kept_while_searching > 0                       # the case under test happened


# --------------------------------------------------------------------------------------------
# a base model behind an OpenAI-compatible completions server


WORDS = ["good ", "bad ", "fine ", "nice ", "meh ", "ok "]


class FakeCompletionsServer(LocalServer):
    """``POST /v1/completions`` on 127.0.0.1: every choice writes ``max_tokens`` characters (a
    character is a token here) drawn from WORDS, seeded by the request's seed and the choice
    index; one choice in six stops early (finish_reason "stop"). Records every request."""

    def __init__(self, ignores_n: bool = False):
        self.requests: list[dict] = []
        self.ignores_n = ignores_n  # like transformers serve: one completion, whatever n says
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send({"data": [{"id": "served-base"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(payload)
                choices, used = [], 0
                for i in range(1 if server.ignores_n else payload["n"]):
                    rng = random.Random(f"{payload['seed']}-{i}")
                    text = "".join(rng.choice(WORDS) for _ in range(20))[:payload["max_tokens"]]
                    reason = "length"
                    if rng.random() < 1 / 6:
                        text, reason = text[:rng.randrange(len(text))], "stop"
                    used += len(text)
                    choices.append({"index": i, "text": text, "finish_reason": reason})
                self._send({"choices": choices, "usage": {"completion_tokens": used}})

        self.serve(Handler)


@pytest.fixture
def completions_server():
    server = FakeCompletionsServer()
    yield server
    server.close()


def test_api_base_is_searched_chunk_by_chunk(completions_server):
    tuned, tok = tiny("llama-1x32", seed=1)
    guide = Guide(tuned, tiny("llama-1x32", seed=2)[0], tok, chat=False)
    base = ApiBase(f"api:{completions_server.url}")
    assert base.check() == "served-base"                  # the model the server lists
    w, k, chunk, max_new = 2, 2, 5, 20
    results, traces = cbs(base, guide, PROMPTS[:2], w=w, k=k, l=chunk, max_new_tokens=max_new,
                          sampling=SamplingConfig(temperature=0.7, top_k=0, top_p=1.0),
                          generator=torch.Generator().manual_seed(0))
    reqs = completions_server.requests
    assert all(r["max_tokens"] == chunk and r["model"] == "served-base" for r in reqs)
    assert all(r["temperature"] == 0.7 and r["top_p"] == 1.0 and "top_k" not in r for r in reqs)
    # the first chunk: one request per prompt for all W*K candidates
    assert [(r["prompt"], r["n"]) for r in reqs[:2]] == [(p, w * k) for p in PROMPTS[:2]]
    # every later request continues a selected, unfinished beam: prompt + its text so far
    n_candidates = sum(len(cands) for rounds in traces for cands in rounds)
    assert sum(r["n"] for r in reqs) == n_candidates
    for p, (prompt, rounds) in enumerate(zip(PROMPTS[:2], traces, strict=True)):
        text = {}
        for cands in rounds:
            for c in cands:
                text[c["beam"]] = text.get(c["parent"], "") + c["chunk"]
        continued = {prompt + text[c["beam"]] for cands in rounds[:-1] for c in cands
                     if c["selected"] and not c["finished"]}
        asked = {r["prompt"] for r in reqs[2:] if r["prompt"].startswith(prompt)}
        assert asked == continued
        assert results[p]["response"] == text[results[p]["beam"]]
    ref = score_texts(guide.lms["tuned"].model, guide.lms["untuned"].model, tok, PROMPTS[:2],
                      [r["response"] for r in results], [r["finished"] for r in results],
                      chat=False)
    assert [r["score"] for r in results] == pytest.approx(ref["score"], abs=2e-4)
    # plain sampling: one request per prompt, the whole response at once
    completions_server.requests.clear()
    plain, _ = plain_sample(base, PROMPTS[:2], max_new_tokens=max_new,
                            sampling=SamplingConfig(temperature=0.7, top_k=0, top_p=1.0),
                            generator=torch.Generator().manual_seed(0))
    assert [(r["prompt"], r["n"], r["max_tokens"]) for r in completions_server.requests] == [
        (p, 1, max_new) for p in PROMPTS[:2]]


# --------------------------------------------------------------------------------------------
# the CLI


GUIDES = ["--tuned", "tiny:llama-1x32+toy-sentiment@20+toy-sentiment=1@10",
          "--untuned", "tiny:llama-1x32+toy-sentiment@20"]
SMALL = ["--recipe", str(RECIPES / "tiny.yaml"), "--base", "tiny:llama-1x32+toy-sentiment@20",
         *GUIDES, "--n-prompts", "4", "--max-new-tokens", "12", "--w", "2", "--k", "2",
         "--l", "4", "--bon-n", "none", "--prompt-batch", "3"]


def test_cli_end_to_end_on_the_tiny_recipe(tmp_path, capsys):
    from w2s.evaluation.judges.rewards import vader_reward
    from w2s.evaluation.winrate import win_rate

    run_dir = tmp_path / "run"
    code, out, err = run_cli(["search", *SMALL, "--decoder", "cbs,bon,eft", "--run-dir",
                              str(run_dir)], capsys)
    assert code == 0, err
    assert "win rate vs sample" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["method"] == "search" and m["status"] == "ok" and m["headline_decoder"] == "cbs"
    assert set(m["decoders"]) == {"sample", "cbs", "bon", "eft"}
    for key in ("win_rate", "win_rate_se", "gold_reward_mean", "baseline_reward_mean",
                "guide_score_mean", "judge", "sampling"):
        assert key in m
    assert m["sampling"]["top_k"] == 0 and m["sampling"]["max_new_tokens"] == 12
    for name, figures in m["decoders"].items():
        rows = read_jsonl(run_dir / f"generations-{name}.jsonl")
        assert len(rows) == 4
        # gold reward: the judge's score of each answer, and its mean
        assert [r["gold_reward"] for r in rows] == [vader_reward(r["prompt"], r["response"])
                                                    for r in rows]
        assert figures["gold_reward_mean"] == pytest.approx(
            sum(r["gold_reward"] for r in rows) / 4)
        c = figures["compute"]
        assert c["base_tokens"] > 0 and c["wall_s"] > 0
        if name != "sample":
            judged = read_jsonl(run_dir / f"judgments-{name}.jsonl")
            assert figures["win_rate_vs_sample"] == pytest.approx(
                win_rate([j["preference"] for j in judged])[0])
    cbs_rows = read_jsonl(run_dir / "generations-cbs.jsonl")
    assert all(len(r["score_trace"]) >= 1 and r["score_trace"][-1] == r["guide_score"]
               for r in cbs_rows)
    assert m["decoders"]["cbs"]["compute"]["rows_per_prompt"] == 4
    assert m["decoders"]["bon"]["settings"] == {"n": 4}      # none = W*K
    assert m["decoders"]["cbs"]["compute"]["guide_tokens_scored"] > 0
    assert m["decoders"]["sample"]["compute"]["guide_tokens_scored"] == 0
    assert m["win_rate"] == m["decoders"]["cbs"]["win_rate_vs_sample"]
    traces = read_jsonl(run_dir / "traces-cbs.jsonl")
    assert len(traces) == 4 and len(traces[0]["rounds"]) >= 2
    # the saved config is a recipe that rebuilds the same config
    saved = build_config(SearchConfig, run_dir / "config.yaml")
    assert saved.w == 2 and saved.decoder == ["cbs", "bon", "eft"] and saved.chat is False


def test_a_server_that_ignores_n_is_asked_again_one_completion_at_a_time(tmp_path, capsys):
    """Many servers return one completion whatever n asks: the rest come from one request each,
    with distinct seeds, and the run records how many extra requests it took."""
    server = FakeCompletionsServer(ignores_n=True)
    try:
        base = ApiBase(f"api:{server.url}#served-base", workers=3)
        sampling = SamplingConfig(temperature=0.7, top_k=0, top_p=1.0)
        out, tokens = base.complete("The hotel was", 8, 4, sampling, seed=11)
        assert len(out) == 4 and len({text for text, _ in out}) == 4  # four distinct draws
        assert [r["n"] for r in server.requests] == [4, 1, 1, 1]
        assert len({r["seed"] for r in server.requests}) == 4
        assert base.fallback_requests == 3
        assert tokens == sum(len(text) for text, _ in out)  # the fake's tokens are characters
        run_dir = tmp_path / "run"
        code, _, err = run_cli(["w2s-search", "--base", f"api:{server.url}#served-base",
                                *GUIDES, "--task", "toy-prompts", "--n-prompts", "2",
                                "--no-chat", "--max-new-tokens", "10", "--w", "2", "--k", "2",
                                "--l", "5", "--decoder", "cbs", "--run-dir", str(run_dir)],
                               capsys)
        assert code == 0, err
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["base"]["fallback_requests"] > 0
        assert m["base"]["requests"] >= m["base"]["fallback_requests"]
    finally:
        server.close()


def test_cli_with_an_api_base(completions_server, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["w2s-search", "--base", f"api:{completions_server.url}#served-base",
                            *GUIDES, "--task", "toy-prompts", "--n-prompts", "3", "--no-chat",
                            "--max-new-tokens", "10", "--w", "2", "--k", "2", "--l", "5",
                            "--decoder", "cbs,bon", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["base"] == {"kind": "api", "url": completions_server.url + "/completions",
                         "model": "served-base",  # requests: the completions and the model listing
                         "requests": len(completions_server.requests) + 1,
                         "fallback_requests": 0}
    assert m["decoders"]["cbs"]["compute"]["base_tokens"] > 0
    assert len(read_jsonl(run_dir / "generations-cbs.jsonl")) == 3


def saved_bpe_model(folder: Path) -> str:
    tok = bpe_tokenizer()
    bpe_model(tok, 0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    other = saved_bpe_model(tmp_path / "bpe-guide")
    capsys.readouterr()                                   # (save_pretrained's progress bar)
    one_row = tmp_path / "one.jsonl"
    one_row.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    unreachable = f"api:http://127.0.0.1:{free_port()}/v1#m"
    cases = [
        (["--w", "0"], "W >= 1"),
        (["--k", "0"], "K >= 1"),
        (["--l", "0"], "L (--l) must be a positive integer or inf"),
        (["--l", "five"], "L (--l) must be a positive integer or inf"),
        (["--tuned", other], "different tokenizers"),
        (["--task", f"local:{one_row}"], "gives no prompts"),
        (["--base", unreachable, "--decoder", "cbs,bon"], "cannot be reached"),
        (["--base", unreachable, "--decoder", "eft"], "an api: base gives none"),
        (["--base", other, "--decoder", "cbs,eft"], "needs one vocabulary"),
        (["--tuned", ""], "give the tuned guide"),
        (["--decoder", "beam"], "must be one of"),
        (["--base-prompt", "Review: "], "has no {prompt}"),
    ]
    for extra, message in cases:
        run_dir = tmp_path / "run"
        code, _, err = run_cli(["search", *SMALL, *extra, "--run-dir", str(run_dir)], capsys)
        assert code == 2, (extra, err)
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert "Traceback" not in err and not run_dir.exists(), extra
    script = lambda argv: alias_main(argv, alias="w2s-search")  # noqa: E731  (the console script)
    code, _, err = run_cli(["--w", "-1", *GUIDES], capsys, entry=script)
    assert code == 2 and "W >= 1" in err


def test_parse_chunk_and_the_recipes():
    assert parse_chunk("5") == 5 and parse_chunk(30) == 30 and parse_chunk("inf") is None
    for bad in ("0", "-2", "2.5", "x"):
        with pytest.raises(Exception, match="positive integer or inf"):
            parse_chunk(bad)
    for name in ("tiny.yaml", "imdb-gpt2.yaml", "alpacaeval-llama3.yaml"):
        cfg = build_config(SearchConfig, RECIPES / name)   # every key is a real option
        assert cfg.untuned and cfg.judge
        assert cfg.tuned or name == "imdb-gpt2.yaml"  # no DPO'd gpt2 is published: --tuned
    imdb = build_config(SearchConfig, RECIPES / "imdb-gpt2.yaml")
    assert (imdb.w, imdb.k, parse_chunk(imdb.l), imdb.bon_n) == (4, 4, 5, 16)
    assert (imdb.temperature, imdb.top_p, imdb.max_new_tokens, imdb.n_prompts) == (
        0.7, 1.0, 50, 200)
    alpaca = build_config(SearchConfig, RECIPES / "alpacaeval-llama3.yaml")
    assert (alpaca.w, alpaca.k, parse_chunk(alpaca.l), alpaca.max_new_tokens) == (2, 2, 30, 2048)


def test_a_judge_that_fails_after_decoding_keeps_the_answers(tmp_path, capsys):
    """Decoding is the expensive part: a judge that fails at the end (an API judge whose server
    went away) stops the run in one line but leaves the decoded answers, without metrics."""
    from w2s.evaluation import register_reward
    from w2s.evaluation.judges.rewards import REWARDS

    @register_reward("test-judge-down")
    def judge_down(prompt, response):
        raise W2SError("judge server went away")

    try:
        run_dir = tmp_path / "run"
        code, _, err = run_cli(["search", *SMALL, "--decoder", "cbs", "--judge",
                                "reward:test-judge-down", "--run-dir", str(run_dir)], capsys)
    finally:
        del REWARDS["test-judge-down"]
    assert code == 2 and "judge server went away" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "metrics.json").exists()
    for name in ("sample", "cbs"):
        assert len(read_jsonl(run_dir / f"generations-{name}.jsonl")) == 4


def test_eft_counts_each_calls_guide_tokens_once():
    """EFT's guides score every sampled token: over several calls (prompt batches sharing one
    Compute) the guide count is exactly twice the base count, not a running sum of sums."""
    from w2s.methods.search.decoders import Compute, eft

    base_model, tok = tiny("llama-1x32", seed=0)
    guide = Guide(tiny("llama-1x32", seed=1)[0], tiny("llama-1x32", seed=2)[0], tok, chat=False)
    compute = Compute()
    for batch in (PROMPTS[:2], PROMPTS[2:]):
        eft(base_model, tok, guide, batch, beta=1.0, max_new_tokens=6,
            sampling=SamplingConfig(temperature=1.0, top_k=0, top_p=1.0), generator=torch.Generator().manual_seed(0),
            chat=False, compute=compute)
    assert compute.base_tokens > 6
    assert compute.guide_tokens_scored == 2 * compute.base_tokens


def test_shards_split_the_prompts_without_overlap():
    """--shard I/N: the N shards of one prompt sample are disjoint and together the whole."""
    from w2s.methods.search.config import parse_shard
    from w2s.methods.search.experiment import load_prompts

    cfg = build_config(SearchConfig, RECIPES / "tiny.yaml", {"n_prompts": "10"})
    whole, _, _ = load_prompts(cfg)
    shards = [load_prompts(build_config(SearchConfig, RECIPES / "tiny.yaml",
                                        {"n_prompts": "10", "shard": f"{i}/3"}))
              for i in range(3)]
    ids = [[r["id"] for r in rows] for rows, _, _ in shards]
    assert sorted(sum(ids, [])) == sorted(r["id"] for r in whole)
    assert len({i for part in ids for i in part}) == len(whole)
    assert len({fp for _, fp, _ in shards}) == 3       # each shard is its own data identity
    assert parse_shard("7/8") == (7, 8)
    for bad in ("8/8", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(W2SError, match="--shard takes I/N"):
            parse_shard(bad)
