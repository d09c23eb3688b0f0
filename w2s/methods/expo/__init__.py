"""Model extrapolation (ExPO; Zheng et al., arXiv 2404.16792, "Weak-to-Strong Extrapolation
Expedites Alignment"): a better-aligned model from an aligned one and its SFT start, with no
training.

An aligned model (DPO/RLHF) theta_aligned moved away from its SFT checkpoint theta_sft; ExPO
takes a further step in the same direction::

    theta(alpha) = theta_aligned + alpha (theta_aligned - theta_sft)

computed tensor by tensor into ONE model object (the aligned and the SFT tensors are read one
at a time from their safetensors files, never two full state dicts), for full models and for
LoRA adapter pairs over one base (the merged weights are extrapolated:
``W0 + s [(1 + alpha) B_a A_a - alpha B_s A_s]``, see :mod:`w2s.methods.expo.extrapolate`).
Every alpha of ``--alphas`` (default 0.1 ... 0.5; the authors' released models use 0.1 to 0.5)
answers the task's held-out test prompts, the judge compares each with the aligned model's
answers (alpha 0) through the shared evaluation layer (win rate, and the gold reward with a
reward judge), the best alpha is picked (gold reward, else win rate; alpha 0 when none beats
it), its model saved to ``<run>/model`` and the curve plotted to ``<run>/expo.png``. Each
alpha's answers are a cached stage, so a rerun generates nothing. The pair is ``--aligned`` /
``--sft``, or ``--from-run`` a finished wspo, macpo or DPO run directory
(:mod:`w2s.methods.expo.pair`).

One GPU, or the CPU::

    w2s wspo --recipe recipes/wspo/tiny.yaml --run-dir runs/wspo-tiny-short \\
             --granularity sequence --strong-train-epochs 1 --save-model  # the tiny pair
    w2s expo --recipe recipes/expo/tiny.yaml --run-dir runs/expo-tiny       # CPU, minutes
    w2s expo --aligned alignment-handbook/zephyr-7b-dpo-full \\
             --sft alignment-handbook/zephyr-7b-sft-full --alphas 0.1,0.3,0.5
    w2s expo --from-run runs/wspo/<run>                                     # a finished run

Several GPUs: one process per GPU, each sweeping some alphas into the shared cache (alpha 0 is
built once: the others wait for it), then one run over all alphas that finds every answer
cached and only judges::

    CUDA_VISIBLE_DEVICES=0 w2s expo --recipe recipes/expo/zephyr-7b-dpo-full.yaml --alphas 0.1,0.2 &
    CUDA_VISIBLE_DEVICES=1 w2s expo --recipe recipes/expo/zephyr-7b-dpo-full.yaml --alphas 0.3,0.4,0.5
    wait; w2s expo --recipe recipes/expo/zephyr-7b-dpo-full.yaml     # all cached: judge, save
"""

from w2s.methods.expo.config import ExpoConfig
from w2s.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="expo",
    config=ExpoConfig,
    entry="w2s.methods.expo.experiment:run",
    help="Model extrapolation (ExPO, Zheng et al.): theta_aligned + alpha (theta_aligned - "
         "theta_sft) for each alpha, judged against the aligned model; the best alpha saved.",
    headline=("win_rate",),
    order=60,
)
