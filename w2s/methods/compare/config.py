"""The config of ``w2s compare`` (torch-free): :class:`CompareConfig`, the catalogue of entries
(:data:`ENTRIES`) and how each entry's method config is made from the shared settings
(:func:`entry_recipes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from w2s.config import comma_list, config_class, derive, option, section
from w2s.config import validate as validate_config
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Lora, Runtime, Sampling, stage_train

MODES = ("lora", "full")
DEFAULT_JUDGE = "rm:OpenAssistant/reward-model-deberta-v3-large-v2"


@dataclass(frozen=True)
class Entry:
    """One line of the comparison: its group, the method whose ordinary run holds it (``run``
    names the run directory under ``entries/``; the search decoders share one run), what it is,
    and the entries it needs first."""

    group: str
    method: str
    run: str
    what: str
    needs: tuple[str, ...] = ()


ENTRIES: dict[str, Entry] = {
    "strong": Entry("reference", "compare", "strong", "the strong model as it is: the baseline "
                    "of every win rate"),
    "weak_aligned": Entry("reference", "compare", "weak_aligned", "the weak model aligned by DPO "
                          "on the gold pairs (or --weak-aligned): the weak supervisor"),
    "ceiling": Entry("reference", "compare", "ceiling", "the strong model trained by DPO on the "
                     "gold pairs: what full supervision reaches"),
    "naive_sft": Entry("training", "compare", "naive_sft", "naive W2S SFT: the strong model "
                       "fine-tuned on the weak aligned model's answers to the training prompts"),
    "weak_label": Entry("training", "weak-label", "weak_label", "the weak model as preference "
                        "labeller: the strong model by DPO on the weak model's labels"),
    "bon": Entry("decoding", "search", "search", "best-of-N of the strong model, scored by the "
                 "weak pair's log-ratio"),
    "cbs": Entry("decoding", "search", "search", "chunk-level beam search of the strong model, "
                 "scored by the weak pair (W2S search)"),
    "eft": Entry("decoding", "search", "search", "EFT / proxy-tuning: strong logits + (weak "
                 "aligned - weak) logits, token by token"),
    "genarm": Entry("decoding", "search", "search", "GenARM: strong logits + an autoregressive "
                    "reward model trained from the weak model on the gold pairs"),
    "wspo": Entry("training", "wspo", "wspo", "WSPO: the strong model learns the weak "
                  "alignment's log-ratios, amplified"),
    "macpo": Entry("training", "macpo", "macpo", "MACPO: weak teacher(s) and the strong student "
                   "learn from each other's contrastive answers"),
    "expo_wspo": Entry("training", "expo", "expo_wspo", "ExPO applied to the WSPO result: "
                       "strong + alpha (wspo - strong)", needs=("wspo",)),
    "expo_dpo": Entry("training", "expo", "expo_dpo", "ExPO applied to the gold DPO result (the "
                      "ceiling): strong + alpha (ceiling - strong)", needs=("ceiling",)),
}
"""Every entry ``w2s compare`` knows, in the order it runs them."""

TOKEN_LEVEL = ("eft", "genarm")
"""Entries that add token log-probs of other models to the strong model's: one vocabulary."""
OVERRIDABLE = ("wspo", "weak-label", "macpo", "search", "expo")
"""Methods whose own recipe keys ``entries:`` may set (their keys, checked by their config)."""


CompareTrain = stage_train(
    "CompareTrain", "How a reference model of the comparison is trained (defaults: lr 1e-5, 1 "
    "epoch, cosine, warm-up 0.1).", module=__name__, lr=1e-5, epochs=1.0, micro_batch_size=4,
    warmup_ratio=0.1, checkpoint_every=100)
CompareSampling = derive(Sampling, "CompareSampling", "How every entry answers the held-out "
                         "prompts (the same for all).", module=__name__, max_new_tokens=512,
                         temperature=0.7)
CompareJudging = derive(Judging, "CompareJudging", "The ONE judge of every entry against the "
                        "strong model as it is (a reward judge also gives the gold reward).",
                        module=__name__, judge=DEFAULT_JUDGE)


@config_class
class CompareConfig:
    """``w2s compare``: every W2S alignment method on one weak/strong pair, one judge, one table.

    Inline sections: ``lora`` (lora_r, lora_alpha), ``judging`` (judge, judge_batch_size),
    ``sampling`` (max_new_tokens, temperature, top_k, top_p of every entry's answers),
    ``runtime`` (dtype, seed, run_dir). ``entries`` (recipe only) holds each method's own keys.
    """

    weak: str = option("qwen2-1.5b-instruct", "the weak model before alignment; a comma list "
                       "gives MACPO several teachers (the first is the weak model of every "
                       "other entry)")
    weak_aligned: str | None = option(None, "the weak model after alignment; none = --weak "
                                      "aligned by DPO on the task's gold pairs (once, cached)")
    strong: str = option("qwen2-7b-instruct", "the strong model, as it is: the baseline of "
                         "every win rate and the start of every training-time entry")
    task: str = option("ultrafeedback", "preference task (`w2s tasks`) or local:PATH: its "
                       "train pairs are every entry's training data, its test prompts the "
                       "held-out prompts every entry answers")
    methods: list[str] = option([], "the entries to run (comma list); empty = every entry "
                                "that applies to this pair", choices=list(ENTRIES))
    n_train: int | None = option(None, "training pairs (a seeded sample, the same for every "
                                 "entry); none = all", min=1)
    n_eval: int = option(500, "held-out test prompts every entry answers", min=1)
    samples_per_prompt: int = option(1, "answers per held-out prompt (the decoding-time "
                                     "entries and MACPO give one; they pair with the first)",
                                     min=1)
    mode: str = option("lora", "lora adapters or full fine-tuning, for every training-time "
                       "entry that offers both (MACPO always uses LoRA)", choices=list(MODES))
    lora: Lora = section(Lora, "LoRA adapters", inline=True, drop=("lora_targets",))
    beta: float = option(0.1, "DPO beta of the weak alignment and of the gold-label ceiling",
                         above=0)
    max_len: int = option(1024, "tokens per prompt + response in training and scoring", min=8)
    chat: bool = option(True, "wrap prompts in the model's chat template when its tokenizer "
                        "has one")
    judging: Judging = section(CompareJudging, "the one judge", inline=True)
    sampling: Sampling = section(CompareSampling, "how every entry answers", inline=True)
    gen_batch_size: int = option(16, "prompts per generate call", min=1)
    score_batch_size: int = option(16, "rows per forward pass when scoring log-probs", min=1)
    expo_alphas: list[float] = option([0.5, 1.0, 2.0], "ExPO's extrapolation strengths (the "
                                      "best by the judge is the entry)", above=0)
    plots: bool = option(True, "write the plots (matplotlib: the plot extra)")
    dry_run: bool = option(False, "print the entries, why any cannot run, and each one's "
                           "command; load and write nothing")
    runtime: Runtime = section(Runtime, "dtype, seed, run directory", inline=True,
                               drop=("device",))
    weak_dpo: CompareTrain = section(CompareTrain, "DPO of the weak model on the gold pairs "
                                     "(the weak aligned model, shared by every entry)")
    ceiling_dpo: CompareTrain = section(CompareTrain, "DPO of the strong model on the gold "
                                        "pairs (the ceiling; weak-label's strong DPO too)")
    sft: CompareTrain = section(CompareTrain, "naive W2S SFT of the strong model on the weak "
                                "aligned model's answers")
    entries: dict = option({}, "recipe only: per method (wspo, weak-label, macpo, search, "
                           "expo) a mapping of its own recipe keys, e.g. {wspo: {gamma: 0.1}}; "
                           "the shared settings above cannot be set there")

    def check(self) -> None:
        if isinstance(self.entries, str):   # from the command line: YAML / JSON text
            import yaml

            try:
                self.entries = yaml.safe_load(self.entries) or {}
            except yaml.YAMLError:
                raise W2SError("--entries must be a YAML mapping, e.g. '{wspo: {gamma: 0.1}}'"
                               ) from None
        if not isinstance(self.entries, dict):
            raise W2SError("entries must be a mapping of method -> its recipe keys, e.g. "
                           "{wspo: {gamma: 0.1}}")
        for method, keys in self.entries.items():
            if method not in OVERRIDABLE:
                raise W2SError(f"entries: unknown method '{method}'; give one of "
                               f"{', '.join(OVERRIDABLE)}")
            if not isinstance(keys, dict):
                raise W2SError(f"entries.{method} must be a mapping of {method}'s recipe keys")
        if not comma_list(self.weak):
            raise W2SError("--weak is empty; give the weak model (or a comma list for MACPO)")
        for stage in (self.weak_dpo, self.ceiling_dpo, self.sft):
            if stage.mixed_precision != self.weak_dpo.mixed_precision:
                raise W2SError("weak_dpo, ceiling_dpo and sft have different mixed_precision; "
                               "one process runs one precision, so set them the same")

    @property
    def weak_models(self) -> list[str]:
        """``--weak`` as a list: MACPO's teachers; the first is every other entry's weak model."""
        return comma_list(self.weak)


def validate(cfg: CompareConfig) -> CompareConfig:
    """The bounds, the cross-field rules, the training stages, sampling and the judge."""
    validate_config(cfg)
    for stage in (cfg.weak_dpo, cfg.ceiling_dpo, cfg.sft):
        stage.train_config(seed=cfg.seed)
    sampling(cfg)
    from w2s.evaluation.judges import parse_judge

    parse_judge(cfg.judge)
    return cfg


def sampling(cfg: CompareConfig):
    """Every entry's :class:`w2s.models.generate.SamplingConfig` (the same as WSPO's and
    weak-label's evaluation sampling, so their 'before' answers are the strong entry's)."""
    return cfg.sampling.sampling_config(batch_size=cfg.gen_batch_size, seed=cfg.seed)


def selected(cfg: CompareConfig) -> list[str]:
    """The entries asked for, in :data:`ENTRIES` order (``strong`` always: the baseline)."""
    wanted = set(cfg.methods or ENTRIES)
    return [name for name in ENTRIES if name in wanted or name == "strong"]


# --------------------------------------------------------------------------------------------
# the entries' own configs


def _train(stage) -> dict:
    import dataclasses

    return dataclasses.asdict(stage)


def entry_recipes(cfg: CompareConfig, paths: dict[str, str]) -> dict[str, dict]:
    """The recipe of every method run the comparison makes, by run name: the shared settings
    mapped onto that method's keys, then ``cfg.entries[method]`` on top (a key the comparison
    shares is refused there: every entry must see the same data, prompts and judge).

    Every method reads the task as ``local:<run>/data``: the comparison's own training pairs
    and held-out prompts, written once (:meth:`~w2s.methods.compare.references.Data.write`),
    so every entry trains on the same pairs and answers the same prompts, in the same order.

    ``paths``: ``weak_aligned`` (the weak aligned model), ``run`` (the compare run directory),
    ``n_train`` / ``n_test`` (the rows of that data), and, once they exist, ``wspo_model`` /
    ``ceiling_model`` (ExPO's aligned models).
    """
    run = paths["run"]
    data = f"local:{run}/data"        # the comparison's own train pairs and held-out prompts
    n_train, n_test = paths.get("n_train"), paths.get("n_test", cfg.n_eval)
    answer = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
              "top_k": cfg.top_k, "top_p": cfg.top_p}
    common = {"task": data, "judge": cfg.judge, "seed": cfg.seed, "dtype": cfg.dtype,
              "chat": cfg.chat, **answer}
    weak = cfg.weak_models[0]
    eval_ = {"n_eval": n_test, "samples_per_prompt": cfg.samples_per_prompt,
             "gen_batch_size": cfg.gen_batch_size, "score_batch_size": cfg.score_batch_size,
             "judge_batch_size": cfg.judge_batch_size, "max_len": cfg.max_len, "mode": cfg.mode,
             "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha}
    recipes: dict[str, dict] = {
        "wspo": {**common, **eval_, "weak": weak, "weak_aligned": paths["weak_aligned"],
                 "strong": cfg.strong, "n_train": None, "save_model": True,
                 "weak_dpo": _train(cfg.weak_dpo)},   # unused (weak_aligned given); its precision
        "weak_label": {**common, **eval_, "weak": weak, "strong": cfg.strong,
                       "beta": cfg.beta, "weak_dpo": _train(cfg.weak_dpo),
                       "strong_dpo": _train(cfg.ceiling_dpo)},
        "macpo": {"task": data, "n_train": n_train or 10**9, "n_test": n_test,
                  "judge": cfg.judge, "gold_judge": "", "seed": cfg.seed,
                  "dtype": cfg.dtype, "weak": cfg.weak, "strong": cfg.strong,
                  "max_len": cfg.max_len, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                  "generation": {**{k: v for k, v in answer.items()},
                                 "batch_size": cfg.gen_batch_size, "seed": cfg.seed}},
        "search": {"task": data, "split": "test", "judge": cfg.judge, "seed": cfg.seed,
                   "dtype": cfg.dtype, "chat": cfg.chat, **answer, "base": cfg.strong,
                   "tuned": paths["weak_aligned"], "untuned": weak, "n_prompts": n_test,
                   "genarm_init": weak, "genarm_task": data, "genarm_n": None,
                   "genarm_max_len": cfg.max_len, "prompt_batch": cfg.gen_batch_size,
                   "score_batch_size": cfg.score_batch_size,
                   "judge_batch_size": cfg.judge_batch_size},
    }
    for name, model in (("expo_wspo", "wspo_model"), ("expo_dpo", "ceiling_model")):
        recipes[name] = {**common, "sft": cfg.strong, "aligned": paths.get(model, f"<{model}>"),
                         "alphas": list(cfg.expo_alphas), "n_prompts": n_test,
                         "samples_per_prompt": cfg.samples_per_prompt,
                         "gen_batch_size": cfg.gen_batch_size, "save_best": False,
                         "judge_batch_size": cfg.judge_batch_size}
    import dataclasses

    from w2s.methods import METHODS

    for name in recipes:   # a setting the method does not have is not passed (e.g. WSPO has
        have = {f.name for f in dataclasses.fields(METHODS[_method_of(name)].config)}
        recipes[name] = {k: v for k, v in recipes[name].items() if k in have}  # no judge batch)
    for method, keys in cfg.entries.items():
        shared = {k for name, r in recipes.items() if _method_of(name) == method for k in r}
        clash = sorted(set(keys) & shared - {"decoder"} - _OWN.get(method, set()))
        if clash:
            raise W2SError(f"entries.{method} sets {', '.join(clash)}, which the comparison "
                           "shares across entries; set it at the top level of the recipe")
        for name in recipes:
            if _method_of(name) == method:
                recipes[name] = _merge(recipes[name], keys)
    for name, recipe in recipes.items():
        recipe["run_dir"] = f"{run}/entries/{name}"
    return recipes


_OWN = {"macpo": {"generation"}, "weak-label": {"weak_dpo", "strong_dpo", "beta"},
        "search": {"genarm_max_len"}}
"""Shared-looking keys a method may still set for itself: MACPO's agents' sampling,
weak-label's own DPO stages, GenARM's training length."""


def _method_of(run_name: str) -> str:
    return {"weak_label": "weak-label", "expo_wspo": "expo", "expo_dpo": "expo"}.get(
        run_name, run_name)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_command(method: str, recipe_path: str) -> str:
    """How to run one entry on its own (e.g. under ``torchrun`` on N GPUs): the compare run
    picks up what such a run finished."""
    return f"w2s {method} --recipe {recipe_path}"


def shared_summary(cfg: CompareConfig) -> dict[str, Any]:
    return {"weak": cfg.weak, "weak_aligned": cfg.weak_aligned, "strong": cfg.strong,
            "task": cfg.task, "judge": cfg.judge, "n_train": cfg.n_train, "n_eval": cfg.n_eval,
            "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed}
