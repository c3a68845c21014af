"""PNG plots of a pretrained model: codebook usage per modality, cross-modal index agreement over
training and codebook health over training (both from the run's metrics.jsonl), and a 2-D PCA of
same-index codewords of the codebooks.

Needs matplotlib (Agg backend, no display).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from codaar.evaluate.errors import EvaluationError
from codaar.run_folder.metrics_log import METRICS_FILE, read_metrics

COLORS = {"audio": "tab:blue", "video": "tab:orange", "text": "tab:green"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvaluationError("plots need matplotlib: pip install matplotlib (or pass --no-plots)") from None
    return plt


def test_indices(pretrained, data) -> dict[str, np.ndarray]:
    from codaar.evaluate.features import code_features

    clips = np.asarray(data.split("test") if "test" in data.splits else np.arange(min(500, data.num_clips)))
    return {m: code_features(pretrained.model, data, m, clips)["indices"].numpy().ravel()
            for m in pretrained.modalities}


def plot_usage(indices: dict[str, np.ndarray], num_codes: int, path: Path) -> Path:
    """Per modality: how often each code is picked on the test clips, codes sorted by frequency."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, idx in indices.items():
        counts = np.sort(np.bincount(idx, minlength=num_codes))[::-1]
        used = int((counts > 0).sum())
        ax.plot(np.arange(1, num_codes + 1), counts / max(counts.sum(), 1), color=COLORS[m],
                label=f"{m}: {used}/{num_codes} codes used")
    ax.set_xscale("log")
    ax.set_xlabel("code rank (by frequency)")
    ax.set_ylabel("share of test frames")
    ax.set_title("Codebook usage per modality (test split)")
    ax.legend()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_agreement(metrics_path: Path, path: Path) -> Path | None:
    """agreement/<a>-<b> (share of frames where two modalities pick the same code) and codes used over steps."""
    records = read_metrics(metrics_path)
    if not records:
        return None
    plt = _pyplot()
    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in records for k in r if k.startswith("agreement/")}):
        ax1.plot(steps, [r.get(key, np.nan) for r in records], label=key.split("/", 1)[1])
    ax1.set_xlabel("step")
    ax1.set_ylabel("same-index share of frames")
    ax1.set_title("Cross-modal index agreement")
    ax1.legend()
    for key in sorted({k for r in records for k in r if k.startswith("codes_used/")}):
        ax2.plot(steps, [r.get(key, np.nan) for r in records], label=key.split("/", 1)[1],
                 color=COLORS.get(key.split("/", 1)[1]))
    resets = [r["step"] for r in records if r.get("codes_reset", 0) > 0]
    for s in resets[:50]:
        ax2.axvline(s, color="grey", alpha=0.2, lw=0.8)
    ax2.set_xlabel("step (grey: dead-code resets)")
    ax2.set_ylabel("codes used in the batch")
    ax2.set_title("Codes used per modality")
    ax2.legend()
    return _save(plt, fig, path)


def plot_health(metrics_path: Path, path: Path) -> Path | None:
    """Per modality over training: codes used within the last 100 updates, codes unused for more than
    the dead-code threshold, and the largest |codeword| entry (log scale: the authors' init explodes)."""
    records = read_metrics(metrics_path)
    keys = sorted({k for r in records for k in r
                   if k.startswith(("codes_recent/", "codes_dead/", "max_abs_codeword/"))})
    if not keys:
        return None  # a run from before these metrics existed
    plt = _pyplot()
    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        kind, m = key.split("/", 1)
        axis = ax2 if kind == "max_abs_codeword" else ax1
        style = "--" if kind == "codes_dead" else "-"
        label = m if kind != "codes_dead" else f"{m} (dead)"
        axis.plot(steps, [r.get(key, np.nan) for r in records], style, label=label, color=COLORS.get(m))
    ax1.set_xlabel("step")
    ax1.set_ylabel("codes")
    ax1.set_title("Codes used in the last 100 steps (solid), dead codes (dashed)")
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("max |codeword entry|")
    ax2.set_title("Largest codeword entry per modality")
    ax2.legend()
    return _save(plt, fig, path)


def plot_pca(codebooks: torch.Tensor, modalities, used: np.ndarray, path: Path, max_codes: int = 200) -> Path:
    """2-D PCA (one projection fitted on all modalities' codewords) of the codes in `used`; the same
    index in the different codebooks is joined by a grey line (short lines = aligned codebooks)."""
    plt = _pyplot()
    books = codebooks.detach().double().cpu().numpy()  # [M, K, D]
    codes = np.asarray(used)[:max_codes]
    points = books[:, codes]  # [M, n, D]
    flat = points.reshape(-1, points.shape[-1])
    centred = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = (centred @ vt[:2].T).reshape(len(modalities), len(codes), 2)
    fig, ax = plt.subplots(figsize=(6, 6))
    for i in range(len(codes)):
        ax.plot(xy[:, i, 0], xy[:, i, 1], color="grey", alpha=0.3, lw=0.7)
    for j, m in enumerate(modalities):
        ax.scatter(xy[j, :, 0], xy[j, :, 1], s=12, color=COLORS[m], label=m)
    ax.set_title(f"PCA of same-index codewords ({len(codes)} codes used on the test split)")
    ax.legend()
    return _save(plt, fig, path)


def plot_curve(curve: dict, path: Path) -> Path:
    """Over training: cross-modal transfer at each scored checkpoint, and the codes used and index
    agreement the run logged at every step (a collapsed codebook shows as a flat, low usage line)."""
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    steps = [p["step"] for p in curve["points"]]
    ax1.plot(steps, [p["transfer"] for p in curve["points"]], "o-", color="black", label="mean")
    for key in [k for k in curve["points"][0] if k.startswith("transfer/")]:
        ax1.plot(steps, [p[key] for p in curve["points"]], alpha=0.6, lw=1, label=key.split("/", 1)[1].upper())
    if curve["steps_to_95"] is not None:
        ax1.axvline(curve["steps_to_95"], color="grey", ls="--", lw=0.8)
    ax1.set_xlabel(f"step (dashed: 95% of the final transfer, step {curve['steps_to_95']})")
    ax1.set_ylabel("transfer (%)")
    ax1.set_title("Cross-modal transfer")
    ax1.legend(fontsize=7)
    logged = curve["logged"]
    for key in [k for k in logged if k != "step"]:
        kind, name = key.split("/", 1)
        axis = ax2 if kind == "codes_recent" else ax3
        axis.plot(logged["step"], logged[key], label=name, color=COLORS.get(name))
    ax2.set_xlabel("step")
    ax2.set_ylabel("codes")
    ax2.set_title("Codes used within the last 100 updates")
    ax2.legend(fontsize=8)
    ax3.set_xlabel("step")
    ax3.set_ylabel("same-index share of frames")
    ax3.set_title("Cross-modal index agreement")
    ax3.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_all(pretrained, data, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    indices = test_indices(pretrained, data)
    model = pretrained.model
    written = [plot_usage(indices, model.config.num_codes, out / "codebook_usage.png")]
    run_dir = Path(pretrained.path).parent.parent
    for plot, name in ((plot_agreement, "index_agreement.png"), (plot_health, "codebook_health.png")):
        made = plot(run_dir / METRICS_FILE, out / name)
        if made is not None:
            written.append(made)
    used = np.unique(np.concatenate(list(indices.values())))
    written.append(plot_pca(model.quantizer.codebooks, model.modalities, used, out / "codebook_pca.png"))
    return written


__all__ = ["plot_usage", "plot_agreement", "plot_health", "plot_pca", "plot_curve", "plot_all", "test_indices"]
