"""Reference baselines of a data set: how far its raw features go without any pretraining.

Three references, all scored with the AVE protocol the trained model gets (`protocols.run_ave`,
clean: the authors' AVE head -- Linear per step, max over the T steps, Linear -- trained on the
train split, epoch selected on the source modality's val split, scored on the test split):

* ``ceiling`` -- the head on a modality's own raw features, scored on the same modality: how
  learnable the task is within a modality (cross-modal transfer should not be expected above it).
* ``random`` -- every modality projected to a common width by its own random Gaussian matrix; the
  head trains on one modality's projection and is scored zero-shot on the other's (chance level
  unless the modalities' raw features already line up).
* ``cca`` -- linear CCA fitted on the *pretrain* split (unlabelled): audio<->video on time-aligned
  segment pairs, the head reading the canonical variates of every segment; pairs with text on clip
  means (text tokens are not segments), the head reading the clip mean's variates as a single step.
  The head trains on one modality's variates and is scored on the other's, both directions. The
  number of canonical pairs kept matters (weakly correlated pairs add noise to the transfer), so
  every k of `BaselineSettings.cca_components` is reported; the best k per column is chosen on
  the test split, an optimistic (oracle) reference for CCA.

Raw features: audio and vector video per segment; spatial video mean-pooled over H and W; text per
token, where padded tokens (per-clip text) are replaced by the mean of the clip's real tokens, which
the head's max over steps never prefers to the real ones (a linear map of a mean never exceeds the
maximum), so padding is ignored exactly. Every modality is standardised with pretrain-split means
and standard deviations first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from codaar.data import TriModalData

from . import tables
from .features import require_split
from .protocols import AVE_DEFAULTS, HeadSettings, Task, run_ave

_CHUNK_CLIPS = 256  # memory-mapped clips read at once


@dataclass(frozen=True)
class BaselineSettings:
    # The AVE defaults (lr 2.5e-4, 30 epochs) leave a head on raw features or CCA variates far from
    # converged; lr 1e-2 for 100 epochs scores as lr 3e-3 for 200 (measured on default and hard).
    head: HeadSettings = replace(AVE_DEFAULTS, lr=1e-2, epochs=100)
    random_dim: int = 64  # width of the random projections
    random_seed: int = 0
    cca_components: tuple[int, ...] = (8, 16, 32, 64)  # canonical pairs kept (at most the smaller width)
    cca_ridge: float = 1e-3  # added to each covariance, relative to its mean variance


def raw_steps(data: TriModalData, modality: str) -> np.ndarray:
    """Raw per-step features of every clip, float32 [N, T, F] (see the module docstring)."""
    chunks = []
    for start in range(0, data.num_clips, _CHUNK_CLIPS):
        clips = np.arange(start, min(start + _CHUNK_CLIPS, data.num_clips))
        if modality == "text":
            x = np.asarray(data.text(clips), dtype=np.float64)
            mask = data.text_mask(clips)[..., None]
            mean = (x * mask).sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            x = np.where(mask, x, mean)
        else:
            x = np.asarray(data.modality(modality)[clips], dtype=np.float64)
            if x.ndim == 5:  # spatial video [n, T, H, W, C]
                x = x.mean(axis=(2, 3))
        chunks.append(x.astype(np.float32))
    return np.concatenate(chunks)


def _standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    flat = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    return ((x - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-6)).astype(np.float32)


def cca_fit(x: np.ndarray, y: np.ndarray, components: int, ridge: float = 1e-3):
    """Linear CCA of paired rows x [n, p], y [n, q] (centred inside): projections Wx [p, k], Wy [q, k]
    whose columns give unit-variance canonical variates, means, and the k canonical correlations."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    x, y = x - mx, y - my
    n = len(x)

    def inverse_sqrt(cov):
        cov = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
        values, vectors = np.linalg.eigh(cov)
        return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T

    kx, ky = inverse_sqrt(x.T @ x / n), inverse_sqrt(y.T @ y / n)
    u, s, vt = np.linalg.svd(kx @ (x.T @ y / n) @ ky)
    k = min(components, len(s))
    return kx @ u[:, :k], ky @ vt[:k].T, mx, my, s[:k]


@dataclass
class _RawTask(Task):
    """The AVE protocol's task with fixed per-modality features instead of a model's codes."""

    steps: dict = field(default_factory=dict)  # modality -> [N, T, F] features of every clip

    def features(self, data, modality, clips, train_mode=False) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.steps[modality][np.asarray(clips)]))


def _ave(data: TriModalData, steps: dict, source: str, targets: list[str], settings: HeadSettings) -> dict:
    result = run_ave(_RawTask(None, data, data, steps=steps), source, targets, settings)
    info = result.pop("_info")
    return {t: {"accuracy": r["accuracy"], "precision": r["precision"], "selected_epoch": info["selected_epoch"]}
            for t, r in result.items()}


def run_baselines(data: TriModalData, settings: BaselineSettings = BaselineSettings(), log=None) -> dict:
    """All three baselines on `data`; returns {"results": {method: {"X->Y": scores}}, "settings", "data"}
    with methods "ceiling", "random" and "cca-<k>" for each k of ``settings.cca_components``."""
    log = log or (lambda _: None)
    modalities = list(data.modalities)
    pretrain = require_split(data, "pretrain", "fitting CCA and the standardisation")
    raw = {}
    for m in modalities:
        x = raw_steps(data, m)
        raw[m] = _standardise(x, x[pretrain])
    results = {method: {} for method in ["ceiling", "random"] + [f"cca-{k}" for k in settings.cca_components]}

    def record(method, scores, source):
        for target, value in scores.items():
            results[method][tables.arrow(source, target)] = value

    started = time.perf_counter()
    for m in modalities:
        record("ceiling", _ave(data, raw, m, [m], settings.head), m)
    log(f"ceiling done ({time.perf_counter() - started:.1f} s)")

    rng = np.random.default_rng(settings.random_seed)
    projected = {m: (raw[m] @ (rng.standard_normal((raw[m].shape[-1], settings.random_dim))
                               / np.sqrt(raw[m].shape[-1]))).astype(np.float32) for m in modalities}
    for source in modalities:
        record("random", _ave(data, projected, source, modalities, settings.head), source)
    log(f"random projection done ({time.perf_counter() - started:.1f} s)")

    correlations = {}
    for a, b in ((a, b) for i, a in enumerate(modalities) for b in modalities[i + 1:]):
        # Text tokens are not time-aligned with segments: pairs with text use clip means (one step).
        steps = {m: raw[m].mean(axis=1, keepdims=True) if "text" in (a, b) else raw[m] for m in (a, b)}
        wa, wb, ma, mb, rho = cca_fit(steps[a][pretrain].reshape(-1, steps[a].shape[-1]),
                                      steps[b][pretrain].reshape(-1, steps[b].shape[-1]),
                                      max(settings.cca_components), settings.cca_ridge)
        correlations[f"{tables.SHORT[a]}-{tables.SHORT[b]}"] = [round(float(r), 4) for r in rho]
        for k in settings.cca_components:  # the first k canonical pairs of the full solution
            variates = {a: ((steps[a] - ma) @ wa[:, :k]).astype(np.float32),
                        b: ((steps[b] - mb) @ wb[:, :k]).astype(np.float32)}
            for source, target in ((a, b), (b, a)):
                scores = _ave(data, variates, source, [target], settings.head)
                results[f"cca-{k}"][tables.arrow(source, target)] = scores[target]
    log(f"CCA done ({time.perf_counter() - started:.1f} s)")

    return {
        "results": results,
        "chance_accuracy": 100.0 / data.num_classes,
        "cca_correlations": correlations,
        "settings": {"head": vars(settings.head), "random_dim": settings.random_dim,
                     "random_seed": settings.random_seed, "cca_components": settings.cca_components,
                     "cca_ridge": settings.cca_ridge},
        "data": {"preset": data.info.get("preset"), "seed": data.info.get("seed"),
                 "root": None if data.root is None else str(data.root), "modalities": modalities,
                 "text_kind": data.text_kind, "classes": data.num_classes,
                 "splits": {k: int(len(v)) for k, v in data.splits.items()}},
    }


def columns(modalities) -> list[str]:
    """Same-modality columns first (A->A, V->V, T->T), then the paper's transfer directions."""
    same = [tables.arrow(m, m) for m in ("audio", "video", "text") if m in modalities]
    return same + [tables.arrow(s, t) for s, t in tables.directions(modalities)]


def markdown(report: dict, command: str | None = None) -> str:
    """Two tables (accuracy, the authors' batch-wise macro precision) with one row per baseline, plus
    the best CCA per column (k chosen on the test split: optimistic for CCA)."""
    cols = columns(report["data"]["modalities"])
    results = report["results"]
    cca = [m for m in results if m.startswith("cca-")]
    names = {"ceiling": "within-modality ceiling (raw features)", "random": "random projection",
             **{m: f"linear CCA, k={m[4:]}" for m in cca}}
    data = report["data"]
    what = f"preset {data['preset']}, seed {data['seed']}" if data["root"] is None else data["root"]
    parts = []
    for key, title in (("accuracy", "accuracy (%)"), ("precision", "the authors' batch-wise macro precision (%)")):
        rows = [[names[m]] + [tables.fmt(results[m].get(c, {}).get(key)) for c in cols] for m in results]
        best = [max((results[m][c][key] for m in cca if c in results[m]), default=None) for c in cols]
        rows.append(["linear CCA, best k per column (oracle)"] + [tables.fmt(v) for v in best])
        parts.append(tables.markdown(f"AVE-style classification, {title} -- {what}", ["baseline"] + cols, rows))
    correlations = "; ".join(f"{pair}: " + ", ".join(f"{r:.2f}" for r in rho[:4])
                             for pair, rho in report["cca_correlations"].items())
    settings = report["settings"]
    notes = [
        "'X->Y': head trained on X's features (train split), scored on Y's (test split); chance "
        f"{report['chance_accuracy']:.1f}% accuracy.",
        "head: the authors' AVE head (Linear per step, max over steps, Linear), clean protocol "
        f"(lr {settings['head']['lr']}, batch {settings['head']['batch_size']}, {settings['head']['epochs']} epochs, "
        "epoch chosen on the source modality's val split).",
        "features: standardised with pretrain-split statistics; spatial video mean-pooled over H, W; "
        "text per token (padding replaced by the clip's mean token, which max pooling ignores).",
        f"random: a Gaussian matrix per modality to {settings['random_dim']} dims (seed {settings['random_seed']}).",
        "CCA: fitted on the pretrain split (A-V on time-aligned segments; pairs with text on clip means, read as "
        f"one step), ridge {settings['cca_ridge']}, the first k canonical pairs; top canonical correlations: "
        f"{correlations}.",
    ]
    if command:
        notes.append(f"command: `{command}`")
    return "\n".join(parts) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
