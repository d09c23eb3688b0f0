"""The weak-to-strong losses against numbers computed by hand (written out below)."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from w2s.train.losses import (
    logconf_alpha,
    logconf_hard_labels,
    logconf_loss,
    logconf_losses,
    logconf_threshold,
    product_loss,
    product_losses,
    xent_loss,
    xent_losses,
)


def logits_for(p0s: list[float]) -> torch.Tensor:
    """Two-class logits [log(p0 / (1 - p0)), 0], so softmax(l)[:, 0] == p0 exactly."""
    return torch.tensor([[math.log(p / (1 - p)), 0.0] for p in p0s], dtype=torch.float64)


def test_xent_by_hand():
    logits = logits_for([0.5, 0.75])                        # p = [.5, .5] and [.75, .25]
    weak = torch.tensor([[0.7, 0.3], [1.0, 0.0]], dtype=torch.float64)
    # row 0: -(0.7 ln .5 + 0.3 ln .5) = ln 2 = 0.693147; row 1: -ln .75 = 0.287682
    per = xent_losses(logits, weak)
    assert per.tolist() == pytest.approx([0.693147, 0.287682], abs=1e-6)
    mean = xent_loss(logits, weak)
    assert mean.dim() == 0 and float(mean) == pytest.approx(0.490415, abs=1e-6)
    # gradient of the mean: (p - y) / B
    leaf = logits.clone().requires_grad_(True)
    xent_loss(leaf, weak).backward()
    assert leaf.grad.tolist()[1] == pytest.approx([(0.75 - 1.0) / 2, (0.25 - 0.0) / 2])


def test_logconf_warmup_is_linear_without_a_jump():
    # a = 0.5 * min(1, step / (0.2 * 100)): 0 at step 0, +0.025 a step, 0.5 from step 20 on
    assert logconf_alpha(0, 100) == 0.0
    assert logconf_alpha(10, 100) == pytest.approx(0.25)
    assert logconf_alpha(19, 100) == pytest.approx(0.475)   # openai's code: 0.5 * 0.19 = 0.095
    assert logconf_alpha(20, 100) == pytest.approx(0.5)
    assert logconf_alpha(99, 100) == pytest.approx(0.5)
    assert logconf_alpha(3, 100, aux_alpha=0.75, warmup_frac=0.0) == 0.75
    steps = [logconf_alpha(s, 100) for s in range(100)]
    jumps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert max(jumps) == pytest.approx(0.025)               # never more than one warm-up increment


def test_logconf_threshold_is_the_batch_quantile():
    p0 = torch.tensor([0.1, 0.4, 0.6, 0.9])
    assert float(logconf_threshold(p0, 0.5)) == pytest.approx(0.5)    # halfway .4 -> .6
    assert float(logconf_threshold(p0, 0.25)) == pytest.approx(0.325)  # .1 + .75 * (.4 - .1)


def test_logconf_by_hand():
    logits = logits_for([0.1, 0.4, 0.6, 0.9])
    weak = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]], dtype=torch.float64)
    # q = mean(weak[:, 1]) = 0.5 -> t = 0.5 -> hardened y_hat = [0,1], [0,1], [1,0], [1,0]
    # step 10 of 100, warm-up 0.2 -> a = 0.25; targets 0.75 * y_w + 0.25 * y_hat:
    #   [.15, .85]  [.45, .55]  [.625, .375]  [.775, .225]
    expected = [
        -(0.15 * math.log(0.1) + 0.85 * math.log(0.9)),     # 0.434944
        -(0.45 * math.log(0.4) + 0.55 * math.log(0.6)),     # 0.693285
        -(0.625 * math.log(0.6) + 0.375 * math.log(0.4)),   # 0.662875
        -(0.775 * math.log(0.9) + 0.225 * math.log(0.1)),   # 0.599736
    ]
    assert expected == pytest.approx([0.434944, 0.693285, 0.662875, 0.599736], abs=1e-6)
    per = logconf_losses(logits, weak, step=10, total_steps=100)
    assert per.tolist() == pytest.approx(expected, abs=1e-6)
    mean = logconf_loss(logits, weak, step=10, total_steps=100)
    assert mean.dim() == 0 and float(mean) == pytest.approx(0.597710, abs=1e-6)
    # at step 0 it is plain cross-entropy with the weak labels
    assert float(logconf_loss(logits, weak, 0, 100)) == pytest.approx(float(xent_loss(logits, weak)))


def test_logconf_rolling_buffer_for_tiny_batches():
    # aux_alpha 1, no warm-up: the target IS the hardened label, loss = -ln p[y_hat]
    weak = torch.tensor([[0.75, 0.25], [0.75, 0.25]], dtype=torch.float64)   # q = 0.25
    buf: deque = deque(maxlen=32)
    logconf_losses(logits_for([0.2, 0.8]), weak, 0, 10, aux_alpha=1.0, warmup_frac=0.0, buffer=buf)
    assert len(buf) == 2
    # second batch p0 = [.6, .7]. Alone: t = .6 + .25 * .1 = .625 -> y_hat = [0,1], [1,0].
    alone = logconf_losses(logits_for([0.6, 0.7]), weak, 0, 10, aux_alpha=1.0, warmup_frac=0.0)
    assert alone.tolist() == pytest.approx([-math.log(0.4), -math.log(0.7)])
    # With the buffer: quantile of [.2, .6, .7, .8] at .25 = .2 + .75 * .4 = .5 -> both class 0.
    pooled = logconf_losses(logits_for([0.6, 0.7]), weak, 0, 10, aux_alpha=1.0, warmup_frac=0.0,
                            buffer=buf)
    assert pooled.tolist() == pytest.approx([-math.log(0.6), -math.log(0.7)])
    assert len(buf) == 4


def test_product_by_hand():
    logits = logits_for([0.75, 0.5])
    weak = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
    # row 0: T ∝ [.75 * .5, .25 * .5] = [.75, .25] -> CE = entropy(.75, .25) = 0.562335
    # row 1: T ∝ [.5 * .8, .5 * .2] = [.8, .2]   -> CE = -(.8 ln .5 + .2 ln .5) = 0.693147
    per = product_losses(logits, weak)
    assert per.tolist() == pytest.approx([0.562335, 0.693147], abs=1e-6)
    assert float(product_loss(logits, weak)) == pytest.approx(0.627741, abs=1e-6)
    # the target is detached: the gradient is (p - T) / B, zero for row 0 where T == p
    leaf = logits.clone().requires_grad_(True)
    product_loss(leaf, weak).backward()
    assert leaf.grad[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert leaf.grad[1].tolist() == pytest.approx([(0.5 - 0.8) / 2, (0.5 - 0.2) / 2])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        xent_loss(torch.zeros(3, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("micro", [1, 4, 8, 32])
def test_logconf_hardened_labels_do_not_copy_the_weak_labels_at_any_micro_batch(micro):
    """A student whose predictions are unrelated to the weak labels: its hardened labels should
    agree with the weak labels about half the time, whatever the micro-batch (the rolling buffer
    of 32 pools the quantile and the positive rate alike). Taking the rate from the micro-batch
    alone gave 78% agreement at micro-batch 1."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    p0 = torch.rand(n, generator=g, dtype=torch.float64)
    weak_p1 = (torch.rand(n, generator=g, dtype=torch.float64) < 0.5).double()
    buf: deque = deque(maxlen=32)
    hard = torch.cat([logconf_hard_labels(p0[i:i + micro], weak_p1[i:i + micro],
                                          buf if micro < 32 else None)
                      for i in range(0, n, micro)])
    agreement = float((hard[:, 1] == weak_p1).double().mean())
    assert 0.47 < agreement < 0.53, agreement
    assert 0.45 < float(hard[:, 1].mean()) < 0.55  # still the weak positive rate
