"""Loss functions: pure functions from model outputs to PER-EXAMPLE losses.

Every loss here returns a tensor of shape ``[batch]`` (one loss per example), never a batch mean:
the training loop (:func:`w2s.train.train`) does the averaging itself, so that a partial last
batch, gradient accumulation and several processes all give the mean over exactly the examples
of one optimizer step. (Exception: the W2S classification losses ``xent_loss``, ``logconf_loss``
and ``product_loss`` return the scalar batch mean, their public contract; their per-example
twins ``xent_losses``, ``logconf_losses``, ``product_losses`` are what the loop trains with.)

Conventions for language-model losses:

- **aligned** logits and labels: ``logits[:, t]`` is the prediction for ``labels[:, t]``. The
  caller shifts (``logits[:, :-1]`` with ``input_ids[:, 1:]``), so a loss never guesses.
- ``mask`` (``[B, T]``, bool or float weights) marks the positions that count, usually the
  response tokens; labels at unmasked positions are never read (they may be -100 or padding).
- log-probabilities are taken as ``logit[label] - logsumexp(logits)`` in fp32, a chunk of rows at
  a time, so no full-vocabulary fp32 copy of the logits exists at once, neither in the forward
  nor in the backward (the naive ``log_softmax(logits.float())`` keeps two).
"""

from __future__ import annotations

from collections import deque

import torch

__all__ = ["lm_loss", "token_nll", "xent_loss", "logconf_loss", "product_loss", "xent_losses",
           "logconf_losses", "product_losses", "logconf_alpha", "logconf_threshold",
           "sft_loss", "dpo_loss", "simpo_loss", "wspo_loss", "reward_model_loss",
           "explicit_conflict_loss"]

ROW_CHUNK = 1024
"""Rows (token positions) converted to fp32 at a time: 1024 x 152k vocab = 0.6 GB transient."""


class _TokenNLL(torch.autograd.Function):
    """``-log softmax(logits)[label]`` per row, in fp32, chunk by chunk.

    Forward keeps only the per-row logsumexp (``[N]`` fp32) besides the inputs it was given.
    Backward rebuilds the softmax of one chunk at a time: ``d nll / d logits = softmax - onehot``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], chunk):
            lse[start:start + chunk] = torch.logsumexp(logits[start:start + chunk].float(), dim=-1)
        picked = logits.gather(1, labels[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        return lse - picked

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = torch.exp(logits[rows].float() - lse[rows, None])  # softmax of this chunk
            probs[torch.arange(probs.shape[0], device=probs.device), labels[rows]] -= 1.0
            grad[rows] = (probs * grad_out[rows, None].float()).to(grad.dtype)
        return grad, None, None


def token_nll(logits: torch.Tensor, labels: torch.Tensor, chunk: int = ROW_CHUNK) -> torch.Tensor:
    """Negative log-likelihood of each label: ``[N, V]`` logits, ``[N]`` labels -> ``[N]`` fp32."""
    return _TokenNLL.apply(logits, labels, chunk)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean token cross-entropy over the masked positions: ``[B, T, V]`` -> ``[B]``.

    ``loss[b] = sum_t mask[b,t] * nll[b,t] / sum_t mask[b,t]`` where
    ``nll[b,t] = logsumexp(logits[b,t]) - logits[b,t,labels[b,t]]`` (fp32). An example with no
    masked position gets loss 0 (and no gradient) rather than NaN.

    Only the masked positions are scored, so prompt tokens cost nothing.
    """
    if logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"lm_loss wants aligned shapes: logits [B,T,V], labels and mask [B,T]; "
                         f"got {tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    weights = mask.to(torch.float32)
    flat_w = weights.reshape(-1)
    rows = flat_w.nonzero().squeeze(1)  # the scored positions only
    nll = token_nll(logits.reshape(-1, logits.shape[-1])[rows], labels.reshape(-1)[rows].long())
    per_token = torch.zeros_like(flat_w).index_put((rows,), nll * flat_w[rows])
    totals = per_token.view(weights.shape).sum(dim=1)
    counts = weights.sum(dim=1)
    return totals / torch.where(counts > 0, counts, torch.ones_like(counts))


# --------------------------------------------------------------------------------------------
# weak-to-strong classification losses (Burns et al. 2023)
#
# logits [B, 2] from the classifier; weak_probs [B, 2] the weak supervisor's soft labels (rows sum
# to 1). The ``*_losses`` functions return per-example losses [B] (what the training loop wants);
# ``xent_loss`` / ``logconf_loss`` / ``product_loss`` are the public scalar-mean versions.


def _soft_xent(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_c target[c] * log softmax(logits)[c]`` per row, in fp32: [B, C] -> [B]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(target.float() * logp).sum(dim=-1)


def _check_pair(logits: torch.Tensor, weak_probs: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape != weak_probs.shape:
        raise ValueError(f"w2s losses want logits and weak_probs of the same shape [B, 2]; got "
                         f"{tuple(logits.shape)} and {tuple(weak_probs.shape)}")


def xent_losses(logits: torch.Tensor, weak_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the weak SOFT labels, per example: ``-sum_c y_w[c] log p[c]`` -> [B].

    Hard ground-truth labels are the special case ``y = one_hot(label)``.
    """
    _check_pair(logits, weak_probs)
    return _soft_xent(logits, weak_probs)


def xent_loss(logits: torch.Tensor, weak_probs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, 2] against the weak soft labels [B, 2] (a scalar)."""
    return xent_losses(logits, weak_probs).mean()


def logconf_alpha(step: int, total_steps: int, aux_alpha: float = 0.5,
                  warmup_frac: float = 0.2) -> float:
    """The auxiliary weight at optimizer step ``step`` of ``total_steps``: a LINEAR warm-up,

        a = aux_alpha * min(1, step / (warmup_frac * total_steps))

    so a = 0 at the first step and reaches ``aux_alpha`` once ``warmup_frac`` of training is
    done (``warmup_frac = 0``: ``aux_alpha`` from the start). With aux_alpha 0.5, warmup_frac 0.2
    and 100 steps: a = 0, 0.025, ..., 0.475 for steps 0..19, then 0.5.

    Not copied from openai/weak-to-strong: there the weight is ``aux_coef * step_frac`` during the
    warm-up (it only climbs to ``0.1 * aux_coef``) and then JUMPS to ``aux_coef``; that jump is a
    bug, the paper describes a warm-up.
    """
    if total_steps <= 0 or warmup_frac <= 0:
        return float(aux_alpha)
    return float(aux_alpha) * min(1.0, step / (warmup_frac * total_steps))


def logconf_threshold(p0: torch.Tensor, positive_rate: float | torch.Tensor) -> torch.Tensor:
    """The quantile of the student's ``p0 = p(class 0)`` at ``q = positive_rate``.

    Examples with ``p0 < t`` are hardened to class 1, so a fraction ``q`` of them is: the hardened
    labels reproduce the weak labels' positive rate instead of collapsing to one class. Linear
    interpolation (``torch.quantile``): p0 = [0.1, 0.4, 0.6, 0.9], q = 0.5 -> t = 0.5.
    """
    q = torch.as_tensor(positive_rate, dtype=torch.float32, device=p0.device).clamp(0.0, 1.0)
    return torch.quantile(p0.float(), q)


def logconf_hard_labels(p0: torch.Tensor, weak_p1: torch.Tensor,
                        buffer: deque | None = None) -> torch.Tensor:
    """The student's hardened labels ``[B, 2]`` (no gradient): class 1 where ``p0 < t``, ``t``
    the :func:`logconf_threshold` of the pool's ``p0`` at the POOL's weak positive rate.

    The pool is the batch, plus (``buffer``) the recent examples: a micro-batch of 2 says little
    about a quantile (EleutherAI/w2s keeps the last 32). The rate and the quantile must come from
    the same pool: a rate from the micro-batch alone, with the quantile over the buffer, makes the
    student's "own" labels copy the weak ones (with micro-batches of 1, every hardened label IS the
    weak label's class). ``buffer`` holds ``[p0, weak_p1]`` pairs; it is updated in place.
    """
    pool_p0, pool_q = p0, weak_p1
    if buffer is not None:
        if len(buffer):
            past = torch.stack(list(buffer)).to(p0.device)
            pool_p0, pool_q = torch.cat([past[:, 0], p0]), torch.cat([past[:, 1], weak_p1])
        buffer.extend(torch.stack([p0, weak_p1], dim=1).cpu())
    t = logconf_threshold(pool_p0, pool_q.mean())
    return torch.stack([(p0 >= t), (p0 < t)], dim=1).float()


def logconf_losses(logits: torch.Tensor, weak_probs: torch.Tensor, step: int, total_steps: int,
                   aux_alpha: float = 0.5, warmup_frac: float = 0.2,
                   buffer: deque | None = None) -> torch.Tensor:
    """Auxiliary-confidence loss per example, [B] (see :func:`logconf_loss`)."""
    _check_pair(logits, weak_probs)
    p0 = torch.softmax(logits.float(), dim=-1)[:, 0].detach()
    hard = logconf_hard_labels(p0, weak_probs.float()[:, 1].detach(), buffer)
    a = logconf_alpha(step, total_steps, aux_alpha, warmup_frac)
    target = (1.0 - a) * weak_probs.float() + a * hard
    return _soft_xent(logits, target)


def logconf_loss(logits: torch.Tensor, weak_probs: torch.Tensor, step: int, total_steps: int,
                 aux_alpha: float = 0.5, warmup_frac: float = 0.2,
                 buffer: deque | None = None) -> torch.Tensor:
    """Burns et al.'s auxiliary confidence loss, mean over the batch (a scalar).

    The student is trained towards a mix of the weak labels and its OWN hardened predictions, so
    it can disagree with the weak supervisor where it is confident::

        p  = softmax(logits);  q = mean(weak_probs[:, 1])     (the weak positive rate)
        t  = quantile(p[:, 0], q)                             (:func:`logconf_threshold`)
        y_hat = [p0 >= t, p0 < t]                             (no gradient)
        a  = aux_alpha * min(1, step / (warmup_frac * total_steps))   (:func:`logconf_alpha`)
        loss = CE(logits, (1 - a) * weak_probs + a * y_hat)

    ``buffer``: an optional ``collections.deque(maxlen=32)`` of recent examples that joins the
    batch for the quantile AND the weak positive rate when micro-batches are too small for one
    (:func:`logconf_hard_labels`); it is updated in place.
    """
    return logconf_losses(logits, weak_probs, step, total_steps, aux_alpha, warmup_frac,
                          buffer).mean()


def product_losses(logits: torch.Tensor, weak_probs: torch.Tensor, alpha: float = 1.0,
                   beta: float = 1.0) -> torch.Tensor:
    """Product-of-experts loss per example, [B] (see :func:`product_loss`)."""
    _check_pair(logits, weak_probs)
    p = torch.softmax(logits.float(), dim=-1)
    target = p.pow(beta) * weak_probs.float().pow(alpha)
    target = (target / target.sum(dim=-1, keepdim=True).clamp_min(1e-12)).detach()
    return _soft_xent(logits, target)


def product_loss(logits: torch.Tensor, weak_probs: torch.Tensor) -> torch.Tensor:
    """Product loss, mean over the batch: CE against ``T ∝ p^b * y_w^a`` (a = b = 1), detached.

    The target is the student and the weak supervisor as two experts multiplied together: where
    the student is confident it outvotes an unsure weak label, and vice versa.
    """
    return product_losses(logits, weak_probs).mean()


W2S_LOSSES = ("xent", "logconf", "product")
"""The strong student's training losses (``w2s generalize --loss``)."""


# --------------------------------------------------------------------------------------------
# preference losses (SFT, DPO, SimPO, GenARM's ARM, WSPO, reward modelling)
#
# Inputs are log-prob tensors from the one helper (:func:`w2s.models.response_logprobs`):
# ``summed`` [B] sequence log-probs of the response tokens, or ``per_token`` [B, T] with a mask.
# Each function returns per-example losses [B] for the training loop to average.


def sft_loss(summed: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: mean negative log-likelihood per response token, per example.

    ``loss[b] = -summed[b] / n_tokens[b]`` (an empty response gives 0, not NaN).
    """
    return -summed / n_tokens.to(summed.dtype).clamp_min(1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023), sigmoid form, per example [B].

    With summed sequence log-probs of the chosen (w) and rejected (l) responses::

        h    = (log pi(w) - log ref(w)) - (log pi(l) - log ref(l))
        loss = -log sigmoid(beta * h)                       (label_smoothing = 0)
             = -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)   (conservative DPO, e)

    The implicit rewards are ``beta * (log pi - log ref)`` of each response. This is the loss
    TRL's ``DPOTrainer`` computes with ``loss_type="sigmoid"`` on the same inputs (tested).
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    z = beta * h.float()
    if label_smoothing:
        return (-(1 - label_smoothing) * torch.nn.functional.logsigmoid(z)
                - label_smoothing * torch.nn.functional.logsigmoid(-z))
    return -torch.nn.functional.logsigmoid(z)


def simpo_loss(policy_chosen_avg: torch.Tensor, policy_rejected_avg: torch.Tensor,
               beta: float = 2.0, gamma: float = 1.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024): reference-free, length-normalised, with a target margin. [B].

    ``loss = -log sigmoid(beta * (avg_logp(w) - avg_logp(l)) - gamma)``, where ``avg_logp`` is
    the response's summed log-prob divided by its token count.
    """
    z = beta * (policy_chosen_avg.float() - policy_rejected_avg.float()) - gamma
    return -torch.nn.functional.logsigmoid(z)


def orpo_loss(policy_chosen_avg: torch.Tensor, policy_rejected_avg: torch.Tensor,
              beta: float = 0.1) -> torch.Tensor:
    """ORPO (Hong et al. 2024, arXiv 2403.07691): SFT plus an odds-ratio term, no reference. [B].

    With ``a = avg_logp(y)``, the response's mean per-token log-prob, the odds of ``y`` are
    ``P / (1 - P)`` with ``P = exp(a)``, so ``log odds(y) = a - log(1 - exp(a))``::

        loss = -a_w  -  beta * log sigmoid(log odds(w) - log odds(l))

    (beta, the odds-ratio weight lambda of the paper, 0.1 in TRL's ``ORPOTrainer`` and in
    LLaMA-Factory's ``orpo_beta``, which weak-to-strong reasoning trained with). ``a`` is kept
    below -1e-6 so that a certain response (``P = 1``) gives a large finite log-odds, not inf.
    """
    a_w = policy_chosen_avg.float().clamp(max=-1e-6)
    a_l = policy_rejected_avg.float().clamp(max=-1e-6)
    log_odds = (a_w - torch.log(-torch.expm1(a_w))) - (a_l - torch.log(-torch.expm1(a_l)))
    return -a_w - beta * torch.nn.functional.logsigmoid(log_odds)


def arm_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, beta: float = 0.05,
             gamma: float = 0.0) -> torch.Tensor:
    """GenARM's autoregressive reward model (Xu et al. 2024, arXiv 2410.08193), per example [B].

    The reward IS the model's summed log-prob, ``r(x, y) = beta * log pi_r(y | x)``, trained
    with the Bradley-Terry loss on those rewards; no reference model, no length normalisation::

        loss = -log sigmoid(beta * (log pi_r(w) - log pi_r(l)) - gamma)

    (the authors' ``ARMTrainer.arm_loss``: target margin ``gamma`` 0 by default; beta 0.05 in
    their HH-RLHF LLaMA script, 0.1 for the Tulu2 ARM). SimPO is this on length-normalised
    log-probs; DPO subtracts a reference's.
    """
    z = beta * (policy_chosen.float() - policy_rejected.float()) - gamma
    return -torch.nn.functional.logsigmoid(z)


def wspo_loss(policy: torch.Tensor, ref: torch.Tensor, weak_aligned: torch.Tensor,
              weak_ref: torch.Tensor, mask: torch.Tensor | None = None,
              gamma: float = 0.1) -> torch.Tensor:
    """Weak-to-strong preference optimisation (Zhu et al. 2024), per example [B].

    Token level (``mask`` given, tensors [B, T] of per-token log-probs of the same tokens)::

        loss[b] = (1/|y|) sum_t mask[b,t] * ( gamma * (log pi(y_t) - log ref(y_t))
                                            - (log pi_w_r(y_t) - log pi_w_ref(y_t)) )^2

    The strong model's log-ratio is driven to ``1/gamma`` times the weak aligned model's: the
    weak model's alignment, amplified. Sequence level (``mask`` None, tensors [B] of
    LENGTH-NORMALISED sequence log-probs, each model on its own tokenisation of the same text):
    ``loss = (gamma * (policy - ref) - (weak_aligned - weak_ref))^2``, which needs no shared
    vocabulary. ``gamma`` must be > 0.

    Values at unmasked positions are never read: padding may hold anything, even ``-inf`` log-probs
    (a product with a zero mask would turn those into NaN, in the loss or its gradient).
    """
    if gamma <= 0:
        raise ValueError(f"wspo gamma must be > 0, got {gamma}")
    diff = gamma * (policy.float() - ref.float()) - (weak_aligned.float() - weak_ref.float())
    if mask is None:
        if diff.dim() != 1:
            raise ValueError("sequence-level wspo_loss wants [B] tensors; pass mask for [B, T]")
        return diff.pow(2)
    m = mask.to(torch.float32)
    diff = torch.where(m != 0, diff, torch.zeros_like(diff))  # before squaring: no NaN gradient
    return (diff.pow(2) * m).sum(-1) / m.sum(-1).clamp_min(1)


def reward_model_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                      target: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry reward modelling: ``-log sigmoid(r(chosen) - r(rejected))`` per pair, [B]
    (binary cross-entropy on the score difference with the chosen response as the positive).

    ``target`` [B]: a soft label, the probability that ``chosen`` is the better response (a weak
    supervisor's confidence): ``-(q log sigmoid(d) + (1 - q) log sigmoid(-d))``; none = 1."""
    d = chosen_scores.float() - rejected_scores.float()
    if target is None:
        return -torch.nn.functional.logsigmoid(d)
    q = target.float().to(d.device)
    return -(q * torch.nn.functional.logsigmoid(d) + (1 - q) * torch.nn.functional.logsigmoid(-d))


# --------------------------------------------------------------------------------------------
# weak-to-strong deception: the explicit conflict term (Yang et al. 2024)


def explicit_conflict_loss(logit: torch.Tensor, alpha: float = 0.5,
                           margin: float = 0.0) -> torch.Tensor:
    """The explicit-conflict term of W2S deception, per example [B]:

        alpha * CE(M(x), 0) * 1{M(x) < 0.5},   M(x) = sigmoid(logit)

    ``logit`` is the model's preference for the ground-truth HARMLESS response over the harmful
    one (``M(x)`` its probability). Where the model already prefers the harmful response
    (``logit < 0``) the term pushes it further that way; elsewhere it is 0. The indicator is
    read without gradient. With ``CE(sigmoid(z), 0) = -log sigmoid(-z)``:

    - reward model: ``logit = r(harmless) - r(harmful)``, the term is BCE towards label 0;
    - DPO: ``logit = beta * h`` (h the DPO log-ratio difference), the term is the DPO loss of the
      reversed pair;
    - SimPO: ``logit = beta * (avg_logp(harmless) - avg_logp(harmful))`` and ``margin = gamma``:
      the term is the SimPO loss of the reversed pair, ``-log sigmoid(-logit - gamma)``.

    So z = -1, alpha = 0.5: 0.5 * log(1 + e^-1) = 0.1566; z = 0.3: 0 (already harmless).
    """
    z = logit.float()
    active = (z < 0).to(z.dtype).detach()
    return alpha * active * -torch.nn.functional.logsigmoid(-z - margin)
