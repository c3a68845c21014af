"""Settings are declared once (codaar.settings): configs compose, flags and files come from the
declarations, every bad value is refused with its name, and checkpoints written before nested
settings still load, resume and evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codaar.evaluate.features import load_pretrained
from codaar.model import CoDAARModel, ModelConfig
from codaar.quantizer_config import QuantizerConfig
from codaar.run_folder import checkpoint as ckpt
from codaar.settings import RESUME_RULES, SettingsError, declared
from codaar.train.config import TrainConfig, build_parser, config_from_args, saved_configs
from tests.test_train import assert_same_run

LEGACY_RUN = Path(__file__).parent / "fixtures" / "legacy_run_v1"  # written by codaar at a5a5020


# ----------------------------------------------------------------------------- declarations
def test_every_setting_is_declared_once_with_help_and_a_resume_rule():
    settings = declared(TrainConfig)
    assert set(declared(QuantizerConfig)) < set(declared(ModelConfig)) < set(settings)
    for name, decl in settings.items():
        assert decl.meta["help"], name
        assert decl.meta["resume"] in RESUME_RULES, name
    flags = {a.dest for a in build_parser()._actions if a.option_strings} - {"help", "config"}
    assert flags == {name for name, decl in settings.items() if decl.meta["flag"]}
    assert {"num_codes", "codebook_init", "projection_dim", "lr"} <= flags  # every level reaches the CLI
    assert {"audio_dim", "reset_seed"}.isdisjoint(flags)  # read from the data / --seed by the trainer


def test_extract_and_encode_flags_come_from_their_settings():
    import argparse

    from codaar.data.extract import cli as extract_cli
    from codaar.data.extract import vgg19
    from codaar.data.extract.settings import FRAME_STRIDE, ExtractSettings
    from codaar.encode.__main__ import build_parser as encode_parser
    from codaar.encode.export import EncodeSettings

    sub = argparse.ArgumentParser().add_subparsers()
    extract_cli.add_parser(sub)
    extract = sub.choices["extract"]
    for parser, cls, plain in ((extract, ExtractSettings, {"out", "inputs", "restart", "overwrite", "quiet"}),
                               (encode_parser(), EncodeSettings, {"checkpoint", "out", "overwrite", "quiet"})):
        dests = {a.dest for a in parser._actions} - {"help"}
        assert dests == set(declared(cls)) | plain, cls
        assert all(decl.meta["help"] for decl in declared(cls).values())
    assert FRAME_STRIDE == vgg19.STRIDE
    args = extract.parse_args(["out", "in.mp4", "--no-video", "--splits", "0.5,0.25,0.25", "--frame-size", "64"])
    settings = extract_cli.settings_of(args)
    assert (settings.video, settings.splits, settings.frame_size, settings.segments) == (False, (0.5, 0.25, 0.25), 64, 10)
    with pytest.raises(SettingsError, match="setting 'frame_size': expected a multiple of 32"):
        ExtractSettings(frame_size=96 + 16)
    with pytest.raises(SettingsError, match="setting 'window': expected one of first, centre, every"):
        ExtractSettings(window="middle")


def test_configs_compose_and_flat_names_route_to_their_level():
    cfg = TrainConfig(num_codes=16, dim=8, temporal_heads=2, preset="paper", lr=1e-3)
    assert cfg.model.quantizer.num_codes == 16 and cfg.model.dim == 8 and cfg.lr == 1e-3
    assert cfg.data_preset == "paper" and cfg.model.cpc_variant == "paper"  # follow the preset
    nested = TrainConfig.from_dict({"model": {"quantizer": {"num_codes": 16, "dim": 8, "preset": "paper"},
                                              "temporal_heads": 2}, "lr": 1e-3})
    mixed = TrainConfig.from_dict({"model": {"temporal_heads": 2}, "num_codes": 16, "dim": 8, "preset": "paper",
                                   "lr": 1e-3})
    assert cfg == nested == mixed
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # settings that followed a changed one follow it again; given ones stay
    official = cfg.replace(preset="official")
    assert official.data_preset == "default" and official.model.cpc_variant == "official"
    assert official.model.quantizer.commit_self_weight == 0.5 and official.model.num_codes == 16
    assert TrainConfig(data_preset="avvp").replace(preset="paper").data_preset == "avvp"
    # a sub-config given as a mapping starts from this level's defaults for it (the trainer's preset)
    assert TrainConfig(model={"quantizer": {"num_codes": 4}}).model.preset == TrainConfig().model.preset
    with pytest.raises(SettingsError, match="setting 'num_codes': expected one value"):
        TrainConfig.from_dict({"model": {"quantizer": {"num_codes": 16}}, "num_codes": 8})


BAD_VALUES = [  # (flag, value, expected text): range, sign, choices, types, cross-field rules
    ("--clip-norm", "-1", "setting 'clip_norm': expected a finite number > 0, found -1.0"),
    ("--lr", "-0.1", "setting 'lr': expected a finite number > 0, found -0.1"),
    ("--lr", "nan", "setting 'lr': expected a finite number > 0, found nan"),
    ("--lr-gamma", "-0.5", "setting 'lr_gamma': expected a finite number > 0, found -0.5"),
    ("--lr-milestones", "10,-2", "setting 'lr_milestones': expected a comma-separated list, each an integer >= 0"),
    ("--batch-size", "0", "setting 'batch_size': expected an integer >= 1, found 0"),
    ("--epochs", "-3", "setting 'epochs': expected an integer >= 1, found -3"),
    ("--max-steps", "0", "setting 'max_steps': expected an integer >= 1, found 0"),
    ("--checkpoint-every", "0", "setting 'checkpoint_every': expected an integer >= 1, found 0"),
    ("--keep-checkpoints", "0", "setting 'keep_checkpoints': expected an integer >= 1, found 0"),
    ("--seed", "-1", "setting 'seed': expected an integer >= 0 and <= 9223372036854775807, found -1"),
    ("--seed", "99999999999999999999", "setting 'seed': expected an integer >= 0 and <= 9223372036854775807"),
    ("--pretrain-clips", "0", "setting 'pretrain_clips': expected an integer >= 1, found 0"),
    ("--data-workers", "-1", "setting 'data_workers': expected an integer >= 0, found -1"),
    ("--device", "gpu", "setting 'device': expected auto, cpu, cuda or cuda:N, found 'gpu'"),
    ("--dropout", "1", "setting 'dropout': expected a finite number >= 0 and < 1, found 1.0"),
    ("--num-codes", "0", "setting 'num_codes': expected an integer >= 1, found 0"),
    ("--dim", "30", "setting 'temporal_heads': expected a divisor of dim (30), found 4"),
    ("--decay", "1.5", "setting 'decay': expected a finite number >= 0 and < 1, found 1.5"),
    ("--eps", "0", "setting 'eps': expected a finite number > 0, found 0.0"),
    ("--count-floor", "-1", "setting 'count_floor': expected a finite number >= 0, found -1.0"),
    ("--dead-after", "0", "setting 'dead_after': expected an integer >= 1, found 0"),
    ("--modalities", "video,depth", "setting 'modalities': expected names from video, audio, text"),
    ("--modalities", "video,video", "setting 'modalities': expected distinct names"),
    ("--cascade", "text,audio", "setting 'cascade': expected an order of video,audio,text, found 'text,audio'"),
    ("--cpc-prediction-steps", "0", "setting 'cpc_prediction_steps': expected an integer >= 1, found 0"),
]


@pytest.mark.parametrize("flag, value, message", BAD_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_bad_flag_values_are_refused_with_their_name(flag, value, message):
    with pytest.raises(SettingsError) as raised:
        config_from_args([flag, value])
    assert message in str(raised.value)


def test_bad_values_in_a_config_file_and_type_errors(tmp_path):
    for text, message in [('lr = -1.0\n', "setting 'lr': expected a finite number > 0, found -1.0"),
                          ('batch_size = "80"\n', "setting 'batch_size': expected an integer >= 1, found '80'"),
                          ('cpc = 1\n', "setting 'cpc': expected true or false, found 1"),
                          ('modalities = "video"\n', "setting 'modalities': expected a comma-separated list"),
                          ('[model]\nnum_code = 3\n', "setting 'config.model.num_code'"),
                          ('bf16 = true\nfloat64 = true\n', "setting 'bf16': expected false when float64 is set")]:
        path = tmp_path / "run.toml"
        path.write_text(text)
        with pytest.raises(ValueError) as raised:
            config_from_args(["--config", str(path)])
        assert f"--config {path}" in str(raised.value) and message in str(raised.value), str(raised.value)
    for kind, values in [(int, {"num_codes": 2.5}), (float, {"lr": True}), (bool, {"dta": "yes"})]:
        with pytest.raises(SettingsError):
            TrainConfig(**values)
    with pytest.raises(SettingsError):  # the library raises; only the command line exits
        CoDAARModel(num_codes=-4)


def test_the_command_line_refuses_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    no_cuda = [] if torch.cuda.is_available() else [["--device", "cuda"]]  # checked by the trainer, not the flag
    for args in (["--clip-norm", "-1"], ["--lr-gamma", "-2"], ["--bf16", "--float64"], ["--device", "cuda:x"],
                 *no_cuda):
        proc = subprocess.run([sys.executable, "-m", "codaar.train", "--out", str(out), *args],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "setting '" in lines[-1] and not out.exists(), proc.stderr


# --------------------------------------------------------------------- checkpoints of v1
def test_a_version_1_checkpoint_maps_onto_nested_settings():
    meta = json.loads((LEGACY_RUN / "checkpoints" / "step-0000002" / "meta.json").read_text())
    train, model = saved_configs(meta, "meta.json")
    old = meta["model_config"]
    assert model.quantizer.codebook_init == old["quantizer_overrides"]["codebook_init"] == "aligned-kmeans"
    assert model.quantizer.reset_seed == old["quantizer_overrides"]["reset_seed"] == 43
    for name in ("audio_dim", "video_input", "video_dim", "text_dim", "projection_dim", "temporal_heads",
                 "cpc_context_dim"):
        assert getattr(model, name) == old[name], name
    assert (model.dim, model.num_codes, model.modalities) == (old["dim"], old["num_codes"], tuple(old["modalities"]))
    assert train.model.projection_dim == 8 and train.max_steps == 2 and train.lr == meta["config"]["lr"]
    pretrained = load_pretrained(LEGACY_RUN)  # the weights load into the model the settings describe
    assert pretrained.modalities == ("video", "audio", "text") and pretrained.run_settings["batch_size"] == 20


def test_a_version_1_run_resumes_to_what_this_version_trains(tmp_path):
    """Its first 2 steps ran on codaar a5a5020; 2 more here must continue them as this version trains."""
    settings = ["--dim", "8", "--num-codes", "16", "--temporal-ffn-dim", "16", "--text-lstm-dim", "4",
                "--pretrain-clips", "40", "--batch-size", "20", "--codebook-init", "aligned-kmeans",
                "--preset", "official", "--projection-dim", "8", "--video-gate-dim", "4",
                "--video-hidden-channels", "8", "--video-projection-channels", "8", "--temporal-heads", "2",
                "--cpc-context-dim", "8", "--no-progress", "--max-steps", "4"]
    resumed = tmp_path / "legacy"
    shutil.copytree(LEGACY_RUN, resumed)
    from codaar.train import main

    main(settings + ["--out", str(resumed), "--resume"])
    main(settings + ["--out", str(tmp_path / "fresh")])
    # Not bit for bit: the CPU forward has been reordered since (fused commitment terms, one addmm per
    # modality), and Adam turns last-bit gradient differences into updates of up to ~lr (4e-4).
    assert_same_run(tmp_path / "fresh", resumed, tol=2e-3)
    config = json.loads((resumed / "config.json").read_text())
    assert config["train"]["max_steps"] == 4 and config["resumes"] == [{"step": 2, "changed": {"max_steps": [2, 4]}}]
    _, meta = ckpt.load_checkpoint(resumed)
    assert meta["config"]["model"]["quantizer"]["codebook_init"] == "aligned-kmeans"
