"""Weak-to-strong search (Zhou et al. 2024, arXiv 2405.19262): steer a frozen large model at
decoding time with a small tuned / untuned pair, no training of the large model.

The small pair defines a score on (partial) responses,

    V(x, y) = log pi_tuned(y | x) - log pi_untuned(y | x),

how much more likely tuning made the text (for a DPO'd model, its implicit reward up to a
constant). Chunk-level beam search CBS(W, K, L) samples W*K candidates from the LARGE model,
extends every one by L tokens, keeps the W with the highest V, gives each K successors, and so on
until the kept beams finish; the answer is the best candidate. Best-of-N is CBS(1, N, inf), plain
sampling CBS(1, 1, inf); emulated fine-tuning (EFT) is the token-level baseline,
``log p_base + beta (log p_tuned - log p_untuned)``. V is computed on TEXT (the large model's
text re-encoded with the guides' tokenizer and chat template), so the large model may have another
vocabulary, or be a black box behind a completions API. One run decodes the same prompts with
every ``--decoder`` (sampling always: it is the baseline of every win rate), then judges them
through the evaluation layer: the gold reward of each decoder's answers and its win rate against
plain sampling, beside what each decoder spent (base tokens sampled, guide tokens scored, time).

Logit arithmetic (:mod:`.logits`): ``eft``, ``proxy`` (proxy-tuning, Liu et al. 2401.08565),
``genarm`` (Xu et al. 2410.08193), ``ed`` (emulated disalignment, Zhou et al. 2402.12343) and
``jailbreak`` (weak-to-strong jailbreaking, Zhao et al. 2401.17256) are presets of one engine that
samples every token from ``sum_i w_i log p_i`` over models sharing a vocabulary, one KV cache
each: ``base + beta (tuned - untuned)``, ``base + alpha (tuned - untuned)``,
``base + alpha arm``, ``(1 + alpha) base - alpha ed_aligned`` and
``base + alpha (jailbreak_unsafe - jailbreak_safe)`` (weights ``--eft-beta``, ``--proxy-alpha``,
``--genarm-alpha``, ``--ed-alpha``, ``--jailbreak-alpha``). GenARM's ``arm`` is an
autoregressive reward model, ``r(x, y) = beta_r log pi_arm(y | x)``, trained in the run on
``--genarm-task``'s preference pairs (reference-free Bradley-Terry loss, the shared preference
trainer) as a cached stage, or given (``--genarm-model``): :mod:`.genarm`. With ``ed`` or
``jailbreak`` every decoder also reports its attack success rate (refusal-string rule,
:mod:`w2s.evaluation.safety`); the harm score is the gold judge (``--judge rm:...``).

One GPU, or the CPU::

    w2s search --base gpt2-large --tuned PATH_OR_ALIAS --untuned gpt2 --task imdb-prompts \\
        --w 4 --k 4 --l 5 --decoder cbs,bon,sample --judge cls:lvwerra/distilbert-imdb:POSITIVE
    w2s search --recipe recipes/search/tiny.yaml --run-dir runs/search-tiny
    w2s search --recipe recipes/search/alpacaeval-llama3.yaml --base api:http://HOST:8000/v1#MODEL
    w2s search --recipe recipes/search/tiny-logits.yaml          # eft, proxy, genarm, ed (tiny)
    w2s search --recipe recipes/search/proxy-llama2-70b.yaml     # proxy-tuning, one H200
    w2s search --recipe recipes/search/jailbreak-llama2-13b.yaml --jailbreak-unsafe PATH
    w2s search --recipe recipes/search/genarm-tulu2-70b.yaml --base allenai/tulu-2-13b  # GenARM

Several GPUs: decoding is not split across processes; each GPU decodes one shard of the prompts
in a run of its own, then ``w2s eval winrate`` judges the joined generation files::

    for i in $(seq 0 7); do CUDA_VISIBLE_DEVICES=$i w2s search \
        --recipe recipes/search/alpacaeval-llama3.yaml --shard $i/8 --run-dir runs/search/s$i & done
    # the same for a logit decoder, e.g. --recipe recipes/search/ed-llama2-7b.yaml --shard $i/8
    # (genarm: the shards share one cached ARM; the first to need it trains it, the rest wait)

Output (the run directory): ``generations-<decoder>.jsonl`` (answer, guide score V and its
log-probs, the score trace of the chosen beam, gold reward), ``traces-<decoder>.jsonl`` (every
candidate scored, round by round: parent beam, chunk, score, selected), ``judgments-<decoder>.jsonl``
(win rate against sampling), ``metrics.json`` (``win_rate``: CBS vs sampling, ``gold_reward_mean``
of CBS, and per decoder its gold reward, guide score, win rate and compute).

The package's modules: :mod:`.config` (the settings, torch-free), :mod:`.experiment` (plan,
decode, judge), and the decoding parts:

- :mod:`.cache`: a batch of sequences in one KV cache, reordered by index, extended by ragged
  blocks, rewound (public transformers APIs only);
- :mod:`.text`: prompts and responses as tokens, end-of-sequence ids, sampling;
- :mod:`.guide`: the guide score V = log pi_tuned - log pi_untuned on text, incremental (own KV
  caches) or from scratch;
- :mod:`.base`: the base model, local (:class:`~.base.HFBase`) or an OpenAI-compatible
  completions endpoint (:class:`~.base.ApiBase`);
- :mod:`.decoders`: CBS(W, K, L), best-of-N, plain sampling, EFT;
- :mod:`.logits`: the logit-arithmetic engine and its presets (eft, proxy, genarm, ed,
  jailbreak);
- :mod:`.genarm`: GenARM's autoregressive reward model, a cached training stage of the run;
- :mod:`.meter`: what a decoder spent (:class:`~.meter.Compute`) and its clock.
"""

from w2s.methods.search.config import SearchConfig
from w2s.methods.search.lab import lab_summary
from w2s.methods.spec import LabLeg, MethodSpec

SPEC = MethodSpec(
    name="search",
    config=SearchConfig,
    entry="w2s.methods.search.experiment:run",
    help="Weak-to-strong search (Zhou et al.): chunk-level beam search of a large model guided by "
         "a small tuned/untuned pair, beside best-of-N, sampling and the logit-arithmetic "
         "decoders (EFT, proxy-tuning, GenARM, emulated disalignment, weak-to-strong "
         "jailbreaking); gold reward and win rate of each.",
    aliases=("w2s-search",),
    headline=("win_rate",),
    lab=LabLeg("search.yaml", lab_summary),
    order=20,
)
