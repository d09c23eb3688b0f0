"""AlpacaEval 2: the length-controlled win rate, as AlpacaEval computes it.

AlpacaEval 2 (Dubois et al. 2024) compares a model's answers to a baseline's (GPT-4 Turbo's) on
its 805 instructions. A judge gives each instruction a preference in [1, 2] (2: the model wins);
the raw win rate is the mean of ``preference - 1`` in percent. LLM judges like long answers, so
the headline figure is LENGTH-CONTROLLED: AlpacaEval fits a logistic GLM

    logit P(model wins) = a * tanh(std_delta_len) + b * instruction_difficulty + c * not_gamed

where ``std_delta_len`` is (baseline length - model length) in characters divided by its
standard deviation over the instructions, ``instruction_difficulty`` is a precomputed
per-instruction constant, and ``not_gamed`` is 1 for the model's rows. The fit also sees the
annotations of two "gamed" baselines (the baseline prompted to be concise / verbose, rows with
``not_gamed = 0``, weight 0.1 each) which regularise the length coefficient toward the
baseline's own. The coefficients are L1-penalised, the penalty chosen by 5-fold cross-validation.
The LC win rate is the mean prediction with the length difference set to zero.

This module does not re-derive that fit: it calls the ``alpaca-eval`` package's own
``get_length_controlled_winrate`` (install ``w2s[alpacaeval]``), handing it the annotations in
its format and the precomputed file it reads, ``df_gamed.csv`` (the instruction difficulties and
the gamed baselines' annotations, from the hub dataset ``tatsu-lab/alpaca_eval``, or a local
copy). AlpacaEval identifies an instruction by its POSITION in the eval set, so the baseline's
outputs (AlpacaEval's own reference outputs are) must list the instructions in that order.

:func:`w2s.evaluation.winrate.length_controlled_win_rate` (``lc_win_rate_minimal`` here) is a
different, smaller figure: AlpacaEval's minimal length GLM, for prompt sets that have no
precomputed difficulties.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from w2s.errors import W2SError

HUB_DATASET = "tatsu-lab/alpaca_eval"
GAMED_FILE = "df_gamed.csv"
"""AlpacaEval's precomputed file: per-instruction difficulty and the gamed baselines' rows."""
GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty",
                 "not_gamed_baseline", "model")
GLM_NAME = "length_controlled_v1"
LC_METHOD = "alpacaeval length_controlled_v1 (alpaca-eval package)"
INSTALL = "pip install 'w2s[alpacaeval]'"


def gamed_file(data: str | Path | None = None) -> Path:
    """Where ``df_gamed.csv`` is: ``data`` (the file, or a folder holding it), else the hub
    dataset ``tatsu-lab/alpaca_eval`` (downloaded once into the Hugging Face cache).

    Offline without a local copy this is a one-line W2SError naming the file and the fix.
    """
    if data is not None:
        path = Path(data)
        path = path / GAMED_FILE if path.is_dir() else path
        if not path.is_file():
            raise W2SError(f"--alpacaeval-data {data}: no {GAMED_FILE} there; give the file or "
                           f"the folder holding it (from the hub dataset {HUB_DATASET})")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(repo_id=HUB_DATASET, filename=GAMED_FILE,
                                        repo_type="dataset"))
        except Exception as exc:  # offline, no such file, no hub client: one line either way
            raise W2SError(
                f"AlpacaEval 2's LC win rate needs {GAMED_FILE} (instruction difficulties and "
                f"gamed baselines) from the hub dataset {HUB_DATASET}, which could not be "
                f"fetched ({type(exc).__name__}); download it once and pass "
                "--alpacaeval-data DIR") from None
    _check_gamed(path)
    return path


def _check_gamed(path: Path) -> None:
    import pandas as pd

    try:
        columns = set(pd.read_csv(path, nrows=1).columns)
    except Exception as exc:
        raise W2SError(f"{path}: not a CSV file ({type(exc).__name__}); give AlpacaEval's "
                       f"{GAMED_FILE}") from None
    missing = [c for c in GAMED_COLUMNS if c not in columns]
    if missing:
        raise W2SError(f"{path}: no column {', '.join(missing)}; this is not AlpacaEval's "
                       f"{GAMED_FILE}")


def _glm_module():
    try:
        with _quiet():
            import alpaca_eval.metrics.glm_winrate as glm
    except ImportError as exc:
        raise W2SError(f"AlpacaEval 2's LC win rate is computed by the alpaca-eval package, "
                       f"which is not installed ({exc.name}): {INSTALL}, or use "
                       "`w2s eval winrate` for the minimal length GLM") from None
    return glm


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The package's deprecation warnings and log lines stay out of the user's terminal."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def alpacaeval_lc(preferences: Sequence[float], model_outputs: Sequence[str],
                  baseline_outputs: Sequence[str], positions: Sequence[int], *,
                  gamed: str | Path | None = None, generator: str = "model",
                  baseline: str = "baseline", annotator: str = "w2s") -> dict[str, Any]:
    """AlpacaEval 2's figures for one model against the baseline, from the package itself.

    Args:
        preferences: per instruction, in [1, 2]: 1 the baseline wins, 2 the model wins, 1.5 a
            tie (AlpacaEval's encoding; 0 also reads as a tie).
        model_outputs, baseline_outputs: the two answers per instruction (lengths in characters
            enter the GLM).
        positions: each instruction's position in AlpacaEval's eval set (0-based), which is how
            the package finds its difficulty in ``df_gamed.csv``.
        gamed: ``df_gamed.csv`` or its folder; None: from the hub (:func:`gamed_file`).

    Returns ``{"win_rate", "win_rate_se", "lc_win_rate", "lc_win_rate_se", "n_wins",
    "n_wins_base", "n_draws", "n_total", "discrete_win_rate", "lc_extreme_change",
    "lc_warning", "lc_win_rate_method"}``, percentages in [0, 100].
    """
    import pandas as pd

    n = len(preferences)
    if not n or not (len(model_outputs) == len(baseline_outputs) == len(positions) == n):
        raise W2SError(f"AlpacaEval LC needs one preference, two outputs and one position per "
                       f"instruction; got {n}, {len(model_outputs)}, {len(baseline_outputs)}, "
                       f"{len(positions)}")
    if len(set(positions)) != n:
        raise W2SError("AlpacaEval LC: two rows have the same instruction position; each "
                       "instruction is judged once")
    glm = _glm_module()
    path = gamed_file(gamed)
    known = set(pd.read_csv(path, usecols=["index"])["index"])
    unknown = sorted(set(positions) - known)
    if unknown:
        raise W2SError(f"instruction position {unknown[0]} is not in {path.name} (which covers "
                       f"{len(known)} instructions); the baseline file must list AlpacaEval's "
                       "eval set in its own order")
    # the package reads each row's instruction from the frame's index (reset_index -> "index")
    df = pd.DataFrame({"preference": [float(p) for p in preferences],
                       "output_1": list(baseline_outputs), "output_2": list(model_outputs),
                       "generator_1": baseline, "generator_2": generator,
                       "annotator": annotator}, index=pd.Index(list(positions)))

    def download(**kwargs: Any) -> str:
        if kwargs.get("filename") != GAMED_FILE:
            raise W2SError(f"alpaca-eval asked for {kwargs.get('filename')}, which w2s does not "
                           f"provide; only {GAMED_FILE} is needed for the LC win rate")
        return str(path)

    with _quiet(), _patched(glm, "hf_hub_download", download):
        m = glm.get_length_controlled_winrate(df, glm_name=GLM_NAME, save_weights_dir=None,
                                              is_warn_extreme_changes=False)
    raw, lc = float(m["win_rate"]), float(m["length_controlled_winrate"])
    extreme = bool(glm.get_is_extreme_changes(raw, lc))
    return {"win_rate": raw, "win_rate_se": _num(m["standard_error"]),
            "lc_win_rate": lc, "lc_win_rate_se": _num(m["lc_standard_error"]),
            "n_wins": int(m["n_wins"]), "n_wins_base": int(m["n_wins_base"]),
            "n_draws": int(m["n_draws"]), "n_total": int(m["n_total"]),
            "discrete_win_rate": float(m["discrete_win_rate"]),
            "lc_extreme_change": extreme,
            # AlpacaEval's own warning, word for word
            "lc_warning": (f"Length controlled win rate is very different from the raw one: "
                           f"{lc:.1f}% vs {raw:.1f}%. This might be a sign of failure of the GLM."
                           if extreme else None),
            "lc_win_rate_method": LC_METHOD}


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


# --------------------------------------------------------------------------------------------
# AlpacaEval 2's own annotator: weighted_alpaca_eval_gpt4_turbo

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
ANNOTATOR_TEMPLATE = '<|im_start|>system\nYou are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.\n<|im_end|>\n<|im_start|>user\nI require a leaderboard for various large language models. I\'ll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.\n\n## Instruction\n\n{\n    "instruction": """{instruction}""",\n}\n\n## Model Outputs\n\nHere are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.\n\n{\n    {\n        "model_identifier": "m",\n        "output": """{output_1}"""\n    },\n    {\n        "model_identifier": "M",\n        "output": """{output_2}"""\n    }\n}\n\n## Task\n\nEvaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.\n\n## Best Model Identifier\n<|im_end|>'
"""AlpacaEval's ``evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``, verbatim:
ChatML turns, the placeholders ``{instruction}``, ``{output_1}``, ``{output_2}`` (output_1 shown
as model ``m``, output_2 as ``M``)."""
ANNOTATOR_TOKENS = ("m", "M")
ANNOTATOR_SEED = 123
"""The seed of AlpacaEval's ``RandomSwitchTwoColumnsProcessor`` (its processors' default)."""


def annotator_messages(instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    """The annotator's prompt as chat messages, as AlpacaEval builds it: each placeholder's
    first occurrence replaced in order (instruction, output_1, output_2), then the ChatML text
    split into turns with their content stripped."""
    text = ANNOTATOR_TEMPLATE
    for key, value in (("instruction", instruction), ("output_1", output_1),
                       ("output_2", output_2)):
        text = text.replace("{" + key + "}", str(value), 1)
    messages = []
    for part in text.strip().split("<|im_start|>")[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


def is_switched(instruction: str, seed: int = ANNOTATOR_SEED) -> bool:
    """Whether AlpacaEval shows the two outputs swapped for this instruction (its
    ``random_seeded_choice`` over ``[False, True]``, seeded by column name, instruction, seed)."""
    import random

    return random.Random("is_switched_outputs" + instruction + str(seed)).choices(
        [False, True], k=1)[0]


def preference_from_logprobs(logprobs: dict[str, float]) -> float:
    """AlpacaEval's ``logprob_parser`` (numerator ``m``, denominator ``m``, ``M``, not
    binarised) on the shown order: ``2 - p(m) / (p(m) + p(M))``, a token not in the judge's top
    log-probs counting as probability 0; NaN when neither is there."""
    lm, lM = logprobs.get("m", -math.inf), logprobs.get("M", -math.inf)
    if lm == -math.inf and lM == -math.inf:
        return math.nan
    top = max(lm, lM)
    return 2.0 - math.exp(lm - (top + math.log(math.exp(lm - top) + math.exp(lM - top))))


def annotate(judge, pairs: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """AlpacaEval 2's preferences for ``(instruction, model output, baseline output)`` triples
    from a judge that reads first-token log-probs (``api:``, ``llm:``): output_1 is the baseline,
    output_2 the model, shown swapped where :func:`is_switched`; the preference (1 baseline .. 2
    model) undoes the swap as AlpacaEval does (``3 - x``)."""
    template = f"{ANNOTATOR}@{_hash(ANNOTATOR_TEMPLATE)}"
    shown, convs = [], []
    for instruction, model, base in pairs:
        swap = is_switched(instruction)
        first, second = (model, base) if swap else (base, model)
        shown.append(swap)
        convs.append(annotator_messages(instruction, first, second))
    out = judge.reply_logprobs(convs, ANNOTATOR_TOKENS, template=template)
    rows = []
    for swap, res in zip(shown, out, strict=True):
        p = preference_from_logprobs(res["logprobs"])
        rows.append({"preference": 3.0 - p if swap else p, "switched": swap,
                     "logprobs": res["logprobs"], "cached": res["cached"]})
    return rows


def _hash(text: str) -> str:
    from w2s.runs import content_hash

    return content_hash(text, 8)


ANNOTATORS = ("auto", "alpacaeval", "pairwise")


def judge_alpacaeval(built, pairs: list[tuple[str, dict, dict]], annotator: str = "auto"
                     ) -> tuple[list[float], list[dict]]:
    """Preferences (1 baseline .. 2 model; NaN: no readable judgment) and per-pair records.

    ``annotator``: ``alpacaeval`` (AlpacaEval 2's own annotator, :func:`annotate`: its prompt,
    one seeded order per instruction, the preference from the log-probs of ``m`` / ``M``; needs
    an ``api:`` or ``llm:`` judge), ``pairwise`` (the judge's own rule: both orders, or a reward
    judge's scores), ``auto`` (alpacaeval for api: / llm: judges, else pairwise)."""
    from w2s.evaluation.judges import writes_judgments
    from w2s.evaluation.winrate import judge_pairs

    if annotator not in ANNOTATORS:
        raise W2SError(f"unknown annotator '{annotator}'; use one of {', '.join(ANNOTATORS)}")
    if annotator == "auto":
        annotator = "alpacaeval" if writes_judgments(built) else "pairwise"
    if annotator == "pairwise":
        return judge_pairs(built, pairs)
    if not writes_judgments(built):
        raise W2SError(f"judge '{built.spec}' cannot be AlpacaEval's annotator, which reads the "
                       "log-probs of the judge's first reply token: use api:URL[#MODEL] or "
                       "llm:MODEL, or --annotator pairwise")
    judged = annotate(built, [(c["prompt"], c["response"], b["response"]) for _, c, b in pairs])
    prefs, rows = [], []
    for (key, c, b), j in zip(pairs, judged, strict=True):
        pref = j["preference"]
        prefs.append(pref)
        rows.append({"id": key, "prompt": c["prompt"], "candidate_length": len(c["response"]),
                     "baseline_length": len(b["response"]),
                     "preference": None if math.isnan(pref) else pref,
                     "annotator": ANNOTATOR, "switched": j["switched"],
                     "logprobs": j["logprobs"], "cached": j["cached"]})
    return prefs, rows


def _counts(prefs: list[float]) -> dict[str, int]:
    read = [p for p in prefs if not math.isnan(p)]
    return {"wins": sum(p > 1.5 for p in read), "ties": sum(p == 1.5 for p in read),
            "losses": sum(p < 1.5 for p in read), "n": len(read),
            "unreadable": len(prefs) - len(read)}


def eval_alpacaeval(candidate: str | Path, baseline: str | Path, judge: str, *,
                    alpacaeval_data: str | Path | None = None, annotator: str = "auto",
                    run_dir: str | Path | None = None, cache: Any = True,
                    judges: Sequence[str] = (), repeats: int = 1,
                    **judge_options: Any) -> tuple[dict[str, Any], Path]:
    """What ``w2s eval alpacaeval`` does: judge the candidate's answers against the baseline's
    (``annotator``: see :func:`judge_alpacaeval`), then AlpacaEval 2's figures; writes an
    ``alpacaeval`` run directory (config, judge identity, ``judgments.jsonl``,
    ``metrics.json``). Returns ``(metrics, run path)``. ``judges`` and ``repeats``: see
    :func:`w2s.evaluation.robust.run_judges` (the LC win rate is the figure compared).

    The baseline file sets each instruction's position in the eval set (its row order). Every
    input problem (files, judge, the package, ``df_gamed.csv``) is a W2SError raised before a
    run directory is kept.
    """
    from w2s.evaluation.generations import pair_generations, read_generations
    from w2s.evaluation.judges import build_judge, parse_judge
    from w2s.evaluation.robust import run_judges
    from w2s.evaluation.winrate import (
        LC_METHOD as MINIMAL_METHOD,
    )
    from w2s.evaluation.winrate import lc_win_rate_with_reason
    from w2s.runs import Run, file_hash

    specs = list(dict.fromkeys([judge, *judges]))
    for spec in specs:
        parse_judge(spec)
    if annotator not in ANNOTATORS:
        raise W2SError(f"unknown annotator '{annotator}'; use one of {', '.join(ANNOTATORS)}")
    _glm_module()                      # the package, and the file it needs, before any judging
    gamed = gamed_file(alpacaeval_data)
    cand_rows, base_rows = read_generations(candidate), read_generations(baseline)
    pairing = pair_generations(cand_rows, base_rows)
    position = {row[pairing.key]: i for i, row in enumerate(base_rows)}
    built = build_judge(judge, cache=cache, **judge_options)
    config = {"candidate": str(candidate), "baseline": str(baseline), "judge": judge,
              "judges": specs[1:], "judge_repeats": repeats, "annotator": annotator,
              "alpacaeval_data": str(alpacaeval_data) if alpacaeval_data else None,
              "judge_options": {k: v for k, v in judge_options.items() if v is not None},
              "cache": str(cache) if not isinstance(cache, bool) else cache}
    env = {"judge": built.identity(), "gamed_file": str(gamed),
           "data_hashes": {"candidate": file_hash(candidate), "baseline": file_hash(baseline),
                           GAMED_FILE: file_hash(gamed)}}
    generator = _name(cand_rows, Path(candidate).stem)
    with Run.start("alpacaeval", config, run_dir=run_dir, headline=("lc_win_rate",),
                   env_extra=env) as run:
        def once(j, name: str) -> tuple[dict, dict]:
            prefs, rows = judge_alpacaeval(j, pairing.pairs, annotator)
            for row, (key, _, _) in zip(rows, pairing.pairs, strict=True):
                row["position"] = position[key]
            figures = alpacaeval_lc(prefs, [c["response"] for _, c, _ in pairing.pairs],
                                    [b["response"] for _, _, b in pairing.pairs],
                                    [r["position"] for r in rows], gamed=gamed,
                                    generator=generator,
                                    baseline=_name(base_rows, Path(baseline).stem),
                                    annotator=j.spec)
            discrete = all(p in (1.0, 1.5, 2.0) for p in prefs)
            fit, reason = (lc_win_rate_with_reason(prefs, [r["candidate_length"] for r in rows],
                                                   [r["baseline_length"] for r in rows],
                                                   [r["prompt"] for r in rows]) if discrete else
                           (None, "the preferences are continuous (AlpacaEval's annotator); "
                                  "the minimal GLM takes 1, 1.5 or 2"))
            run.write_rows(name, rows)
            run.log({"stage": "alpacaeval", "judge": j.spec, "n": len(rows), "file": name,
                     "lc_win_rate": figures["lc_win_rate"], "win_rate": figures["win_rate"]})
            used = rows[0].get("annotator", "pairwise") if rows else annotator
            metrics = {**figures, **_counts(prefs), "generator": generator, "annotator": used,
                       "unmatched": pairing.report(),
                       "lc_win_rate_minimal": fit["lc_win_rate"] if fit else None,
                       "lc_win_rate_minimal_method": MINIMAL_METHOD,
                       "lc_win_rate_minimal_reason": reason,
                       "judge": j.identity(), "judge_kind": j.kind}
            return metrics, {r["id"]: r["preference"] for r in rows}

        def build(spec: str, repeat: int):
            if spec == judge and repeat == 0:
                return built
            return build_judge(spec, cache=cache, repeat=repeat, **judge_options)

        metrics = run_judges(specs, repeats, build, once, figure="lc_win_rate")
        full = run.finish(metrics)
    return full, run.path


def _name(rows: list[dict], fallback: str) -> str:
    """The ``generator`` an AlpacaEval file names (one per file), else the file's stem."""
    names = {r.get("generator") for r in rows} - {None}
    return names.pop() if len(names) == 1 else fallback
