"""Loaders, dtype/device picking, the classifier, LoRA and chat formatting (tiny models only)."""

import pytest
import torch

from w2s.errors import W2SError
from w2s.models import (
    Classifier,
    LoraSettings,
    apply_lora,
    build_tiny,
    format_chat,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    param_count,
    pick_device,
    pick_dtype,
    tiny_tokenizer,
)
from w2s.models import resolve as resolve_mod
from w2s.models.classifier import last_token_index

# ------------------------------------------------------------------------------------------
# device and dtype


def test_pick_dtype_explicit_strings():
    assert pick_dtype("bf16") is pick_dtype("bfloat16") is torch.bfloat16
    assert pick_dtype("fp16") is pick_dtype("float16") is pick_dtype("half") is torch.float16
    assert pick_dtype("fp32") is pick_dtype("float32") is pick_dtype("torch.float32") \
        is torch.float32
    assert pick_dtype(torch.float16) is torch.float16


def test_pick_dtype_bad_string_suggests():
    with pytest.raises(W2SError, match="did you mean 'bf16'"):
        pick_dtype("bf61")


def test_pick_dtype_auto_by_device(monkeypatch):
    assert pick_dtype("auto", "cpu") is torch.float32
    assert pick_dtype("auto", torch.device("mps")) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", torch.device("cuda")) is torch.float16


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(W2SError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(W2SError, match="unknown device"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


# ------------------------------------------------------------------------------------------
# tokenizer and causal LM


def test_load_tokenizer_padding_side():
    assert load_tokenizer("tiny:llama-1x32").padding_side == "right"
    left = load_tokenizer("tiny:llama-1x32", padding_side="left")
    assert left.padding_side == "left" and left.pad_token == "<pad>"
    with pytest.raises(W2SError):
        load_tokenizer("tiny:llama-1x32", padding_side="middle")


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    build_tiny("llama-1x32").save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "</s>"


def test_load_tiny_causal_lm_dtype_and_pad():
    model, tok = load_causal_lm("tiny:llama-1x32", dtype="bf16", device="cpu")
    assert next(model.parameters()).dtype is torch.bfloat16
    assert model.config.pad_token_id == tok.pad_token_id == 256
    assert not model.training


def test_load_local_dir_roundtrip(tmp_path):
    model, tok = load_causal_lm("tiny:gpt2-1x32", seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_causal_lm(str(tmp_path))
    ids = torch.tensor([tok("round trip").input_ids])
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2.get_vocab() == tok.get_vocab()


def test_local_dir_without_tokenizer_is_a_one_line_error(tmp_path):
    build_tiny("llama-1x32").save_pretrained(tmp_path)
    with pytest.raises(W2SError) as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_offline_hub_miss_is_one_line_error():
    # HF_HUB_OFFLINE=1 in the test session; nothing named like this is cached.
    with pytest.raises(W2SError) as err:
        load_causal_lm("w2s-test-org/not-a-real-model")
    msg = str(err.value)
    assert "'w2s-test-org/not-a-real-model'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "huggingface-cli download w2s-test-org/not-a-real-model" in msg and "\n" not in msg
    with pytest.raises(W2SError, match="Qwen/Qwen2-7B"):
        load_tokenizer("qwen2-7b")


def test_offline_hub_error_from_from_pretrained_is_caught(monkeypatch):
    # Pretend the cache check passes so from_pretrained itself raises (OSError): still one line.
    monkeypatch.setattr("w2s.models.loading.in_hf_cache", lambda repo: True)
    monkeypatch.setattr(resolve_mod, "in_hf_cache", lambda repo: True)
    with pytest.raises(W2SError) as err:
        load_causal_lm("w2s-test-org/not-a-real-model")
    assert "not in the local Hugging Face cache" in str(err.value)


def test_quantize_is_a_clear_error_without_gpu_or_bitsandbytes():
    with pytest.raises(W2SError, match="quantize"):
        load_causal_lm("tiny:llama-1x32", quantize="4bit")
    from w2s.models.loading import _quantization_config

    with pytest.raises(W2SError, match="(bitsandbytes|CUDA)"):
        _quantization_config("4bit", torch.bfloat16, torch.device("cpu"))
    with pytest.raises(W2SError, match="4bit or 8bit"):
        _quantization_config("3bit", torch.bfloat16, torch.device("cpu"))


def test_gradient_checkpointing_trains():
    model, tok = load_causal_lm("tiny:llama-2x64", gradient_checkpointing=True)
    assert model.is_gradient_checkpointing
    model.train()
    ids = torch.tensor([tok("check pointing").input_ids])
    model(ids, labels=ids).loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# LoRA


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_only_adapters_train_and_start_as_identity():
    base, tok = load_causal_lm("tiny:llama-2x64")
    ids = torch.tensor([tok("lora starts as the base").input_ids])
    ref = base(ids).logits
    model, _ = load_causal_lm("tiny:llama-2x64", lora=LoraSettings(r=4, alpha=8))
    names = _trainable(model)
    assert names and all("lora_" in n for n in names)
    assert any("mlp" in n for n in names)  # tiny default: all linear layers
    assert not any("lm_head" in n for n in names)
    assert 0 < param_count(model, trainable=True) < param_count(model) / 5
    assert torch.allclose(model(ids).logits, ref)  # B = 0 at init
    with model.disable_adapter():
        assert torch.allclose(model(ids).logits, ref)


def test_lora_family_targets_and_seeded_init():
    model = apply_lora(build_tiny("llama-1x32"), LoraSettings(), family="llama")
    names = _trainable(model)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    again = apply_lora(build_tiny("llama-1x32"), LoraSettings(), family="llama")
    a = dict(model.named_parameters())
    assert all(torch.equal(p, a[n]) for n, p in again.named_parameters())
    gpt = apply_lora(build_tiny("gpt2-1x32"), LoraSettings(), family="gpt2")
    assert {n.split(".")[-4] for n in _trainable(gpt)} == {"c_attn", "c_proj"}


def test_lora_targets_that_match_nothing():
    with pytest.raises(W2SError, match="match no module"):
        apply_lora(build_tiny("llama-1x32"), LoraSettings(targets=["nope_proj"]))


# ------------------------------------------------------------------------------------------
# classifier


def test_last_token_index_left_and_right():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_classifier_left_and_right_padding_agree(arch):
    clf, tok = load_classifier(f"tiny:{arch}-2x64")
    torch.nn.init.normal_(clf.head.weight)  # a non-trivial head, so logits are not all 0
    texts = ["short", "a considerably longer text than the first"]
    out = {}
    for side in ("right", "left"):
        tok.padding_side = side
        batch = tok(texts, return_tensors="pt", padding=True)
        out[side] = clf(batch.input_ids, batch.attention_mask)
    alone = tok(texts[0], return_tensors="pt")
    single = clf(alone.input_ids, alone.attention_mask)
    assert out["right"].shape == (2, 2) and out["right"].dtype is torch.float32
    assert torch.allclose(out["right"], out["left"], atol=1e-5)
    assert torch.allclose(out["right"][0], single[0], atol=1e-5)


def test_classifier_pools_from_mask_not_pad_id():
    clf, tok = load_classifier("tiny:llama-1x32")
    # the last REAL token is the pad id itself (as with pad == eos tokenizers): still pooled
    ids = torch.tensor([[104, 105, tok.pad_token_id, tok.pad_token_id]])
    mask = torch.tensor([[1, 1, 1, 0]])
    hidden = clf.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(clf.features(ids, mask)[0], hidden[0, 2], atol=1e-6)


def test_classifier_zero_head_and_trainable_parts():
    clf, tok = load_classifier("tiny:gpt2-1x32", num_labels=3)
    batch = tok(["one", "two two"], return_tensors="pt", padding=True)
    logits = clf(batch.input_ids, batch.attention_mask)
    assert logits.shape == (2, 3) and torch.equal(logits, torch.zeros(2, 3))
    assert clf.head.weight.dtype is torch.float32 and clf.head.bias is None
    assert clf.features(batch.input_ids, batch.attention_mask).shape == (2, 32)
    assert not hasattr(clf.backbone, "lm_head")
    lora_clf, _ = load_classifier("tiny:gpt2-1x32", lora=LoraSettings())
    names = _trainable(lora_clf)
    assert "head.weight" in names and all(n == "head.weight" or "lora_" in n for n in names)


def test_classifier_bf16_backbone_fp32_head_gradients():
    clf, tok = load_classifier("tiny:qwen2-1x32", dtype="bf16")
    clf.train()
    batch = tok(["x", "yy"], return_tensors="pt", padding=True)
    logits = clf(batch.input_ids, batch.attention_mask)
    assert logits.dtype is torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert clf.head.weight.grad.abs().sum() > 0


def test_classifier_on_opt_uses_projected_width():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=262, hidden_size=64, ffn_dim=128,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   word_embed_proj_dim=32, pad_token_id=256)).eval()
    clf = Classifier.from_causal_lm(opt)
    ids = torch.tensor([[104, 105, 256], [0, 104, 105]])
    right = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert clf.features(ids, right).shape == (2, 32)
    torch.nn.init.normal_(clf.head.weight)
    logits = clf(ids, right)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)  # same text, right vs left padded


def test_classifier_rejects_models_without_a_body():
    with pytest.raises(W2SError):
        Classifier.from_causal_lm(torch.nn.Linear(3, 3))
    with pytest.raises(W2SError, match="apply LoRA"):
        Classifier.from_causal_lm(apply_lora(build_tiny("llama-1x32"), LoraSettings()))


# ------------------------------------------------------------------------------------------
# chat formatting and counting


def test_format_chat_with_template():
    tok = tiny_tokenizer()
    assert format_chat(tok, "hi") == "<|user|>hi</s><|assistant|>"
    full = format_chat(tok, "hi", "hello")
    assert full == "<|user|>hi</s><|assistant|>hello"
    assert full.startswith(format_chat(tok, "hi"))


def test_format_chat_without_template_is_plain_text():
    tok = tiny_tokenizer()
    tok.chat_template = None
    assert format_chat(tok, "Q: 2+2?\nA:") == "Q: 2+2?\nA:"
    assert format_chat(tok, "Q: 2+2?\nA:", " 4") == "Q: 2+2?\nA: 4"


def test_param_count_counts_tied_weights_once():
    gpt = build_tiny("gpt2-1x32")  # GPT-2 ties lm_head to the token embedding
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    unique = {id(p): p.numel() for p in gpt.parameters()}
    assert param_count(gpt) == sum(unique.values())
    for p in gpt.parameters():
        p.requires_grad_(False)
    assert param_count(gpt, trainable=True) == 0


def test_probe_features_are_the_frozen_bodys_in_order_and_the_head_starts_at_zero():
    from w2s.models.probe import frozen_features, linear_head

    clf, tok = load_classifier("tiny:llama-1x32")
    clf.eval()
    texts = ["a short one", "a somewhat longer text than that", "mid length text"]
    batches = []
    for i in range(0, 3, 2):  # batches of 2 and 1: padding must not change a text's feature
        enc = tok(texts[i:i + 2], padding=True, return_tensors="pt")
        batches.append((enc.input_ids, enc.attention_mask))
    feats = frozen_features(clf, batches, torch.device("cpu"))
    assert feats.shape == (3, clf.head.in_features) and feats.dtype == torch.float32
    for j, text in enumerate(texts):
        enc = tok([text], return_tensors="pt")
        alone = clf.features(enc.input_ids, enc.attention_mask)[0]
        assert torch.allclose(feats[j], alone.detach(), atol=1e-5), text
    head = linear_head(clf.head.in_features, 2, torch.device("cpu"))
    assert head.bias is None and torch.equal(head(feats), torch.zeros(3, 2))


def test_padded_batches_right_left_and_spans():
    from w2s.models.batching import pad_left, pad_right, spans_mask

    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    # prompt of 2 then a response of 1; prompt of 1 then a response of 2
    assert spans_mask([2, 1], [3, 3], 4).tolist() == [[0, 0, 1, 0], [0, 1, 1, 0]]
