"""`SyntheticSettings`: the built-in data set's preset, seed and size overrides, declared once
(codaar.settings) for the programs that build it from flags: `python -m codaar.data synth` and
`python -m codaar.evaluate baselines`."""

from __future__ import annotations

from codaar.settings import setting, settings

from .synthetic import PRESETS, SyntheticConfig, synthetic_config

AVS_PRESET = "avs"  # the segmentation set: its own layout and writer (codaar.data.avs_synthetic)


@settings
class SyntheticSettings:
    preset: str = setting("default", "default: CPU-sized (audio 128, video 64, text 10x128); paper: the paper's "
                          "shapes (video 7x7x512, text 10x768, ~3 GB); avvp: two events per clip, some "
                          "single-modality, per-modality labels; hard: the default's sizes with held-out test "
                          "factors (speakers, backgrounds, caption templates), misaligned and single-modality "
                          "events, misleading backgrounds and per-clip captions; avs: the AVSBench-S4-like "
                          "segmentation set (frames, masks, the default preset's audio and prompts; "
                          "codaar.data.avs_synthetic), for "
                          "python -m codaar.data synth only", choices=(*sorted(PRESETS), AVS_PRESET))
    seed: int = setting(0, "generator seed", at_least=0)
    num_classes: int | None = setting(None, "event classes (none: the preset's, 10)", at_least=2)
    num_pretrain: int | None = setting(None, "unlabeled pretraining clips (none: the preset's)", at_least=0)
    num_train: int | None = setting(None, "labeled downstream training clips (none: the preset's)", at_least=0)
    num_val: int | None = setting(None, "labeled validation clips (none: the preset's)", at_least=0)
    num_test: int | None = setting(None, "labeled test clips (none: the preset's)", at_least=0)
    audio_dim: int | None = setting(None, "audio features per segment (none: the preset's, 128)", at_least=1)
    video_shape: tuple[int, ...] | None = setting(None, "video features per segment: D or H,W,C (none: the "
                                                  "preset's, 64)", at_least=1, metavar="D|H,W,C")
    text_dim: int | None = setting(None, "text embedding width (none: the preset's, 128; paper 768)", at_least=1)
    text_tokens: int | None = setting(None, "tokens per prompt (none: the preset's, 10)", at_least=1)
    noise_std: float | None = setting(None, "observation noise relative to unit-variance features (none: the "
                                      "preset's, 0.1)", at_least=0)

    def config(self) -> SyntheticConfig:
        """The built-in data set's config: the preset's, with the seed and the sizes given here."""
        values = self.flat()
        if values["preset"] == AVS_PRESET:
            raise ValueError(f"preset {AVS_PRESET!r}: the segmentation set is written by python -m codaar.data synth "
                             "only (a tri-modal preset is needed here)")
        return synthetic_config(values.pop("preset"), **values)

    def avs_config(self):
        """The segmentation set's config (preset avs): the seed and the split sizes given here; the other
        sizes are the default preset's, whose audio and prompts it shares."""
        from .avs_synthetic import AVSSyntheticConfig

        values = self.flat()
        fixed = [name for name in ("num_classes", "num_pretrain", "audio_dim", "video_shape", "text_dim",
                                   "text_tokens", "noise_std") if values[name] is not None]
        if fixed:
            raise ValueError(f"preset {AVS_PRESET!r}: --{fixed[0].replace('_', '-')}: expected none (the avs set "
                             "takes the default preset's sizes; only --seed, --num-train, --num-val, --num-test)")
        sizes = {k: values[k] for k in ("num_train", "num_val", "num_test") if values[k] is not None}
        return AVSSyntheticConfig(seed=values["seed"], **sizes)
