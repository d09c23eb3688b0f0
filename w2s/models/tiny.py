"""Tiny models built in-process: the test and quick-run stand-ins for real checkpoints.

``tiny:<arch>-<layers>x<width>`` (e.g. ``tiny:llama-2x64``, ``tiny:gpt2-4x128``) names a randomly
initialised transformers model of that architecture. Nothing is downloaded: the weights come from
a seeded generator and the tokenizer is built here from a fixed byte vocabulary, so

- the same (config, seed) always gives the same weights, on any machine, without touching the
  global RNG (tests and runs that build a tiny model stay reproducible around it);
- EVERY tiny model shares ONE tokenizer. Token-level methods that need a shared vocabulary
  (WSPO's token-level loss, emulated fine-tuning) therefore work between any two tiny models,
  e.g. ``tiny:llama-1x32`` as the weak model and ``tiny:llama-2x64`` as the strong one.

The tokenizer is byte-level: token id ``b`` is the byte ``b`` (0..255), then a handful of special
tokens. Any UTF-8 text round-trips exactly, and the vocabulary (262) keeps the models tiny.

A tiny name may end in corpus stages, ``tiny:llama-2x64+toy-sentiment=1@100``: the same model,
first pretrained on the text of a task. This module knows how such a name is written
(:func:`split_name`, :func:`canonical`) and loads it (:func:`load_tiny`), but the pretraining runs
the training loop, which sits above the model layer: it lives in :mod:`w2s.tiny.corpus`, which
registers itself in :mod:`w2s.models.builders` when imported.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from w2s.errors import W2SError, did_you_mean
from w2s.models.builders import pretrained_folder

TINY_ARCHS = ("llama", "gpt2", "qwen2")

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
"""Ids 256.. in this order: pad, bos, eos, then the three chat role markers."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('tiny chat template: role must be system, user or assistant') }}"
    "{%- endif -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
"""``<|user|>hi</s><|assistant|>`` for one user turn with a generation prompt."""

MAX_POSITIONS = 512


def tiny_tokenizer():
    """The one tokenizer of every tiny model: 256 byte tokens + 6 special tokens (vocab 262).

    A ``PreTrainedTokenizerFast`` with pad ``<pad>``, bos ``<s>``, eos ``</s>``, right padding and a
    chat template (see :data:`CHAT_TEMPLATE`). It adds no special tokens when encoding (like GPT-2
    and Qwen2): ``tok("hi").input_ids == [104, 105]``. Built fresh on every call (it is cheap), so
    changing ``padding_side`` on one copy never leaks into another.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # ByteLevel pre-tokenization maps every byte to one printable unicode character; a BPE model
    # with no merges then maps each such character to one id: the byte's value.
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # ids 256.. in order
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer emits).

    Printable latin-1 bytes map to themselves; the other 68 bytes map to chr(256), chr(257), ...
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class TinyConfig:
    """A parsed ``<arch>-<layers>x<hidden>`` string."""

    arch: str
    layers: int
    hidden: int

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 32)

    def __str__(self) -> str:
        return f"{self.arch}-{self.layers}x{self.hidden}"


_TINY_RE = re.compile(r"^(?:tiny:)?([a-z0-9]+)-(\d+)x(\d+)$")


def parse_tiny(config_str: str) -> TinyConfig:
    """``"tiny:llama-2x64"`` (or ``"llama-2x64"``) -> ``TinyConfig("llama", 2, 64)``."""
    m = _TINY_RE.match(config_str.strip())
    if not m:
        raise W2SError(f"bad tiny model '{config_str}'; write tiny:<arch>-<layers>x<width> with "
                       f"arch in {', '.join(TINY_ARCHS)}, e.g. tiny:llama-2x64")
    arch, layers, hidden = m.group(1), int(m.group(2)), int(m.group(3))
    if arch not in TINY_ARCHS:
        raise W2SError(f"unknown tiny architecture '{arch}'{did_you_mean(arch, TINY_ARCHS)} "
                       f"(choose one of {', '.join(TINY_ARCHS)})")
    cfg = TinyConfig(arch, layers, hidden)
    if not 1 <= layers <= 64:
        raise W2SError(f"tiny model '{config_str}': layers must be 1..64")
    if not 8 <= hidden <= 4096 or hidden % 8 or hidden % cfg.heads:
        raise W2SError(f"tiny model '{config_str}': width must be a multiple of 8 in 8..4096 that "
                       f"splits into {cfg.heads} heads (e.g. 32, 64, 128)")
    return cfg


def tiny_transformers_config(config_str: str):
    """The transformers config of a tiny model (no weights): vocab = the tiny tokenizer's size."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    cfg = parse_tiny(config_str)
    ids = dict(pad_token_id=256, bos_token_id=257, eos_token_id=258)
    vocab = 256 + len(SPECIAL_TOKENS)
    if cfg.arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=MAX_POSITIONS, n_embd=cfg.hidden,
                          n_layer=cfg.layers, n_head=cfg.heads, **ids)
    cls = LlamaConfig if cfg.arch == "llama" else Qwen2Config
    return cls(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
               num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
               num_key_value_heads=cfg.heads, max_position_embeddings=MAX_POSITIONS,
               tie_word_embeddings=False, **ids)


def _model_class(arch: str):
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "qwen2": Qwen2ForCausalLM}[arch]


def tiny_seed(config_str: str, seed: int = 0) -> int:
    """The init seed of a tiny model: a hash of its canonical name and ``seed``."""
    text = f"{parse_tiny(config_str)}|{int(seed)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def build_tiny(config_str: str, seed: int = 0):
    """A randomly initialised causal LM for ``config_str`` (fp32, CPU, eval mode).

    Deterministic in (config, seed): the initialisation runs under a forked RNG seeded from both,
    so building it twice gives identical weights and the caller's global RNG is left untouched.
    """
    config = tiny_transformers_config(config_str)
    cls = _model_class(parse_tiny(config_str).arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny_seed(config_str, seed))
        model = cls(config)
    return model.eval()


def tiny_param_count(config_str: str) -> int:
    """Parameters of a tiny model, counted on the meta device (no memory, no RNG)."""
    config = tiny_transformers_config(config_str)
    with torch.device("meta"):
        model = _model_class(parse_tiny(config_str).arch)(config)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# corpus stages: tiny:<arch>-<L>x<H>+<task>[=<selector>][@<steps>]+...

DEFAULT_STEPS = 300
"""Optimizer steps of a corpus stage that names none."""

CORPUS_VERSION = 1
"""How corpus stages are trained (:mod:`w2s.tiny.corpus`): part of every stage's cache key and of
:func:`w2s.models.resolve.model_identity`, so a change that alters the weights bumps it."""

_STAGE = re.compile(r"^(?P<task>[A-Za-z0-9_.:/-]+?)(?:=(?P<sel>[A-Za-z0-9_]+))?(?:@(?P<steps>\d+))?$")


@dataclass(frozen=True)
class Stage:
    """One ``+<task>[=<selector>][@<steps>]`` stage of a tiny model name."""

    task: str
    selector: str | None
    steps: int

    def __str__(self) -> str:
        return self.task + (f"={self.selector}" if self.selector else "") + f"@{self.steps}"


def split_name(location: str) -> tuple[str, list[Stage]]:
    """``"llama-2x64+toy-sentiment=1@50"`` -> ``("llama-2x64", [Stage("toy-sentiment", "1", 50)])``."""
    base, *parts = location.split("+")
    stages = []
    for part in parts:
        m = _STAGE.match(part.strip())
        if not m:
            raise W2SError(f"bad corpus stage '+{part}' in tiny model '{location}'; write "
                           "+<task>[=<label or chosen/rejected>][@<steps>], e.g. "
                           "+toy-sentiment=1@100")
        steps = int(m.group("steps")) if m.group("steps") else DEFAULT_STEPS
        if steps < 1:
            raise W2SError(f"corpus stage '+{part}' needs at least 1 step")
        stages.append(Stage(m.group("task"), m.group("sel"), steps))
    return base, stages


def canonical(location: str) -> str:
    """The name with every stage's steps written out (what caches and run records use)."""
    base, stages = split_name(location)
    return "+".join([base, *map(str, stages)])


def load_tiny(location: str, *, seed: int = 0, head_labels: int | None = None, log=None):
    """The tiny model at a resolved tiny ``location``, fp32 on the CPU, eval mode.

    Without corpus stages: :func:`build_tiny` (random, seeded). With stages: the pretrained
    ``save_pretrained`` folder that the registered builder makes once and caches
    (:mod:`w2s.tiny.corpus`). ``head_labels``: a sequence-classification model with that many
    outputs instead of a causal LM (its head is new: random, seeded).
    """
    base, stages = split_name(location)

    def folder():
        return pretrained_folder(f"tiny:{location}", log, needs="w2s.tiny")

    if head_labels is None:
        if not stages:
            return build_tiny(base, seed=seed)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder(), dtype=torch.float32).eval()
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny_seed(base, seed))
        if not stages:
            config = tiny_transformers_config(base)
            config.num_labels = head_labels
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder(), num_labels=head_labels, dtype=torch.float32)
    return model.eval()
