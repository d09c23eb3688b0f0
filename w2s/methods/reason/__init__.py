"""Weak-to-strong reasoning (Yang, Ma & Liu, "Weak-to-Strong Reasoning", EMNLP 2024 Findings,
arXiv 2407.13647): a weak supervisor's solutions to math problems teach a strong model to
reason, and accuracy is checked against the final answer, so the figure needs no judge.

The train split is cut in two: the weak supervisor learns from train_1's GOLD solutions
(``--weak-supervision sft``; or is prompted with a few of them, ``few-shot``) and writes
solutions to train_2, whose gold the strong model never sees.

1. Stage I, final-answer consistency: the strong base answers train_2 in context
   (``--icl-shots`` weak solutions of train_2 problems as demonstrations, one fixed draw); only the
   problems where its final answer equals the weak solution's are kept, and the strong base is
   fine-tuned on their weak solutions, their in-context solutions, or both (``--stage1-data
   hybrid``). Iterated (``--iterations``, 2 as the paper's GSM8K runs): the two models of round
   t (trained on either side) answer train_2 again, their agreements are round t+1's data, and
   each round retrains from the base. ``--selection all`` instead keeps every weak solution
   (full weak fine-tuning, the paper's baseline, also trained by default).
2. Stage II, preference optimisation on contrasts the strong model finds itself: the stage-I
   model samples ``--n-samples`` solutions per train_2 problem at temperature 1; where the
   majority answer has a share >= 0.6, the weak solution is chosen against a disagreeing
   sample if it agrees with the majority, else rejected for a majority sample if the share is
   >= 0.8 (``--pairs paper``, the authors' code; ``self``: majority against minority samples);
   DPO (or ``--stage2 orpo``) from the stage-I model.

Every model answers the test problems greedily; :mod:`w2s.evaluation.checking` extracts and
compares the final answers (``####``, ``\\boxed{}``, "the answer is"). metrics.json holds the
accuracy with a bootstrap CI of the weak supervisor, each strong model (full weak, every stage-I
round and side, stage II) and the strong ceiling (SFT on train_2's gold solutions), PGR of each
through the shared :func:`w2s.evaluation.bootstrap_pgr`, headline ``pgr`` of the last stage, the
data figures (problems kept per round and the kept weak solutions' accuracy; pairs per kind and
how often they are ordered right against gold, which the method never reads). predictions.jsonl
is what ``w2s eval pgr RUN_DIR`` reads (one pair per strong model).

One GPU, or the CPU::

    w2s reason --recipe recipes/reason/tiny.yaml --run-dir runs/reason-tiny
    w2s reason --recipe recipes/reason/math-llama3-8b-70b.yaml

Several GPUs (every SFT and the DPO data-parallel; the global batch stays the recipe's)::

    torchrun --nproc_per_node 8 -m w2s reason --recipe recipes/reason/gsm8k-llama2-70b.yaml
    accelerate launch -m w2s reason --recipe recipes/reason/math-llama2-70b.yaml
"""

from w2s.methods.reason.config import ReasonConfig
from w2s.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="reason",
    config=ReasonConfig,
    entry="w2s.methods.reason.experiment:run",
    help="Weak-to-strong reasoning (Yang et al.): stage I SFT on weak solutions selected by "
         "final-answer consistency with the strong model's in-context answers (iterated), "
         "stage II DPO/ORPO on its own contrastive samples; exact-answer accuracy and PGR "
         "against a gold-SFT ceiling, no judge.",
    headline=("pgr",),
    order=38,
)
