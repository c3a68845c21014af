"""Settings are declared once (codaar.settings): configs compose, flags and files come from the
declarations, every bad value is refused with its name, and checkpoints written before nested
settings still load, resume and evaluate."""

from __future__ import annotations

import argparse
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
from codaar.settings import RESUME_RULES, ConfigFileError, SettingsError, declared, settings_from_args
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


def _programs() -> dict[str, tuple[argparse.ArgumentParser, type, list[str]]]:
    """Every program's command line: (its parser, its settings, the arguments that are not settings)."""
    from codaar import ablate
    from codaar.data.__main__ import COMMANDS
    from codaar.data.__main__ import build_parser as data_parser
    from codaar.encode.__main__ import EncodeCommand
    from codaar.encode.__main__ import build_parser as encode_parser
    from codaar.evaluate.__main__ import BaselinesCommand, EvaluateCommand, build_baselines_parser
    from codaar.evaluate.__main__ import build_parser as evaluate_parser

    data = data_parser()
    sub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices
    import_args = ["--meta", "m.csv", "--audio-dir", "a", "--video-dir", "v", "--prompts", "p.csv"]
    return {"train": (build_parser(), TrainConfig, []),
            "evaluate": (evaluate_parser(), EvaluateCommand, ["run"]),
            "evaluate baselines": (build_baselines_parser(), BaselinesCommand, []),
            "ablate": (ablate.build_parser(), ablate.AblateCommand, []),
            "encode": (encode_parser(), EncodeCommand, ["run", "--out", "codes"]),
            "data synth": (sub["synth"], COMMANDS["synth"], ["out"]),
            "data inspect": (sub["inspect"], COMMANDS["inspect"], ["dir"]),
            "data import-official": (sub["import-official"], COMMANDS["import-official"], ["out", *import_args]),
            "data extract": (sub["extract"], COMMANDS["extract"], ["out", "in.mp4"])}


def test_every_program_takes_its_flags_from_its_settings(capsys):
    with_progress = {"train", "encode", "data synth", "data import-official", "data extract"}
    for name, (parser, cls, _) in _programs().items():
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        deprecated = [a for a in options if a.help.startswith("deprecated: ")]
        flags = {a.dest for a in options if a not in deprecated} - {"config"}
        assert flags == {n for n, decl in declared(cls).items() if decl.meta["flag"]}, name
        assert any(a.option_strings == ["--config"] for a in options), name
        for action in options:
            if action not in deprecated and action.dest != "config":
                assert "(default: " in action.help or action.help.endswith("(required)"), (name, action.dest)
        # one progress flag, the same everywhere; the old --quiet sets it, with a warning
        assert ("progress" in flags) == (name in with_progress), name
        assert [a.option_strings for a in deprecated] == ([["--quiet"]] if name in with_progress - {"train"} else [])
    parser, cls, positional = _programs()["encode"]
    assert settings_from_args(cls, parser.parse_args([*positional, "--quiet"])).progress is False
    assert "python -m codaar.encode: warning: --quiet is deprecated; use --no-progress" in capsys.readouterr().err
    parser, cls, positional = _programs()["data import-official"]
    assert "(required)" in parser.format_help()
    assert settings_from_args(cls, parser.parse_args(positional)).meta == "m.csv"


def test_extract_settings_are_checked_where_declared():
    from codaar.data.extract import vgg19
    from codaar.data.extract.settings import FRAME_STRIDE, ExtractSettings

    parser, cls, positional = _programs()["data extract"]
    args = parser.parse_args([*positional, "--no-video", "--splits", "0.5,0.25,0.25", "--frame-size", "64"])
    settings = settings_from_args(cls, args).extract
    assert (settings.video, settings.splits, settings.frame_size) == (False, (0.5, 0.25, 0.25), 64)
    assert settings.segments == 10
    assert FRAME_STRIDE == vgg19.STRIDE
    with pytest.raises(SettingsError, match="setting 'frame_size': expected a multiple of 32"):
        ExtractSettings(frame_size=96 + 16)
    with pytest.raises(SettingsError, match="setting 'window': expected one of first, centre, every"):
        ExtractSettings(window="middle")


CONFIG_CASES = [  # (program, the file, what it sets, a flag that overrides it)
    ("train", "epochs = 3", {"epochs": 3}, ["--epochs", "5"]),
    ("evaluate", "ave_epochs = 3\ntasks = ['ave']", {"ave_epochs": 3, "tasks": ("ave",)}, ["--ave-epochs", "5"]),
    ("evaluate baselines", "head_epochs = 3\n[synthetic]\npreset = 'hard'", {"head_epochs": 3, "preset": "hard"},
     ["--head-epochs", "5"]),
    ("ablate", "jobs = 3\nseeds = [1, 2]", {"jobs": 3, "seeds": (1, 2)}, ["--jobs", "5"]),
    ("encode", "[encode]\nbatch_size = 3", {"batch_size": 3}, ["--batch-size", "5"]),
    ("data synth", "seed = 3\nprogress = false", {"seed": 3, "progress": False}, ["--seed", "5"]),
    ("data inspect", "finite_check = false", {"finite_check": False}, ["--finite-check"]),
    ("data import-official", "segments = 3", {"segments": 3}, ["--segments", "5"]),
    ("data extract", "[extract]\nsegments = 3", {"segments": 3}, ["--segments", "5"]),
]


@pytest.mark.parametrize("program, text, values, flag", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_files_work_the_same_in_every_program(program, text, values, flag, tmp_path):
    parser, cls, positional = _programs()[program]
    path = tmp_path / "settings.toml"
    path.write_text(text + "\n")
    from_file = settings_from_args(cls, parser.parse_args([*positional, "--config", str(path)])).flat()
    assert {name: from_file[name] for name in values} == values
    overridden = settings_from_args(cls, parser.parse_args([*positional, "--config", str(path), *flag])).flat()
    first = next(iter(values))
    assert overridden[first] != values[first] and overridden[first] == (5 if flag[1:] else True)
    path.write_text(f"{first} = -7\n")  # a bad value is the file's, named with its setting
    with pytest.raises(ConfigFileError, match=f"--config {path}: setting '{first}': expected "):
        settings_from_args(cls, parser.parse_args([*positional, "--config", str(path)]))
    path.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigFileError, match="setting 'no_such_setting': expected a setting of"):
        settings_from_args(cls, parser.parse_args([*positional, "--config", str(path)]))


BAD_SETTINGS = [  # (program, arguments, the one line on stderr)
    ("train", ["--epochs", "x"], "python -m codaar.train: error: argument --epochs: setting 'epochs': expected an "
                                 "integer >= 1, found 'x'"),
    ("evaluate", ["run", "--protocol", "paper"], "python -m codaar.evaluate: error: setting 'protocol': expected "
                                                 "one of clean, official, both, found 'paper'"),
    ("evaluate", ["run", "--tasks", "ave,segmentation"], "setting 'tasks': expected a comma-separated list, each "
                                                         "one of ave, avvp, retrieval, avs, found ('ave', "
                                                         "'segmentation')"),
    ("evaluate baselines", ["--head-lr", "0"], "python -m codaar.evaluate baselines: error: setting 'head_lr': "
                                               "expected a finite number > 0, found 0.0"),
    ("ablate", ["--seeds", "1,a"], "python -m codaar.ablate: error: argument --seeds: setting 'seeds': expected a "
                                   "comma-separated list, each an integer >= 0, found '1,a'"),
    ("ablate", ["--studies", "components,nope"], "setting 'studies': expected a comma-separated list, each one of "
                                                 "components, cascade, unimodal, inits, recipes"),
    ("encode", ["run", "--out", "x", "--batch-size", "0"], "python -m codaar.encode: error: setting 'batch_size': "
                                                           "expected an integer >= 1, found 0"),
    ("encode", ["run"], "python -m codaar.encode: error: setting 'out': expected a string, found no value (it is "
                        "required)"),
    ("data synth", ["synth", "out", "--preset", "nope"], "python -m codaar.data: error: setting 'preset': expected "
                                                         "one of avvp, default, hard, paper, avs, found 'nope'"),
    ("data synth", ["synth", "out", "--num-val", "-1"], "setting 'num_val': expected an integer >= 0, found -1"),
    ("data import-official", ["import-official", "out", "--meta", "m.csv"], "python -m codaar.data: error: setting "
                                                                           "'audio_dir': expected a string, found no "
                                                                           "value (it is required)"),
    ("data import-official", ["import-official", "out", "--segments", "ten"], "python -m codaar.data import-official: "
                                                                              "error: argument --segments: setting "
                                                                              "'segments': expected an integer >= 1"),
    ("data extract", ["extract", "out", "in.mp4", "--window", "middle"], "python -m codaar.data: error: setting "
                                                                         "'window': expected one of first, centre, "
                                                                         "every, found 'middle'"),
]


@pytest.mark.parametrize("program, args, message", BAD_SETTINGS, ids=[f"{p}:{a[-1]}" for p, a, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_naming_it_in_every_program(program, args, message, tmp_path, capsys,
                                                              monkeypatch):
    from codaar import ablate
    from codaar.data.__main__ import main as data_main
    from codaar.encode.__main__ import main as encode_main
    from codaar.evaluate.__main__ import main as evaluate_main
    from codaar.train import main as train_main

    mains = {"train": train_main, "evaluate": evaluate_main, "ablate": ablate.main, "encode": encode_main,
             "data": data_main, "evaluate baselines": lambda argv: evaluate_main(["baselines", *argv])}
    monkeypatch.chdir(tmp_path)
    try:
        status = mains.get(program, mains[program.split()[0]])(args)
    except SystemExit as exited:
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


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
    for values in ({"num_codes": 2.5}, {"lr": True}, {"dta": "yes"}):  # a float for an int, a bool for a float, ...
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
def sealed_legacy_run(tmp_path) -> Path:
    """A copy of the version 1 run, sealed (version 1 proves nothing, so it is refused until sealed)."""
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY_RUN, run)
    with pytest.raises(ckpt.CheckpointError, match="field 'version': format version 1 seals no metadata"):
        ckpt.load_checkpoint(run)
    ckpt.seal_legacy(run / "checkpoints" / "step-0000002")
    return run


def test_a_version_1_checkpoint_maps_onto_nested_settings(tmp_path):
    run = sealed_legacy_run(tmp_path)
    meta = json.loads((run / "checkpoints" / "step-0000002" / "meta.json").read_text())
    assert meta["version"] == 3 and meta["sealed_from_version"] == 1
    train, model = saved_configs(meta, "meta.json")
    old = meta["model_config"]
    assert model.quantizer.codebook_init == old["quantizer_overrides"]["codebook_init"] == "aligned-kmeans"
    assert model.quantizer.reset_seed == old["quantizer_overrides"]["reset_seed"] == 43
    for name in ("audio_dim", "video_input", "video_dim", "text_dim", "projection_dim", "temporal_heads",
                 "cpc_context_dim"):
        assert getattr(model, name) == old[name], name
    assert (model.dim, model.num_codes, model.modalities) == (old["dim"], old["num_codes"], tuple(old["modalities"]))
    assert train.model.projection_dim == 8 and train.max_steps == 2 and train.lr == meta["config"]["lr"]
    pretrained = load_pretrained(run)  # the weights load into the model the settings describe
    assert pretrained.modalities == ("video", "audio", "text") and pretrained.run_settings["batch_size"] == 20


def test_a_version_1_run_resumes_to_what_this_version_trains(tmp_path):
    """Its first 2 steps ran on codaar a5a5020; 2 more here must continue them as this version trains."""
    settings = ["--dim", "8", "--num-codes", "16", "--temporal-ffn-dim", "16", "--text-lstm-dim", "4",
                "--pretrain-clips", "40", "--batch-size", "20", "--codebook-init", "aligned-kmeans",
                "--preset", "official", "--projection-dim", "8", "--video-gate-dim", "4",
                "--video-hidden-channels", "8", "--video-projection-channels", "8", "--temporal-heads", "2",
                "--cpc-context-dim", "8", "--no-progress", "--max-steps", "4"]
    resumed = sealed_legacy_run(tmp_path)
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
