"""The log-prob helper against the naive full log-softmax, values and gradients."""

import pytest
import torch

from w2s.models import (
    load_causal_lm,
    position_ids_from_mask,
    response_logprobs,
    sequence_logprobs,
)
from w2s.models.logprobs import _HEAD_MISMATCH


def naive(logits, labels, mask):
    """The reference: a full fp32 log-softmax over the vocabulary, then gather."""
    safe = labels.clamp(min=0)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, safe[..., None]).squeeze(-1)
    lp = torch.where(mask.bool(), lp, torch.zeros_like(lp))
    return lp, lp.sum(-1)


def random_case(dtype, B=3, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.6
    labels[~mask] = -100  # masked labels may be anything
    return logits, labels, mask


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 21, 4096])  # 21 = B*T; 4 and 5 don't divide it
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_naive(dtype, chunk_size):
    logits, labels, mask = random_case(dtype)
    per_token, summed = sequence_logprobs(logits, labels, mask, chunk_size=chunk_size)
    ref_tok, ref_sum = naive(logits, labels, mask)
    assert per_token.dtype is torch.float32 and summed.dtype is torch.float32
    assert per_token.shape == labels.shape and summed.shape == (labels.shape[0],)
    assert torch.allclose(per_token, ref_tok, atol=1e-5)
    assert torch.allclose(summed, ref_sum, atol=1e-5)
    assert torch.all(per_token[~mask] == 0)


@pytest.mark.parametrize("chunk_size", [3, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_naive(dtype, chunk_size):
    logits, labels, mask = random_case(dtype, seed=1)
    weights = torch.tensor([1.0, -2.0, 0.5])
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    (sequence_logprobs(a, labels, mask, chunk_size=chunk_size)[1] * weights).sum().backward()
    (naive(b, labels, mask)[1] * weights).sum().backward()
    assert a.grad.dtype is dtype
    tol = 1e-6 if dtype is torch.float32 else 1e-2
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=tol)
    assert torch.all(a.grad[~mask] == 0)


def test_empty_mask_gives_zeros():
    logits, labels, _ = random_case(torch.float32)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    logits.requires_grad_(True)
    per_token, summed = sequence_logprobs(logits, labels, mask)
    assert torch.equal(per_token, torch.zeros_like(per_token))
    assert torch.equal(summed, torch.zeros(3))
    summed.sum().backward()  # a batch with nothing to score still backpropagates (zeros)
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_shape_errors():
    logits, labels, mask = random_case(torch.float32)
    with pytest.raises(ValueError):
        sequence_logprobs(logits, labels[:, 1:], mask)


# ------------------------------------------------------------------------------------------
# response_logprobs on a real (tiny) model


def manual_response_logprobs(model, ids, attn, resp):
    logits = model(input_ids=ids, attention_mask=attn,
                   position_ids=position_ids_from_mask(attn)).logits
    return naive(logits[:, :-1], ids[:, 1:], resp[:, 1:])


def batch(tok, side):
    tok.padding_side = side
    prompts, responses = ["2+2=", "The capital of France is"], ["4", " Paris, of course."]
    full = tok([p + r for p, r in zip(prompts, responses, strict=True)], return_tensors="pt", padding=True)
    resp = torch.zeros_like(full.attention_mask)
    for i, p in enumerate(prompts):
        real = full.attention_mask[i].nonzero().squeeze(-1)
        resp[i, real[len(tok(p).input_ids):]] = 1  # the response tokens only
    return full.input_ids, full.attention_mask, resp


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_response_logprobs_matches_manual_and_padding_side(arch):
    model, tok = load_causal_lm(f"tiny:{arch}-2x64")
    results = {}
    for side in ("right", "left"):
        ids, attn, resp = batch(tok, side)
        per_token, summed = response_logprobs(model, ids, attn, resp, chunk_size=5)
        ref_tok, ref_sum = manual_response_logprobs(model, ids, attn, resp)
        assert per_token.shape == (2, ids.shape[1] - 1)
        assert torch.allclose(per_token, ref_tok, atol=1e-5)
        results[side] = summed
    assert torch.allclose(results["right"], results["left"], atol=1e-4)
    # one scored token per response byte (byte-level tokenizer): "4" and " Paris, of course."
    assert (per_token != 0).sum(-1).tolist() == [1, len(" Paris, of course.")]


def test_response_logprobs_gradients_match_manual():
    model, tok = load_causal_lm("tiny:qwen2-1x32")
    ids, attn, resp = batch(tok, "right")
    response_logprobs(model, ids, attn, resp, chunk_size=4)[1].sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    manual_response_logprobs(model, ids, attn, resp)[1].sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_response_logprobs_falls_back_when_logits_are_not_head_of_hidden():
    # Gemma-2 soft-caps its logits: head(hidden) is not the logits, the check must notice.
    from transformers import Gemma2Config, Gemma2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma2ForCausalLM(Gemma2Config(
            vocab_size=262, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=1, num_key_value_heads=1, head_dim=32,
            final_logit_softcapping=0.5, pad_token_id=256)).eval()
    ids = torch.tensor([[104, 105, 106, 107], [256, 104, 105, 106]])
    attn = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    per_token, _ = response_logprobs(model, ids, attn, attn)
    ref_tok, _ = manual_response_logprobs(model, ids, attn, attn)
    assert Gemma2ForCausalLM in _HEAD_MISMATCH
    assert torch.allclose(per_token, ref_tok, atol=1e-5)


def test_response_logprobs_never_builds_full_sequence_logits():
    model, tok = load_causal_lm("tiny:llama-1x32")
    ids, attn, resp = batch(tok, "right")
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        response_logprobs(model, ids, attn, resp, chunk_size=8)
    finally:
        hook.remove()
    n_scored = int(resp[:, 1:].sum())
    # the model's own call and our check see the last position only; then the scored rows only
    assert seen[:2] == [(2, 1, 262), (2, 1, 262)]
    assert sum(s[0] for s in seen[2:]) == n_scored and all(len(s) == 2 for s in seen[2:])


def test_a_zero3_partitioned_head_is_read_through_full_logits():
    """Under DeepSpeed ZeRO-3 the head's weights (marked ``ds_id``) are whole only inside its
    own forward: the helper reads the model's full logits instead of re-applying the head to
    chunks, and gives the same numbers and gradients."""
    model, tok = load_causal_lm("tiny:llama-1x32")
    ids, attn, resp = batch(tok, "right")
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    for p in model.lm_head.parameters():
        p.ds_id = 0  # what ZeRO-3 sets on the parameters it partitions
    try:
        seen.clear()
        per_token, summed = response_logprobs(model, ids, attn, resp, chunk_size=4)
    finally:
        hook.remove()
        for p in model.lm_head.parameters():
            del p.ds_id
    assert seen == [(2, ids.shape[1], 262)]  # one call, full logits
    summed.sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_tok, ref_sum = manual_response_logprobs(model, ids, attn, resp)
    assert torch.allclose(per_token, ref_tok, atol=1e-5)
    ref_sum.sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_response_logprobs_through_lora_and_checkpointing():
    from w2s.models import LoraSettings

    model, tok = load_causal_lm("tiny:llama-2x64", lora=LoraSettings(r=4),
                                gradient_checkpointing=True)
    model.train()
    for p in model.parameters():  # make B != 0 so the adapters matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids, attn, resp = batch(tok, "left")
    fast_tok, fast = response_logprobs(model, ids, attn, resp, chunk_size=3)
    fast.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ref_tok, ref = manual_response_logprobs(model, ids, attn, resp)
    ref.sum().backward()
    assert torch.allclose(fast_tok, ref_tok, atol=1e-5)
    assert grads and all(torch.allclose(grads[n], p.grad, atol=1e-5)
                         for n, p in model.named_parameters() if p.requires_grad)
    with model.disable_adapter():  # the reference model under LoRA, same helper
        base_tok, _ = response_logprobs(model, ids, attn, resp)
    assert not torch.allclose(base_tok, fast_tok)
