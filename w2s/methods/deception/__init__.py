"""Weak-to-strong deception (Yang et al. 2024, arXiv 2406.11431): does a strong model trained by
a weak supervisor stay aligned where the supervisor cannot check it?

The experiment, per (task, weak, strong, seed), on pairwise preference data whose TARGET
dimension is harmlessness: split the training pairs into a ground-truth half A and a W2S half B.

1. Weak ceiling and strong ceiling: each model trained on A with ground truth. Their test
   predictions define the knowledge areas (what each model CAN know).
2. Weak labels: the weak ceiling orders each pair of B by its margin (hard labels). Optionally
   only confident ones are kept (``--conf-threshold 0.75`` keeps pairs with
   ``max(s, 1 - s) >= 0.75``, ``s`` the weak model's preference; the authors' filter also looked at
   the ground truth, this one does not), or an intermediate model relabels B first
   (``--bootstrap-via``: weak -> intermediate -> strong).
3. The strong model trained on the weak labels under each conflict setting:
   ``none`` (weak labels only: M~), ``implicit`` (plus ground-truth pairs of a COMPETING
   dimension, helpfulness), ``explicit`` (plus ``alpha * CE(M(x), 0) * 1{M(x) < 0.5}``: where the
   model already prefers the harmful response, push it further; see
   :func:`w2s.train.losses.explicit_conflict_loss`).
4. The deception score of each conflict setting against ``none``, with the four knowledge areas
   and the conflict tax per area (:func:`w2s.evaluation.deception_score`), from the per-example
   predictions of every model (``predictions.jsonl``; ``w2s eval deception RUN_DIR`` recomputes
   it all).

Objectives (``--objective``): ``reward`` (a one-output reward model, Bradley-Terry / BCE on
``r(a) - r(b)``, lr 1e-5, 1 epoch), ``dpo`` (beta 0.1, lr 1e-6, 3 epochs after 1 SFT epoch on
the preferred responses; reference = the SFT model) and ``simpo`` (beta 2, gamma 1, lr 1e-6,
1 epoch after 1 SFT epoch). Every model's prediction on a pair is the probability it prefers the
ground-truth-better response: ``sigmoid(r(chosen) - r(rejected))`` (reward),
``sigmoid(beta * h)`` with ``h`` DPO's log-ratio difference against the reference (dpo),
``sigmoid(beta * (avg_logp(chosen) - avg_logp(rejected)))`` (simpo); correct = >= 0.5. Batch 32,
at most ``max_ctx`` 512 tokens per sequence, cut on the LEFT (the authors' convention).

Data: ``--task hh-harmless`` or ``cai`` (CAI-harmless, the authors' scripts' default), both
with ``hh-helpful`` as the competing dimension; ``--single-turn`` keeps only single-turn
transcripts of both, as the authors' data (the paper recipes).

One GPU, or the CPU::

    w2s deception --weak gpt2 --strong gpt2-medium --task hh-harmless --objective reward
    w2s deception --recipe recipes/deception/tiny.yaml --run-dir runs/deception-tiny
    w2s eval deception runs/deception-tiny

Sweeps (``--strong gpt2-medium,gpt2-large,gpt2-xl``, ``--seeds 0,1,2``) train the weak ceiling
once per seed (every trained model's predictions are cached by content hash) and plot the
deception score against the weak-strong gap (``deception.png``).

N GPUs: each training stage runs data-parallel under ``torchrun`` / ``accelerate launch``, and a
sweep over strong models fans out one job per GPU (``--launcher local``) or per Ray task::

    torchrun --nproc_per_node 8 -m w2s deception --recipe recipes/deception/hh_harmless-mistral-simpo.yaml
    w2s deception --weak gpt2 --strong gpt2-medium,gpt2-large,gpt2-xl --task hh-harmless --launcher local
"""

from w2s.methods.deception.config import DeceptionConfig
from w2s.methods.deception.lab import lab_summary
from w2s.methods.spec import LabLeg, MethodSpec

SPEC = MethodSpec(
    name="deception",
    config=DeceptionConfig,
    entry="w2s.methods.deception.experiment:run",
    help='Weak-to-strong deception (Yang et al.): ceilings, weak labels, the strong model under no / implicit / explicit conflict, the deception score with its knowledge areas.',
    headline=('deception_score',),
    lab=LabLeg("deception.yaml", lab_summary),
    order=50,
)
