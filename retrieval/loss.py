"""In-batch sampled softmax with logQ correction and accidental-hit masking."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASKED = -1e9
DENSE_MASK_MAX_BATCH = 4096  # accidental hits by a (B, B) comparison up to this batch, by a sort above


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
    # The (B, B) logits are the cost at large batches (32768^2 = 1G values, every elementwise op a
    # full pass forward and back; docs/gpu.md): the temperature is applied to the (B, D) users, and
    # above DENSE_MASK_MAX_BATCH accidental hits are masked where they are (found by a sort), not
    # through a (B, B) comparison.
    scaled = user / temperature
    logits = scaled @ item.T  # (B, B)
    if log_q is not None:
        logits = logits - log_q[None, :]
    # in place: neither the product's nor the subtraction's backward reads its output
    hits = accidental_hits(item_index) if len(item_index) > DENSE_MASK_MAX_BATCH else None
    if hits is None:  # small batches: a (B, B) comparison costs less than the sort's host synchronisations
        logits.masked_fill_(_hit_mask(item_index), _MASKED)
    elif len(hits[0]):
        logits[hits] = _MASKED
    if neg_item is not None:
        neg = scaled @ neg_item.T  # (B, M)
        if neg_log_q is not None:
            neg = neg - neg_log_q[None, :]
        neg = neg.masked_fill(neg_index[None, :] == item_index[:, None], _MASKED)
        logits = torch.cat([logits, neg], dim=1)
    labels = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, labels)


def accidental_hits(item_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every pair of different rows holding the same item: (B,) -> (H,), (H,).
    One sort, O(B log B + H), instead of a (B, B) comparison."""
    s, order = torch.sort(item_index, stable=True)
    _, group, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    size = counts[group]  # each sorted position's group size
    first = (torch.cumsum(counts, 0) - counts)[group]  # and where its group starts
    dup = torch.nonzero(size > 1).ravel()
    if not len(dup):
        empty = torch.zeros(0, dtype=torch.long, device=s.device)
        return empty, empty
    reps = size[dup]
    if int((reps * reps).sum()) > len(s) * len(s) // 8:  # a few items fill the batch: the pairs outgrow a mask
        return _hit_mask(item_index).nonzero(as_tuple=True)
    at = torch.repeat_interleave(dup, reps)  # each member of a group, once per member of its group
    k = torch.arange(len(at), device=s.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    other = first[at] + k
    keep = other != at
    return order[at[keep]], order[other[keep]]


def _hit_mask(item_index: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: row b's column j holds row b's positive item, j != b."""
    same = item_index[:, None] == item_index[None, :]
    same.fill_diagonal_(False)
    return same


def dense_reference_loss(user: torch.Tensor, item: torch.Tensor, item_index: torch.Tensor, temperature: float,
                         log_q: torch.Tensor | None = None) -> torch.Tensor:
    """The in-batch loss as first written, every step over (B, B) values: the definition
    :func:`sampled_softmax_loss` is tested against, and its before in bench/gpu_parts.py."""
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    labels = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits.masked_fill(_hit_mask(item_index), _MASKED), labels)
