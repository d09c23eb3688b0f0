"""Shared batched generation: left padding, order, seeds, explicit sampling, backends."""

import warnings

import pytest

from w2s.errors import W2SError
from w2s.models import load_causal_lm
from w2s.models.generate import SamplingConfig, generate, pick_backend, sampling_record


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny:llama-2x64", device="cpu")


PROMPTS = ["hi", "a much longer prompt than the first one", "mid length one", "x"]


def test_greedy_is_the_same_alone_and_in_a_padded_batch(tiny):
    model, tok = tiny
    greedy = SamplingConfig(max_new_tokens=6, temperature=0, batch_size=4)
    batched = generate(model, tok, PROMPTS, greedy, chat=False)
    alone = [generate(model, tok, [p], greedy, chat=False)[0] for p in PROMPTS]
    assert batched == alone            # left padding and position ids do not change the text
    assert len(batched) == len(PROMPTS)


def test_seeded_sampling_is_reproducible(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=1)
    a = generate(model, tok, PROMPTS, cfg, chat=False)
    b = generate(model, tok, PROMPTS, cfg, chat=False)
    c = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=8, seed=2), chat=False)
    assert a == b and a != c


def test_sampling_never_inherits_generation_config(tiny):
    model, tok = tiny
    old = model.generation_config.top_k
    model.generation_config.top_k = 1   # would make every sample the greedy one
    try:
        outs = generate(model, tok, ["same prompt"] * 6,
                        SamplingConfig(max_new_tokens=8, temperature=1.0), chat=False)
    finally:
        model.generation_config.top_k = old
    assert len(set(outs)) > 1


def test_chat_template_is_applied(tiny):
    model, tok = tiny
    assert tok.chat_template
    plain, _ = _generate_inputs(model, tok, ["hello"], chat=False)
    chat, _ = _generate_inputs(model, tok, ["hello"], chat=True)
    assert plain == tok("hello").input_ids
    assert chat == tok("<|user|>hello</s><|assistant|>").input_ids  # the tiny template


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1),
                                 dict(top_p=0.0), dict(top_k=-2), dict(batch_size=0)])
def test_bad_sampling_config(tiny, bad):
    model, tok = tiny
    with pytest.raises(W2SError):
        generate(model, tok, ["hi"], SamplingConfig(**bad))


def test_backends(tiny):
    model, tok = tiny
    with pytest.raises(W2SError, match="did you mean 'vllm'"):
        pick_backend("vlm")
    with pytest.raises(W2SError, match="no prompts"):
        generate(model, tok, [], SamplingConfig())
    with warnings.catch_warnings(record=True) as caught:  # no vllm / no GPU here
        warnings.simplefilter("always")
        assert pick_backend("vllm") == "hf"
    assert any("hf backend instead" in str(w.message) for w in caught)
    with pytest.raises(W2SError, match="cannot run"):
        pick_backend("vllm", fallback=False)
    assert sampling_record(SamplingConfig(top_p=0.9), "hf")["top_p"] == 0.9


def _bos_tokenizer():
    """The tiny tokenizer made to add a BOS to plain text, like Llama, Mistral and Gemma
    tokenizers (which also have chat templates)."""
    from tokenizers.processors import TemplateProcessing

    from w2s.models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("hi").input_ids[0] == tok.bos_token_id and tok.chat_template
    return tok


def _generate_inputs(model, tok, prompts, chat):
    """The input_ids (without padding) and the kwargs ``generate`` gives ``model.generate``."""
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    model.generate = spy
    try:
        generate(model, tok, prompts, SamplingConfig(max_new_tokens=2, temperature=0), chat=chat)
    finally:
        del model.generate
    ids = seen["input_ids"][seen["attention_mask"].bool()].tolist()
    return ids, seen


def test_plain_prompts_keep_the_tokenizers_special_tokens(tiny):
    """chat=False on a tokenizer that has a chat template: the prompt is plain text and must be
    encoded as plain text is everywhere else (w2s.train.preference.encode), BOS included."""
    model, _ = tiny
    tok = _bos_tokenizer()
    ids, _ = _generate_inputs(model, tok, ["hello"], chat=False)
    assert ids == tok("hello").input_ids
    ids, _ = _generate_inputs(model, tok, ["hello"], chat=True)  # the template writes its own
    assert ids == tok(tok.apply_chat_template([{"role": "user", "content": "hello"}],
                                              tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False).input_ids


def test_generation_stops_at_every_end_token_of_the_model(tiny):
    """Instruct models end a turn with a token their generation_config lists beside the
    tokenizer's EOS (Gemma-3: <end_of_turn>, Llama-3: <|eot_id|>): generation stops at all."""
    model, tok = tiny
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, 260]
    try:
        _, kwargs = _generate_inputs(model, tok, ["hello"], chat=False)
    finally:
        model.generation_config.eos_token_id = old
    stops = kwargs["eos_token_id"]
    assert set(stops if isinstance(stops, list) else [stops]) == {tok.eos_token_id, 260}


def test_vllm_backend_gets_the_hf_token_ids_and_explicit_sampling(tiny, monkeypatch):
    """No vLLM here: a stand-in module records what the backend hands it."""
    import sys
    import types

    import w2s.models.generate as gen

    model, tok = tiny
    seen = {}

    class LLM:
        def __init__(self, model, seed):
            seen["model"], seen["seed"] = model, seed

        def generate(self, prompts, params):
            seen["prompts"], seen["params"] = prompts, params
            out = types.SimpleNamespace(text="ok")
            return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    def sampling_params(**kw):
        return kw

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM,
                                                                    SamplingParams=sampling_params))
    monkeypatch.setattr(gen, "vllm_available", lambda: (True, ""))
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.7, top_k=0, top_p=0.9, seed=3)
    texts = generate(model, tok, ["hi", "yo"], cfg, backend="vllm", model_name="/m", chat=True)
    assert texts == ["ok", "ok"] and seen["model"] == "/m" and seen["seed"] == 3
    expected = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                            add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"] for p in ("hi", "yo")]
    assert [p["prompt_token_ids"] for p in seen["prompts"]] == expected
    assert seen["params"] == {"max_tokens": 5, "temperature": 0.7, "top_k": -1, "top_p": 0.9,
                              "seed": 3, "skip_special_tokens": True}
