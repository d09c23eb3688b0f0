"""Every weak-to-strong alignment method on ONE weak/strong pair, with one judge and one table
(``w2s compare``).

Each W2S paper compares its method with a few baselines, each on its own data, judge and models;
nobody can then say which method works best for a given pair, at what cost. ``w2s compare``
runs them side by side on the same training pairs, the same held-out prompts and the same judge:

- references: the strong model as it is (every win rate's baseline), the weak aligned model,
  and the strong model trained by DPO on the gold pairs (the ceiling);
- naive W2S SFT (the strong model fine-tuned on the weak aligned model's answers) and the weak
  model as preference labeller (``w2s weak-label``);
- decoding-time: best-of-N and CBS guided by the weak pair, EFT / proxy-tuning, GenARM (one
  ``w2s search`` run);
- training-time: WSPO, MACPO (the weak model its one teacher, or ``--weak a,b``), and ExPO applied
  to the WSPO and the DPO results.

Each entry is an ordinary run of its method under ``<run>/entries/``; the weak alignment is made
once and shared. The table (``table.json``, ``table.md``, the terminal) gives per entry the win
rate against the strong model with its standard error, the gold reward (reward judges), the gap
recovered ``(entry - strong) / (ceiling - strong)`` and the compute (training and generated
tokens, wall time, peak memory); ``w2s eval compare RUN_DIR`` recomputes it from the stored
answers. A killed compare resumes at the entry it reached. Entries that cannot run for a pair
(different vocabularies for the token-level decoders) are listed with the reason.

One GPU, or the CPU::

    w2s compare --recipe recipes/compare/tiny.yaml --run-dir runs/compare-tiny
    w2s compare --weak qwen2-1.5b-instruct --strong qwen2-7b-instruct --task ultrafeedback \\
        --judge rm:OpenAssistant/reward-model-deberta-v3-large-v2 --dry-run

Several GPUs: each entry is an ordinary run, so launch the training-time ones on their own
(``--dry-run`` prints their commands; each writes ``<run>/entries/<name>.yaml``) and let
``w2s compare`` pick up what they finished::

    torchrun --nproc_per_node 8 -m w2s wspo --recipe <run>/entries/wspo.yaml
    w2s compare --recipe recipes/compare/qwen2-ultrafeedback.yaml --run-dir <run>
"""

from w2s.methods.compare.config import CompareConfig
from w2s.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="compare",
    config=CompareConfig,
    entry="w2s.methods.compare.experiment:run",
    help="Every W2S alignment method on one weak/strong pair with one judge: references, naive "
    "SFT, weak labels, best-of-N / CBS / EFT / GenARM, WSPO, MACPO, ExPO; one table of win rate "
    "against the strong model, gold reward, gap recovered and compute.",
    headline=(),
    order=200,
)
