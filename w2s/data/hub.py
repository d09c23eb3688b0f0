"""Hugging Face hub datasets, formatted the way the papers' code formatted them.

Each task is a :class:`HubSource` (where the data lives) plus a formatter: a PURE function
``formatter(raw_row, rng, **options) -> fields | None | str`` of one raw dataset row, returning
the task's fields (``None`` drops the row: a pair whose responses are identical, a malformed
transcript; a string drops a usable row an option leaves out, and names why: ``"multi-turn"``).
Formatters never touch the hub, so the tests check them on hand-made rows.

Randomness (sciq's 50/50 right-or-wrong answer, anthropic_hh's response order) comes from a
per-row ``random.Random(f"{task}:{seed}:{split}:{index}")``: a row's formatting depends only on
the seed and its position in the hub split, not on which other rows were sampled.

Offline (``HF_HUB_OFFLINE=1``) a dataset loads from the local Hugging Face cache; one that is not
cached is a one-line :class:`~w2s.errors.W2SError` naming it, never a traceback.

Formatting, per task (METHODS.md section 1; openai/weak-to-strong ``datasets.py``):

- sciq: ``"Q: {question} A: {answer}"``, the correct answer (label 1) or a random distractor
  (label 0), 50/50. No support paragraph (openai's format; EleutherAI/w2s's
  ``sciq_with_support`` adds it).
- boolq: ``"Passage: {passage}\\nQuestion: {question}"``, label = answer. Test = validation.
- cosmos_qa: ``"Context: ...\\nQuestion: ...\\nAnswer: {answer}"``, the true answer or a random
  other, 50/50; as in openai's code an item whose true answer is "None of the above choices ."
  always shows another answer with label 0. Test = validation (the hub test split is unlabeled).
- amazon_polarity: ``"{title} {content}"``, label 1 = positive.
- anthropic_hh: PAIRWISE (the single-response form of openai's code is at chance): the
  conversation, then ``Response A`` and ``Response B`` in a seeded random order; label 1 when
  B is the chosen one.
- hh-helpful / hh-harmless: preference rows from ``helpful-base`` / ``harmless-base``.
  The transcript is split at the last ``Assistant:`` the two texts share; prompt =
  ``"Human: ...\\n\\nAssistant:"`` (prompt_format ``hh``), chosen/rejected = the final replies.
  Option ``single_turn=True`` keeps only single-turn transcripts (one Human and one Assistant
  turn), as W2S deception's authors did; the others are counted as ``dropped["multi-turn"]``.
- cai: HuggingFaceH4/cai-conversation-harmless (Constitutional AI harmlessness pairs: chosen =
  the critiqued-and-revised reply, rejected = the initial one), splits train_prefs / test_prefs.
  The ``chosen`` / ``rejected`` message lists are written as an HH transcript, so the rows look
  like hh-harmless's (prompt_format ``hh``); ``single_turn`` as for hh-harmless.
- pku-saferlhf (chosen = the ``safer_response_id`` response) and pku-saferlhf-helpful
  (``better_response_id``).
- ultrafeedback: prompt, chosen/rejected = the last assistant message; splits train_prefs /
  test_prefs.
- imdb (classification) and imdb-prompts (the first ``prefix_words`` = 8 words of a review as
  prompt, reference = the review, label kept): the W2S search sentiment setting.
- alpaca_eval: prompt = instruction, reference = the reference output (``alpaca_eval.json``;
  the repository's loading script no longer runs under ``datasets`` >= 4, so the JSON file is
  read directly). Its only split is ``eval`` (``split="test"`` reads it).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from w2s.data.core import TaskData, first_words, pick, row_problem
from w2s.data.registry import register_task
from w2s.data.splits import permutation
from w2s.errors import W2SError, did_you_mean


@dataclass(frozen=True)
class HubSource:
    """Where a task's data lives on the hub.

    path: dataset id; name: config name; data_dir: a folder in the repository (hh-rlhf's
    ``helpful-base``); revision: a branch (``refs/convert/parquet`` for datasets whose loading
    script ``datasets`` no longer runs); splits: our split name -> the hub's (unlisted names
    pass through); file: read this one JSON file of the repository instead of ``load_dataset``.
    """

    path: str
    name: str | tuple[str, ...] | None = None  # several configs: loaded and concatenated
    data_dir: str | None = None
    revision: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    file: str | None = None


@dataclass(frozen=True)
class HubTask:
    name: str
    kind: str
    source: HubSource
    formatter: Callable[..., dict | None]
    description: str
    license: str | None = None
    label_names: tuple[str, ...] | None = None
    prompt_format: str = "plain"
    notes: str = ""


HUB_TASKS: dict[str, HubTask] = {}


# --------------------------------------------------------------------------------------------
# formatters: pure functions of one raw row


def format_sciq(raw: dict, rng: random.Random) -> dict:
    """``Q: {question} A: {answer}``: the correct answer (label 1) or a random distractor, 50/50."""
    label = int(rng.random() < 0.5)
    answer = raw["correct_answer"] if label else pick(
        rng, [raw["distractor1"], raw["distractor2"], raw["distractor3"]])
    return {"text": f"Q: {raw['question']} A: {answer}", "label": label}


def format_boolq(raw: dict, rng: random.Random) -> dict:
    """Passage and question; label = the yes/no answer."""
    return {"text": f"Passage: {raw['passage']}\nQuestion: {raw['question']}",
            "label": int(raw["answer"])}


NONE_OF_THE_ABOVE = "None of the above choices ."


def format_cosmos_qa(raw: dict, rng: random.Random) -> dict | None:
    """Context, question and the true answer (label 1) or a random other answer (label 0)."""
    if raw.get("label") not in (0, 1, 2, 3):
        return None  # the hub test split is unlabeled (-1)
    answers = [raw[f"answer{i}"] for i in range(4)]
    true_answer = answers[raw["label"]]
    label = 0 if NONE_OF_THE_ABOVE in true_answer else int(rng.random() < 0.5)
    answer = true_answer if label else pick(rng, [a for a in answers if a != true_answer])
    return {"text": f"Context: {raw['context']}\nQuestion: {raw['question']}\nAnswer: {answer}",
            "label": label}


def format_amazon_polarity(raw: dict, rng: random.Random) -> dict:
    """Title and review; label 1 = positive."""
    return {"text": f"{raw['title']} {raw['content']}", "label": int(raw["label"])}


HH_ASSISTANT = "\n\nAssistant:"


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split an HH-RLHF pair into (prompt, chosen reply, rejected reply).

    The two transcripts share the conversation and differ in the final assistant reply, which
    may start with the same words in both. The prompt ends at the last ``\\n\\nAssistant:``
    inside their common prefix; it is returned stripped (``"Human: ...\\n\\nAssistant:"``) and
    the replies stripped, so ``prompt + " " + reply`` is the transcript. None when the pair
    cannot be used: no shared assistant turn, an empty reply, identical replies, or transcripts
    that diverge before the last turn (a reply containing a further ``Human:`` turn).
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        return None
    cut += len(HH_ASSISTANT)
    prompt, good, bad = chosen[:cut].strip(), chosen[cut:].strip(), rejected[cut:].strip()
    if not good or not bad or good == bad or "\n\nHuman:" in chosen[cut:] + rejected[cut:]:
        return None
    return prompt, good, bad


MULTI_TURN = "multi-turn"
"""What a formatter returns for a row that ``single_turn=True`` leaves out."""


def is_single_turn(transcript: str) -> bool:
    """Whether an HH transcript has exactly one Human turn and one Assistant turn (W2S
    deception's single-turn HH data: every one of the authors' 12,000 chosen transcripts)."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript
    return text.count("\n\nHuman:") == 1 and text.count(HH_ASSISTANT) == 1


def format_hh_preference(raw: dict, rng: random.Random, *,
                         single_turn: bool = False) -> dict | str | None:
    """HH-RLHF pair -> ``{"prompt", "chosen", "rejected"}`` (see :func:`split_hh`); with
    ``single_turn``, a pair whose chosen transcript has more than one Human or Assistant turn is
    left out (:data:`MULTI_TURN`), as the authors of W2S deception filtered HH-RLHF."""
    if single_turn and not is_single_turn(raw["chosen"]):
        return MULTI_TURN
    parts = split_hh(raw["chosen"], raw["rejected"])
    if parts is None:
        return None
    prompt, chosen, rejected = parts
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def format_anthropic_hh(raw: dict, rng: random.Random) -> dict | None:
    """Pairwise classification: conversation + two replies in seeded random order; label 1
    when the second (``Response B``) is the chosen reply."""
    parts = split_hh(raw["chosen"], raw["rejected"])
    if parts is None:
        return None
    prompt, chosen, rejected = parts
    label = int(rng.random() < 0.5)
    first, second = (rejected, chosen) if label else (chosen, rejected)
    conversation = prompt[: -len("Assistant:")].rstrip()
    return {"text": f"{conversation}\n\nResponse A: {first}\n\nResponse B: {second}",
            "label": label}


def format_pku_saferlhf(raw: dict, rng: random.Random, *, by: str = "safer") -> dict | None:
    """PKU-SafeRLHF: chosen = the response named by ``safer_response_id`` (``by="safer"``,
    harmlessness) or ``better_response_id`` (``by="better"``, helpfulness)."""
    if by not in ("safer", "better"):
        raise W2SError(f"pku-saferlhf: by={by!r}; use 'safer' (harmlessness) or 'better' "
                       "(helpfulness)")
    best = int(raw[f"{by}_response_id"])
    chosen, rejected = raw[f"response_{best}"], raw[f"response_{1 - best}"]
    if chosen.strip() == rejected.strip():
        return None
    return {"prompt": raw["prompt"], "chosen": chosen, "rejected": rejected}


def _last_assistant(messages: list[dict]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return message.get("content")
    return None


def format_ultrafeedback(raw: dict, rng: random.Random) -> dict | None:
    """UltraFeedback binarized: chosen/rejected = the last assistant message of each side."""
    chosen, rejected = _last_assistant(raw["chosen"]), _last_assistant(raw["rejected"])
    if chosen is None or rejected is None or chosen.strip() == rejected.strip():
        return None
    return {"prompt": raw["prompt"], "chosen": chosen, "rejected": rejected}


HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def hh_transcript(messages: list[dict]) -> str | None:
    """Chat messages as an HH transcript, ``"Human: ...\\n\\nAssistant: ..."``; None when a
    message is not a user or assistant turn with text, or the turns do not alternate from the
    user's."""
    turns = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role != ("user", "assistant")[i % 2] or not isinstance(content, str):
            return None
        turns.append(f"{HH_SPEAKERS[role]}: {content.strip()}")
    return "\n\n".join(turns)


def format_cai_harmless(raw: dict, rng: random.Random, *,
                        single_turn: bool = False) -> dict | str | None:
    """CAI-harmless pair (``chosen`` / ``rejected``: lists of ``{"role", "content"}`` messages,
    the same conversation ending in the revised and the initial reply) -> the HH-style
    ``{"prompt": "Human: ...\\n\\nAssistant:", "chosen", "rejected"}`` of
    :func:`format_hh_preference`. None when the two lists differ before their last message,
    do not end in an assistant reply, or the replies are empty or identical."""
    chosen, rejected = raw.get("chosen") or [], raw.get("rejected") or []
    if len(chosen) < 2 or chosen[:-1] != rejected[:-1] or len(chosen) != len(rejected):
        return None
    if chosen[-1].get("role") != "assistant" or rejected[-1].get("role") != "assistant":
        return None
    transcript = hh_transcript(chosen)
    if transcript is None or hh_transcript(rejected) is None:
        return None
    if single_turn and len(chosen) != 2:
        return MULTI_TURN
    good, bad = chosen[-1]["content"].strip(), rejected[-1]["content"].strip()
    if not good or not bad or good == bad:
        return None
    prompt = transcript[: len(transcript) - len(good)].rstrip()
    return {"prompt": prompt, "chosen": good, "rejected": bad}


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_imdb(text: str) -> str:
    """IMDB reviews carry HTML line breaks (``<br /><br />``): make them spaces."""
    return " ".join(_BR.sub(" ", text).split())


def format_imdb(raw: dict, rng: random.Random) -> dict | None:
    """Review text; label 1 = positive (the unlabeled ``unsupervised`` rows, -1, are dropped)."""
    if raw["label"] not in (0, 1):
        return None
    return {"text": clean_imdb(raw["text"]), "label": int(raw["label"])}


def format_imdb_prompt(raw: dict, rng: random.Random, *, prefix_words: int = 8) -> dict:
    """The first ``prefix_words`` words of a review as the prompt (W2S search's sentiment
    setting), the review as reference, its sentiment label kept."""
    if not isinstance(prefix_words, int) or prefix_words < 1:
        raise W2SError(f"prefix_words must be a positive integer (got {prefix_words!r})")
    text = clean_imdb(raw["text"])
    return {"prompt": first_words(text, prefix_words), "reference": text,
            "label": int(raw["label"])}


def format_alpaca_eval(raw: dict, rng: random.Random) -> dict:
    """AlpacaEval: prompt = instruction, reference = the reference model's output."""
    return {"prompt": raw["instruction"], "reference": raw.get("output"),
            "subset": raw.get("dataset")}


# --------------------------------------------------------------------------------------------
# loading


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) is set to a true value."""
    values = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(v.strip().upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def is_cached(task: str) -> bool:
    """Whether the task's dataset is in the local Hugging Face caches (no network, no import of
    ``datasets``). A cached repository may still lack a split or config; loading tells."""
    source = HUB_TASKS[task].source
    from huggingface_hub import constants

    if source.file:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source.path, source.file, repo_type="dataset"),
                          str)
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE")
                          or Path(constants.HF_HOME) / "datasets")
    hub_dir = Path(constants.HF_HUB_CACHE) / ("datasets--" + source.path.replace("/", "--"))
    return hub_dir.is_dir() or (datasets_cache / source.path.replace("/", "___")).is_dir()


def load_hub(task: str, *, split: str = "train", n: int | None = None, seed: int = 0,
             **options) -> TaskData:
    """Load one split of a hub task, format it, and take a seeded sample of ``n`` rows.

    With ``n``, only the sampled raw rows are formatted (amazon_polarity has 3.6M); rows the
    formatter drops are replaced by the next ones of the permutation, so you get ``n`` rows
    while the split has them.
    """
    spec = HUB_TASKS[task]
    allowed = _formatter_options(spec.formatter)
    for key in options:
        if key not in allowed:
            raise W2SError(f"task '{task}' has no option '{key}'{did_you_mean(key, allowed)} "
                           f"(its options: {', '.join(allowed) or 'none'})")
    fmt = partial(spec.formatter, **options)
    if n is not None and n < 0:
        raise W2SError(f"n must be >= 0 (got {n}); pass the number of rows to use")
    raw_rows = _load_split(spec, split)
    total = len(raw_rows)
    candidates = enumerate(raw_rows) if n is None else _in_order(raw_rows, permutation(total, seed))
    rows, dropped = [], {"unusable": 0}
    for index, raw in candidates:
        if n is not None and len(rows) == n:
            break
        fields = fmt(raw, random.Random(f"{task}:{seed}:{split}:{index}"))
        if isinstance(fields, str):  # usable, but an option leaves it out
            dropped[fields] = dropped.get(fields, 0) + 1
            continue
        row = None if fields is None else {"id": f"{split}-{index}", **fields}
        if row is None or row_problem(row, spec.kind):
            dropped["unusable"] += 1
            continue
        rows.append((index, row))
    rows.sort(key=lambda pair: pair[0])
    meta = {"source": "hub", "hub_id": spec.source.path, "hub_split": _hub_split(spec, split),
            "split": split, "rows_in_split": total, "dropped": dropped, "seed": seed,
            "prompt_format": spec.prompt_format, "options": options}
    if spec.label_names:
        meta["label_names"] = list(spec.label_names)
    if n is not None:
        meta["subset"] = {"n": n, "seed": seed, "of": total}
    return TaskData(task, spec.kind, [row for _, row in rows], meta)


def _in_order(raw_rows: Any, order: list[int], chunk: int = 1024):
    """Yield ``(index, raw row)`` in ``order``, fetching a chunk at a time."""
    for start in range(0, len(order), chunk):
        indices = order[start:start + chunk]
        if hasattr(raw_rows, "select"):  # a datasets.Dataset: one indexed read per chunk
            yield from zip(indices, raw_rows.select(indices), strict=True)
        else:
            yield from ((i, raw_rows[i]) for i in indices)


def options_of(task: str) -> list[str]:
    """The options ``load_task(task, **options)`` takes: its formatter's keyword arguments."""
    return _formatter_options(HUB_TASKS[task].formatter)


def _formatter_options(formatter: Callable) -> list[str]:
    import inspect

    params = inspect.signature(formatter).parameters
    return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


def _hub_split(spec: HubTask, split: str) -> str:
    return spec.source.splits.get(split, split)


def _load_split(spec: HubTask, split: str) -> Any:
    """The raw split: a ``datasets.Dataset`` (or a list of dicts for a single-file source)."""
    source, hub_split = spec.source, _hub_split(spec, split)
    try:
        if source.file:
            if split not in source.splits:
                raise W2SError(f"task '{spec.name}' has no split '{split}'; it has only "
                               f"{', '.join(sorted(source.splits))}")
            from huggingface_hub import hf_hub_download

            local = hf_hub_download(source.path, source.file, repo_type="dataset",
                                    revision=source.revision)
            with open(local, encoding="utf-8") as f:
                return json.load(f)
        import datasets

        if isinstance(source.name, tuple):  # MATH's subjects, one config each
            return datasets.concatenate_datasets([
                datasets.load_dataset(source.path, name, data_dir=source.data_dir,
                                      revision=source.revision, split=hub_split)
                for name in source.name])
        return datasets.load_dataset(source.path, source.name, data_dir=source.data_dir,
                                     revision=source.revision, split=hub_split)
    except W2SError:
        raise
    except Exception as e:  # noqa: BLE001 - anything the hub/datasets stack raises is reported
        if not _is_hub_failure(e):
            raise
        raise _hub_error(spec, split, e) from None


def _is_hub_failure(err: Exception) -> bool:
    """Errors that mean "could not get this dataset/split", as datasets and huggingface_hub
    raise them (connection, offline, not found, unknown split, gated) - not bugs."""
    from datasets.exceptions import DatasetsError

    return isinstance(err, (OSError, ValueError, RuntimeError, DatasetsError))


def _hub_error(spec: HubTask, split: str, err: Exception) -> W2SError:
    path = spec.source.path
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if hub_offline() and isinstance(err, (ConnectionError, FileNotFoundError)):
        return W2SError(
            f"dataset '{path}' (task '{spec.name}') is not in the local Hugging Face cache and "
            "HF_HUB_OFFLINE=1; load it once with hub access (unset HF_HUB_OFFLINE) to cache it, "
            "or use an offline task (`w2s tasks`: toy-*, multiemo, strategyqa, local:PATH)")
    return W2SError(f"could not load split '{split}' of dataset '{path}' (task '{spec.name}'): "
                    f"{reason}; check the split name, the network, and `huggingface-cli login` "
                    "for gated datasets")


# --------------------------------------------------------------------------------------------
# the registry


def _register(task: HubTask, **fixed) -> None:
    HUB_TASKS[task.name] = task
    register_task(task.name, kind=task.kind, source="hub", description=task.description,
                  hub_id=task.source.path, license=task.license, notes=task.notes,
                  **fixed)(partial(load_hub, task.name))


VALIDATION_AS_TEST = {"train": "train", "test": "validation", "validation": "validation"}

_register(HubTask("sciq", "classification", HubSource("allenai/sciq"), format_sciq,
                  "science question + right answer or a distractor (W2S generalization)",
                  "CC-BY-NC-3.0", ("wrong answer", "right answer")))
_register(HubTask("boolq", "classification", HubSource("google/boolq", splits=VALIDATION_AS_TEST),
                  format_boolq, "passage + yes/no question; test = validation",
                  "CC-BY-SA-3.0", ("false", "true")))
_register(HubTask("cosmos_qa", "classification",
                  HubSource("allenai/cosmos_qa", revision="refs/convert/parquet",
                            splits=VALIDATION_AS_TEST),
                  format_cosmos_qa, "context + question + true or other answer; test = validation",
                  "CC-BY-4.0", ("wrong answer", "right answer"),
                  notes="'None of the above choices .' items always get label 0 (openai code)"))
_register(HubTask("amazon_polarity", "classification", HubSource("fancyzhx/amazon_polarity"),
                  format_amazon_polarity, "product review title + text, positive vs negative",
                  "Apache-2.0", ("negative", "positive")))
_register(HubTask("anthropic_hh", "classification", HubSource("Anthropic/hh-rlhf"),
                  format_anthropic_hh,
                  "HH-RLHF as a pairwise task: conversation + two replies, label 1 = B better",
                  "MIT", ("A better", "B better")))
_register(HubTask("hh-helpful", "preference",
                  HubSource("Anthropic/hh-rlhf", data_dir="helpful-base"), format_hh_preference,
                  "HH-RLHF helpful-base pairs (prompt = transcript up to the last reply)", "MIT",
                  prompt_format="hh", notes="option single_turn"))
_register(HubTask("hh-harmless", "preference",
                  HubSource("Anthropic/hh-rlhf", data_dir="harmless-base"), format_hh_preference,
                  "HH-RLHF harmless-base pairs (prompt = transcript up to the last reply)", "MIT",
                  prompt_format="hh", notes="option single_turn"))
_register(HubTask("cai", "preference",
                  HubSource("HuggingFaceH4/cai-conversation-harmless",
                            splits={"train": "train_prefs", "test": "test_prefs"}),
                  format_cai_harmless,
                  "CAI-harmless pairs: revised (chosen) vs initial reply, as HH transcripts "
                  "(W2S deception)", "Apache-2.0", prompt_format="hh",
                  notes="splits train_prefs/test_prefs; option single_turn"))
_register(HubTask("pku-saferlhf", "preference", HubSource("PKU-Alignment/PKU-SafeRLHF"),
                  format_pku_saferlhf, "PKU-SafeRLHF pairs, chosen = the safer response",
                  "CC-BY-NC-4.0"), by="safer")
_register(HubTask("pku-saferlhf-helpful", "preference",
                  HubSource("PKU-Alignment/PKU-SafeRLHF"), format_pku_saferlhf,
                  "PKU-SafeRLHF pairs, chosen = the more helpful response", "CC-BY-NC-4.0"),
          by="better")
_register(HubTask("ultrafeedback", "preference",
                  HubSource("HuggingFaceH4/ultrafeedback_binarized",
                            splits={"train": "train_prefs", "test": "test_prefs"}),
                  format_ultrafeedback, "UltraFeedback binarized pairs (train_prefs/test_prefs)",
                  "MIT"))
_register(HubTask("imdb", "classification", HubSource("stanfordnlp/imdb"), format_imdb,
                  "IMDB movie reviews, positive vs negative", "see dataset card",
                  ("negative", "positive")))
_register(HubTask("imdb-prompts", "prompts", HubSource("stanfordnlp/imdb"), format_imdb_prompt,
                  "first 8 words of IMDB reviews as prompts (W2S search sentiment setting)",
                  "see dataset card", notes="option prefix_words (default 8)"))
_register(HubTask("alpaca_eval", "prompts",
                  HubSource("tatsu-lab/alpaca_eval", splits={"test": "eval", "eval": "eval"},
                            file="alpaca_eval.json"),
                  format_alpaca_eval, "AlpacaEval instructions with reference outputs (eval only)",
                  "CC-BY-NC-4.0"))
