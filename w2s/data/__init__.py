"""The data layer: every task as rows of plain dicts, from one entry point.

::

    from w2s.data import load_task, halves

    train = load_task("sciq", split="train", n=20000, seed=0)   # TaskData, validated
    test = load_task("sciq", split="test", n=10000)
    a, b = halves(train.rows, seed=0)                           # weak trains on A, labels B
    train.fingerprint()                                         # content hash for caches/env.json

Kinds (:mod:`w2s.data.core`): ``classification`` ``{id, text, label}``, ``preference``
``{id, prompt, chosen, rejected}``, ``prompts`` ``{id, prompt, reference}``.
Sources: hub datasets formatted as the papers did (:mod:`w2s.data.hub`), ``local:PATH``
(:mod:`w2s.data.local`), ``bigbench:<task>`` read offline (:mod:`w2s.data.bigbench`) and
synthetic toy tasks (:mod:`w2s.data.synthetic`). ``w2s tasks`` lists the registry.
"""

from w2s.data.core import KINDS, TaskData, as_prompts, fingerprint
from w2s.data.registry import (
    TASKS,
    TaskSpec,
    load_task,
    register_task,
    task_options,
    tasks_table,
)
from w2s.data.splits import (
    SmallTestSetWarning,
    folds,
    halves,
    pooled_split,
    split_rows,
    warn_if_small,
)

# Importing the source modules registers their tasks (hub first: the order of `w2s tasks`).
from w2s.data import hub, synthetic, bigbench  # noqa: E402,F401,I001  isort: skip
from w2s.data import reasoning  # noqa: E402,F401,I001  isort: skip  (gsm8k, math, toy-arithmetic)
from w2s.data import hazards  # noqa: E402,F401,I001  isort: skip  (toy-hazards, toy-harmless, toy-helpful)
from w2s.data.bigbench import load_bigbench  # noqa: E402
from w2s.data.local import load_local  # noqa: E402

__all__ = [
    "KINDS", "TASKS", "SmallTestSetWarning", "TaskData", "TaskSpec", "as_prompts", "fingerprint",
    "folds", "halves", "load_bigbench", "load_local", "load_task", "pooled_split",
    "register_task", "split_rows",
    "task_options", "tasks_table", "warn_if_small",
]
