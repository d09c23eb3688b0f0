"""Weak-to-strong generalization (Burns et al. 2023, arXiv 2312.09390): can a strong model
trained on a weak model's labels outperform its supervisor?

The experiment, per (task, weak, strong, seed): split the training documents into halves A and
B. Fine-tune the WEAK model on A with ground truth (the weak ceiling): its test accuracy is the
weak performance, its soft predictions on B are the weak labels. Fine-tune the STRONG model on B
with ground truth (the strong ceiling), and again on B with the weak labels (weak-to-strong),
with plain cross-entropy (``xent``), the auxiliary confidence loss (``logconf``: the student also
learns from its own hardened predictions, so it may overrule the supervisor where it is sure) or
the ``product`` loss. The headline figure is the performance gap recovered,

    PGR = (acc_w2s - acc_weak) / (acc_strong_ceiling - acc_weak),

with a paired bootstrap CI over the test examples, null with a reason when the ceiling does not
beat the weak model. Every model is a classifier (LM body + zero-init linear head on the last
real token), fine-tuned fully, with LoRA, or as a linear probe on frozen features. Every trained
model and its predictions are cached (keyed by everything that determines them), so a sweep
trains each ceiling once per seed and an interrupted training resumes from its checkpoint.

One GPU, or the CPU::

    w2s generalize --weak gpt2 --strong gpt2-xl --task sciq --loss logconf
    w2s generalize --recipe recipes/generalize/tiny.yaml --loss logconf --run-dir runs/tiny

Several GPUs (the global batch stays 32 whatever the GPU count)::

    accelerate launch -m w2s generalize --recipe recipes/generalize/sciq-gpt2.yaml
    torchrun --nproc_per_node 8 -m w2s generalize --recipe recipes/generalize/sciq-qwen.yaml

Bootstrapping (``--chain gpt2,gpt2-medium,gpt2-large``: each model trained on the previous one's
labels) and sweeps (``--weak a,b --strong c,d --seeds 0,1,2``: every pair with weak smaller
than strong, a PGR table with the median over seeds, and a plot) use the same steps.
"""

from w2s.methods.generalize.config import GeneralizeConfig
from w2s.methods.generalize.lab import lab_summary
from w2s.methods.spec import LabLeg, MethodSpec

SPEC = MethodSpec(
    name="generalize",
    config=GeneralizeConfig,
    entry="w2s.methods.generalize.experiment:run",
    help="Weak-to-strong generalization (Burns et al.): weak ceiling, strong ceiling, strong on "
         "weak labels, PGR with a bootstrap CI.",
    aliases=("w2s-generalize",),
    headline=("pgr",),
    lab=LabLeg("generalize.yaml", lab_summary,
               {"xent": {"loss": "xent"}, "logconf": {"loss": "logconf"}}),
    order=10,
)
