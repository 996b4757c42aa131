import math

import torch

import pytest

from retrieval.loss import accidental_hits, dense_reference_loss, sampled_softmax_loss


def test_loss_matches_hand_computation():
    # Two users, two items, temperature 1, no correction: row 0 logits [1, 0] -> -log(e/(e+1)).
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = sampled_softmax_loss(u, i, torch.tensor([0, 1]), temperature=1.0)
    expected = -math.log(math.e / (math.e + 1))
    assert abs(loss.item() - expected) < 1e-6


def test_accidental_hits_are_masked():
    # Rows 0 and 1 have the same positive item: each must not be pushed away from it.
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = sampled_softmax_loss(u, i, torch.tensor([7, 7, 3]), temperature=1.0)
    # Without masking, row 0 would see logits [1, 1, 0]; with it [1, -inf, 0].
    expected_row0 = -math.log(math.e / (math.e + 1))
    expected_row2 = -math.log(math.e / (math.e + 2))
    assert abs(loss.item() - (2 * expected_row0 + expected_row2) / 3) < 1e-6


def test_logq_correction_penalises_popular_negatives_less():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    idx = torch.tensor([0, 1])
    plain = sampled_softmax_loss(u, i, idx, 1.0)
    # item 1 very popular -> its logit is lowered as a negative for row 0 -> row 0 loss drops
    corrected = sampled_softmax_loss(u, i, idx, 1.0, log_q=torch.log(torch.tensor([0.01, 0.99])))
    row0 = -math.log(math.exp(1 - math.log(0.01)) / (math.exp(1 - math.log(0.01)) + math.exp(0 - math.log(0.99))))
    row1 = -math.log(math.exp(1 - math.log(0.99)) / (math.exp(1 - math.log(0.99)) + math.exp(0 - math.log(0.01))))
    assert abs(corrected.item() - (row0 + row1) / 2) < 1e-5
    assert corrected.item() != plain.item()


def test_extra_negatives_mask_their_own_hits():
    u = torch.tensor([[1.0, 0.0]])
    i = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = sampled_softmax_loss(u, i, torch.tensor([5]), 1.0, neg_item=neg, neg_index=torch.tensor([5, 9]))
    # the first extra negative is the positive itself -> masked; remaining logits [1, 0]
    assert abs(loss.item() + math.log(math.e / (math.e + 1))) < 1e-6


@pytest.mark.parametrize("batch, n_items", [(1, 5), (7, 2), (64, 10), (300, 10**6)])
def test_accidental_hits_are_the_pairs_a_dense_comparison_finds(batch, n_items):
    idx = torch.randint(0, n_items, (batch,), generator=torch.Generator().manual_seed(batch))
    rows, cols = accidental_hits(idx)
    same = idx[:, None] == idx[None, :]
    same.fill_diagonal_(False)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, torch.nonzero(same).tolist()))


@pytest.mark.parametrize("with_log_q", [False, True])
@pytest.mark.parametrize("batch", [200, 5000])  # hits by a (B, B) comparison / by a sort (> DENSE_MASK_MAX_BATCH)
def test_loss_and_gradients_equal_the_dense_formulation(with_log_q, batch):
    """The loss avoids (B, B) passes (temperature on the users, hits masked in place) and must
    give the loss and gradients of the plain formulation."""
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(batch, 8, generator=g), dim=1).requires_grad_()
    i = torch.nn.functional.normalize(torch.randn(batch, 8, generator=g), dim=1).requires_grad_()
    idx = torch.randint(0, batch // 5, (batch,), generator=g)  # many accidental hits
    log_q = torch.log(torch.rand(batch, generator=g) * 0.01 + 1e-6) if with_log_q else None
    fast = sampled_softmax_loss(u, i, idx, 0.1, log_q)
    fast_grads = torch.autograd.grad(fast, (u, i))
    plain = dense_reference_loss(u, i, idx, 0.1, log_q)
    plain_grads = torch.autograd.grad(plain, (u, i))
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
