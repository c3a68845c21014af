"""Downstream evaluation: metrics on hand-made cases, protocols on a tiny checkpoint, the CLI, bad input."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codaar.evaluate import EvaluationError, metrics
from codaar.evaluate.features import check_compatible, load_eval_data, load_pretrained, require_labels
from codaar.evaluate.protocols import HeadSettings, Task, run_ave, run_avvp, run_retrieval
from codaar.evaluate.run import evaluate, label_mapping, load_class_map
from codaar.run_folder import checkpoint as ckpt
from codaar.train import main as train_main

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--max-steps", "4", "--no-progress"]
FAST_AVE = HeadSettings(lr=1e-3, batch_size=256, epochs=3)
FAST_AVVP = HeadSettings(lr=1e-3, batch_size=256, epochs=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    train_main(["--out", str(out), *TINY])
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    pretrained = load_pretrained(run_dir)
    return pretrained, load_eval_data(pretrained)


# ------------------------------------------------------------------------------------ metrics
def test_batch_macro_precision_by_hand():
    # predicted classes: 0 (3 times, 2 right), 1 (once, wrong) -> mean(2/3, 0) = 1/3
    assert metrics.batch_macro_precision([0, 0, 0, 1], [0, 0, 2, 2]) == pytest.approx(100 / 3)
    # class 2 is never predicted, so it does not enter the mean
    assert metrics.batch_macro_precision([1, 1], [1, 1]) == pytest.approx(100.0)
    # two batches, sizes 4 and 2, values 1/3 and 1 -> (4/3 + 2) / 6 = 5/9
    batches = [(np.array([0, 0, 0, 1]), np.array([0, 0, 2, 2])), (np.array([1, 1]), np.array([1, 1]))]
    assert metrics.ave_precision(batches) == pytest.approx(500 / 9)
    assert metrics.accuracy([0, 0, 0, 1, 1, 1], [0, 0, 2, 2, 1, 1]) == pytest.approx(400 / 6)


def test_avvp_precision_recall_f1_by_hand():
    # batch 1: 1 clip x 2 segments x 2 columns; predicted cells (>0.5): 3, of which 2 positive; positives 4
    p1 = np.array([[[0.9, 0.8], [0.7, 0.1]]])
    y1 = np.array([[[1, 1], [0, 1]]])
    p, r = metrics.batch_precision_recall(p1, y1)
    assert (p, r) == pytest.approx((2 / 3, 2 / 3))
    # batch 2: nothing predicted -> (0, 0) as in the authors' code
    p2 = np.zeros((1, 2, 2))
    y2 = np.ones((1, 2, 2))
    assert metrics.batch_precision_recall(p2, y2) == (0.0, 0.0)
    out = metrics.avvp_prf([(p1, y1), (p2, y2)])  # equal weights: P = R = 1/3
    assert out["precision"] == pytest.approx(100 / 3)
    assert out["recall"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 / 3)


def test_recall_at_k_by_hand_and_ties_count_against():
    sim = np.array([[0.9, 0.8, 0.1], [0.5, 0.2, 0.7], [0.3, 0.3, 0.3]])
    rel = np.eye(3, dtype=bool)
    # query 0: rank 1; query 1: rank 3 (two higher); query 2: all tied -> rank 3
    r = metrics.recall_at_k(sim, rel, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 100 / 3, "R@2": 100 / 3, "R@3": 100.0})
    # class relevance: the best relevant item counts
    rel2 = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    assert metrics.recall_at_k(sim, rel2, ks=(1,))["R@1"] == pytest.approx(0.0)
    assert metrics.recall_at_k(sim, rel2, ks=(2,))["R@2"] == pytest.approx(200 / 3)


# ---------------------------------------------------------------------------------- protocols
def test_clean_and_official_differ_as_specified(loaded):
    pretrained, data = loaded
    clean = run_ave(Task(pretrained, data, data, "clean"), "video", ["audio", "text"], FAST_AVE)
    official = run_ave(Task(pretrained, data, data, "official"),
                       "video", ["audio"], replace(FAST_AVE, epochs=pretrained.epoch + 3))
    assert clean["_info"]["split"] == "test" and clean["_info"]["clips"] == len(data.splits["test"])
    assert official["_info"]["split"] == "train" and official["_info"]["clips"] == len(data.splits["train"])
    assert clean["_info"]["head_epochs"] == 3
    assert official["_info"]["head_epochs"] == 2  # epochs counted from checkpoint epoch + 1
    assert clean["_info"]["selected_epoch"] is not None and official["_info"]["selected_epoch"] is None
    for result in (clean, official):
        for m in ("video", "audio"):
            assert 0 <= result[m]["precision"] <= 100 and 0 <= result[m]["accuracy"] <= 100
    assert set(clean) == {"video", "audio", "text", "_info"}


def test_avvp_and_retrieval_run(loaded):
    pretrained, data = loaded
    task = Task(pretrained, data, data, "clean")
    r = run_avvp(task, "audio", ["video"], FAST_AVVP)
    assert set(r["audio"]) == {"precision", "recall", "f1"} and 0 <= r["video"]["f1"] <= 100
    off = run_avvp(Task(pretrained, data, data, "official"), "audio", ["video"],
                   replace(FAST_AVVP, epochs=pretrained.epoch + 2))
    assert "best_epoch" in off["video"] and off["_info"]["split"] == "train"
    ret = run_retrieval(task, [("audio", "video"), ("text", "audio")])
    assert ret["audio->video"]["relevance"] == "instance" and ret["text->audio"]["relevance"] == "class"
    assert all(0 <= ret["audio->video"][f"R@{k}"] <= 100 for k in (1, 5, 10))


def test_cross_dataset_transfer_and_class_map(loaded, run_dir, tmp_path):
    pretrained, data = loaded
    mapping_file = tmp_path / "map.csv"
    names = data.class_names
    mapping_file.write_text("source,target\n" + "".join(f"{n},{n}\n" for n in names[:5]))
    assert load_class_map(mapping_file) == {n: n for n in names[:5]}
    result = evaluate(run_dir, tasks=("ave",), ave={"epochs": 2}, directions=[("audio", "video")],
                      transfer_preset="avvp", class_map=str(mapping_file), plots=False, log=lambda s: None)
    assert result["cross_dataset"] and 0 <= result["clean"]["ave"]["audio"]["video"]["precision"] <= 100
    # only clips whose events all map to the 5 classes are scored
    b = load_eval_data(pretrained, data_preset="avvp")
    _, keep = label_mapping(data, b, load_class_map(mapping_file))
    assert result["clean"]["ave"]["_info"]["audio"]["clips"] == int(keep[b.splits["test"]].sum())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no such class": names[0]}))
    with pytest.raises(EvaluationError, match="no such class"):
        evaluate(run_dir, tasks=("ave",), transfer_preset="avvp", class_map=str(bad), plots=False)


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_messages(loaded, run_dir, tmp_path):
    pretrained, data = loaded
    with pytest.raises(EvaluationError, match="checkpoint: .*no checkpoint here"):
        load_pretrained(tmp_path)
    no_text = replace(data, text_table=None)
    with pytest.raises(EvaluationError,
                       match=r"video/audio/text model; expected modalities .* found \['audio', 'video'\]"):
        check_compatible(pretrained, no_text)
    small_audio = replace(data, audio=np.zeros(data.audio.shape[:2] + (64,), np.float32))
    with pytest.raises(EvaluationError, match=r"field 'audio': expected \[128\] features per step .* found \[64\]"):
        check_compatible(pretrained, small_audio)
    unlabeled = replace(data, labels={})
    with pytest.raises(EvaluationError, match="field 'labels': protocol AVE needs per-segment labels"):
        require_labels(unlabeled, None, "AVE")
    with pytest.raises(EvaluationError, match="field 'labels'"):
        run_ave(Task(pretrained, unlabeled, unlabeled), "audio", ["video"], FAST_AVE)
    # a checkpoint whose weights do not fit its settings
    # (written as a checkpoint, sealed: an edited meta.json alone is refused, test_checkpoint_trust.py)
    tensors, saved = ckpt.load_checkpoint(pretrained.path)

    def written(meta: dict) -> Path:
        return ckpt.save_checkpoint(tmp_path / "ckpt", 1, tensors, meta, keep=1)

    meta = json.loads(json.dumps(saved))
    meta["model_config"]["quantizer"]["dim"] = 48
    with pytest.raises(EvaluationError, match=r"tensors.safetensors: tensor '.*': expected shape"):
        load_pretrained(written(meta))
    # of the run's settings only those naming its pretraining data are read: a trainer setting this
    # version does not know leaves the checkpoint readable, a malformed data setting does not
    meta = json.loads(json.dumps(saved))
    meta["config"]["a_setting_of_another_version"] = "x"
    assert load_pretrained(written(meta)).run_settings["a_setting_of_another_version"] == "x"
    meta["config"]["data_seed"] = "zero"
    with pytest.raises(EvaluationError, match=r"meta.json: field 'config.data_seed': expected int, found 'zero'"):
        load_pretrained(written(meta))


# --------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(run_dir, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "codaar.evaluate", str(run_dir), "--out", str(out), "--protocol", "both",
           "--ave-epochs", "6", "--avvp-epochs", "6", "--avvp-batch-size", "256", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "tables.md").read_text()
    assert "Table 2 layout -- cross-modal transfer (clean)" in text and "(official)" in text and "Table 3" in text
    assert "| AVE V->A | AVE A->V |" in text.replace("method ", "").replace("| method", "|")
    result = json.loads((out / "tables.json").read_text())
    assert set(result["clean"]["ave"]["video"]) == {"video", "audio", "text"}
    for png in ("codebook_usage.png", "index_agreement.png", "codebook_health.png", "codebook_pca.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "codaar.evaluate", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no checkpoint here" in bad.stderr



def test_transfer_curve_scores_every_kept_checkpoint(tmp_path):
    run = tmp_path / "run"
    train_main(TINY + ["--out", str(run), "--max-steps", "6", "--checkpoint-every", "2", "--keep-checkpoints", "10"])
    from codaar.evaluate.__main__ import main as evaluate_main

    out = tmp_path / "curve"
    curve = evaluate_main([str(run), "--curve", "--tasks", "ave", "--ave-epochs", "2", "--out", str(out)])
    assert [p["step"] for p in curve["points"]] == [2, 4, 6]
    assert all(0 <= p["transfer"] <= 100 and "ave V->A" in p and p["transfer"] == p["transfer/ave"]
               for p in curve["points"])
    final = curve["points"][-1]["transfer"]
    assert curve["steps_to_95"] == next(p["step"] for p in curve["points"] if p["transfer"] >= 0.95 * final)
    # a metrics line per log point; each checkpoint is one (the default --log-every is larger)
    assert list(curve["logged"]["step"]) == [2, 4, 6] and "codes_recent/audio" in curve["logged"]
    assert "steps to reach 95% of the final transfer" in (out / "curve.md").read_text()
    assert (out / "transfer_curve.png").read_bytes()[:4] == b"\x89PNG"
    every = evaluate_main([str(run), "--curve", "--curve-every", "2", "--tasks", "ave", "--ave-epochs", "1",
                           "--no-plots", "--out", str(tmp_path / "curve2")])
    assert [p["step"] for p in every["points"]] == [2, 6]  # every 2nd, and always the last
