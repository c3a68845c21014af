"""`python -m codaar.evaluate RUN --tasks avs --avs-data DIR` end to end at a tiny size, and its errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from codaar.data.avs_synthetic import AVSSyntheticConfig, write_avs_synthetic
from codaar.evaluate import EvaluationError
from codaar.evaluate.features import load_pretrained
from codaar.evaluate.run import evaluate
from codaar.evaluate.segmentation.backbones import build_backbone
from codaar.evaluate.segmentation.segmenter import TPAVI, Segmenter
from codaar.evaluate.segmentation.task import NO_QUERY, WRONG_CLASS, clip_queries
from codaar.train import main as train_main

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--max-steps", "4", "--no-progress"]
FAST = {"epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("avsrun") / "run"
    train_main(["--out", str(out), *TINY])
    return out


@pytest.fixture(scope="module")
def avs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("avsdata") / "avs"
    write_avs_synthetic(root, AVSSyntheticConfig(num_train=6, num_val=2, num_test=3, image_size=32))
    return root


def test_evaluate_writes_table_4_and_mask_pictures(run_dir, avs_dir, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(run_dir, tasks=("avs",), avs_data=str(avs_dir), avs=FAST, out=out, log=lambda s: None)
    by_source = result["avs"]["by_source"]
    assert set(by_source) == {"text", "audio", NO_QUERY}
    assert set(by_source["text"]["test"]) == {"text", "audio", WRONG_CLASS}
    assert set(by_source["audio"]["test"]) == {"audio", "text"}
    for scores in (s for v in by_source.values() for s in v["test"].values()):
        assert 0 <= scores["miou"] <= 100 and 0 <= scores["f_score"] <= 100
    text = (out / "tables.md").read_text()
    assert "Table 4 layout -- AVSBench-S4" in text and "A->T mIoU" in text and "T->A F" in text
    assert "no query mIoU" in text and "T->T, wrong class" in text
    assert "Table 2 layout" not in text  # no AVE/AVVP asked
    assert json.loads((out / "tables.json").read_text())["avs"]["by_source"]["audio"]["info"]["best_epoch"] == 0
    assert (out / "avs_masks.png").stat().st_size > 1000


def test_queries_are_code_rows_of_the_right_modality(run_dir, avs_dir):
    from codaar.data.avsbench import load_avsbench

    pretrained = load_pretrained(run_dir)
    data = load_avsbench(avs_dir, image_size=32)
    queries = clip_queries(pretrained, data)
    width = pretrained.model.quantizer.codebooks.shape[0] * pretrained.model.quantizer.codebooks.shape[-1]
    assert queries["audio"].shape == (data.num_clips, 5, width)
    rows = pretrained.model.codes("audio", torch.from_numpy(data.audio[:2])).rows
    torch.testing.assert_close(queries["audio"][:2], rows)  # the full code rows, one per second
    same = data.category[:, None] == data.category[None, :]
    flat = queries["text"].flatten(1)
    assert torch.equal(flat[0], flat[np.flatnonzero(same[0])[-1]])  # text: one query per class
    assert (queries[NO_QUERY] == 0).all() and not torch.equal(queries[WRONG_CLASS], queries["text"])


def test_query_changes_the_mask_and_fresh_fusion_is_identity():
    torch.manual_seed(0)
    fusion = TPAVI(8, 5).eval()
    x = torch.randn(2, 8, 4, 4)
    plain = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(fusion(x, torch.randn(2, 5)), plain)  # W_z's BatchNorm starts at zero
    segmenter = Segmenter(build_backbone("tiny"), 5).eval()
    for module in segmenter.modules():
        if isinstance(module, TPAVI):
            torch.nn.init.normal_(module.W_z[1].weight)
    frames = torch.rand(1, 3, 32, 32)
    assert segmenter(frames, torch.randn(1, 5)).shape == (1, 32, 32)
    assert not torch.allclose(segmenter(frames, torch.randn(1, 5)), segmenter(frames, torch.randn(1, 5)))


def test_cli_errors_are_one_line(run_dir, avs_dir, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "codaar.evaluate", str(run_dir), "--tasks", "avs",
                               "--out", str(tmp_path / "o"), "--no-plots", *args], capture_output=True, text=True)

    missing = run()
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "expected --avs-data DIR" in missing.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "s4_meta_data.csv").write_text("name,category\nx,y\n")
    broken = run("--avs-data", str(bad))
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and "s4_meta_data.csv: field 'header'" in (
        broken.stderr)
    pvt = run("--avs-data", str(avs_dir), "--avs-backbone", "pvt_v2_b5")
    assert pvt.returncode == 2 and "expected --backbone-weights FILE" in pvt.stderr and pvt.stderr.count("\n") == 1


def test_av_model_is_refused(tmp_path, avs_dir):
    out = tmp_path / "av"
    train_main(["--out", str(out), "--modalities", "video,audio", *TINY])
    with pytest.raises(EvaluationError, match=r"expected audio and text \(an AVT model\), missing \['text'\]"):
        evaluate(out, tasks=("avs",), avs_data=str(avs_dir), avs=FAST, log=lambda s: None)
