"""The built-in data set: tri-modal clips generated from a seed, no files needed.

Generative story (one clip of T segments):

1. Events. A class c and a contiguous run of event segments (the event mask); background
   elsewhere. The AVVP-like preset adds a second event of another class that is, with some
   probability, only audible or only visible.
2. Shared semantics. Each class has a fixed prototype in a small semantic space; an event
   instance adds a clip-level offset, every segment a small jitter, both *shared* by the
   modalities (this is what cross-modal alignment and cross-modal CPC can latch onto).
   Background segments take one of a few background prototypes.
3. Private nuisance. Each modality has its own per-clip style plus a slowly drifting AR(1)
   factor (and, for spatial video, an object position). They carry no class information but a
   fair share of the feature variance, so a model must keep modality-specific structure to
   reconstruct its input.
4. Observation. Each modality maps [semantics; nuisance] through its *own* fixed random
   two-layer network (tanh for audio, ReLU for video, per position for a 7x7 map), then is
   standardised with fixed constants and gets Gaussian noise. The class is recoverable from
   every modality, but through different nonlinear maps and different dimensions, so raw
   features of two modalities are not comparable: transfer needs learned alignment.
5. Text. The class prompt through the offline hashed featurizer, [L, Dt], one row per class;
   or (``text_kind="per-clip"``) each clip's own caption: a paraphrase template filled with the
   event and the scene, featurized to [T, Dt] with a mask for the padding.

The ``hard`` preset turns on the factors that make the built-in data hard for linear methods and
for alignment, all off by default (so the other presets' arrays do not change):

* held-out test factors: "speakers"/"cameras" (a modality's style plus its own gain and offset on
  the observation map's hidden units) and backgrounds drawn from kinds that appear only in the
  test split, and caption templates used only there;
* imperfect alignment: each modality's copy of an event starts up to ``onset_jitter`` segments
  early or late, a second event is only audible or only visible, and the AVE-style ``segment``
  labels mark what is both audible and visible (AVE's definition), per-modality labels the rest;
* misleading backgrounds: background segments carry part of another class's prototype, a
  different class in each modality.

Everything random comes from ``numpy.random.default_rng`` keyed by (seed, purpose, block), and
clips are generated in fixed blocks of `BLOCK_CLIPS`, so the in-memory set and the streamed
on-disk set are identical, and the same seed gives identical bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codaar.runtime.memmaps import reserved_memmap
from codaar.runtime.outputs import check_output

from .container import BACKGROUND, TriModalData
from .format import atomic_output_dir, load_dataset, write_dataset_files
from .text import HashedTextFeaturizer, caption_tokens, prompt_table

GENERATOR_VERSION = 1
BLOCK_CLIPS = 256  # part of the determinism contract: changing it changes the data
_CALIBRATION_CLIPS = 64
_PURPOSE_WORLD, _PURPOSE_CLIPS, _PURPOSE_CALIBRATION, _PURPOSE_WORLD_EXTRA = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticConfig:
    preset: str = "default"
    seed: int = 0
    num_classes: int = 10
    segments: int = 10
    audio_dim: int = 128
    video_shape: tuple[int, ...] = (64,)  # (D,) vector features, or (H, W, C) spatial maps
    text_tokens: int = 10
    text_dim: int = 128
    num_pretrain: int = 3000  # unlabeled pretraining clips
    num_train: int = 1000  # labeled downstream clips
    num_val: int = 200
    num_test: int = 500
    events_per_clip: int = 1  # 2 for the AVVP-like variant
    single_modality_prob: float = 0.0  # chance that the second event is only audible or only visible
    min_event_segments: int = 2
    max_event_segments: int = 10
    semantic_dim: int = 16
    private_dim: int = 8
    hidden_dim: int = 128
    background_kinds: int = 4
    instance_std: float = 0.35  # clip-level offset of an event, shared by the modalities
    jitter_std: float = 0.15  # per-segment semantic jitter, shared by the modalities
    private_std: float = 1.0  # scale of the modality-private nuisance factors
    noise_std: float = 0.1  # observation noise, relative to unit-variance features
    map_gain: float = 1.5  # scale of the first layer of the observation maps (how nonlinear they are)
    # The hard preset's factors (module docstring); the defaults switch them off.
    second_event_prob: float = 1.0  # with events_per_clip=2: chance that a clip has its second event
    onset_jitter: int = 0  # each modality's copy of an event is shifted by up to this many segments
    segment_labels: str = "union"  # "union": audible or visible; "audio-visual": audible and visible
    distractor_strength: float = 0.0  # share of another class's prototype in background segments
    nuisance_kinds: int = 0  # 0: per-clip styles; else this many fixed styles/transforms per modality
    heldout_nuisance_kinds: int = 0  # of those, the last ones appear only in the test split
    nuisance_transform: float = 0.0  # log-gain / offset scale of a kind's transform of the hidden units
    heldout_background_kinds: int = 0  # extra background kinds that appear only in the test split
    text_kind: str = "class-prompt"  # or "per-clip": a caption per clip (text_tokens must equal segments)
    heldout_templates: int = 0  # per-clip text: caption templates used only in the test split
    dtype: str = "float32"

    @property
    def num_clips(self) -> int:
        return self.num_pretrain + self.num_train + self.num_val + self.num_test

    @property
    def per_modality_labels(self) -> bool:
        """Whether audio and video get their own labels (they differ from the shared ones)."""
        return self.events_per_clip == 2 or self.onset_jitter > 0 or self.segment_labels != "union"

    def check(self) -> None:
        problems = []
        if self.num_classes < 2:
            problems.append(f"num_classes={self.num_classes} (need >= 2)")
        if self.events_per_clip not in (1, 2):
            problems.append(f"events_per_clip={self.events_per_clip} (1 or 2)")
        if not 1 <= self.min_event_segments <= self.max_event_segments <= self.segments:
            problems.append(f"event length range [{self.min_event_segments}, {self.max_event_segments}] "
                            f"not inside [1, segments={self.segments}]")
        if len(self.video_shape) not in (1, 3) or min(self.video_shape) < 1:
            problems.append(f"video_shape={self.video_shape} (need (D,) or (H, W, C))")
        if not 0 <= self.single_modality_prob <= 1:
            problems.append(f"single_modality_prob={self.single_modality_prob} (need [0, 1])")
        if min(self.num_pretrain, self.num_train, self.num_val, self.num_test) < 0:
            problems.append("negative clip count")
        if self.dtype not in ("float32", "float64", "float16"):
            problems.append(f"dtype={self.dtype}")
        if not 0 <= self.second_event_prob <= 1:
            problems.append(f"second_event_prob={self.second_event_prob} (need [0, 1])")
        if self.onset_jitter < 0 or self.min_event_segments < 2 * self.onset_jitter + 1:
            problems.append(f"onset_jitter={self.onset_jitter} with min_event_segments={self.min_event_segments} "
                            "(need min_event_segments >= 2 * onset_jitter + 1, so both copies of an event overlap)")
        if self.segment_labels not in ("union", "audio-visual"):
            problems.append(f"segment_labels={self.segment_labels!r} (union or audio-visual)")
        if not 0 <= self.heldout_nuisance_kinds < max(self.nuisance_kinds, 1):
            problems.append(f"heldout_nuisance_kinds={self.heldout_nuisance_kinds} of nuisance_kinds="
                            f"{self.nuisance_kinds} (need fewer held-out kinds than kinds)")
        if self.heldout_background_kinds < 0 or self.background_kinds < 1:
            problems.append(f"background kinds {self.background_kinds} + {self.heldout_background_kinds} held out")
        if self.text_kind not in ("class-prompt", "per-clip"):
            problems.append(f"text_kind={self.text_kind!r} (class-prompt or per-clip)")
        if self.text_kind == "per-clip" and self.text_tokens != self.segments:
            problems.append(f"text_tokens={self.text_tokens} with per-clip text (must equal segments={self.segments})")
        if not 0 <= self.heldout_templates < len(CAPTION_TEMPLATES):
            problems.append(f"heldout_templates={self.heldout_templates} (need [0, {len(CAPTION_TEMPLATES)}))")
        if problems:
            raise ValueError("bad synthetic data config: " + "; ".join(problems))


PRESETS: dict[str, dict] = {
    # CPU-sized: the shapes the acceptance data set uses (docs/findings.md).
    "default": {},
    # The paper's shapes: VGGish audio 128, VGG19 pool5 video 7x7x512, BERT text 10x768.
    # About 1 MB of video per clip, so fewer clips by default (~2.9 GB in all).
    "paper": dict(video_shape=(7, 7, 512), text_dim=768, hidden_dim=256,
                  num_pretrain=2000, num_train=600, num_val=100, num_test=200),
    # Two events per clip, some only audible or only visible; per-modality labels.
    "avvp": dict(events_per_clip=2, single_modality_prob=0.5, min_event_segments=2, max_event_segments=7),
    # The default's sizes with every factor of the module docstring switched on (issue #15).
    "hard": dict(events_per_clip=2, single_modality_prob=1.0, second_event_prob=0.3, onset_jitter=1,
                 min_event_segments=3, max_event_segments=8, segment_labels="audio-visual", distractor_strength=0.5,
                 nuisance_kinds=24, heldout_nuisance_kinds=6, nuisance_transform=0.5, heldout_background_kinds=2,
                 text_kind="per-clip", heldout_templates=2),
}


def synthetic_config(preset: str = "default", **overrides) -> SyntheticConfig:
    """A preset's config with ``overrides`` applied (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "video_shape" in values:
        values["video_shape"] = tuple(int(s) for s in values["video_shape"])
    config = SyntheticConfig(**values)
    config.check()
    return config


# ----------------------------------------------------------------------------------------------
# Class names and prompts (text depends only on the class)

_NAMED_CLASSES = [
    ("dog barking", "A dog barks loudly at a stranger in the yard"),
    ("church bell ringing", "Heavy church bells ring out across the old town"),
    ("engine accelerating", "The sound of a powerful engine revving up quickly"),
    ("baby crying", "A small baby cries and sobs in a crib"),
    ("playing acoustic guitar", "Someone strums gentle chords on an acoustic guitar"),
    ("helicopter flying", "A helicopter hovers overhead with thumping rotor blades"),
    ("cat meowing", "A hungry cat meows softly near the kitchen door"),
    ("train horn", "A passing freight train blows its horn at the crossing"),
    ("people clapping", "A large crowd claps and applauds after the show"),
    ("frying food", "Food sizzles and crackles in a hot frying pan"),
    ("water flowing", "A clear stream of water flows over smooth rocks"),
    ("chainsawing trees", "A loud chainsaw cuts through thick tree trunks"),
]
_NOUNS = ("drum bird truck violin siren hammer goat piano whistle motorcycle rooster fountain "
          "typewriter horse saxophone blender tractor owl cello airplane kettle frog trumpet "
          "lawnmower duck harp printer cow accordion vacuum").split()
_ACTIONS = ("banging chirping honking humming buzzing tapping squeaking rumbling rattling "
            "screeching clicking whirring booming chiming hissing").split()


def class_names_and_prompts(num_classes: int, seed: int) -> tuple[list[str], list[str]]:
    names = [n for n, _ in _NAMED_CLASSES[:num_classes]]
    prompts = [p for _, p in _NAMED_CLASSES[:num_classes]]
    if num_classes > len(_NAMED_CLASSES):
        pairs = [(n, a) for n in _NOUNS for a in _ACTIONS]
        if num_classes - len(_NAMED_CLASSES) > len(pairs):
            raise ValueError(f"at most {len(_NAMED_CLASSES) + len(pairs)} synthetic classes")
        order = np.random.default_rng([seed, _PURPOSE_WORLD, 7]).permutation(len(pairs))
        for k in order[: num_classes - len(_NAMED_CLASSES)]:
            noun, action = pairs[k]
            names.append(f"{noun} {action}")
            prompts.append(f"The sound of a {noun} {action} again and again close by")
    return names, prompts


# Per-clip captions: "{event}" is the class name, "{scene}" the clip's background kind. The last
# `heldout_templates` templates are used only in the test split.
CAPTION_TEMPLATES = (
    "the sound of {event} {scene}",
    "we can hear {event} {scene}",
    "a recording of {event} {scene}",
    "{event} {scene}",
    "{scene} someone films {event}",
    "clear audio of {event} {scene}",
    "there is {event} going on {scene}",
    "listen to {event} {scene}",
)
_SCENES = ("on a busy street", "in a quiet room", "in the rain", "in a windy park", "near the sea",
           "in a crowded hall", "at a train station", "in a forest")


def scene_name(kind: int) -> str:
    return _SCENES[kind] if kind < len(_SCENES) else f"in place {kind}"


def clip_captions(names: list[str], category: np.ndarray, template: np.ndarray, scene: np.ndarray) -> list[str]:
    """Each clip's caption: its template filled with its class name and its background's scene."""
    return [CAPTION_TEMPLATES[t].format(event=names[c], scene=scene_name(b))
            for c, t, b in zip(category.tolist(), template.tolist(), scene.tolist())]


# ----------------------------------------------------------------------------------------------
# The fixed "world": prototypes and per-modality observation maps


@dataclass
class _World:
    class_protos: np.ndarray  # [C, S]
    background_protos: np.ndarray  # [B + held-out B, S]
    maps: dict  # modality -> (W1, b1, W2, b2)
    scale: dict = field(default_factory=dict)  # modality -> (mean, std) standardising constants
    nuisance: dict = field(default_factory=dict)  # modality -> (style [K, P], log-gain [K, H], offset [K, H])


def _make_world(cfg: SyntheticConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, _PURPOSE_WORLD])
    s, p, h = cfg.semantic_dim, cfg.private_dim, cfg.hidden_dim
    class_protos = rng.standard_normal((cfg.num_classes, s))
    background_protos = 0.7 * rng.standard_normal((cfg.background_kinds, s))
    maps = {}
    for modality, out_dim in (("audio", cfg.audio_dim), ("video", cfg.video_shape[-1])):
        # A gain of 1.5 (map_gain) on unit-scale inputs drives tanh/ReLU well into their nonlinear range.
        w1 = cfg.map_gain * rng.standard_normal((s + p, h)) / np.sqrt(s + p)
        b1 = 0.5 * rng.standard_normal(h)
        w2 = rng.standard_normal((h, out_dim)) / np.sqrt(h)
        b2 = 0.1 * rng.standard_normal(out_dim)
        maps[modality] = (w1, b1, w2, b2)
    world = _World(class_protos, background_protos, maps)
    # The hard preset's world comes from its own stream: the draws above stay those of every preset.
    extra = np.random.default_rng([cfg.seed, _PURPOSE_WORLD_EXTRA])
    if cfg.heldout_background_kinds:
        held_out = 0.7 * extra.standard_normal((cfg.heldout_background_kinds, s))
        world.background_protos = np.concatenate([background_protos, held_out])
    for modality in ("audio", "video") if cfg.nuisance_kinds else ():
        k, scale = cfg.nuisance_kinds, cfg.nuisance_transform
        world.nuisance[modality] = (extra.standard_normal((k, p)), scale * extra.standard_normal((k, h)),
                                    scale * extra.standard_normal((k, h)))
    # Standardising constants from a calibration block drawn from its own stream (no test clips).
    calibration = _raw_block(world, cfg, np.random.default_rng([cfg.seed, _PURPOSE_CALIBRATION]),
                             np.zeros(_CALIBRATION_CLIPS, bool))
    for modality in ("audio", "video"):
        x = calibration[modality].reshape(-1, calibration[modality].shape[-1])
        if modality == "video" and len(cfg.video_shape) == 3:
            # Spatial maps only get a global scale, so they stay non-negative like pool5 features.
            world.scale[modality] = (np.zeros(x.shape[-1]), np.full(x.shape[-1], x.std() + 1e-6))
        else:
            world.scale[modality] = (x.mean(axis=0), x.std(axis=0) + 1e-6)
    return world


def _observe(world: _World, modality: str, semantic: np.ndarray, private: np.ndarray, dtype=np.float64,
             kind: np.ndarray | None = None) -> np.ndarray:
    """The modality's map of [semantic; private] [n, T, ..., S + P]; ``kind`` [n] selects each clip's
    nuisance transform (a gain and an offset per hidden unit) when the world has them."""
    w1, b1, w2, b2 = (w.astype(dtype) for w in world.maps[modality])
    hidden = np.concatenate([semantic, private], axis=-1).astype(dtype) @ w1
    if kind is not None:
        _, log_gain, offset = world.nuisance[modality]
        broadcast = (len(kind),) + (1,) * (hidden.ndim - 2) + (hidden.shape[-1],)
        hidden = hidden * np.exp(log_gain[kind]).reshape(broadcast) + offset[kind].reshape(broadcast)
    hidden = hidden + b1
    hidden = np.tanh(hidden) if modality == "audio" else np.maximum(hidden, 0.0)
    return hidden @ w2 + b2


def _event_spans(rng, cfg, n):
    """Onset and length [n] of an event per clip."""
    length = rng.integers(cfg.min_event_segments, cfg.max_event_segments + 1, size=n)
    onset = np.floor(rng.random(n) * (cfg.segments - length + 1)).astype(np.int64)
    return onset, length


def _span_mask(onset, length, segments):
    t = np.arange(segments)
    return (t >= onset[:, None]) & (t < (onset + length)[:, None])  # [n, T]


def _private_factors(rng, cfg, n, extra_shape=(), style=None):
    """Per-clip style (or the given one, [n, P]) plus an AR(1) drift over segments: [n, T, *extra_shape, P]."""
    if style is None:
        style = rng.standard_normal((n, 1) + extra_shape + (cfg.private_dim,))
    else:
        style = style.reshape((n, 1) + (1,) * len(extra_shape) + (cfg.private_dim,))
    drift = np.empty((n, cfg.segments) + extra_shape + (cfg.private_dim,))
    drift[:, 0] = rng.standard_normal((n,) + extra_shape + (cfg.private_dim,))
    for t in range(1, cfg.segments):
        drift[:, t] = 0.8 * drift[:, t - 1] + 0.6 * rng.standard_normal(drift[:, t].shape)
    return cfg.private_std * (0.8 * style + 0.6 * drift)


def _draw_kind(rng, test: np.ndarray, seen: int, held_out: int) -> np.ndarray:
    """A kind per clip: one of the first `seen` outside the test split, one of the `held_out` after
    them inside it (with none held out, any of the `seen` everywhere)."""
    kind = rng.integers(seen, size=len(test))
    if held_out:
        kind = np.where(test, seen + rng.integers(held_out, size=len(test)), kind)
    return kind


def _raw_block(world: _World, cfg: SyntheticConfig, rng, test: np.ndarray) -> dict:
    """Generate ``len(test)`` clips (unstandardised features, labels) from ``rng``; ``test`` [n] marks
    the clips of the test split (the only ones that see held-out kinds)."""
    n = len(test)
    t_len, c = cfg.segments, cfg.num_classes
    category = rng.integers(c, size=n)
    events = [(category, _event_spans(rng, cfg, n), np.ones((n, 2), bool))]
    if cfg.events_per_clip == 2:
        second = (category + 1 + rng.integers(c - 1, size=n)) % c
        # presence[:, 0] = audible, presence[:, 1] = visible; never neither.
        single = rng.random(n) < cfg.single_modality_prob
        audible_only = rng.random(n) < 0.5
        presence = np.stack([~single | audible_only, ~single | ~audible_only], axis=1)
        events.append((second, _event_spans(rng, cfg, n), presence))
    instance = [cfg.instance_std * rng.standard_normal((n, cfg.semantic_dim)) for _ in events]
    background_kind = _draw_kind(rng, test, cfg.background_kinds, cfg.heldout_background_kinds)
    background = world.background_protos[background_kind]
    background = background + cfg.instance_std * rng.standard_normal((n, cfg.semantic_dim))
    jitter = cfg.jitter_std * rng.standard_normal((n, t_len, cfg.semantic_dim))

    # The hard preset's factors: nothing is drawn for those switched off, so the other presets keep their data.
    if cfg.events_per_clip == 2 and cfg.second_event_prob < 1:
        cls, span, presence = events[1]
        events[1] = (cls, span, presence & (rng.random(n) < cfg.second_event_prob)[:, None])
    shifts = [rng.integers(-cfg.onset_jitter, cfg.onset_jitter + 1, size=(n, 2)) if cfg.onset_jitter
              else np.zeros((n, 2), np.int64) for _ in events]
    out = {"category": category.astype(np.int64), "background_kind": background_kind}  # (and what tests check)
    backgrounds = [background, background]  # per modality
    if cfg.distractor_strength:
        out["distractor"] = [(category + 1 + rng.integers(c - 1, size=n)) % c for _ in range(2)]
        backgrounds = [background + cfg.distractor_strength * world.class_protos[d] for d in out["distractor"]]
    kinds = [None, None]
    if cfg.nuisance_kinds:
        seen = cfg.nuisance_kinds - cfg.heldout_nuisance_kinds
        kinds = out["nuisance_kind"] = [_draw_kind(rng, test, seen, cfg.heldout_nuisance_kinds) for _ in range(2)]
    if cfg.text_kind == "per-clip":
        out["template"] = _draw_kind(rng, test, len(CAPTION_TEMPLATES) - cfg.heldout_templates, cfg.heldout_templates)
    labels = {}
    for m_index, modality in enumerate(("audio", "video")):
        total = np.zeros((n, t_len, cfg.semantic_dim))
        count = np.zeros((n, t_len, 1))
        label = np.zeros((n, t_len, c + 1), np.float32)
        for (cls, (onset, length), presence), offset, shift in zip(events, instance, shifts):
            active = _span_mask(onset + shift[:, m_index], length, t_len) & presence[:, m_index : m_index + 1]
            total += active[..., None] * (world.class_protos[cls] + offset)[:, None, :]
            count += active[..., None]
            rows, times = np.nonzero(active)
            label[rows, times, cls[rows]] = 1.0
        label[..., c] = (count[..., 0] == 0).astype(np.float32)
        semantic = np.where(count > 0, total / np.maximum(count, 1), backgrounds[m_index][:, None, :]) + jitter
        labels[modality] = label

        kind = kinds[m_index]
        style = None if kind is None else world.nuisance[modality][0][kind]
        if modality == "video" and len(cfg.video_shape) == 3:
            out[modality] = _observe_spatial(world, cfg, rng, semantic, backgrounds[m_index], kind, style)
        else:
            out[modality] = _observe(world, modality, semantic, _private_factors(rng, cfg, n, style=style), kind=kind)
    if cfg.segment_labels == "union":
        segment = np.maximum(labels["audio"], labels["video"])
        segment[..., c] = np.minimum(labels["audio"][..., c], labels["video"][..., c])
    else:  # AVE's audio-visual event: audible and visible at once
        segment = np.minimum(labels["audio"], labels["video"])
        segment[..., c] = (segment[..., :c].max(axis=-1) == 0).astype(np.float32)
    out["labels"] = {"segment": segment}
    if cfg.per_modality_labels:
        out["labels"].update(labels)
    return out


def _observe_spatial(world, cfg, rng, semantic, background, kind=None, style=None):
    """VGG-pool5-like maps [n, T, H, W, C]: the event sits in a Gaussian blob whose position is a
    private (video-only) nuisance drifting over time; the rest of the map shows the background."""
    n, t_len = semantic.shape[:2]
    height, width, _ = cfg.video_shape
    centre = rng.random((n, 1, 2)) * [height - 1, width - 1]
    centre = centre + np.cumsum(0.3 * rng.standard_normal((n, t_len, 2)), axis=1)
    ys, xs = np.arange(height), np.arange(width)
    distance2 = (ys[None, None, :, None] - centre[..., 0, None, None]) ** 2 + (
        xs[None, None, None, :] - centre[..., 1, None, None]) ** 2
    blob = np.exp(-distance2 / (2 * 1.5**2))[..., None]  # [n, T, H, W, 1]
    per_position = blob * semantic[:, :, None, None, :] + (1 - blob) * background[:, None, None, None, :]
    private = _private_factors(rng, cfg, n, style=style)[:, :, None, None, :] + 0.3 * rng.standard_normal(
        (n, t_len, height, width, cfg.private_dim))
    # float32 here: the spatial map is ~50x bigger than everything else in the block.
    video = _observe(world, "video", per_position, private, np.float32, kind)
    return np.maximum(video, 0.0)  # pool5 maps are post-ReLU


def _finish_block(world, cfg, rng, test) -> dict:
    block = _raw_block(world, cfg, rng, test)
    for modality in ("audio", "video"):
        mean, std = world.scale[modality]
        x = (block[modality] - mean.astype(block[modality].dtype)) / std.astype(block[modality].dtype)
        x += cfg.noise_std * rng.standard_normal(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64)
        if modality == "video" and len(cfg.video_shape) == 3:
            np.maximum(x, 0.0, out=x)
        block[modality] = x.astype(cfg.dtype, copy=False)
    return block


def _iter_blocks(cfg: SyntheticConfig, world: _World):
    test_start = cfg.num_clips - cfg.num_test  # the test split comes last
    for index, start in enumerate(range(0, cfg.num_clips, BLOCK_CLIPS)):
        test = np.arange(start, min(start + BLOCK_CLIPS, cfg.num_clips)) >= test_start
        yield start, _finish_block(world, cfg, np.random.default_rng([cfg.seed, _PURPOSE_CLIPS, index]), test)


def _generate(cfg: SyntheticConfig, audio: np.ndarray, video: np.ndarray, progress: bool = False) -> TriModalData:
    """Fill ``audio`` and ``video`` (arrays or memory maps) block by block; the rest is built in memory."""
    world = _make_world(cfg)
    n, t_len = cfg.num_clips, cfg.segments
    names, prompts = class_names_and_prompts(cfg.num_classes, cfg.seed)
    featurizer = HashedTextFeaturizer(dim=cfg.text_dim, max_tokens=cfg.text_tokens, seed=cfg.seed)
    bounds = np.cumsum([0, cfg.num_pretrain, cfg.num_train, cfg.num_val, cfg.num_test])
    splits = {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
              for i, name in enumerate(("pretrain", "train", "val", "test"))}
    config_dict = dataclasses.asdict(cfg)
    config_dict["video_shape"] = list(cfg.video_shape)
    info = {"source": "synthetic", "generator_version": GENERATOR_VERSION, "preset": cfg.preset, "seed": cfg.seed,
            "config": config_dict, "text_featurizer": featurizer.describe(),
            "note": "labels exist for every clip; pretraining must only use the pretrain split, without labels"}
    label_names = ["segment"] + (["audio", "video"] if cfg.per_modality_labels else [])
    label_classes = {name: names + [BACKGROUND] for name in label_names}
    labels = {name: np.empty((n, t_len, cfg.num_classes + 1), np.float32) for name in label_classes}
    per_clip = {key: np.empty(n, np.int64) for key in ("category", "background_kind", "template")}

    blocks = _iter_blocks(cfg, world)
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, total=-(-n // BLOCK_CLIPS), unit="block", desc="synth")
    for start, block in blocks:
        stop = start + len(block["category"])
        audio[start:stop], video[start:stop] = block["audio"], block["video"]
        for key, values in per_clip.items():
            if key in block:
                values[start:stop] = block[key]
        for name in labels:
            labels[name][start:stop] = block["labels"][name]

    text = {"text_table": prompt_table(prompts, featurizer).astype(cfg.dtype)}
    if cfg.text_kind == "per-clip":
        captions = clip_captions(names, per_clip["category"], per_clip["template"], per_clip["background_kind"])
        tokens, mask = caption_tokens(captions, featurizer)
        text = {"text_table": None, "clip_text": tokens.astype(cfg.dtype), "clip_text_mask": mask,
                "clip_captions": captions}
    return TriModalData(audio=audio, video=video, category=per_clip["category"], class_names=names, prompts=prompts,
                        splits=splits, labels=labels, label_classes=label_classes,
                        clip_ids=np.array([f"synth-{i:07d}" for i in range(n)]), info=info, **text)


def _resolve_config(config: SyntheticConfig | None, overrides: dict) -> SyntheticConfig:
    """The preset's config (or the given one) with the overrides applied, checked."""
    if config is None:
        config = synthetic_config(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    config.check()
    return config


def build_synthetic(config: SyntheticConfig | None = None, **overrides) -> TriModalData:
    """The built-in data set in memory. ``build_synthetic()`` is the trainer's default;
    ``build_synthetic(preset="avvp", seed=3)`` or ``build_synthetic(cfg)`` select others.
    (The paper preset is ~3 GB; prefer `write_synthetic` + `load_dataset` for it.)"""
    config = _resolve_config(config, overrides)
    n, t_len = config.num_clips, config.segments
    audio = np.empty((n, t_len, config.audio_dim), config.dtype)
    video = np.empty((n, t_len) + tuple(config.video_shape), config.dtype)
    return _generate(config, audio, video)


def write_synthetic(out, config: SyntheticConfig | None = None, overwrite: bool = False, progress: bool = False,
                    **overrides) -> TriModalData:
    """Write the built-in data set to ``out`` in the project's format, streaming block by block
    into memory-mapped files (so the paper preset never needs its 3 GB in RAM). Returns the
    written data set opened lazily."""
    config = _resolve_config(config, overrides)
    n, t_len = config.num_clips, config.segments
    check_output(out)  # reads no file; refused only where it cannot be written
    with atomic_output_dir(out, overwrite) as tmp:
        audio = reserved_memmap(tmp / "audio.npy", config.dtype, (n, t_len, config.audio_dim))
        video = reserved_memmap(tmp / "video.npy", config.dtype, (n, t_len) + tuple(config.video_shape))
        data = _generate(config, audio, video, progress)
        audio.flush()
        video.flush()
        write_dataset_files(data, tmp, already_written=frozenset({"audio", "video"}))
        del audio, video, data
    return load_dataset(Path(out), check_finite=False)
