"""AVSBench-S4 metrics against values computed by hand (docs/method.md §7.6)."""

import math

import pytest
import torch

from codaar.evaluate.segmentation.metrics import clip_scores, f_score, mask_iou

BIG = 20.0  # a logit whose sigmoid is 1 (or 0) at any threshold below 1 - 1e-9


def logits_of(pred):
    return (torch.tensor(pred, dtype=torch.float32) * 2 - 1) * BIG


def test_iou_by_hand():
    truth = torch.tensor([[[1, 1, 0], [0, 0, 0]]], dtype=torch.float32)  # 2 pixels
    pred = logits_of([[[1, 0, 0], [1, 0, 0]]])  # 2 pixels, 1 shared -> 1 / 3
    assert mask_iou(pred, truth) == pytest.approx(1 / 3, abs=1e-6)


def test_iou_empty_truth_scores_predicted_background():
    truth = torch.zeros(1, 2, 3)
    pred = logits_of([[[1, 0, 0], [0, 0, 0]]])  # 5 of 6 pixels predicted empty
    assert mask_iou(pred, truth) == pytest.approx(5 / 6, abs=1e-6)


def test_iou_is_mean_over_frames_and_threshold_half():
    truth = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    pred = torch.tensor([[[0.1, -0.1]], [[0.1, -5.0]]])  # sigmoid > 0.5 only where the logit > 0
    # frame 0: pred {0}, truth {0} -> 1; frame 1: pred {0}, truth {0, 1} -> 1/2
    assert mask_iou(pred, truth) == pytest.approx(0.75, abs=1e-6)


def test_f_score_by_hand():
    # one frame: truth 2 of 4 pixels; probabilities 0.9 (object), 0.6 (object), 0.7 (background), 0.1 (background)
    truth = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    prob = torch.tensor([[[0.9, 0.6, 0.7, 0.1]]])
    logits = torch.log(prob / (1 - prob))
    beta2 = 0.3

    def f(p, r):
        return (1 + beta2) * p * r / (beta2 * p + r) if p + r else 0.0

    # above 0.7: {0.9} -> P 1, R 1/2; (0.6, 0.7]: {0.9, 0.7} -> P 1/2, R 1/2; (0.1, 0.6]: 3 pixels -> P 2/3, R 1
    best = max(f(1, 0.5), f(0.5, 0.5), f(2 / 3, 1), f(0.5, 1))
    assert best == pytest.approx(f(1, 0.5))
    assert f_score(logits, truth) == pytest.approx(best, abs=1e-6)


def test_f_score_averages_frames_before_the_max_and_skips_empty_truths():
    truth = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]])
    prob = torch.tensor([[[0.8, 0.2]], [[0.8, 0.2]], [[0.9, 0.9]]])
    logits = torch.log(prob / (1 - prob))
    # thresholds <= 0.2: both frames P 1/2, R 1; (0.2, 0.8]: frame 0 P 1 R 1 (F 1), frame 1 P 0 R 0 (F 0)
    f_low = 1.3 * 0.5 / (0.3 * 0.5 + 1)
    assert f_score(logits, truth) == pytest.approx(max(f_low, 0.5), abs=1e-6)
    assert f_score(logits, torch.zeros_like(truth)) == 0.0


def test_perfect_and_clip_average():
    truth = torch.zeros(2, 5, 4, 4)
    truth[0, :, :2] = 1
    truth[1, :, :, :1] = 1
    perfect = clip_scores((truth * 2 - 1) * BIG, truth)
    assert perfect["miou"] == pytest.approx(100.0, abs=1e-4) and perfect["f_score"] == pytest.approx(100.0, abs=1e-4)
    half = (truth * 2 - 1) * BIG
    half[1] = -BIG  # clip 1 predicts nothing: IoU 0; F only at threshold 0 (all pixels: P 1/4, R 1)
    scores = clip_scores(half, truth)
    f_all = 1.3 * 0.25 / (0.3 * 0.25 + 1)
    assert scores["miou"] == pytest.approx(50.0, abs=1e-4)
    assert scores["f_score"] == pytest.approx(100 * (1 + f_all) / 2, abs=1e-4)
    assert not math.isnan(scores["f_score"])


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\[2, 3, 3\] and \[2, 3, 4\]"):
        mask_iou(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))


def test_f_score_equals_the_authors_threshold_loop():
    """utility.py's _eval_pr / Eval_Fmeasure written as they are, on random frames."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, 9, generator=generator) * 3
    truth = (torch.rand(6, 9, 9, generator=generator) > 0.6).float()
    truth[2] = 0  # skipped
    pred = torch.sigmoid(logits.double())
    levels = torch.linspace(0, 1 - 1e-10, 255).double()
    total, frames = 0.0, 0
    for i in range(6):
        if torch.mean(truth[i]) == 0.0:
            continue
        prec, recall = torch.zeros(255, dtype=torch.float64), torch.zeros(255, dtype=torch.float64)
        for k in range(255):
            y_temp = (pred[i] >= levels[k]).double()
            tp = (y_temp * truth[i]).sum()
            prec[k], recall[k] = tp / (y_temp.sum() + 1e-20), tp / (truth[i].sum() + 1e-20)
        f = 1.3 * prec * recall / (0.3 * prec + recall)
        f[f != f] = 0
        total, frames = total + f, frames + 1
    assert f_score(logits, truth) == pytest.approx(float((total / frames).max()), abs=1e-9)
