"""Metrics of the downstream protocols, written from the authors' definitions (docs/method.md §7.2, §7.3, §7.7).

All batch-wise metrics take a list of per-batch arrays so that the batching (which changes the
numbers, as in the authors' scripts) is explicit. Values are percentages, as in the paper.
"""

from __future__ import annotations

import numpy as np


def batch_macro_precision(pred: np.ndarray, target: np.ndarray) -> float:
    """The authors' AVE "precision" of one batch, in %: for every class predicted at least once,
    TP / #predicted; the mean over those classes. 0 for an empty batch."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.size == 0:
        return 0.0
    values = [float(np.mean(target[pred == c] == c)) for c in np.unique(pred)]
    return 100.0 * float(np.mean(values))


def ave_precision(batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Batch values of `batch_macro_precision` averaged with weight (batch size x 10) -- the x10 cancels."""
    weights = np.array([len(p) for p, _ in batches], dtype=np.float64)
    values = np.array([batch_macro_precision(p, t) for p, t in batches])
    return float((weights * values).sum() / max(weights.sum(), 1.0))


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Plain top-1 accuracy over all items, in %."""
    pred, target = np.asarray(pred), np.asarray(target)
    return 100.0 * float(np.mean(pred == target)) if pred.size else 0.0


def batch_precision_recall(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """One AVVP batch: cells with prob > threshold are predicted positive (every segment x class cell,
    background column included); precision = TP / #predicted, recall = TP / #positive, both 0 when
    nothing is predicted (as the authors' code returns 0, 0). Fractions in [0, 1]."""
    predicted = np.asarray(prob) > threshold
    positive = np.asarray(target) > 0.5
    n_pred = int(predicted.sum())
    if n_pred == 0:
        return 0.0, 0.0
    tp = int((predicted & positive).sum())
    return tp / n_pred, tp / max(int(positive.sum()), 1)


def avvp_prf(batches: list[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> dict[str, float]:
    """Batch-averaged precision and recall (weight = clips in the batch x T), F1 from the averages; in %.

    Each batch is (probabilities [B, T, C+1], labels [B, T, C+1])."""
    weights, ps, rs = [], [], []
    for prob, target in batches:
        p, r = batch_precision_recall(prob, target, threshold)
        weights.append(np.asarray(prob).shape[0] * np.asarray(prob).shape[1])
        ps.append(p)
        rs.append(r)
    w = np.asarray(weights, dtype=np.float64)
    total = max(w.sum(), 1.0)
    precision = float((w * ps).sum() / total)
    recall = float((w * rs).sum() / total)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K in %: the share of queries with a relevant gallery item among the top K.

    similarity, relevant: [queries, gallery]. Ties count against the query: the rank of a query's
    best relevant item is 1 + the number of *irrelevant* items scoring at least as high, so a
    collapsed embedding (all similarities equal) scores like chance, not like a perfect model.
    Queries with no relevant item are skipped."""
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    keep = rel.any(axis=1)
    sim, rel = sim[keep], rel[keep]
    if sim.shape[0] == 0:
        return {f"R@{k}": float("nan") for k in ks}
    best = np.where(rel, sim, -np.inf).max(axis=1, keepdims=True)
    rank = 1 + ((sim >= best) & ~rel).sum(axis=1)
    return {f"R@{k}": 100.0 * float(np.mean(rank <= k)) for k in ks}


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T
