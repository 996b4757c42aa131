"""In-batch sampled softmax with logQ correction and accidental-hit masking."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASKED = -1e9


def sampled_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_index: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    neg_item: torch.Tensor | None = None,
    neg_index: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the batch's positives (and optional extra negatives) for each user.

    Args:
        user: (B, D) user embeddings; row b's positive is ``item[b]``.
        item: (B, D) positive item embeddings, the other rows are b's in-batch negatives.
        item_index: (B,) catalog indices of the positives; a column holding the same item as
            row b's positive is an accidental hit and is masked out for row b.
        temperature: logits are divided by it.
        log_q: (B,) log sampling probability of each in-batch item (logQ correction: popular
            items are over-represented as negatives, subtracting log q removes that bias).
        neg_item, neg_index, neg_log_q: (M, D), (M,), (M,) extra (e.g. uniform) negatives.

    Returns:
        Mean cross-entropy, a scalar.
    """
    logits = user @ item.T / temperature  # (B, B)
    if log_q is not None:
        logits = logits - log_q[None, :]
    same = item_index[:, None] == item_index[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, _MASKED)
    if neg_item is not None:
        neg = user @ neg_item.T / temperature  # (B, M)
        if neg_log_q is not None:
            neg = neg - neg_log_q[None, :]
        neg = neg.masked_fill(neg_index[None, :] == item_index[:, None], _MASKED)
        logits = torch.cat([logits, neg], dim=1)
    labels = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, labels)
