"""``w2s generate --benchmark``: a model's answers to a benchmark's prompts, in the format the
benchmark's own tools read.

=============  =====================================  ==========================================
benchmark      prompts (hub, or ``--prompts PATH``)   answers written
=============  =====================================  ==========================================
alpacaeval     ``alpaca_eval.json`` of the hub         ``model_outputs.json``: a JSON list of
               dataset ``tatsu-lab/alpaca_eval``       ``{instruction, output, generator,
               (805 instructions, in order)            dataset}`` in the eval set's order
mtbench        FastChat's ``question.jsonl`` (hub:     ``model_answer.jsonl``: FastChat's answer
               ``lighteval/mt-bench``), two turns      rows ``{question_id, answer_id, model_id,
                                                       choices: [{index, turns}], tstamp}``
arenahard      ``question.jsonl`` (hub:                ``model_answer.jsonl``: Arena-Hard's v0.1
               ``lmarena-ai/arena-hard-auto-v0.1``)    rows ``{question_id, answer_id, model_id,
                                                       choices: [{index, turns: [{content}]}],
                                                       conv_metadata, tstamp}``
=============  =====================================  ==========================================

How each benchmark's own generation script samples, and so the defaults here:

- MT-Bench (FastChat ``gen_model_answer.py``): a temperature per category (writing and roleplay
  0.7, stem and humanities 0.1, the rest 0: greedy), up to 1024 new tokens; turn 2 is asked
  in the conversation that holds turn 1 and the model's own answer to it.
- AlpacaEval and Arena-Hard leave sampling to the model's config; here greedy, up to 2048
  (AlpacaEval) / 4096 (Arena-Hard) new tokens. ``--temperature`` and ``--max-new-tokens``
  override any of these, and the run records what was used.

The model must have a chat template (these benchmarks ask a chat model); the template's text and
hash are recorded in the run's ``env.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from w2s.errors import W2SError

BENCHMARKS = ("alpacaeval", "mtbench", "arenahard")
ALPACAEVAL_HUB, ALPACAEVAL_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval.json"
ARENAHARD_HUB = "lmarena-ai/arena-hard-auto-v0.1"
MAX_NEW_TOKENS = {"alpacaeval": 2048, "mtbench": 1024, "arenahard": 4096}
ANSWER_FILE = {"alpacaeval": "model_outputs.json", "mtbench": "model_answer.jsonl",
               "arenahard": "model_answer.jsonl"}


# --------------------------------------------------------------------------------------------
# prompts: [{"id", "category", "turns": [user turn, ...], "source": the row as read}]


def load_prompts(benchmark: str, path: str | Path | None = None) -> list[dict[str, Any]]:
    """The benchmark's prompts from ``path`` (its own file format), else from the hub."""
    if benchmark not in BENCHMARKS:
        raise W2SError(f"unknown benchmark '{benchmark}'; use one of {', '.join(BENCHMARKS)}")
    if benchmark == "mtbench":
        from w2s.evaluation.benchmarks.mtbench import load_questions

        return [{"id": q["question_id"], "category": q["category"], "turns": list(q["turns"]),
                 "source": q} for q in load_questions(path)]
    rows = _read(path) if path is not None else _hub_rows(benchmark)
    where = str(path) if path is not None else (ALPACAEVAL_HUB if benchmark == "alpacaeval"
                                                else ARENAHARD_HUB)
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise W2SError(f"{where}: row {i} is not a JSON object")
        if benchmark == "alpacaeval":
            text = row.get("instruction", row.get("prompt"))
            if not isinstance(text, str) or not text.strip():
                raise W2SError(f"{where}: row {i} has no instruction (AlpacaEval's eval set "
                               "rows: instruction, dataset)")
            out.append({"id": i - 1, "category": row.get("dataset"), "turns": [text],
                        "source": row})
        else:
            qid = row.get("uid", row.get("question_id"))
            text = row.get("prompt")
            if text is None:
                try:
                    text = row["turns"][0]["content"]
                except (KeyError, IndexError, TypeError):
                    text = None
            if qid is None or not isinstance(text, str):
                raise W2SError(f"{where}: row {i} needs question_id (or uid) and turns[0]."
                               "content (or prompt), Arena-Hard's question format")
            out.append({"id": qid, "category": row.get("category"), "turns": [text],
                        "source": row})
    if not out:
        raise W2SError(f"{where}: no prompts")
    return out


def _read(path: str | Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise W2SError(f"--prompts {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise W2SError(f"{path}: expected a JSON list of prompt rows")
            return rows
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise W2SError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _hub_rows(benchmark: str) -> list[dict]:
    try:
        if benchmark == "alpacaeval":
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(ALPACAEVAL_HUB, ALPACAEVAL_FILE,
                                                   repo_type="dataset")).read_text())
        import datasets

        return [dict(r) for r in datasets.load_dataset(ARENAHARD_HUB, split="train")]
    except Exception as e:  # offline, not cached: one line
        hub = ALPACAEVAL_HUB if benchmark == "alpacaeval" else ARENAHARD_HUB
        raise W2SError(f"{benchmark} prompts: cannot load the hub dataset {hub} (offline or not "
                       f"in the Hugging Face cache: {type(e).__name__}); pass --prompts PATH "
                       "(the benchmark's own prompt file)") from None


# --------------------------------------------------------------------------------------------
# generation


def temperature_for(benchmark: str, category: str | None, override: float | None) -> float:
    """The sampling temperature of one prompt: ``override``, else MT-Bench's per category
    (0.7 for categories it does not list, as FastChat), else 0 (greedy)."""
    if override is not None:
        return float(override)
    if benchmark == "mtbench":
        from w2s.evaluation.benchmarks.mtbench import ANSWER_TEMPERATURES

        return float(ANSWER_TEMPERATURES.get(category, 0.7))
    return 0.0


def answer_prompts(model, tokenizer, prompts: list[dict], benchmark: str, *,
                   max_new_tokens: int, temperature: float | None = None, batch_size: int = 8,
                   seed: int = 0, backend: str = "hf", model_name: str | None = None,
                   progress: bool | None = None) -> list[list[str]]:
    """Every prompt's answers, one per user turn. Prompts sampled at one temperature are
    generated together; turn k of a conversation is asked after the model's own answers to
    turns 1..k-1."""
    from w2s.models.generate import SamplingConfig, generate

    answers: list[list[str]] = [[] for _ in prompts]
    n_turns = max(len(p["turns"]) for p in prompts)
    for turn in range(n_turns):
        groups: dict[float, list[int]] = {}
        for i, p in enumerate(prompts):
            if turn < len(p["turns"]):
                groups.setdefault(temperature_for(benchmark, p["category"], temperature),
                                  []).append(i)
        for temp, rows in groups.items():
            conversations = []
            for i in rows:
                messages = []
                for k, user in enumerate(prompts[i]["turns"][:turn + 1]):
                    messages.append({"role": "user", "content": user})
                    if k < turn:
                        messages.append({"role": "assistant", "content": answers[i][k]})
                conversations.append(messages)
            sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temp,
                                      batch_size=batch_size, seed=seed)
            out = generate(model, tokenizer, conversations, sampling, backend=backend,
                           model_name=model_name, progress=progress)
            for i, text in zip(rows, out, strict=True):
                answers[i].append(text.strip())
    return answers


# --------------------------------------------------------------------------------------------
# answer files


def answer_rows(benchmark: str, prompts: list[dict], answers: list[list[str]],
                generator: str) -> list[dict]:
    """The answers as rows of the benchmark's own answer format."""
    from w2s.runs import content_hash

    now = time.time()
    if benchmark == "alpacaeval":
        return [{"instruction": p["turns"][0], "output": a[0], "generator": generator,
                 "dataset": p["source"].get("dataset")}
                for p, a in zip(prompts, answers, strict=True)]
    if benchmark == "mtbench":
        from w2s.evaluation.benchmarks.mtbench import answer_record

        return [answer_record(p["id"], generator, a, tstamp=now)
                for p, a in zip(prompts, answers, strict=True)]
    from w2s.evaluation.benchmarks.arenahard import markdown_counts

    rows = []
    for p, a in zip(prompts, answers, strict=True):
        row = {"question_id": p["id"], "model_id": generator,
               "choices": [{"index": 0, "turns": [{"content": a[0]}]}]}
        rows.append({**row, "answer_id": content_hash(row, 22),
                     "conv_metadata": markdown_counts(a[0]), "tstamp": now})
    return rows


def write_answer_file(path: str | Path, benchmark: str, rows: list[dict]) -> Path:
    """``rows`` written atomically in the benchmark's file format (JSON list or JSONL)."""
    from w2s.runs import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if benchmark == "alpacaeval":
        atomic_write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    else:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def generate_benchmark_answers(model: str, benchmark: str, *, prompts: str | Path | None = None,
                               out: str | Path | None = None, name: str | None = None,
                               limit: int | None = None, backend: str = "hf",
                               max_new_tokens: int | None = None,
                               temperature: float | None = None, batch_size: int = 8,
                               device: str = "auto", dtype: str = "auto", seed: int = 0,
                               run_dir: str | Path | None = None) -> tuple[dict, Path]:
    """What ``w2s generate --benchmark`` does: load the prompts and the model, answer every
    prompt, write the answer file (into the run directory, and to ``out`` when given) and a
    ``generate`` run directory recording the model, its chat template, the sampling and the
    counts. Returns ``(metrics, run path)``; bad input fails before the run directory exists."""
    from w2s.models import load_causal_lm
    from w2s.models.generate import pick_backend
    from w2s.runs import Run, content_hash

    if limit is not None and limit < 1:
        raise W2SError(f"--limit must be >= 1, got {limit}")
    rows = load_prompts(benchmark, prompts)[:limit]
    new_tokens = max_new_tokens or MAX_NEW_TOKENS[benchmark]
    if new_tokens < 1:
        raise W2SError(f"--max-new-tokens must be >= 1, got {new_tokens}")
    if temperature is not None and temperature < 0:
        raise W2SError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    lm, tok = load_causal_lm(model, device=device, dtype=dtype, seed=seed)
    template = getattr(tok, "chat_template", None)
    if not template:
        raise W2SError(f"{model} has no chat template; {benchmark} asks a chat model (use an "
                       "instruct model, or add a chat template to its tokenizer)")
    backend = pick_backend(backend)
    generator = name or Path(str(model)).name.replace(":", "-")
    config = {"model": model, "benchmark": benchmark, "prompts": str(prompts) if prompts else None,
              "name": generator, "limit": limit, "backend": backend,
              "max_new_tokens": new_tokens, "temperature": temperature,
              "batch_size": batch_size, "device": device, "dtype": dtype, "seed": seed,
              "out": str(out) if out else None}
    env = {"chat_template": template, "chat_template_hash": content_hash(template),
           "n_prompts": len(rows),
           "prompts_hash": content_hash([[r["id"], r["turns"]] for r in rows])}
    with Run.start("generate", config, run_dir=run_dir, headline=("n_answers",),
                   env_extra=env) as run:
        started = time.perf_counter()
        answers = answer_prompts(lm, tok, rows, benchmark, max_new_tokens=new_tokens,
                                 temperature=temperature, batch_size=batch_size, seed=seed,
                                 backend=backend, model_name=model)
        elapsed = time.perf_counter() - started
        records = answer_rows(benchmark, rows, answers, generator)
        path = write_answer_file(run.path / ANSWER_FILE[benchmark], benchmark, records)
        if out:
            write_answer_file(out, benchmark, records)
        temps = sorted({temperature_for(benchmark, r["category"], temperature) for r in rows})
        metrics = {"benchmark": benchmark, "model": model, "generator": generator,
                   "n_answers": sum(len(a) for a in answers), "n_prompts": len(rows),
                   "answers": str(path), "out": str(out) if out else None,
                   "temperatures": temps, "max_new_tokens": new_tokens, "backend": backend,
                   "empty_answers": sum(not t for a in answers for t in a),
                   "elapsed_s": round(elapsed, 2)}
        full = run.finish(metrics)
    return full, run.path
