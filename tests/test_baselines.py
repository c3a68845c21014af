"""Reference baselines beside the data (codaar/evaluate/baselines.py): CCA against an independent
reference, the raw features the heads read, and a tiny end-to-end run through the CLI."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from codaar.data import build_synthetic
from codaar.evaluate import EvaluationError
from codaar.evaluate.baselines import BaselineSettings, cca_fit, markdown, raw_steps, run_baselines
from codaar.evaluate.heads import AVEHead

TINY = dict(num_pretrain=300, num_train=200, num_val=60, num_test=100)


def canonical_correlations(x, y):
    """Reference: singular values of Qx^T Qy for orthonormal bases of the centred data (Bjorck-Golub)."""
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def test_cca_matches_the_reference_and_whitens():
    rng = np.random.default_rng(5)
    n, p, q, shared = 997, 13, 7, 4
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, p)) + 0.8 * rng.standard_normal((n, p)) + 3.0
    y = np.tanh(z @ rng.standard_normal((shared, q))) + 0.5 * rng.standard_normal((n, q)) - 1.0
    wx, wy, mx, my, rho = cca_fit(x, y, components=5, ridge=0.0)
    assert wx.shape == (p, 5) and wy.shape == (q, 5)
    np.testing.assert_allclose(rho, canonical_correlations(x, y)[:5], rtol=1e-9, atol=1e-12)
    u, v = (x - mx) @ wx, (y - my) @ wy
    np.testing.assert_allclose(u.T @ u / n, np.eye(5), atol=1e-9)  # unit variance, uncorrelated
    np.testing.assert_allclose(v.T @ v / n, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(u.T @ v / n, np.diag(rho), atol=1e-9)  # paired correlations, nothing across
    assert rho[0] > 0.8 and rho[4] < 0.2  # four shared factors
    _, _, _, _, all_rho = cca_fit(x, y, components=50, ridge=0.0)
    assert len(all_rho) == q  # at most the smaller width


def test_raw_steps_pool_video_and_make_padding_invisible_to_max_pooling():
    paper = build_synthetic(preset="paper", num_pretrain=3, num_train=2, num_val=1, num_test=1)
    video = raw_steps(paper, "video")
    assert video.shape == (7, 10, 512)
    np.testing.assert_allclose(video, paper.video.astype(np.float64).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)

    hard = build_synthetic(preset="hard", num_pretrain=20, num_train=10, num_val=5, num_test=5)
    text, mask = raw_steps(hard, "text"), hard.clip_text_mask
    assert (~mask).any() and np.array_equal(text[mask], hard.clip_text[mask])
    torch.manual_seed(0)
    head = AVEHead(text.shape[-1], 10)
    with torch.no_grad():
        steps = head.step(torch.from_numpy(text))
        pooled = steps.max(dim=1).values
        real_only = torch.stack([steps[i][torch.from_numpy(mask[i])].max(dim=0).values for i in range(len(text))])
    torch.testing.assert_close(pooled, real_only, rtol=1e-5, atol=1e-5)


@pytest.fixture
def one_thread():
    # The heads are tiny: on a busy 2-core machine one thread is ~5x faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_baselines_behave(one_thread):
    data = dataclasses.replace(build_synthetic(**TINY), text_table=None)  # audio-video: fewer heads to train
    settings = BaselineSettings(cca_components=(8, 16))
    settings = dataclasses.replace(settings, head=dataclasses.replace(settings.head, epochs=40))
    report = run_baselines(data, settings)
    results = report["results"]
    assert set(results) == {"ceiling", "random", "cca-8", "cca-16"}
    assert set(results["ceiling"]) == {"A->A", "V->V"}
    assert set(results["random"]) == {"A->A", "A->V", "V->A", "V->V"}
    assert set(results["cca-8"]) == {"A->V", "V->A"}
    for method in results.values():
        for scores in method.values():
            assert 0 <= scores["accuracy"] <= 100 and 0 <= scores["precision"] <= 100
    # Learnable within a modality; a random projection does not transfer; CCA on the default preset does.
    assert results["ceiling"]["A->A"]["accuracy"] > 70
    assert max(results["random"][d]["accuracy"] for d in ("A->V", "V->A")) < 35
    assert min(results["cca-16"][d]["accuracy"] for d in ("A->V", "V->A")) > 60
    assert len(report["cca_correlations"]["A-V"]) == 16 and report["chance_accuracy"] == 10.0
    table = markdown(report, "python -m codaar.evaluate baselines --x")
    assert "| linear CCA, k=16 |" in table and "best k per column (oracle)" in table
    assert "command: `python -m codaar.evaluate baselines --x`" in table


def test_cli_writes_json_and_markdown(tmp_path, capsys, one_thread):
    from codaar.evaluate.__main__ import main

    args = ["baselines", "--preset", "hard", "--num-pretrain", "60", "--num-train", "40", "--num-val", "10",
            "--num-test", "20", "--head-epochs", "2", "--out", str(tmp_path / "tables" / "hard.json")]
    returned = main(args)
    report = json.loads((tmp_path / "tables" / "hard.json").read_text())
    assert report["data"]["preset"] == "hard" and report["data"]["text_kind"] == "per-clip"
    assert report["command"] == returned["command"] == "python -m codaar.evaluate " + " ".join(args)
    assert report["settings"]["head"]["epochs"] == 2
    shown = (tmp_path / "tables" / "hard.md").read_text()
    assert shown in capsys.readouterr().out and "preset hard, seed 0" in shown
    with pytest.raises(SystemExit) as exited:
        main(["baselines", "--data", str(tmp_path / "missing")])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("python -m codaar.evaluate baselines: error: ")
    assert "no such folder" in error[0]


@pytest.mark.parametrize("split", ["val", "pretrain"])
def test_missing_split_is_a_clear_error(split):
    data = build_synthetic(**TINY)
    data = dataclasses.replace(data, splits={k: v for k, v in data.splits.items() if k != split})
    with pytest.raises(EvaluationError, match=f"splits.{split}"):
        run_baselines(data, BaselineSettings(cca_components=(4,)))
