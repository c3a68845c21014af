"""A checkpoint proves itself and a run reads only inside itself (issue #23 A, B): every field of
meta.json is sealed, every claimed format version is verified, tensors of another dtype or shape are
refused by every reader, `latest` and the folders it leads through never leave the run, and no
message quotes a file it could not parse."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from codaar.encode.__main__ import main as encode_main
from codaar.evaluate.__main__ import main as evaluate_main
from codaar.model import CoDAARModel
from codaar.pretrained import load_pretrained
from codaar.run_folder import checkpoint as ckpt
from codaar.train import main as train_main
from tests.test_train import TINY

SECRET = "SECRET-9f3a-do-not-print"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of 2 steps that keeps one checkpoint (so a resume has nothing to fall back to)."""
    run = tmp_path_factory.mktemp("trust") / "run"
    train_main(TINY + ["--max-steps", "2", "--checkpoint-every", "1", "--keep-checkpoints", "1", "--out", str(run)])
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def newest(run: Path) -> Path:
    return run / "checkpoints" / "step-0000002"


def every_reader_refuses(run: Path, tmp_path: Path, capsys, *expected: str, file_level: bool = True,
                         resume: bool = True) -> None:
    """Each program that reads checkpoints refuses `run`: the library readers raise CheckpointError,
    encode, evaluate and resume exit 2 with one line; each message holds `expected`, none a secret.
    `file_level=False`: a checkpoint that proves itself but does not fit its model (the file reader
    `load_checkpoint` knows no model). `resume=False`: resume reads no `latest` (it takes the newest
    `step-*` folder that verifies), see `test_resume_reads_no_pointer`."""
    for read in (ckpt.load_checkpoint, load_pretrained, CoDAARModel.from_checkpoint)[0 if file_level else 1:]:
        with pytest.raises(ckpt.CheckpointError) as raised:
            read(run)
        for text in expected:
            assert text in str(raised.value), (read.__name__, text, str(raised.value))
        assert SECRET not in str(raised.value)
    for program, argv in ((encode_main, [str(run), "--out", str(tmp_path / "codes"), "--no-progress"]),
                          (evaluate_main, [str(run), "--out", str(tmp_path / "eval")]),
                          *[(train_main, TINY + ["--out", str(run), "--resume", "--max-steps", "3"])] * resume):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            program(argv)
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert exited.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (program, err)
        assert SECRET not in captured.err + captured.out, program
        if program is not train_main:  # resume passes over what does not verify: "no checkpoint verifies"
            for text in expected:
                assert text in err, (program, text, err)
    assert not (tmp_path / "codes").exists() and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------ A: the metadata
def edit_meta(folder: Path, edit) -> None:
    path = folder / ckpt.META
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=1))


@pytest.mark.parametrize("version", [1, 2, 0, 4, "3", 3.0, True, None, [3]])
def test_no_claimed_version_switches_the_checks_off(run, tmp_path, capsys, version):
    """Editing the version (to 1, which recorded no digest, or to anything else) of a checkpoint whose
    codebook is corrupt: every reader refuses it, naming meta.json and the field."""
    tensors = newest(run) / ckpt.TENSORS
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x5A  # a flipped bit in the last tensor's bytes
    tensors.write_bytes(bytes(data))
    edit_meta(newest(run), lambda meta: meta.update(version=version))
    every_reader_refuses(run, tmp_path, capsys, f"{newest(run) / ckpt.META}: field 'version'")


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def _set(meta: dict, path: str, value) -> None:
    parts = [p for p in path.replace("[", ".[").split(".") if p]
    owner = meta
    for part in parts[:-1]:
        owner = owner[int(part[1:-1])] if part.startswith("[") else owner[part]
    last = parts[-1]
    if last.startswith("["):
        owner[int(last[1:-1])] = value
    else:
        owner[last] = value


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return 0 if value is None else [0]


def test_every_field_of_meta_json_is_sealed(run):
    """Each leaf of meta.json edited on its own (step, every setting that shapes the model, the data
    settings, the optimizer's groups, whatever a later version adds) is refused, naming that field."""
    folder = newest(run)
    original = (folder / ckpt.META).read_text()
    leaves = list(_leaves(json.loads(original)))
    named = {"step", "config.model.temporal_heads", "model_config.quantizer.num_codes"}
    assert len(leaves) > 100 and named <= dict(leaves).keys()
    for path, value in leaves:
        meta = json.loads(original)
        _set(meta, path, _other(value))
        (folder / ckpt.META).write_text(json.dumps(meta))
        with pytest.raises(ckpt.CheckpointError) as raised:
            ckpt.read_meta(folder)
        message = str(raised.value)
        assert str(folder / ckpt.META) in message or str(folder / ckpt.TENSORS) in message, message
        if path == "tensors_sha256":
            assert "corrupt" in message
        elif path not in ("format", "version"):
            assert f"field '{path}'" in message, (path, message)
    for extra in ({"added": 1}, {"config": "x"}):  # added and replaced fields too
        meta = json.loads(original)
        meta.update(extra)
        (folder / ckpt.META).write_text(json.dumps(meta))
        with pytest.raises(ckpt.CheckpointError, match=f"field '{next(iter(extra))}'"):
            ckpt.read_meta(folder)
    (folder / ckpt.META).write_text(original)
    assert ckpt.verify(folder) is None


def test_an_edited_step_is_refused_by_every_reader(run, tmp_path, capsys):
    """(A resume would otherwise retrain steps on top of a later state.)"""
    edit_meta(newest(run), lambda meta: meta.update(step=1))
    every_reader_refuses(run, tmp_path, capsys, "field 'step'")


@pytest.mark.parametrize("field", ["config.model.temporal_heads", "model_config.temporal_heads",
                                   "model_config.quantizer.num_codes", "config.float64"])
def test_an_edited_model_setting_is_refused_by_every_reader(run, tmp_path, capsys, field):
    def edit(meta):
        owner = meta
        *parents, name = field.split(".")
        for parent in parents:
            owner = owner[parent]
        owner[name] = _other(owner[name])
    edit_meta(newest(run), edit)
    every_reader_refuses(run, tmp_path, capsys, f"field '{field}'")


def test_a_renamed_checkpoint_folder_is_refused(run):
    """The folder's name is its step: resume picks the newest by name."""
    later = run / "checkpoints" / "step-0000009"
    newest(run).rename(later)
    (run / "checkpoints" / ckpt.LATEST).write_text("step-0000009\n")
    with pytest.raises(ckpt.CheckpointError, match="field 'step': the folder step-0000009 holds step 2"):
        ckpt.load_checkpoint(run)


# ------------------------------------------------------------------------- A: the tensors
def resave(run: Path, change) -> None:
    """Rewrite the newest checkpoint with `change(tensors)` applied, sealed and hashed anew (as a tool
    that rewrites checkpoints would: the digest is right, the contents are not)."""
    tensors, meta = ckpt.load_checkpoint(newest(run))
    change(tensors)
    shutil.rmtree(newest(run))
    ckpt.save_checkpoint(run, 2, tensors, meta, keep=1)
    assert ckpt.verify(newest(run)) is None


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64, torch.bfloat16])
def test_a_codebook_of_another_dtype_is_refused_not_converted(run, tmp_path, capsys, dtype):
    resave(run, lambda t: t.update({"model/quantizer.codebook": t["model/quantizer.codebook"].to(dtype)}))
    every_reader_refuses(run, tmp_path, capsys, "tensor 'quantizer.codebook': expected dtype torch.float32",
                         f"found {dtype}", file_level=False)
    with pytest.raises(SystemExit):  # resume says why too
        train_main(TINY + ["--out", str(run), "--resume", "--max-steps", "3"])
    assert "refused, not converted" in capsys.readouterr().err


def test_optimizer_state_of_another_dtype_or_shape_is_refused_on_resume(run, capsys):
    tensors, _ = ckpt.load_checkpoint(newest(run))
    moment = next(k for k in tensors if k.startswith("optimizer/") and k.endswith("/exp_avg"))
    step = moment.replace("/exp_avg", "/step")
    for change, expected in ((lambda t: t[moment].half(), "expected dtype torch.float32, found torch.float16"),
                             (lambda t: t[moment].reshape(-1)[:1].clone(), "expected shape"),
                             (lambda t: t[step].long(), "expected dtype floating point")):
        copy = run.with_name(f"run-{len(expected)}")
        shutil.copytree(run, copy)
        key = step if "floating" in expected else moment
        resave(copy, lambda t, change=change, key=key: t.update({key: change(t)}))
        with pytest.raises(SystemExit) as exited:
            train_main(TINY + ["--out", str(copy), "--resume", "--max-steps", "3"])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and expected in err and "tensor 'optimizer/" in err, err


def test_a_tensor_of_another_shape_or_name_is_refused(run, tmp_path, capsys):
    resave(run, lambda t: t.update({"model/quantizer.codebook": torch.cat([t["model/quantizer.codebook"]] * 2, 1)}))
    every_reader_refuses(run, tmp_path, capsys, "tensor 'quantizer.codebook': expected shape", file_level=False)


def test_only_the_buffers_newer_than_old_checkpoints_may_be_absent(run, tmp_path, capsys):
    """A checkpoint written before the quantizer kept its modality order, usage and init flag loads
    with their defaults (and resumes); one without a tensor that was always saved is refused."""
    trained_order = load_pretrained(run).model.quantizer.modality_order.clone()
    old = run.with_name("before-the-buffers")
    shutil.copytree(run, old)
    resave(old, lambda t: [t.pop(f"model/quantizer.{name}") for name in ("modality_order", "last_used")])
    assert torch.equal(load_pretrained(old).model.quantizer.modality_order, trained_order)
    train_main(TINY + ["--out", str(old), "--resume", "--max-steps", "3"])
    resave(run, lambda t: t.pop("model/quantizer.ema_count"))
    every_reader_refuses(run, tmp_path, capsys, "missing ['quantizer.ema_count']", file_level=False)


def test_a_float64_run_loads_in_its_own_precision(tmp_path):
    run = tmp_path / "f64"
    train_main(TINY + ["--max-steps", "1", "--float64", "--out", str(run)])
    assert load_pretrained(run).model.quantizer.codebooks.dtype == torch.float32  # loaded, then in float32
    resave_target = run / "checkpoints" / "step-0000001"
    tensors, meta = ckpt.load_checkpoint(resave_target)
    tensors["model/quantizer.codebook"] = tensors["model/quantizer.codebook"].float()
    ckpt.save_checkpoint(run, 1, tensors, meta, keep=1)
    with pytest.raises(ckpt.CheckpointError, match="expected dtype torch.float64, found torch.float32"):
        load_pretrained(run)


# --------------------------------------------------------------------- A: legacy versions
def test_a_legacy_checkpoint_is_sealed_only_when_asked_and_then_proves_itself(run):
    """A version 2 checkpoint (SHA-256 of the tensors, metadata unsealed) is refused; `seal_legacy`
    seals it after checking its digest; a corrupt one is not sealed."""
    folder = newest(run)
    tensors = load_file(folder / ckpt.TENSORS)
    meta = json.loads((folder / ckpt.META).read_text())
    save_file(tensors, folder / ckpt.TENSORS)  # as version 2 wrote it: no sealed metadata
    meta.update(version=2, tensors_sha256=ckpt.file_digest(folder / ckpt.TENSORS))
    (folder / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="format version 2 seals no metadata"):
        ckpt.load_checkpoint(run)
    broken = run.with_name("broken")
    shutil.copytree(run, broken)
    data = bytearray((broken / "checkpoints" / "step-0000002" / ckpt.TENSORS).read_bytes())
    data[-10] ^= 1
    (broken / "checkpoints" / "step-0000002" / ckpt.TENSORS).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.seal_legacy(broken / "checkpoints" / "step-0000002")
    ckpt.seal_legacy(folder)
    loaded, sealed = ckpt.load_checkpoint(run)
    assert sealed["version"] == ckpt.VERSION and sealed["sealed_from_version"] == 2 and sealed["step"] == 2
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors) and loaded.keys() == tensors.keys()
    assert not list(folder.parent.glob("legacy-*")) and not list(folder.parent.glob(".step-*"))


# ------------------------------------------------------------------- B: only inside the run
def write_secret_file(path: Path) -> Path:
    path.write_text("\n".join(f"{SECRET}:x:{i}:{i}:line {i}" for i in range(5)) + "\n")
    return path


def test_latest_that_escapes_the_run_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)  # a run elsewhere, with a checkpoint that verifies
    pointer = run / "checkpoints" / ckpt.LATEST
    inside = newest(other)
    for target in ("../../other/checkpoints/step-0000002", str(inside), "step-0000002/../step-0000002",
                   "./step-0000002", "step-0000002\nstep-0000001", ""):
        pointer.write_text(target + "\n")
        every_reader_refuses(run, tmp_path, capsys, f"{pointer}: expected a file of one line naming a checkpoint",
                             resume=False)


@pytest.mark.parametrize("link", ["latest-to-file", "latest-to-passwd", "latest-to-other-run", "checkpoints-folder",
                                  "step-folder", "meta.json", "tensors"])
def test_no_link_is_followed_on_the_way(run, tmp_path, capsys, link):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    root = run / "checkpoints"
    if link == "latest-to-file":
        (root / ckpt.LATEST).unlink()
        (root / ckpt.LATEST).symlink_to(write_secret_file(tmp_path / "secret.txt"))
    elif link == "latest-to-passwd":
        (root / ckpt.LATEST).unlink()
        (root / ckpt.LATEST).symlink_to("/etc/passwd")
    elif link == "latest-to-other-run":  # a link to a pointer that would be valid
        (root / ckpt.LATEST).unlink()
        (root / ckpt.LATEST).symlink_to(other / "checkpoints" / ckpt.LATEST)
    elif link == "checkpoints-folder":
        shutil.rmtree(root)
        root.symlink_to(other / "checkpoints")
    elif link == "step-folder":
        shutil.rmtree(newest(run))
        newest(run).symlink_to(newest(other))
    else:
        name = ckpt.META if link == "meta.json" else ckpt.TENSORS
        (newest(run) / name).unlink()
        (newest(run) / name).symlink_to(newest(other) / name)
    every_reader_refuses(run, tmp_path, capsys, "symbolic link", resume=not link.startswith("latest"))
    if link == "latest-to-passwd":  # not a line of it, in no message
        with pytest.raises(ckpt.CheckpointError) as raised:
            ckpt.resolve_checkpoint(run)
        lines = [line for line in Path("/etc/passwd").read_text().splitlines() if line.strip()]
        assert not any(line in str(raised.value) or line.split(":")[0] + ":" in str(raised.value) for line in lines)


def test_a_pointer_that_is_not_one_is_refused_without_its_contents(run, tmp_path, capsys):
    pointer = run / "checkpoints" / ckpt.LATEST
    for make in (lambda: write_secret_file(pointer), lambda: pointer.write_bytes(b"\xff\xfe" + SECRET.encode()),
                 lambda: pointer.write_text("step-0000002" + " " * 1000), lambda: pointer.mkdir(),
                 lambda: os.mkfifo(pointer)):  # a pipe would block a reader that opened it
        if pointer.is_dir() and not pointer.is_symlink():
            pointer.rmdir()
        else:
            pointer.unlink(missing_ok=True)
        make()
        every_reader_refuses(run, tmp_path, capsys, f"{pointer}: expected a file of one line", resume=False)


def test_unparsable_metadata_is_named_not_quoted(run, tmp_path, capsys):
    meta = newest(run) / ckpt.META
    for contents in (f"{{{SECRET}", f"[1, 2, {SECRET}]".encode(), b"\xff" + SECRET.encode(), f'"{SECRET}"',
                     json.dumps({"format": SECRET, "version": 3})):
        meta.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
        every_reader_refuses(run, tmp_path, capsys, str(meta))


def test_resume_reads_no_pointer_and_replaces_a_linked_one_not_its_target(run, tmp_path, capsys):
    """Resume takes the newest `step-*` folder of the run that verifies, never what `latest` names; its
    next checkpoint replaces the link itself, and what the link pointed at stays as it was."""
    target = write_secret_file(tmp_path / "secret.txt")
    before = target.read_bytes()
    pointer = run / "checkpoints" / ckpt.LATEST
    pointer.unlink()
    pointer.symlink_to(target)
    train_main(TINY + ["--out", str(run), "--resume", "--max-steps", "3"])
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err and target.read_bytes() == before
    assert not pointer.is_symlink() and pointer.read_text() == "step-0000003\n"
    assert ckpt.load_checkpoint(run)[1]["step"] == 3
