"""Tiny models pretrained on a project corpus: names, errors, caching, and that training happened.

Importing :mod:`w2s.tiny.corpus` (here, at the top) registers the builder the model layer loads
``tiny:...+<stage>`` names with; one test takes it away again to see the error.
"""

import pytest
import torch

from w2s.errors import W2SError
from w2s.models import builders, load_causal_lm, load_reward_model, resolve_model, tiny_tokenizer
from w2s.models.tiny import Stage, canonical, split_name
from w2s.runs import Cache
from w2s.tiny.corpus import stage_texts


def test_names_resolve_to_canonical_locations():
    r = resolve_model("tiny:llama-1x32+toy-sentiment+toy-sentiment=1@7")
    assert r.source == "tiny" and r.family == "llama"
    assert r.location == "llama-1x32+toy-sentiment@300+toy-sentiment=1@7"
    assert resolve_model("tiny:llama-1x32").location == "llama-1x32"
    assert split_name("gpt2-1x32+toy-preference=chosen@5") == (
        "gpt2-1x32", [Stage("toy-preference", "chosen", 5)])
    assert canonical("llama-1x32+toy-prompts") == "llama-1x32+toy-prompts@300"


@pytest.mark.parametrize("name, needle", [
    ("tiny:llama-1x32+toy sentiment", "bad corpus stage"),
    ("tiny:llama-1x32+toy-sentiment@0", "at least 1 step"),
    ("tiny:lama-1x32+toy-sentiment", "unknown tiny architecture"),
])
def test_bad_stage_names_are_one_line_errors(name, needle):
    with pytest.raises(W2SError, match=needle):
        resolve_model(name)


def test_without_a_registered_builder_a_stage_name_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(builders, "BUILDERS", [])
    assert resolve_model("tiny:llama-1x32+toy-sentiment@2").location  # naming needs no builder
    load_causal_lm("tiny:llama-1x32")  # nor does a random tiny model
    with pytest.raises(W2SError, match=r"^model 'tiny:llama-1x32\+toy-sentiment@2' must be "
                       r"trained before use.*import w2s.tiny first") as err:
        load_causal_lm("tiny:llama-1x32+toy-sentiment@2")
    assert "\n" not in str(err.value)


def test_stage_texts_follow_the_selector():
    tok = tiny_tokenizer()
    positive = stage_texts(Stage("toy-sentiment", "1", 1), tok)
    both = stage_texts(Stage("toy-sentiment", None, 1), tok)
    assert 0 < len(positive) < len(both) and all(t.endswith("</s>") for t in both)
    chosen = stage_texts(Stage("toy-preference", "chosen", 1), tok)
    pairs = stage_texts(Stage("toy-preference", None, 1), tok)
    assert len(pairs) == 2 * len(chosen)
    assert chosen[0].startswith("<|user|>") and "<|assistant|>" in chosen[0]
    with pytest.raises(W2SError, match="=chosen or =rejected"):
        stage_texts(Stage("toy-preference", "1", 1), tok)
    with pytest.raises(W2SError, match="label selector"):
        stage_texts(Stage("toy-sentiment", "chosen", 1), tok)
    with pytest.raises(W2SError, match="selects no text"):
        stage_texts(Stage("toy-sentiment", "7", 1), tok)


def test_a_reasoning_corpus_is_solved_problems_in_documents_of_three():
    from w2s.data import load_task
    from w2s.data.reasoning import question_prompt

    tok = tiny_tokenizer()
    texts = stage_texts(Stage("toy-arithmetic-corpus", None, 1), tok)
    rows = load_task("toy-arithmetic-corpus", split="train").rows
    assert len(texts) == (len(rows) + 2) // 3
    solved = [f"{question_prompt(r['prompt'])} {r['solution']}" for r in rows[:3]]
    assert texts[0] == "\n\n".join(solved) + "</s>"
    assert max(len(tok(t).input_ids) for t in texts) <= 512      # read whole, never cut
    # the corpus never holds the numbers, so never the solution, of a toy-arithmetic problem
    # (train or test), and within the task no test solution is a train one
    from w2s.data.reasoning import arithmetic_numbers

    task = {split: load_task("toy-arithmetic", split=split).rows for split in ("train", "test")}
    numbers = {arithmetic_numbers(r) for split in task.values() for r in split}
    assert not {arithmetic_numbers(r) for r in rows} & numbers
    assert not {r["solution"] for r in rows} & {r["solution"] for s in task.values() for r in s}
    assert not ({r["solution"] for r in task["train"]} & {r["solution"] for r in task["test"]})
    with pytest.raises(W2SError, match="takes no selector"):
        stage_texts(Stage("toy-arithmetic-corpus", "chosen", 1), tok)


def _nll(model, tok, text):
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_stages_train_cache_and_chain(cache_dir):
    text = "The movie was wonderful. The story felt superb. I would recommend it to anyone."
    tok = tiny_tokenizer()
    random_model, _ = load_causal_lm("tiny:llama-1x32")
    trained, _ = load_causal_lm("tiny:llama-1x32+toy-sentiment@40")
    assert _nll(trained, tok, text) < _nll(random_model, tok, text) - 1.0  # it learned text
    entries = Cache().entries()
    assert len(entries) == 1
    # the chain reuses its first stage and adds one entry; loading again trains nothing
    load_causal_lm("tiny:llama-1x32+toy-sentiment@40+toy-sentiment=1@3")
    assert len(Cache().entries()) == 2
    load_causal_lm("tiny:llama-1x32+toy-sentiment@40+toy-sentiment=1@3")
    assert len(Cache().entries()) == 2
    # a reward model on top of the pretrained body: scalar head, body weights are the trained ones
    rm, _ = load_reward_model("tiny:llama-1x32+toy-sentiment@40")
    assert rm.config.num_labels == 1
    assert torch.equal(rm.model.embed_tokens.weight, trained.model.embed_tokens.weight)


def test_a_changed_corpus_gives_a_new_model_not_a_stale_one(cache_dir, monkeypatch):
    from w2s.data import synthetic

    load_causal_lm("tiny:llama-1x32+toy-sentiment@2")
    assert len(Cache().entries()) == 1
    original = synthetic.toy_sentiment_rows
    monkeypatch.setattr(synthetic, "toy_sentiment_rows",
                        lambda size, seed: [{**r, "text": r["text"].upper()}
                                            for r in original(size, seed)])
    load_causal_lm("tiny:llama-1x32+toy-sentiment@2")  # same name, other text: trained again
    assert len(Cache().entries()) == 2


def test_corpus_stages_train_under_a_mixed_precision_run(tmp_path):
    """A bf16 run (its accelerator made first) can still load a not-yet-pretrained corpus model:
    the stage trains in the process's precision and is cached apart from the fp32 one. In a
    subprocess, so this test process keeps its accelerate precision."""
    import json
    import os
    import subprocess
    import sys

    script = """
import json
from w2s.tiny.corpus import pretrained_path
from w2s.train import TrainConfig, make_accelerator
make_accelerator(TrainConfig(mixed_precision="bf16"))
print(json.dumps(str(pretrained_path("llama-1x32+toy-sentiment@2"))))
"""
    env = {**os.environ, "W2S_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    runs = []
    for code in (script, script.replace('make_accelerator(TrainConfig(mixed_precision="bf16"))',
                                        "")):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] != runs[1]  # bf16 and fp32 stages cached apart


def test_cache_keys_of_pretrained_tiny_models_stay_the_same(cache_dir):
    """Users' caches hold these models under these keys: a new key pretrains every tiny model
    again. (The corpus key also hashes the task's text, so a changed task changes it, rightly.)"""
    from w2s.data.tinyworld import WorldConfig
    from w2s.models.resolve import model_identity
    from w2s.tiny import pretrained_path, pretrained_tiny

    world = WorldConfig(entities=40, pretrain_steps=2, pretrain_batch=8)
    assert pretrained_tiny("tiny:llama-1x32", world).name == \
        "tinyworld-pretrain-llama-1x32-59b83de013d366ca8a8c"
    assert pretrained_path("llama-1x32+toy-sentiment@2").name == \
        "tiny-llama-1x32_toy-sentiment_2-7e39c363aee1a0afab2e"
    assert model_identity(resolve_model("tiny:llama-1x32+toy-sentiment@2")) == {
        "source": "tiny", "location": "llama-1x32+toy-sentiment@2", "corpus_version": 1}


REGISTERS = """
import importlib
import sys

from w2s.config import build_config
from w2s.errors import W2SError
from w2s.models import builders

NAME = "tiny:llama-1x32+toy-sentiment@2"


def forget_w2s_tiny():
    builders.BUILDERS.clear()
    for m in [m for m in sys.modules if m == "w2s.tiny" or m.startswith("w2s.tiny.")]:
        del sys.modules[m]


seen = {"nothing": builders.find_builder(NAME) is not None}
for method in ("deception", "generalize", "macpo", "wspo"):
    forget_w2s_tiny()
    importlib.import_module(f"w2s.methods.{method}.experiment")
    seen[method] = builders.find_builder(NAME) is not None
forget_w2s_tiny()
from w2s.methods import METHODS

search = METHODS["search"]
try:  # run() registers first; the unknown task then stops it before any work
    search.run(build_config(search.config, None, {"task": "no-such-task"}))
except W2SError:
    pass
seen["search.run"] = builders.find_builder(NAME) is not None
print(seen)
"""


@pytest.mark.slow
def test_every_entry_point_registers_the_builder(tmp_path):
    """In fresh processes (this one has w2s.tiny imported): each method's experiment module, search's run(),
    and a CLI command under `python -m w2s` load tiny:...+<stage> names."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "W2S_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", REGISTERS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(
        {"nothing": False, "deception": True, "generalize": True, "macpo": True,
         "wspo": True, "search.run": True})
    cli = subprocess.run([sys.executable, "-m", "w2s", "models", "--check",
                          "tiny:llama-1x32+toy-sentiment@2", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert '"prefers_true"' in cli.stdout
