"""Weak LLM feedback (Tao & Li, "Your Weak LLM is Secretly a Strong Teacher for Alignment", ICLR
2025, arXiv 2409.08813): a small weak model, aligned by DPO on a few labelled preference pairs,
labels many unlabelled pairs for the strong model.

1. The weak model pi_w_ref (``--weak``) is aligned by DPO on a LABELLED split of the task's train
   pairs (``--n-labelled``), giving pi_w.
2. Its implicit reward ``r(x, y) = beta * (log pi_w(y|x) - log pi_w_ref(y|x))`` labels a larger
   UNLABELLED split (``--n-unlabelled``; disjoint): in each pair the response with the higher
   reward is "chosen"; the margin ``|r_1 - r_2|`` and ``p = sigmoid(margin)`` (the weak model's
   Bradley-Terry probability of its choice) are recorded per pair (``weak_labels.jsonl``).
3. The strong model is trained by DPO on those weak labels; options: CW-PO's confidence weighting
   (Afzali et al., arXiv 2603.04968: each pair's loss times p, ``--confidence-weighting``) and a
   confidence filter (``--confidence-threshold``: keep pairs with p >= it).
4. The ceiling: the same strong model trained by DPO on the GOLD labels of the same unlabelled
   split (all of it).

metrics.json holds the weak labels' agreement with the gold labels, overall and by confidence bin
(quantiles of p); win rates through the run's judge of strong-on-weak vs the strong start,
strong-on-gold vs the start and strong-on-weak vs strong-on-gold; the gold reward of each (reward
judges); and ``gap_recovered = (weak_labelled - start) / (gold_labelled - start)`` on the gold
reward (a pairwise judge: on the win rate against the start, whose "start" is 0.5), null with
``gap_recovered_reason`` when the ceiling does not beat the start. Every stage (the weak DPO,
the labels, the generations before training, each strong DPO with its answers) is a cache entry:
a rerun trains nothing.

One GPU, or the CPU::

    w2s weak-label --recipe recipes/weak_label/tiny.yaml --run-dir runs/weak-label-tiny
    w2s weak-label --recipe recipes/weak_label/hh-opt.yaml

Several GPUs (each DPO data-parallel; the global batch stays the recipe's)::

    accelerate launch -m w2s weak-label --recipe recipes/weak_label/hh-opt.yaml
    torchrun --nproc_per_node 8 -m w2s weak-label --recipe recipes/weak_label/hh-opt.yaml
"""

from w2s.methods.spec import MethodSpec
from w2s.methods.weak_label.config import WeakLabelConfig

SPEC = MethodSpec(
    name="weak-label",
    config=WeakLabelConfig,
    entry="w2s.methods.weak_label.experiment:run",
    help="Weak LLM feedback (Tao & Li): a DPO-aligned weak model labels unlabelled preference "
         "pairs by its implicit reward; the strong model is trained by DPO on them (options: "
         "confidence weighting, a confidence filter); agreement with gold, win rates, gap "
         "recovered against the gold-label ceiling.",
    headline=("gap_recovered", "label_agreement"),
    order=35,
)
