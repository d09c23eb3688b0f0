"""The benchmarks the W2S papers report, each computed as its own tools compute it.

- :mod:`w2s.evaluation.benchmarks.mtbench`: MT-Bench single-answer grading, as FastChat's
  ``llm_judge`` does it (``w2s eval mtbench``).

Every benchmark reads answers in the format its own tools read (MT-Bench: FastChat's answer
jsonl), so answers written by ``w2s`` can be scored by the benchmark's own tools too, and the
other way round.
"""
