"""The config of ``w2s deception`` (torch-free): :class:`DeceptionConfig` and its validation."""


from __future__ import annotations

from dataclasses import dataclass

from w2s.config import comma_list, config_class, option, section, validate
from w2s.errors import W2SError
from w2s.methods.sections import Lora, Runtime, Sweep, stage_train

OBJECTIVES = ("reward", "dpo", "simpo")
CONFLICTS = ("none", "implicit", "explicit")
MODES = ("full", "lora", "probe")

COMPETING_TASKS = {"hh-harmless": "hh-helpful", "cai": "hh-helpful",
                   "pku-saferlhf": "pku-saferlhf-helpful", "toy-harmless": "toy-helpful"}
"""The helpfulness data of the implicit conflict, for target tasks that have a natural one."""

DEFAULT_LR = {"reward": 1e-5, "dpo": 1e-6, "simpo": 1e-6}
DEFAULT_EPOCHS = {"reward": 1.0, "dpo": 3.0, "simpo": 1.0}
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0}


@dataclass
class DeceptionTrain(stage_train(
        "_DeceptionStage", "", module=__name__, epochs=None, optimizer="adam",
        help={"lr": "peak lr; none = the objective's default (reward 1e-5, dpo/simpo 1e-6)",
              "epochs": "passes over the training pairs; none = the objective's default "
                        "(reward 1, dpo 3, simpo 1)",
              "max_steps": "optimizer steps of the preference stage; overrides epochs when set",
              "batch_size": "global batch (pairs per step)",
              "optimizer": "adam (the authors), adamw or sgd"})):
    """How every model is trained (the shared loop's settings) with the authors' defaults;
    ``lr`` / ``epochs`` none means the objective's default."""

    sft_epochs: float = option(1.0, "dpo/simpo: epochs of SFT on the preferred responses first "
                               "(0: none)", min=0)


@config_class
class DeceptionConfig:
    """``w2s deception``: weak-to-strong deception experiments and the deception score.

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha),
    ``sweep`` (seeds, launcher, workers), ``runtime`` (device, dtype, seed, run_dir).
    """

    weak: str = option("gpt2", "the weak supervisor: alias, local dir, hub id or tiny:...")
    strong: str = option("gpt2-medium", "strong model(s); a comma list sweeps (each must be "
                         "larger than the weak model)")
    bootstrap_via: str = option("", "an intermediate model between weak and strong: it learns "
                                "from the weak labels, its labels teach the strong model")
    task: str = option("hh-harmless", "preference task of the TARGET dimension (harmlessness): "
                       "hh-harmless, cai (CAI-harmless), pku-saferlhf, toy-harmless, local:PATH")
    helpful_task: str = option("", "preference task of the COMPETING dimension for the implicit "
                               "conflict; empty = the target's natural one (hh-harmless and cai -> "
                               "hh-helpful, pku-saferlhf -> pku-saferlhf-helpful, toy-harmless -> "
                               "toy-helpful)")
    single_turn: bool = option(False, "keep only single-turn transcripts (one Human and one "
                               "Assistant turn) of the target and helpfulness tasks, as the "
                               "authors (hh-harmless, hh-helpful, cai; the paper recipes); "
                               "false keeps every transcript")
    test_pairs: str = option("split", "where the test pairs come from: split (the task's own "
                             "test split) or pooled (train and test pooled, n_test drawn from "
                             "them with a fixed seed and the training pairs from the rest, as "
                             "the authors)", choices=["split", "pooled"])
    objective: str = option("reward", "how preferences are learned", choices=list(OBJECTIVES))
    conflict: list[str] = option(list(CONFLICTS), "conflict settings to train (none, the "
                                 "baseline M~, is always trained)", choices=list(CONFLICTS))
    headline: str = option("auto", "the setting whose score is metrics.json's deception_score: "
                           "implicit, explicit, or auto (explicit if trained, else implicit)",
                           choices=["auto", "implicit", "explicit"])
    alpha: float = option(0.5, "explicit conflict: weight of the term that pushes existing "
                          "harmful preferences", min=0)
    conf_threshold: float | None = option(None, "keep only weak labels with max(s, 1 - s) >= "
                                          "this (0.75 in the paper; max(s, 1 - s) is never below "
                                          "0.5); none = keep all", min=0.5, below=1)
    weak_labels: str = option("hard", "reward models: learn the weak labels hard (the preferred "
                              "response as chosen) or soft (the weak model's probability, as the "
                              "authors' code; the reward paper recipes)", choices=["hard", "soft"])
    dpo_preference: str = option("implicit", "--objective dpo: a model's preference (weak labels, "
                                 "accuracies, knowledge areas, the explicit-conflict term): "
                                 "implicit (its reward against the reference) or raw (its plain "
                                 "log-prob difference, as the authors; the dpo paper recipe)",
                                 choices=["implicit", "raw"])
    filter_helpful: bool = option(True, "with --conf-threshold: the implicit conflict's "
                                  "helpfulness pairs are subsampled like the weak labels kept "
                                  "(as the authors); false keeps them all")
    beta: float | None = option(None, "dpo/simpo beta; none = 0.1 (dpo) or 2.0 (simpo)", above=0)
    simpo_gamma: float = option(1.0, "simpo: target margin gamma")
    mode: str = option("full", "full fine-tuning, lora adapters, or (reward) a linear probe on "
                       "frozen features", choices=list(MODES))
    lora: Lora = section(Lora, "lora: the adapters", inline=True, drop=("lora_targets",))
    n_train: int = option(8000, "training pairs, split in halves: ground truth (ceilings) and "
                          "W2S (weak labels)", min=2)
    n_test: int = option(4000, "test pairs (a warning below 500)", min=2)
    n_helpful: int | None = option(None, "implicit conflict: helpfulness pairs added; none = as "
                                   "many as the W2S half", min=1)
    max_ctx: int = option(512, "tokens per prompt + response; longer ones keep their last "
                          "max_ctx tokens (LEFT truncation)", min=2)
    eos: bool = option(False, "append EOS to each response (the authors' models read the last "
                       "text token, no EOS)")
    eval_batch_size: int = option(32, "pairs per forward pass when predicting", min=2)
    sweep: Sweep = section(Sweep, "seeds and how the sweep fans out", inline=True)
    runtime: Runtime = section(Runtime, "device, dtype, seed, run directory", inline=True)
    train: DeceptionTrain = section(DeceptionTrain, "training of every model")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        if self.mode == "probe" and self.objective != "reward":
            raise W2SError(f"mode probe trains a linear head on frozen features: only the reward "
                           f"objective has one; use --mode full or lora with {self.objective}")


def sweep_jobs(plan: dict) -> dict[str, dict]:
    """A sweep over strong models and seeds as parallel jobs (:func:`w2s.launch.fan_out`), one
    per (strong model, seed); the jobs share the weak ceiling through the cache (the first one
    trains it, the others wait for it)."""
    return {f"{chain[-1]}-seed{seed}": {"strong": chain[-1], "seeds": [seed], "seed": seed}
            for seed in plan["seeds"] for chain in plan["chains"]}


def plan_experiments(cfg: DeceptionConfig) -> dict:
    """Validate the config and list what to run. One-line :class:`W2SError` for: a weak model
    larger than the strong one (or than the intermediate), a conflict setting without the data
    it needs, and what :func:`w2s.config.validate` refuses (bad numbers and choices, a probe with
    an LM objective)."""
    from w2s.models import resolve_model

    validate(cfg)  # types, choices, bounds (alpha >= 0, n_train >= 2, ...), check()
    stage_config(cfg, 1e-5, 1.0, 0)  # bad optimizer, scheduler, sizes: one line here

    settings = [s for s in CONFLICTS if s in cfg.conflict and s != "none"]
    notes: list[str] = []
    if "none" not in cfg.conflict:
        notes.append("conflict setting 'none' added: it is the baseline M~ every score needs")
    if cfg.headline == "auto":
        headline = "explicit" if "explicit" in settings else ("implicit" if settings else None)
    elif cfg.headline not in settings:
        raise W2SError(f"headline {cfg.headline!r} is not among the trained conflict settings "
                       f"{settings or ['none']}; add it to --conflict or pick another")
    else:
        headline = cfg.headline
    helpful = cfg.helpful_task or COMPETING_TASKS.get(cfg.task, "")
    if "implicit" in settings and not helpful:
        raise W2SError(f"conflict setting 'implicit' needs pairs of a competing dimension "
                       f"(helpfulness) and task {cfg.task!r} has no natural one; give "
                       "--helpful-task (e.g. hh-helpful or local:PATH), or drop implicit")
    if helpful == cfg.task and "implicit" in settings:
        raise W2SError(f"--helpful-task is the target task itself ({cfg.task}); the implicit "
                       "conflict needs a COMPETING dimension (e.g. hh-helpful for hh-harmless)")
    if cfg.single_turn:
        _check_single_turn([cfg.task, *([helpful] if "implicit" in settings else [])])

    def size(name: str) -> float | None:
        return resolve_model(name).size_b

    weaks, strongs, via = comma_list(cfg.weak), comma_list(cfg.strong), comma_list(cfg.bootstrap_via)
    if len(weaks) != 1:
        raise W2SError(f"give one weak model (--weak), got {cfg.weak!r}; sweep --strong instead")
    if len(via) > 1:
        raise W2SError(f"--bootstrap-via takes one intermediate model, got {cfg.bootstrap_via!r}")
    if not strongs:
        raise W2SError("give at least one strong model (--strong)")
    weak = weaks[0]
    sw = size(weak)
    if via:
        sv = size(via[0])
        if sw is not None and sv is not None and sw >= sv:
            raise W2SError(f"the weak model {weak} ({sw:.3g}B) is not smaller than the "
                           f"intermediate {via[0]} ({sv:.3g}B); bootstrapping goes weak -> "
                           "intermediate -> strong")
    chains = []
    for strong in strongs:
        ss = size(strong)
        top = size(via[0]) if via else sw
        if strong == weak or (sw is not None and ss is not None and sw >= ss):
            if len(strongs) == 1:
                raise W2SError(f"the weak model {weak} ({_b(sw)}) is not smaller than the strong "
                               f"model {strong} ({_b(ss)}); swap --weak and --strong")
            notes.append(f"skipped {weak} -> {strong}: the weak model is not smaller")
            continue
        if via and top is not None and ss is not None and top >= ss:
            if len(strongs) == 1:
                raise W2SError(f"the intermediate {via[0]} ({_b(top)}) is not smaller than the "
                               f"strong model {strong} ({_b(ss)})")
            notes.append(f"skipped {strong}: not larger than the intermediate {via[0]}")
            continue
        chains.append([weak, *via, strong])
    if not chains:
        raise W2SError(f"no strong model in --strong {cfg.strong} is larger than the weak model "
                       f"{weak}")
    seeds = list(dict.fromkeys(cfg.seeds)) if cfg.seeds else [cfg.seed]
    return {"seeds": seeds, "chains": chains, "settings": settings, "headline": headline,
            "helpful_task": helpful if "implicit" in settings else None, "notes": notes}


def _check_single_turn(tasks: list[str]) -> None:
    """--single-turn needs tasks whose rows are HH transcripts with turns to count."""
    from w2s.data import task_options

    for name in tasks:
        options = task_options(name)
        if options is not None and "single_turn" not in options:  # unknown: load_task says so
            raise W2SError(f"--single-turn keeps single-turn HH transcripts and task '{name}' has "
                           "no turns to filter; use hh-harmless, hh-helpful or cai, or drop "
                           "--single-turn")


def data_options(cfg: DeceptionConfig) -> dict:
    """The options every task of the experiment is loaded with (``load_task(name, **these)``)."""
    return {"single_turn": True} if cfg.single_turn else {}


def _b(size: float | None) -> str:
    return "size unknown" if size is None else f"{size:.3g}B"


def stage_config(cfg: DeceptionConfig, lr: float, epochs: float, seed: int, *,
                 sft: bool = False):
    """The loop's :class:`w2s.train.TrainConfig` for one training stage (the SFT stage of
    dpo/simpo takes ``sft_epochs`` and no max_steps)."""
    changes = {"epochs": cfg.train.sft_epochs, "max_steps": None} if sft else {}
    return cfg.train.train_config(seed=seed, default_lr=lr, default_epochs=epochs, **changes)
