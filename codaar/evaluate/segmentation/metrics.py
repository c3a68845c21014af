"""AVSBench-S4's metrics, as the authors' `utils/utility.py` computes them (docs/method.md §7.6).

* `mask_iou`: a frame's prediction is sigmoid(logit) > 0.5; IoU = |pred AND truth| / |pred OR truth|;
  a frame whose truth is empty scores the share of pixels predicted empty (their `no_obj_flag`
  branch); the value is the mean over the frames given (`mask_iou(..., size_average=True)`).
* `f_score`: for 255 thresholds linspace(0, 1 - 1e-10) on sigmoid(logit), precision and recall of each
  frame, F = (1 + β²) P R / (β² P + R) with β² = 0.3 (NaN -> 0), averaged over the frames whose truth
  is not empty, then the maximum over the thresholds (`Eval_Fmeasure`).

The authors' test loader holds one clip (5 frames) per batch and averages the per-batch values over
the clips; `clip_scores` does the same.
"""

from __future__ import annotations

import torch

BETA2 = 0.3
THRESHOLDS = 255


def mask_iou(logits: torch.Tensor, truth: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean IoU over frames; logits and truth [N, H, W] (truth 0/1)."""
    if logits.ndim != 3 or logits.shape != truth.shape:
        raise ValueError(f"mask_iou: expected logits and masks of one shape [N, H, W], found {list(logits.shape)} "
                         f"and {list(truth.shape)}")
    truth = (truth > 0.5).to(torch.float64)
    pred = (torch.sigmoid(logits.to(torch.float64)) > 0.5).to(torch.float64)
    pixels = pred.shape[-1] * pred.shape[-2]
    inter = (pred * truth).sum((1, 2))
    union = torch.maximum(pred, truth).sum((1, 2))
    empty = truth.sum((1, 2)) == 0
    inter = torch.where(empty, ((1 - truth) * (1 - pred)).sum((1, 2)), inter)
    union = torch.where(empty, torch.full_like(union, pixels), union)
    return float((inter / (union + eps)).sum() / pred.shape[0])


def f_score(logits: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2, thresholds: int = THRESHOLDS) -> float:
    """The max over thresholds of the mean F over frames with an object; 0 when no frame has one."""
    if logits.ndim != 3 or logits.shape != truth.shape:
        raise ValueError(f"f_score: expected logits and masks of one shape [N, H, W], found {list(logits.shape)} "
                         f"and {list(truth.shape)}")
    prob = torch.sigmoid(logits.to(torch.float64)).flatten(1)
    truth = (truth > 0.5).to(torch.float64).flatten(1)
    keep = truth.mean(1) != 0  # totally black truths are out of consideration
    if not keep.any():
        return 0.0
    prob, truth = prob[keep], truth[keep]
    levels = torch.linspace(0, 1 - 1e-10, thresholds, dtype=torch.float32).to(torch.float64)
    # A pixel counts as predicted at every threshold <= its probability: the number of such thresholds is
    # searchsorted(..., right=True), so per-threshold counts are reverse cumulative sums of a histogram
    # (exactly the authors' `y_pred >= th` loop, without materialising [frames, thresholds, pixels]).
    above = torch.searchsorted(levels, prob.contiguous(), right=True)  # [n, pixels] in 0..thresholds
    rows = torch.arange(prob.shape[0])[:, None] * (thresholds + 1)
    hist = torch.zeros(prob.shape[0] * (thresholds + 1), dtype=torch.float64)
    predicted_hist = hist.index_add(0, (rows + above).flatten(), torch.ones(above.numel(), dtype=torch.float64))
    tp_hist = hist.index_add(0, (rows + above).flatten(), truth.flatten())
    def at_levels(h):  # counts with `above` > i, for threshold i
        h = h.view(-1, thresholds + 1).flip(1).cumsum(1).flip(1)
        return h[:, 1:]
    predicted, tp = at_levels(predicted_hist), at_levels(tp_hist)
    precision = tp / (predicted + 1e-20)
    recall = tp / (truth.sum(-1, keepdim=True) + 1e-20)
    score = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    score = torch.nan_to_num(score, nan=0.0)
    return float(score.mean(0).max())


def clip_scores(logits: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """mIoU and F-score (in %) of clips [B, F, H, W]: each clip scored over its frames, then the mean over
    clips (the authors' test batch of one clip)."""
    if logits.ndim != 4 or logits.shape != truth.shape:
        raise ValueError(f"clip_scores: expected logits and masks of one shape [B, F, H, W], found "
                         f"{list(logits.shape)} and {list(truth.shape)}")
    ious = [mask_iou(logits[b], truth[b]) for b in range(logits.shape[0])]
    fs = [f_score(logits[b], truth[b]) for b in range(logits.shape[0])]
    return {"miou": 100.0 * sum(ious) / len(ious), "f_score": 100.0 * sum(fs) / len(fs)}
