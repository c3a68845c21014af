"""CPC (docs/method.md §5.1, §5.2: both variants) on hand-made cases whose numbers are derived in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from codaar.model.cpc import CrossModalCPC, cpc_loss, cpc_pairs, pair_accuracy, pair_term

EYE = torch.eye(2)  # B = 2 orthogonal targets: y_0 = (1, 0), y_1 = (0, 1), so A[i, j] = p_j[i]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log_softmax of the winner in a pair (w, w - x) is log(1 + e^{-x})


def test_pair_term_official_normalises_rows_paper_columns():
    # p_0 = (2, 1), p_1 = (0, 1)  =>  A = y p^T = [[2, 0], [1, 1]]
    predictions = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    # official, rows:  row 0 [2, 0] at 0 -> -log(1 + e^-2);  row 1 [1, 1] at 1 -> -log 2
    official = -softplus(-2.0) - math.log(2.0)
    # paper, columns: col 0 [2, 1] at 0 -> -log(1 + e^-1);  col 1 [0, 1] at 1 -> -log(1 + e^-1)
    paper = -2 * softplus(-1.0)
    assert pair_term(EYE, predictions, "official").item() == pytest.approx(official, abs=1e-6)
    assert pair_term(EYE, predictions, "paper").item() == pytest.approx(paper, abs=1e-6)


def test_pair_accuracy_softmaxes_rows_then_argmax_per_column():
    # p_0 = (1, 2), p_1 = (0, 0)  =>  A = [[1, 0], [2, 0]]; row softmax: [.731, .269], [.881, .119]
    # column 0 -> row 1 (wrong), column 1 -> row 0 (wrong)  => 0.0
    # (on raw A column 1 would be a tie: the row softmax is what decides)
    assert pair_accuracy(EYE, torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "official").item() == 0.0
    # p_0 = (2, 1), p_1 = (0, 1)  =>  A = [[2, 0], [1, 1]]; rows [.881, .119], [.5, .5]
    # column 0 -> row 0 (right), column 1 -> row 1 (.5 > .119, right)  => 1.0
    assert pair_accuracy(EYE, torch.tensor([[2.0, 1.0], [0.0, 1.0]]), "official").item() == 1.0
    # p_0 = p_1 = (0, 1)  =>  A = [[0, 0], [1, 1]]; rows [.5, .5], [.5, .5]
    # every column's argmax is row 0 (first index on ties): column 0 right, column 1 wrong  => 0.5
    assert pair_accuracy(EYE, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), "official").item() == 0.5


def test_cpc_loss_av_official_by_hand():
    # targets: y_v = y_a = I;  predictions: p_v = [[2, 1], [0, 1]], p_a = I;  H = 1, B = 2
    targets = {"video": EYE[None], "audio": EYE[None]}
    predictions = {"video": torch.tensor([[[2.0, 1.0], [0.0, 1.0]]]), "audio": EYE[None]}
    pairs = cpc_pairs(("video", "audio"), "official", 0.1)
    assert pairs == [("video", "audio", 1.0), ("audio", "video", 1.0), ("video", "video", 0.1), ("audio", "audio", 0.1)]
    loss, acc = cpc_loss(targets, predictions, pairs, "official")
    # v<-a: A = I: two rows [1, 0], [0, 1] -> -2 log(1 + e^-1)
    # a<-v and v<-v: A = [[2, 0], [1, 1]] -> -log(1 + e^-2) - log 2
    # a<-a: A = I -> -2 log(1 + e^-1)
    # L = -(1.0 * (v<-a + a<-v) + 0.1 * (v<-v + a<-a)) / (B * H) = 1.1 * (2 sp(-1) + sp(-2) + log 2) / 2
    expected = 1.1 * (2 * softplus(-1.0) + softplus(-2.0) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert set(acc) == {"cpc_acc/video<-audio", "cpc_acc/audio<-video", "cpc_acc/video<-video", "cpc_acc/audio<-audio"}


def test_cpc_loss_av_paper_by_hand():
    targets = {"video": EYE[None], "audio": EYE[None]}
    predictions = {"video": torch.tensor([[[2.0, 1.0], [0.0, 1.0]]]), "audio": EYE[None]}
    pairs = cpc_pairs(("video", "audio"), "paper")
    assert pairs == [("video", "audio", 1.0), ("audio", "video", 1.0)]  # no self pairs
    loss, _ = cpc_loss(targets, predictions, pairs, "paper")
    # v<-a: A = I, columns [1, 0], [0, 1] -> -2 sp(-1);  a<-v: columns [2, 1], [0, 1] -> -2 sp(-1)
    # L = -(mean of the two pair terms) / (B * H) = (2 sp(-1)) / 2 = sp(-1)
    assert loss.item() == pytest.approx(softplus(-1.0), abs=1e-6)


def test_pairs_avt_official_and_paper():
    mods = ("video", "audio", "text")
    official = cpc_pairs(mods, "official")
    assert len(official) == 9
    assert sorted((x, y) for x, y, w in official if w == 1.0) == sorted(
        (x, y) for x in mods for y in mods if x != y
    )
    assert sorted(x for x, y, w in official if w == 0.1 and x == y) == sorted(mods)
    assert len(cpc_pairs(mods, "paper")) == 6
    with pytest.raises(ValueError):
        cpc_pairs(mods, "other")


def test_module_t_star_range_and_generator_determinism():
    cpc = CrossModalCPC(("video", "audio"), dim=4, context_dim=5)
    draws = {cpc.draw_t_star(10, torch.Generator().manual_seed(s)) for s in range(200)}
    assert draws == set(range(1, 9))  # 1 + randint(T - H - 1) with T = 10, H = 1
    assert cpc.draw_t_star(3) == 1  # T = 3: the only choice
    with pytest.raises(ValueError):
        cpc.draw_t_star(2)


def test_module_forward_matches_manual_computation():
    torch.manual_seed(0)
    cpc = CrossModalCPC(("video", "audio"), dim=4, context_dim=5, num_layers=2)
    latents = {"video": torch.randn(3, 6, 4), "audio": torch.randn(3, 6, 4)}
    out = cpc(latents, torch.Generator().manual_seed(7))
    t = out.t_star
    assert t == cpc.draw_t_star(6, torch.Generator().manual_seed(7))
    targets = {m: z[:, t + 1][None] for m, z in latents.items()}
    predictions = {}
    for m, z in latents.items():
        context = cpc.context[m](z[:, : t + 1])[0][:, -1]  # the LSTM only reads up to t*
        predictions[m] = cpc.predictors[m][0](context)[None]
    expected, _ = cpc_loss(targets, predictions, cpc.pairs, "official")
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in cpc.parameters())


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_fixed_shape_t_star_equals_the_drawn_one(variant):
    """t* given as a tensor (CUDA-graph path: the LSTM reads all T steps, its output at t* is
    picked by index) computes the same loss, accuracies and gradients as slicing at a host t*."""
    torch.manual_seed(0)
    cpc = CrossModalCPC(("video", "audio", "text"), dim=6, context_dim=5, prediction_steps=2, variant=variant)
    latents = {m: torch.randn(5, 7, 6, requires_grad=True) for m in ("video", "audio", "text")}
    params = [*cpc.parameters(), *latents.values()]
    seen = set()
    for seed in range(40):
        sliced = cpc(latents, torch.Generator().manual_seed(seed))
        t = sliced.t_star
        if t in seen:
            continue
        seen.add(t)
        grads_sliced = torch.autograd.grad(sliced.loss, params)
        fixed = cpc(latents, t_star=torch.tensor(t))
        grads_fixed = torch.autograd.grad(fixed.loss, params)
        torch.testing.assert_close(fixed.loss, sliced.loss, rtol=1e-6, atol=1e-6)
        assert fixed.accuracies.keys() == sliced.accuracies.keys()
        for key in fixed.accuracies:
            torch.testing.assert_close(fixed.accuracies[key], sliced.accuracies[key])
        for a, b in zip(grads_fixed, grads_sliced):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert seen == {1, 2, 3, 4}  # every t* that 1 + randint(T - H - 1) can draw, T = 7, H = 2
    with pytest.raises(ValueError, match="T >= H \\+ 2"):
        cpc({m: z[:, :3] for m, z in latents.items()}, t_star=torch.tensor(1))


def test_paper_and_official_modules_differ_as_specified():
    torch.manual_seed(0)
    official = CrossModalCPC(("video", "audio", "text"), dim=4, context_dim=5, variant="official")
    paper = CrossModalCPC(("video", "audio", "text"), dim=4, context_dim=5, variant="paper")
    paper.load_state_dict(official.state_dict())  # same parameters: only the loss differs
    latents = {m: torch.randn(4, 5, 4) for m in ("video", "audio", "text")}
    a = official(latents, torch.Generator().manual_seed(1))
    b = paper(latents, torch.Generator().manual_seed(1))
    assert a.t_star == b.t_star
    assert len(a.accuracies) == 9 and len(b.accuracies) == 6
    assert not torch.allclose(a.loss, b.loss)
