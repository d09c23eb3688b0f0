"""Weak-to-strong preference optimization (WSPO; Zhu et al., ICLR 2025, arXiv 2410.18640): align a
strong model by teaching it what aligning a WEAK model changed.

Aligning the weak model (by DPO) moves it from pi_w_ref (``--weak``) to pi_w_r
(``--weak-aligned``). For every token of a response, the change is the log-ratio
``log pi_w_r(y_t|.) - log pi_w_ref(y_t|.)``: up to the weak DPO's beta, the weak model's implicit
reward. WSPO trains the strong model pi_theta so that its own log-ratio against its starting point
pi_ref reproduces that change, amplified by ``1/gamma``::

    L(x, y) = (1/|y|) sum_t [ gamma * (log pi_theta(y_t|.) - log pi_ref(y_t|.))
                              - (log pi_w_r(y_t|.) - log pi_w_ref(y_t|.)) ]^2

Why: the weak model's implicit reward ``beta_w log(pi_w_r / pi_w_ref)`` reused as the strong
model's KL-regularised reward has the optimum ``log(pi / pi_ref) = (beta_w / beta_s) log(pi_w_r /
pi_w_ref) + c(x)``; gamma is ``beta_s / beta_w`` and the default 0.1 amplifies the weak alignment
tenfold. The data are prompts with ONE response each: as in the official code, the CHOSEN
responses of a preference set (nothing is generated during training, the rejected responses are
never forwarded).

The experiment, stage by stage (every stage is cached under a hash of everything that determines
it, so a second run with other strong-side settings redoes none of the weak work)::

    1. weak aligned model   --weak-aligned, or DPO of --weak on the task's pairs (beta 0.1)
    2. weak log-ratios      of every training response, ONCE: two weak forwards per response
    3. strong reference     log pi_ref of every training response, ONCE, before training (LoRA:
                            adapters disabled; full fine-tuning: the initial model)
    4. strong, before       generations on held-out test prompts
    5. WSPO                 one forward + backward of the strong policy per example; resumable
    6. strong, after        generations on the same prompts; win rate of after vs before through
                            the judge, and the mean gold reward of both when the judge is one

``--granularity token`` (the paper's loss) needs weak and strong to tokenize every example
identically: that is checked on the actual encodings and refused, with the fix, otherwise.
``--granularity sequence`` compares length-normalised sequence log-ratios instead, each model on
its own tokenization of the same text, so it works across vocabularies.

One GPU, or the CPU::

    w2s wspo --weak qwen2-0.5b --strong qwen2-7b --dry-run        # the plan, nothing loaded
    w2s wspo --weak qwen2-1.5b-instruct --strong qwen2-7b-instruct
    w2s wspo --recipe recipes/wspo/tiny.yaml --run-dir runs/wspo-tiny

Several GPUs (the global batch stays the recipe's whatever the GPU count)::

    accelerate launch -m w2s wspo --recipe recipes/wspo/ultrafeedback-qwen2-lora.yaml
    torchrun --nproc_per_node 4 -m w2s wspo --recipe recipes/wspo/ultrafeedback-qwen2-full.yaml
"""

from w2s.methods.spec import LabLeg, MethodSpec
from w2s.methods.wspo.config import WSPOConfig
from w2s.methods.wspo.lab import lab_summary

SPEC = MethodSpec(
    name="wspo",
    config=WSPOConfig,
    entry="w2s.methods.wspo.experiment:run",
    help='Weak-to-strong preference optimization (Zhu et al.): align the weak model (DPO), then train the strong model to reproduce the weak log-ratios amplified by 1/gamma; win rate and gold reward against the strong model before training.',
    headline=('win_rate',),
    lab=LabLeg("wspo.yaml", lab_summary),
    order=30,
)
