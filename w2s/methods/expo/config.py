"""The config of ``w2s expo`` (torch-free): :class:`ExpoConfig` and its validation."""

from __future__ import annotations

from typing import Any

from w2s.config import config_class, derive, option, section
from w2s.config import validate as validate_config
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Runtime, Sampling

DEFAULT_ALPHAS = [0.1, 0.2, 0.3, 0.4, 0.5]
DEFAULT_JUDGE = "rm:OpenAssistant/reward-model-deberta-v3-large-v2"

ExpoSampling = derive(Sampling, "ExpoSampling", "How every candidate model answers the held-out "
                      "prompts (the same seed for every alpha).", module=__name__,
                      max_new_tokens=512, temperature=0.7)
ExpoJudging = derive(Judging, "ExpoJudging", "Who compares each extrapolated model with the "
                     "aligned model (alpha 0).", module=__name__, judge=DEFAULT_JUDGE)


@config_class
class ExpoConfig:
    """``w2s expo``: model extrapolation, theta_aligned + alpha (theta_aligned - theta_sft).

    Inline sections (flags and recipe keys at the top level): ``judging`` (judge,
    judge_batch_size), ``sampling`` (max_new_tokens, temperature, top_k, top_p),
    ``runtime`` (device, dtype, seed, run_dir).
    """

    aligned: str | None = option(None, "the aligned model (after DPO/RLHF): alias, local "
                                 "folder, hub id or tiny:...")
    sft: str | None = option(None, "the model it was aligned FROM (its SFT checkpoint): the "
                             "same architecture and shapes")
    from_run: str | None = option(None, "take the pair from a finished run directory: wspo "
                                  "(<run>/model vs strong; needs save_model), macpo (the "
                                  "student's last adapter vs its SFT adapter) or a DPO run "
                                  "(<run>/model vs sft/reference/strong)")
    alphas: list[float] = option(list(DEFAULT_ALPHAS), "extrapolation strengths to try (each "
                                 "> 0; alpha 0, the aligned model, is the baseline); the "
                                 "authors' released models use 0.1 to 0.5", min=0)
    task: str = option("ultrafeedback", "task whose test prompts every candidate answers "
                       "(`w2s tasks`; any kind with prompts)")
    n_prompts: int = option(200, "held-out test prompts (a seeded sample)", min=1)
    samples_per_prompt: int = option(1, "answers per prompt and candidate", min=1)
    chat: bool = option(True, "wrap prompts in the model's chat template when its tokenizer has "
                        "one")
    judging: Judging = section(ExpoJudging, "who compares each alpha with alpha 0",
                               inline=True)
    sampling: Sampling = section(ExpoSampling, "how the candidates answer", inline=True)
    gen_batch_size: int = option(16, "prompts per generate call", min=1)
    select_by: str = option("auto", "how the best alpha is picked: auto (gold reward with a "
                            "reward judge, else win rate), gold_reward or win_rate",
                            choices=["auto", "gold_reward", "win_rate"])
    save_best: bool = option(True, "write the best alpha's model to <run>/model "
                             "(save_pretrained)")
    runtime: Runtime = section(Runtime, "device, dtype, seed, run directory", inline=True)

    def check(self) -> None:
        if not self.alphas:
            raise W2SError("--alphas is empty; give e.g. 0.1,0.2,0.3,0.4,0.5")
        bad = [a for a in self.alphas if not a > 0 or a != a or a == float("inf")]
        if bad:
            raise W2SError(f"--alphas must be > 0 and finite, got {bad[0]}")
        if len(set(self.alphas)) != len(self.alphas):
            raise W2SError(f"--alphas repeats a value: {self.alphas}")


def validate(cfg: ExpoConfig) -> None:
    """One-line :class:`W2SError` for every setting that cannot work (no model touched)."""
    validate_config(cfg)
    sampling(cfg)
    from w2s.evaluation.judges import parse_judge

    parse_judge(cfg.judge)


def sampling(cfg: ExpoConfig):
    """The generate layer's :class:`~w2s.models.generate.SamplingConfig`, validated."""
    return cfg.sampling.sampling_config(batch_size=cfg.gen_batch_size, seed=cfg.seed)


def config_summary(cfg: ExpoConfig) -> dict[str, Any]:
    return {"aligned": cfg.aligned, "sft": cfg.sft, "from_run": cfg.from_run,
            "alphas": list(cfg.alphas), "task": cfg.task, "judge": cfg.judge}
