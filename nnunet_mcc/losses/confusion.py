r"""The soft confusion matrix of one sample: the one reduction over voxels behind every confusion-count loss.

With probabilities :math:`p` (B, K, N) (K channels, N voxels), valid voxels :math:`m` and the target, one batched
matrix product per sample gives

.. math::
    C_{c,l} = \sum_i m_i\, p_{i,c}\, g_{i,l}\qquad (B, K, L)

the probability of class c summed over the valid voxels of label l: its diagonal is TP, its row sums TP + FP
(every valid voxel has exactly one label), and the Generalized Wasserstein Dice loss reads
:math:`\sum_{i: g_i = l} m_i W_i = \sum_c M_{l,c} C_{c,l}` from it. Optionally also
:math:`D_c = \sum_i (1 - p_{i,c}) A_{i,c}` for a given :math:`A` without gradient: the sums of tiny terms that
cancel in ``n - TP - FP - FN`` (the gate's direct TN, GWDL's missing mass).

* :func:`soft_confusion` (MCC, Tversky): the product of the probabilities with columns that hold no gradient, the
  masked one-hot (a label map: every valid voxel has one label, so C's row sums are TP + FP) or, for one-hot and
  region targets, ``[m g, m]`` (the last column gives TP + FP); plain autograd.
* :func:`label_confusion` (GWDL, which must stay in the memory of a Dice loss): no one-hot at all, C is the
  probabilities scatter-added by label (the same sums as the product with the one-hot); the backward of :math:`C` is a gather of its gradient by label
  (:math:`\partial p_{i,c} = m_i\, \partial C_{c, g_i}`), and with softmax the autograd function recomputes the
  probabilities and applies the softmax's Jacobian, :math:`\partial x_c = p_c (\partial p_c - \sum_k p_k
  \partial p_k)` in place, so nothing of size (B, K, N) is kept between forward and backward and the
  backward holds two such tensors at most.

Never a voxels x K x K tensor. Everything in float32 with autocast off (the sums must not lose mass in fp16/bf16).
"""

from typing import Optional, Tuple

import torch


def _onehot(labels: torch.Tensor, channels: int, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, channels, N) float32: ``weights`` (or 1) at each voxel's label, 0 elsewhere."""
    onehot = torch.zeros((labels.shape[0], channels, labels.shape[-1]), device=labels.device, dtype=torch.float32)
    if weights is None:
        return onehot.scatter_(1, labels, 1.0)
    return onehot.scatter_(1, labels, weights)


def _direct(probs: torch.Tensor, complement: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if complement is None else ((1 - probs) * complement).sum(-1)


class _SoftmaxLabelConfusion(torch.autograd.Function):
    """``(C, D)`` of ``softmax(logits)`` against a label map (see :func:`label_confusion`); the probabilities are
    recomputed in backward."""

    @staticmethod
    def forward(ctx, logits, labels, weights, complement):
        confusion, direct = _label_sums(torch.softmax(logits, 1), labels, weights, complement)
        ctx.save_for_backward(logits, labels, weights, complement)
        return confusion, direct

    @staticmethod
    def backward(ctx, grad_confusion, grad_direct):
        logits, labels, weights, complement = ctx.saved_tensors
        grad = grad_confusion.gather(2, labels.expand(-1, grad_confusion.shape[1], -1))  # dC / dp, (B, K, N)
        if weights is not None:
            grad.mul_(weights)
        if complement is not None:
            grad.addcmul_(complement, grad_direct.unsqueeze(-1), value=-1.0)
        probs = torch.softmax(logits, 1)
        # the softmax's Jacobian, in place and channel by channel: no further (B, K, N) tensor
        dot = torch.zeros_like(grad[:, :1])
        for k in range(grad.shape[1]):
            dot.addcmul_(probs[:, k:k + 1], grad[:, k:k + 1])
        return grad.sub_(dot).mul_(probs), None, None, None


def _label_sums(probs, labels, weights, complement):
    # C[b, c, l] = sum over the voxels of label l of m p_c: a scatter-add by label, no one-hot (B, K, N) at all
    channels = probs.shape[1]
    confusion = torch.zeros((probs.shape[0], channels, channels), device=probs.device, dtype=torch.float32)
    confusion.scatter_add_(2, labels.expand(-1, channels, -1), probs if weights is None else probs * weights)
    if complement is None:
        return confusion, torch.zeros(confusion.shape[:2], device=confusion.device)
    return confusion, ((1 - probs) * complement).sum(-1)


def label_confusion(x: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None,
                    complement: Optional[torch.Tensor] = None, softmax: bool = True, nonlin=None):
    """``(C (B, K, K), D (B, K))`` against a label map, float32, autocast off: the confusion matrix and the direct
    sums (zeros without ``complement``), by a scatter-add by label (no one-hot: the GWDL's memory).

    Args:
        x: logits (B, K, N) with ``softmax`` (or ``nonlin``), else probabilities.
        labels: int64 (B, 1, N), values 0..K-1.
        weights: the valid voxels (B, 1, N) float32, or None (every voxel counts).
        complement: A (B, K, N) or (B, 1, N) without gradient, or None.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        if softmax:
            return _SoftmaxLabelConfusion.apply(x, labels, weights, complement)
        return _label_sums(nonlin(x) if nonlin is not None else x, labels, weights, complement)


def soft_confusion(x: torch.Tensor, columns: torch.Tensor, complement: Optional[torch.Tensor] = None,
                   start: int = 0, nonlin=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(C (B, K - start, L), D or None)``: the probabilities' product with ``columns`` (B, L, N) (no gradient),
    float32, autocast off; ``x`` logits with ``nonlin``, else probabilities."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        probs = (nonlin(x) if nonlin is not None else x)[:, start:]
        return torch.bmm(probs, columns.transpose(1, 2)), _direct(probs, complement)
