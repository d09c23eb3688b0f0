"""Tiny models pretrained through the one training loop: the layer above :mod:`w2s.train`.

A random tiny model (:mod:`w2s.models.tiny`) knows nothing. The two ways w2s gives one knowledge
both train it, so they sit here, above the training loop, and not in the data or model layers:

- :mod:`~w2s.tiny.world`: :func:`pretrained_tiny`, a tiny model pretrained on the tinyworld
  corpus (the testbed of ``w2s generalize --task tinyworld``; the world itself is data,
  :mod:`w2s.data.tinyworld`).
- :mod:`~w2s.tiny.corpus`: corpus stages, ``tiny:llama-2x64+toy-sentiment``, a tiny model
  pretrained on the text of a task before use.

The model layer loads ``tiny:...+<stage>`` names like any other, through its table of builders
(:mod:`w2s.models.builders`): importing this package registers the corpus builder there. So
import ``w2s.tiny`` once before loading such a name outside the CLI and the methods, which do.
"""

from w2s.tiny.corpus import pretrained_path, stage_texts
from w2s.tiny.world import pretrained_tiny

__all__ = ["pretrained_path", "pretrained_tiny", "stage_texts"]
