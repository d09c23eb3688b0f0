"""The benchmarks the W2S papers report, each computed as its own tools compute it.

- :mod:`w2s.evaluation.benchmarks.alpacaeval`: AlpacaEval 2's length-controlled win rate (its
  ``length_controlled_v1`` GLM, computed by the ``alpaca-eval`` package itself), with the raw win
  rate and standard error (``w2s eval alpacaeval``).
- :mod:`w2s.evaluation.benchmarks.mtbench`: MT-Bench single-answer grading, as FastChat's
  ``llm_judge`` does it (``w2s eval mtbench``).
- :mod:`w2s.evaluation.benchmarks.arenahard`: Arena-Hard-Auto's score against its baseline
  (v0.1 and v2 code paths, :mod:`.arenahard_score`), plain and style-controlled
  (``w2s eval arenahard``).

Every benchmark reads answers in the format its own tools read (AlpacaEval: a JSON list of
``{"instruction", "output", "generator"}``; MT-Bench: FastChat's answer jsonl), so answers written
by ``w2s`` can be scored by the benchmark's own tools too, and the other way round.
"""
