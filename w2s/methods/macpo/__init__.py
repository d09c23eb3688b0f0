"""MACPO (Lyu et al., ICLR 2025, arXiv 2410.07672): weak-to-strong alignment by multi-agent
contrastive preference optimization. Weak teachers and a strong student teach each other.

Every model plays two AGENTS, LoRA adapters over one loaded copy of it: a POSITIVE agent (the
one being aligned) and a NEGATIVE agent (a deliberately bad twin that produces "familiar"
mistakes). The task's training rows are split by prompt into a labeled half and an unlabeled
prompt half Q_w2s.

Initialisation. Each weak teacher's positive agent is fine-tuned (SFT) on the chosen responses of
the labeled half, its negative agent on the rejected ones. The teachers' positive agents answer
Q_w2s; the strong student's positive agent is fine-tuned on those answers (naive weak-to-strong
SFT: the "initial strong positive agent", every win rate's baseline): every teacher's answer to a
prompt, or one of them (``student_sft_answers``: drawn with the seed, or the student's
likeliest). Its negative agent starts as a copy of it and is fine-tuned further on the teachers'
NEGATIVE agents' answers to Q_w2s (picked the same way).

Iteration t = 1..T. (1) Every agent answers Q_w2s. (2) For each learner (each teacher and the
student), the candidate chosen answers are UNFAMILIAR positive ones: for the student the
teachers' positive answers, for a teacher the student's and the other teachers' positive
answers. A perplexity filter under the learner's own positive agent keeps the plausible ones
(default: per prompt, the k = 1 candidate with the lowest perplexity; the rule is a setting).
(3) The rejected answer of each pair is a FAMILIAR negative one: the learner's own negative
agent's answer to that prompt. (4) Every learner's positive agent is trained with DPO (beta 0.1)
plus an SFT term on the chosen answer (ftx 0.2), continuing from its adapter of the previous
iteration. (5) The evaluation layer judges each positive agent's answers to the test prompts
against the initial strong positive agent's: the student's win rate (and each teacher's), and
the mean gold reward where the judge is a reward.

Defaults are the authors' scripts' (youganglyu/MACPO, LLaMA-Factory): LoRA r 8 on the query and
value projections, SFT lr 5e-5 for 3 epochs (global batch 32), DPO lr 1e-5 for 1 epoch per
iteration (global batch 16), beta 0.1, ftx 0.2, sampling temperature 0.95, top-p 0.7, 512 new
tokens, 3 iterations. Prompts go through each model's chat template unless ``prompt_format:
vicuna`` (the authors' LLaMA-Factory template); docs/fidelity.md lists every difference from the
authors and the setting that closes it. The authors published scripts and data files only;
generation, filtering and pairing are implemented here from the paper, one visible step each, and
every step's output is kept in the run directory (``iter1/pairs-student.jsonl``, ...; see
:mod:`w2s.methods.macpo.experiment`). A run that stops resumes at the stage it reached.

One GPU, or the CPU::

    w2s macpo --weak meta-llama/Llama-2-7b-hf,mistral-7b,llama-3-8b \\
        --strong meta-llama/Llama-2-70b-hf --task hh-helpful --iterations 3 --quantize 4bit
    w2s macpo --recipe recipes/macpo/tiny.yaml --run-dir runs/macpo-tiny

Models go on the accelerator's device (a CUDA GPU when one is visible, else the CPU). Several
GPUs (training is data-parallel with the same global batch; generation, perplexity scoring and
judging run on the main process while the others wait)::

    accelerate launch -m w2s macpo --recipe recipes/macpo/hh-helpful.yaml
    torchrun --nproc_per_node 8 -m w2s macpo --recipe recipes/macpo/pku-saferlhf.yaml
"""

from w2s.methods.macpo.config import MACPOConfig
from w2s.methods.macpo.lab import lab_summary
from w2s.methods.spec import LabLeg, MethodSpec

SPEC = MethodSpec(
    name="macpo",
    config=MACPOConfig,
    entry="w2s.methods.macpo.experiment:run",
    help='MACPO (Lyu et al.): weak teachers and a strong student, each a positive and a negative LoRA agent, align each other by contrastive DPO over iterations; win rate against the initial strong positive agent per iteration.',
    headline=('win_rate',),
    lab=LabLeg("macpo.yaml", lab_summary),
    order=40,
)
