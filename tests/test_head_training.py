"""A protocol never reports an untrained head: the official loop (checkpoint epoch + 1 to `epochs`)
that would train nothing is refused before any head trains, a head that ran fewer epochs than
specified is refused, and a shortened official loop is a WARNING in the table itself."""

import json
from dataclasses import replace

import pytest

from codaar.evaluate import EvaluationError
from codaar.evaluate import run as run_module
from codaar.evaluate.features import load_eval_data, load_pretrained
from codaar.evaluate.protocols import HeadSettings, Task, run_ave, run_avvp
from codaar.evaluate.run import evaluate
from codaar.train import main as train_main

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--max-steps", "4", "--no-progress"]
FAST = HeadSettings(lr=1e-3, batch_size=256, epochs=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("headrun") / "run"
    train_main(["--out", str(out), *TINY])
    return out


def at_epoch(pretrained, epoch):
    """The same checkpoint, claiming a later pretraining epoch (what a 31-epoch run's last checkpoint says)."""
    return replace(pretrained, meta={**pretrained.meta, "epoch": epoch})


@pytest.mark.parametrize("epoch,epochs", [(30, 30), (31, 30), (29, 30), (4, 5), (100, 50)])
@pytest.mark.parametrize("runner", [run_ave, run_avvp], ids=["ave", "avvp"])
def test_official_loop_of_no_epochs_is_refused(run_dir, runner, epoch, epochs):
    pretrained = load_pretrained(run_dir)
    data = load_eval_data(pretrained)
    task = Task(at_epoch(pretrained, epoch), data, data, "official")
    head = "AVE" if runner is run_ave else "AVVP"
    with pytest.raises(EvaluationError, match=rf"the {head} head would train 0 epochs.*epoch \+ 1 = {epoch + 1}.*"
                                              rf"--{head.lower()}-epochs {epoch + 1 + epochs}"):
        runner(task, "audio", ["video"], replace(FAST, epochs=epochs))


def test_zero_epochs_refused_under_clean_too(run_dir):
    pretrained = load_pretrained(run_dir)
    data = load_eval_data(pretrained)
    with pytest.raises(EvaluationError, match="--ave-epochs: expected at least 1, found 0"):
        run_ave(Task(pretrained, data, data, "clean"), "audio", ["video"], replace(FAST, epochs=0))


def test_evaluate_refuses_before_training_any_head_and_writes_nothing(run_dir, tmp_path, monkeypatch):

    real = run_module.load_pretrained
    monkeypatch.setattr(run_module, "load_pretrained", lambda path: at_epoch(real(path), 31))
    trained = []
    monkeypatch.setattr(run_module, "run_ave", lambda *a, **k: trained.append(a) or {})
    out = tmp_path / "eval"
    with pytest.raises(EvaluationError, match="AVE head would train 0 epochs"):
        evaluate(run_dir, protocols=("clean", "official"), tasks=("ave",), out=out, plots=False, log=lambda s: None)
    assert not trained and not out.exists()  # the clean tables were not published half-way either


def test_trained_epochs_are_recorded_and_a_short_official_loop_warns_in_the_table(run_dir, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(run_dir, protocols=("clean", "official"), tasks=("ave", "avvp"), ave={"epochs": 3},
                      avvp={"epochs": 2, "batch_size": 256}, directions=[("audio", "video")], out=out, plots=False,
                      log=lambda s: None)
    epoch = result["checkpoint_epoch"]
    clean, official = result["clean"]["ave"]["_info"]["audio"], result["official"]["ave"]["_info"]["audio"]
    assert clean["head_epochs"] == 3 and clean["head_steps"] >= 3 and "head_epochs_note" not in clean
    assert official["head_epochs"] == 3 - epoch - 1 and official["head_epochs_given"] == 3
    text = (out / "tables.md").read_text()
    clean_part, official_part = text.split("(official)", 1)
    assert "heads trained: AVE 3 epochs; AVVP 2 epochs" in clean_part and "WARNING" not in clean_part
    assert f"heads trained: AVE {2 - epoch} epochs; AVVP {1 - epoch} epochs" in official_part
    assert (f"WARNING: AVE heads trained {2 - epoch} of the 3 epochs given (--ave-epochs): the official protocol "
            f"starts at the checkpoint's epoch + 1 = {epoch + 1}") in official_part
    assert f"--ave-epochs {epoch + 4} gives 3" in official_part
    payload = json.loads((out / "tables.json").read_text())
    assert payload["official"]["avvp"]["_info"]["audio"]["head_epochs"] == 1 - epoch


def test_a_head_that_ran_fewer_epochs_than_planned_is_refused(run_dir, monkeypatch):
    import codaar.evaluate.protocols as protocols

    pretrained = load_pretrained(run_dir)
    data = load_eval_data(pretrained)
    task = Task(pretrained, data, data, "clean")
    real = protocols._fit
    monkeypatch.setattr(protocols, "_fit", lambda *a: real(*a[:-1], a[-1][:1]))  # a loop that stops early
    with pytest.raises(EvaluationError, match=r"AVE head \(clean protocol\): trained 1 epochs .* expected 3 epochs"):
        run_ave(task, "audio", ["video"], FAST)


def test_training_notes_name_every_count():
    infos = {"ave": {"_info": {"audio": {"head_epochs": 5}, "video": {"head_epochs": 5}}}}
    assert run_module.training_notes(infos) == ["heads trained: AVE 5 epochs"]
    assert run_module.training_notes({}) == []
