r"""The soft confusion matrix of one sample: the one reduction over voxels behind every confusion-count loss.

With probabilities :math:`p` (B, K, N) (K the channels, N the voxels) and a matrix of columns :math:`H`
(B, L, N) that holds no gradient (the one-hot target times the valid mask, and one more column: the valid
mask itself, or ones), one batched matrix product gives per sample

.. math::
    C_{c,l} = \sum_i p_{i,c} H_{i,l}\qquad (B, K, L)

so that with :math:`H = [m g, m]`: :math:`C_{c,c} = TP_c`, :math:`C_{c,L-1} = \sum_i m_i p_{i,c}` (TP + FP) and,
for mutually exclusive labels, :math:`C_{c,l}` is the soft confusion matrix (the mass of class c on the
voxels of label l) that the Generalized Wasserstein Dice loss reads as :math:`\sum_c M_{l,c} C_{c,l}`.
Optionally also :math:`D_c = \sum_i (1 - p_{i,c}) A_{i,c}` (B, K) for a given :math:`A` without gradient: the
sums of tiny terms that cancel in ``n - TP - FP - FN`` (the direct TN of the gate, GWDL's missing mass).

With softmax, :func:`soft_confusion` runs from the logits through :class:`_SoftmaxConfusion`, whose backward
recomputes the probabilities instead of keeping them: the gradient of C with respect to p is :math:`G_p =
\partial C \, H` and the softmax's Jacobian gives :math:`\partial x_c = p_c (G_{p,c} - \sum_k p_k G_{p,k})`.
The losses then hold no (B, K, N) tensor of their own between forward and backward besides the target, and
never a voxels x K x K one. Everything in float32, autocast off (the sums must not lose mass in fp16/bf16).
"""

from typing import Optional, Tuple

import torch


def _product(probs: torch.Tensor, columns: torch.Tensor, complement: Optional[torch.Tensor]):
    confusion = torch.bmm(probs, columns.transpose(1, 2))
    direct = None if complement is None else ((1 - probs) * complement).sum(-1)
    return confusion, direct


class _SoftmaxConfusion(torch.autograd.Function):
    """``(C, D)`` of ``softmax(logits)`` restricted to channels ``start:``, the probabilities recomputed in
    backward (see the module's docstring)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, columns: torch.Tensor, complement: Optional[torch.Tensor], start: int):
        confusion, direct = _product(torch.softmax(logits, 1)[:, start:], columns, complement)
        ctx.save_for_backward(logits, columns, complement)
        ctx.start = start
        if direct is None:
            return confusion, torch.zeros(confusion.shape[:2], dtype=confusion.dtype, device=confusion.device)
        return confusion, direct

    @staticmethod
    def backward(ctx, grad_confusion: torch.Tensor, grad_direct: torch.Tensor):
        logits, columns, complement = ctx.saved_tensors
        start = ctx.start
        grad_p = torch.bmm(grad_confusion, columns)  # (B, K - start, N)
        if complement is not None:
            grad_p = grad_p - complement * grad_direct.unsqueeze(-1)
        probs = torch.softmax(logits, 1)
        scored = probs[:, start:]
        inner = (scored * grad_p).sum(1, keepdim=True)
        grad = probs * -inner
        grad[:, start:] += scored * grad_p
        return grad, None, None, None


def soft_confusion(x: torch.Tensor, columns: torch.Tensor, complement: Optional[torch.Tensor] = None,
                   start: int = 0, softmax: bool = False, nonlin=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(C (B, K - start, L), D (B, K - start) or None)`` of the module's docstring, in float32 with autocast off.

    Args:
        x: logits (B, K, N) when ``softmax`` (or with ``nonlin``), else probabilities.
        columns: H (B, L, N), no gradient.
        complement: A (B, K - start, N) or (B, 1, N), no gradient; None: no D.
        start: the first scored channel (the probabilities are of all K channels, the sums of ``start:``).
        softmax: softmax over the channels, through the memory-lean autograd function.
        nonlin: another activation (sigmoid, a callable), through plain autograd.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        if softmax:
            confusion, direct = _SoftmaxConfusion.apply(x, columns, complement, start)
            return confusion, (direct if complement is not None else None)
        probs = nonlin(x) if nonlin is not None else x
        return _product(probs[:, start:], columns, complement)
