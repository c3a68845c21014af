"""No command destroys its own input, and what the machine refuses is said in one line (issue #23,
classes D and H), for every program that writes: train, encode, evaluate, evaluate baselines, data
synth, data import-official, data extract, ablate.

* Inputs: an output that is, contains or lies inside an input of the same command (a run's
  checkpoints, a data folder, media files, a weights file, --config, --train-args' --data; through
  a symlink, or a relative path with `..`) is refused with one line naming both, before anything is
  written; with --overwrite too, and the input is left byte for byte as it was.
* Faults, all real except where marked: an output under a regular file (ENOTDIR); on a read-only
  file system (EROFS: a read-only tmpfs); on a full disk (ENOSPC: a filled tmpfs; the programs run in
  a child process, where a write through a memory map that used to end in SIGBUS cannot kill pytest);
  too many open files (EMFILE: RLIMIT_NOFILE lowered in a child process); the first checkpoint of a
  training run meeting a full disk. Each: exit 2, one line naming the path and the cause, no
  traceback, no output published half-written. Injected: posix_fallocate failing with ENOSPC, and
  unsupported (the zero-writing fallback).
* Interruptions, real signals sent to this process: encode and evaluate interrupted by SIGINT or
  SIGTERM leave their output as it was, say so in one line and exit 130 / 143; a signal that arrives
  while an output is being published takes effect after the last rename.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from codaar.ablate import main as ablate_main
from codaar.data import build_synthetic, synthetic_config, write_dataset
from codaar.data.__main__ import main as data_main
from codaar.encode.__main__ import main as encode_main
from codaar.evaluate.__main__ import main as evaluate_main
from codaar.train import main as train_main
from tests.disk_faults import fill, leftovers, tmpfs
from tests.extract_media import write_clip
from tests.test_data_import import ROWS, make_layout

TINY = ["--dim", "16", "--num-codes", "8", "--temporal-ffn-dim", "32", "--text-lstm-dim", "8", "--batch-size", "20",
        "--max-steps", "2", "--no-progress"]
EXTRACT = ["--random-weights", "--segments", "2", "--frame-size", "32", "--no-progress"]
MAINS = {"train": train_main, "encode": encode_main, "evaluate": evaluate_main, "data": data_main,
         "ablate": ablate_main}
PROGRAMS = ("train", "encode", "evaluate", "baselines", "synth", "import-official", "extract", "ablate")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The inputs the programs read: a small data set, a run trained on it, an audio file, the
    authors' layout, a settings file."""
    root = tmp_path_factory.mktemp("inputs")
    data = build_synthetic(synthetic_config("default", num_pretrain=40, num_train=20, num_val=10, num_test=10))
    write_dataset(data, root / "data")
    train_main(["--data", str(root / "data"), "--out", str(root / "run"), *TINY])
    (root / "media").mkdir()
    write_clip(root / "media" / "tone.wav", 2)
    (root / "lists").mkdir()
    (root / "lists" / "clips.txt").write_text("../media/tone.wav\n")
    (root / "weights").mkdir()
    (root / "weights" / "vggish.pth").write_bytes(b"not read: refused before")
    (root / "train.toml").write_text("lr = 0.001\n")
    (root / "link-to-data").symlink_to(root / "data")
    return SimpleNamespace(root=root, data=root / "data", run=root / "run", media=root / "media",
                           layout=make_layout(root / "layout", ROWS), config=root / "train.toml")


def argv_of(program: str, out, fx) -> tuple[str, list[str]]:
    """(main, arguments) of `program` writing to `out`, as small as the program allows."""
    out, layout = str(out), {k: str(v) for k, v in fx.layout.items()}
    return {
        "train": ("train", ["--data", str(fx.data), "--out", out, *TINY]),
        "encode": ("encode", [str(fx.run), "--out", out, "--no-progress"]),
        "evaluate": ("evaluate", [str(fx.run), "--out", out, "--no-plots", "--tasks", "ave", "--ave-epochs", "1"]),
        "baselines": ("evaluate", ["baselines", "--data", str(fx.data), "--out", out, "--head-epochs", "1"]),
        "synth": ("data", ["synth", out, "--num-pretrain", "8", "--num-train", "4", "--num-val", "2", "--num-test",
                           "2", "--no-progress"]),
        "import-official": ("data", ["import-official", out, "--meta", layout["meta_csv"], "--audio-dir",
                                     layout["audio_dir"], "--video-dir", layout["video_dir"], "--prompts",
                                     layout["prompts_csv"], "--video-shape", "2,2,8", "--no-progress"]),
        "extract": ("data", ["extract", out, str(fx.media), *EXTRACT]),
        "ablate": ("ablate", ["--variants", "full", "--seeds", "1", "--steps", "1", *TINY[:8], "--batch-size", "20",
                              "--tasks", "ave", "--ave-epochs", "1", "--train-args", f"--data {fx.data}",
                              "--out", out]),
    }[program]


def call(main: str, argv, capsys) -> tuple[int, str]:
    """Run a program in this process: (exit status, what it printed on stderr)."""
    capsys.readouterr()
    try:
        returned = MAINS[main]([str(a) for a in argv])
        status = returned if isinstance(returned, int) else 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def assert_last_line(stderr: str, *parts: str) -> None:
    """No traceback, and the last line (what the program said as it stopped; earlier lines are its
    progress log) names every part."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    for part in parts:
        assert part in last, f"{part!r} not in {last!r}"


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` (or `path` itself) with its size and modification time."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


# ------------------------------------------------------------------------------------------ inputs
def overlap_cases(fx) -> list[tuple[str, list, Path, Path, Path]]:
    """(main, arguments, the output, the input it overlaps (named in the message), what must stay as it was)."""
    d, r, layout = fx.data, fx.run, fx.layout
    official = ["--meta", layout["meta_csv"], "--audio-dir", layout["audio_dir"], "--video-dir", layout["video_dir"],
                "--prompts", layout["prompts_csv"], "--video-shape", "2,2,8", "--no-progress", "--overwrite"]
    checkpoint = r / "checkpoints" / (r / "checkpoints" / "latest").read_text().strip()
    return [
        ("train", ["--data", d, "--out", d, *TINY], d, d, d),  # is
        ("train", ["--data", d, "--out", d / "run", *TINY], d / "run", d, d),  # lies inside
        ("train", ["--config", fx.config, "--out", fx.root, *TINY], fx.root, fx.config, fx.root),  # contains
        ("encode", [r, "--out", r, "--overwrite", "--no-progress"], r, checkpoint, r),
        ("encode", [r, "--out", r / "checkpoints" / "codes", "--no-progress"], r / "checkpoints" / "codes",
         r / "checkpoints", r),
        # through a symlink
        ("encode", [r, "--out", fx.root / "link-to-data", "--overwrite", "--no-progress"], d, d, d),
        ("evaluate", [r, "--out", r / "checkpoints", "--no-plots"], r / "checkpoints", checkpoint, r),
        ("evaluate", [r, "--out", d / "eval", "--no-plots"], d / "eval", d, d),  # the run's data set
        ("evaluate", ["baselines", "--data", d, "--out", d / "b"], d / "b.json", d, d),
        ("data", ["import-official", layout["audio_dir"], *official], layout["audio_dir"], layout["audio_dir"],
         layout["audio_dir"]),
        ("data", ["import-official", fx.root / "layout", *official], fx.root / "layout", layout["meta_csv"],
         fx.root / "layout"),
        ("data", ["extract", fx.media, fx.media, *EXTRACT, "--overwrite"], fx.media, fx.media, fx.media),
        ("data", ["extract", fx.media, fx.root / "lists" / "clips.txt", *EXTRACT, "--overwrite"], fx.media,
         fx.media / "tone.wav", fx.media),  # the file a list names
        ("data", ["extract", fx.root / "weights", fx.media, *EXTRACT, "--vggish-weights",
                  fx.root / "weights" / "vggish.pth", "--overwrite"], fx.root / "weights",
         fx.root / "weights" / "vggish.pth", fx.root / "weights"),
        ("ablate", ["--variants", "full", "--seeds", "1", "--train-args", f"--data {d}", "--out", d], d, d, d),
    ]


def test_no_program_writes_over_its_own_input(fx, capsys):
    for main, argv, out, read, kept in overlap_cases(fx):
        before = snapshot(kept)
        status, err = call(main, argv, capsys)
        assert status == 2, (main, argv, err)
        assert err.count("\n") == 1  # nothing but the error: refused before any work
        assert_last_line(err, str(Path(out).resolve()), str(Path(read).resolve()), "never writes over its own input")
        assert snapshot(kept) == before, (main, argv)


def test_relative_paths_are_resolved(fx, capsys, monkeypatch):
    monkeypatch.chdir(fx.run / "checkpoints")
    before = snapshot(fx.run)
    status, err = call("encode", ["..", "--out", "../../run/./checkpoints/..", "--overwrite", "--no-progress"], capsys)
    assert status == 2 and snapshot(fx.run) == before
    assert_last_line(err, f"--out ../../run/./checkpoints/.. (= {fx.run.resolve()}) contains the checkpoint")


def test_the_default_evaluation_folder_inside_the_run_is_allowed(fx, capsys):
    status, err = call("evaluate", [fx.run, "--no-plots", "--tasks", "ave", "--ave-epochs", "1"], capsys)
    assert status == 0, err
    assert (fx.run / "eval" / "tables.md").is_file()
    assert not [p for p in fx.run.iterdir() if ".partial-" in p.name]


# ------------------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("program", PROGRAMS)
def test_an_output_under_a_regular_file(program, fx, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    status, err = call(*argv_of(program, blocker / "out", fx), capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert_last_line(err, str(blocker.resolve()), "ENOTDIR")
    assert blocker.read_text() == "a file, not a folder" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.parametrize("program", PROGRAMS)
def test_an_output_on_a_read_only_file_system(program, fx, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        status, err = call(*argv_of(program, ro / "out", fx), capsys)
        assert status == 2 and err.count("\n") == 1, err
        assert_last_line(err, str(ro), "read-only file system (EROFS)")


def run_child(cases: list[tuple], tmp_path: Path, free_files: int | None = None) -> list[dict]:
    """The results of `tests.fault_runner` on cases (program, arguments[, signal]) (see there)."""
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"cases": [{"program": c[0], "argv": c[1], "signal": c[2] if len(c) > 2 else None}
                                          for c in cases], "free_files": free_files}))
    done = subprocess.run([sys.executable, "-m", "tests.fault_runner", str(spec), str(result)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, f"the child died (status {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(result.read_text())


def test_a_full_disk_is_one_line_and_nothing_is_published(fx, tmp_path):
    with tmpfs(tmp_path / "full", size="1m") as full:
        fill(full)
        outs = {program: full / program.replace("-", "_") for program in PROGRAMS}
        results = run_child([argv_of(program, outs[program], fx) for program in PROGRAMS], tmp_path)
        for program, result in zip(PROGRAMS, results):
            assert result["status"] == 2 and result["traceback"] is None, (program, result)
            assert_last_line(result["stderr"], str(full), "no space left on the device (ENOSPC)")
        left = leftovers(full)
        assert not [p for p in left if ".partial-" in p or ".old-" in p], left
        for program in ("encode", "evaluate", "synth", "import-official", "extract"):
            assert not outs[program].exists(), program
        assert not (outs["train"] / "checkpoints").exists() and not (outs["train"] / "config.json").exists()
        assert not list(full.glob("baselines.*")) and not (outs["ablate"] / "ablation.md").exists()


def test_a_disk_that_fills_under_a_memory_map_is_enospc_not_sigbus(fx, tmp_path):
    """Room for the headers and the first arrays, not for all: numpy's sparse memory maps used to take
    the files and die with SIGBUS when a page written through the map found no block (the child's
    status was -7)."""
    with tmpfs(tmp_path / "filling", size="1m") as filling:
        filler = fill(filling)
        os.truncate(filler, filler.stat().st_size - 96 * 1024)
        cases = [("encode", [str(fx.run), "--out", str(filling / "codes"), "--with-quantized", "--with-rows",
                             "--no-progress"]),  # rows: 3 x 80 clips x 10 steps x 48 float32 = 450 KiB
                 ("data", ["synth", str(filling / "data"), "--num-pretrain", "40", "--no-progress"])]  # audio: 2.4 MiB
        for result in run_child(cases, tmp_path):
            assert result["status"] == 2 and result["traceback"] is None, result
            assert_last_line(result["stderr"], ".npy: no space left on the device (ENOSPC)")
        assert leftovers(filling) == []


def test_a_full_disk_at_the_first_checkpoint_keeps_the_run_resumable(fx, tmp_path, capsys):
    with tmpfs(tmp_path / "small", size="1m") as small:  # room for the settings and metrics, not a checkpoint
        run = small / "run"
        status, err = call("train", ["--data", fx.data, "--out", run, *TINY], capsys)
        assert status == 2, err
        assert_last_line(err, str(run / "checkpoints"), "tensors.safetensors: no space left on the device (ENOSPC)")
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []  # the staging folder is gone
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the log point of step 2, before its save


def test_too_many_open_files_is_one_line(fx, tmp_path):
    outs = {program: tmp_path / program.replace("-", "_") for program in PROGRAMS}
    results = run_child([argv_of(program, outs[program], fx) for program in PROGRAMS], tmp_path, free_files=0)
    for program, result in zip(PROGRAMS, results):
        assert result["status"] == 2 and result["traceback"] is None, (program, result)
        assert_last_line(result["stderr"], "oo many open files")  # "(EMFILE)", or the checkpoint reader's words
        assert result["stderr"].count("\n") == 1, (program, result["stderr"])
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def test_space_for_a_memory_map_is_reserved_first(tmp_path, monkeypatch):
    from codaar.runtime import memmaps

    path = tmp_path / "a.npy"
    array = memmaps.reserved_memmap(path, np.float32, (5, 3, 2))
    assert array.shape == (5, 3, 2) and not array.any()
    assert os.stat(path).st_blocks * 512 >= os.path.getsize(path)  # allocated, not sparse
    array[:] = 7
    array.flush()
    del array
    assert np.array_equal(np.load(path), np.full((5, 3, 2), 7, np.float32))

    def full(fd, offset, size):  # injected: the call a full disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(memmaps.os, "posix_fallocate", full)
    with pytest.raises(OSError) as err:
        memmaps.reserved_memmap(tmp_path / "b.npy", np.int64, (100, 10))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "b.npy")

    def unsupported(fd, offset, size):  # injected: a file system without fallocate
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(memmaps.os, "posix_fallocate", unsupported)
    array = memmaps.reserved_memmap(tmp_path / "c.npy", np.int64, (3000, 100))  # zeros written instead
    assert os.stat(tmp_path / "c.npy").st_blocks * 512 >= os.path.getsize(tmp_path / "c.npy") > 3000 * 100 * 8
    assert array.shape == (3000, 100) and not array.any()


# ------------------------------------------------------------------------------------ interruptions
def test_interrupted_encode_and_evaluate_leave_no_partial_output(fx, tmp_path):
    """In a child process: a program that ignored the signals would kill it (SIGTERM), or stop pytest (SIGINT)."""
    codes, earlier, published = tmp_path / "codes", tmp_path / "earlier", tmp_path / "published"
    earlier.mkdir()
    (earlier / "tables.md").write_text("an earlier evaluation")
    evaluate = ["--no-plots", "--tasks", "ave", "--ave-epochs", "1"]
    cases = [  # (program, arguments, the call at which the signal comes)
        ("encode", [str(fx.run), "--out", str(codes), "--batch-size", "7", "--no-progress"],
         ["codaar.model:CoDAARModel.encode", 2, signal.SIGINT]),
        ("encode", [str(fx.run), "--out", str(codes), "--batch-size", "7", "--no-progress"],
         ["codaar.model:CoDAARModel.encode", 2, signal.SIGTERM]),
        ("evaluate", [str(fx.run), "--out", str(earlier), *evaluate],
         ["codaar.evaluate.run:run_ave", 1, signal.SIGTERM]),
        ("evaluate", [str(fx.run), "--out", str(published), *evaluate], ["os:replace", 1, signal.SIGINT]),  # publishing
    ]
    sigint_encode, sigterm_encode, sigterm_evaluate, sigint_publish = run_child(cases, tmp_path)
    for result, status, name in ((sigint_encode, 130, "SIGINT"), (sigterm_encode, 143, "SIGTERM")):
        assert result["status"] == status and result["handlers_restored"], result
        assert result["stderr"].count("\n") == 1, result["stderr"]
        assert_last_line(result["stderr"], f"interrupted by {name}: {codes} is as it was before this command "
                                           "(no partial output)")
    assert sigterm_evaluate["status"] == 143, sigterm_evaluate
    assert_last_line(sigterm_evaluate["stderr"], f"interrupted by SIGTERM: {earlier} is as it was before this command")
    assert [p.name for p in earlier.iterdir()] == ["tables.md"]
    assert (earlier / "tables.md").read_text() == "an earlier evaluation"
    assert sigint_publish["status"] == 130, sigint_publish  # the signal came at the first rename: all were done
    assert_last_line(sigint_publish["stderr"], f"interrupted by SIGINT while {published} was published; it was "
                                               "completed first")
    assert sorted(p.name for p in published.iterdir()) == ["tables.json", "tables.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "published", "result.json", "spec.json"]


def test_held_signals_act_when_the_block_ends():
    from codaar.runtime.interrupts import Interrupted, held_signals, interruptible

    with pytest.raises(Interrupted) as interrupted:
        with interruptible():
            with held_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                reached = True  # not cut here
    assert reached and interrupted.value.completed and interrupted.value.exit_status == 143
    with pytest.raises(KeyboardInterrupt):  # outside interruptible(): the signal's usual effect, after the block
        with held_signals():
            os.kill(os.getpid(), signal.SIGINT)
            reached_too = True
    assert reached_too
