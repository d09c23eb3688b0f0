"""The benchmarks the W2S papers report, each computed as its own tools compute it.

- :mod:`w2s.evaluation.benchmarks.alpacaeval`: AlpacaEval 2's length-controlled win rate (its
  ``length_controlled_v1`` GLM, computed by the ``alpaca-eval`` package itself), with the raw win
  rate and standard error (``w2s eval alpacaeval``).

Every benchmark reads answers in the format its own tools read (AlpacaEval: a JSON list of
``{"instruction", "output", "generator"}``), so answers written by ``w2s`` can be scored by the
benchmark's own tools too, and the other way round.
"""
