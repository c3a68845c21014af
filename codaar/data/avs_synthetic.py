"""The built-in AVSBench-S4-like segmentation set (`python -m codaar.data synth OUT --preset avs`).

Each clip has five frames (one per second) showing 1 + `distractors` objects, each of a different
event class, at known positions, drifting a little from frame to frame; the mask is the object of
the clip's own class (the sounding object). A class is drawn as its own shape in its own colour on a
textured background, so the object of a class is easy to find *when the query names the class*;
without the query, or with the query of a wrong class, the segmenter cannot tell which object sounds.

Audio and text come from the same generator as the other presets (`codaar.data.synthetic`): the
world (class prototypes, the audio map, the standardising constants) of the `default` preset with
the same seed, the event filling all five seconds, drawn from streams of their own (so the clips are
not the pretraining clips); text is the class prompt through the same featurizer. A model pretrained
on `--data-preset default --data-seed S` therefore reads these clips' audio and prompts as it read
its own. Written in the AVSBench-S4 layout (`codaar.data.avsbench`), PNG frames and masks, audio as
VGGish-like features [5, 128] per clip, with the prompts and their features.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codaar.runtime.outputs import check_output

from .avsbench import FRAMES, META_FILE, TEXT_FEATURES, AVSData, load_avsbench
from .format import atomic_output_dir
from .synthetic import _finish_block, _make_world, class_names_and_prompts, synthetic_config
from .text import HashedTextFeaturizer, prompt_table

_PURPOSE_AVS_CLIPS, _PURPOSE_AVS_FRAMES = 10, 11
SHAPES = ("disk", "square", "triangle", "ring", "cross")


@dataclass(frozen=True)
class AVSSyntheticConfig:
    seed: int = 0
    num_train: int = 300
    num_val: int = 50
    num_test: int = 100
    image_size: int = 32  # CPU-sized; the authors' frames are 224
    distractors: int = 2  # objects of other classes beside the sounding one
    min_radius: float = 0.13  # object size, as a share of the frame
    max_radius: float = 0.19
    drift: float = 0.005  # per-second movement (standard deviation), share of the frame
    noise_std: float = 8.0  # pixel noise (of 255)

    def check(self) -> None:
        problems = []
        if min(self.num_train, self.num_val, self.num_test) < 0:
            problems.append("negative clip count")
        if self.image_size < 16:
            problems.append(f"image_size={self.image_size} (need >= 16)")
        if not 0 < self.min_radius <= self.max_radius < 0.5:
            problems.append(f"radius range [{self.min_radius}, {self.max_radius}] (need 0 < min <= max < 0.5)")
        if self.distractors < 0:
            problems.append(f"distractors={self.distractors} (need >= 0)")
        if problems:
            raise ValueError("bad avs synthetic config: " + "; ".join(problems))


def _class_colours(num_classes: int) -> np.ndarray:
    """[C, 3] in 0..255: hues spread around the wheel, two brightness levels alternating."""
    import colorsys

    colours = [colorsys.hsv_to_rgb(c / num_classes, 0.85, 0.95 if c % 2 == 0 else 0.7) for c in range(num_classes)]
    return np.round(np.array(colours) * 255)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Pixels inside a unit-radius shape; dy, dx are offsets from its centre divided by the radius."""
    if shape == "disk":
        return dy**2 + dx**2 <= 1
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85
    if shape == "triangle":
        return (dy <= 0.85) & (np.abs(dx) <= (dy + 1.0) * 0.55)
    if shape == "ring":
        return (dy**2 + dx**2 <= 1) & (dy**2 + dx**2 >= 0.3)
    return ((np.abs(dx) <= 0.33) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.33) & (np.abs(dx) <= 1))


def _place(rng, radii: np.ndarray, drift: float) -> np.ndarray:
    """Centres [objects, 2] (share of the frame) that keep the objects apart and inside over 5 seconds."""
    travel = 2 * (FRAMES - 1) * drift  # two standard deviations of the movement over the clip
    margin = radii + travel
    for _ in range(200):
        centres = margin[:, None] + rng.random((len(radii), 2)) * (1 - 2 * margin[:, None])
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) - (radii[:, None] + radii[None] + 2 * travel)
        if (gaps[~np.eye(len(radii), dtype=bool)] > 0).all():
            return centres
    return centres  # a crowded draw: objects may touch; the mask is still the sounding object's visible part


def render_clip(rng, category: int, num_classes: int, cfg: AVSSyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [5, S, S, 3] and the sounding object's masks uint8 [5, S, S] (0/255)."""
    size = cfg.image_size
    others = rng.permutation(np.delete(np.arange(num_classes), category))[: cfg.distractors]
    classes = np.concatenate([[category], others]).astype(int)
    radii = cfg.min_radius + rng.random(len(classes)) * (cfg.max_radius - cfg.min_radius)
    centres = _place(rng, radii, cfg.drift)
    velocity = cfg.drift * rng.standard_normal((len(classes), 2))
    colours = _class_colours(num_classes)
    coarse = rng.random((4, 4, 3))  # a smooth background texture, greyish
    ys = np.linspace(0, 3, size)
    iy, ix = np.clip(ys.astype(int), 0, 2), np.clip(ys.astype(int), 0, 2)
    fy, fx = (ys - iy)[:, None, None], (ys - ix)[None, :, None]
    texture = (coarse[iy][:, ix] * (1 - fy) * (1 - fx) + coarse[iy + 1][:, ix] * fy * (1 - fx)
               + coarse[iy][:, ix + 1] * (1 - fy) * fx + coarse[iy + 1][:, ix + 1] * fy * fx)
    background = 70 + 60 * texture.mean(-1, keepdims=True) + 25 * (texture - texture.mean(-1, keepdims=True))
    grid = (np.arange(size) + 0.5) / size
    frames = np.empty((FRAMES, size, size, 3), np.uint8)
    masks = np.zeros((FRAMES, size, size), np.uint8)
    for t in range(FRAMES):
        image = background.copy()
        for k in range(len(classes) - 1, -1, -1):  # the sounding object drawn last: never hidden
            cy, cx = centres[k] + t * velocity[k]
            inside = _shape_mask(SHAPES[classes[k] % len(SHAPES)], (grid[:, None] - cy) / radii[k],
                                 (grid[None, :] - cx) / radii[k])
            image[inside] = colours[classes[k]] * (0.9 + 0.2 * rng.random())
            if k == 0:
                masks[t] = inside * 255
            else:
                masks[t][inside] = 0
        image += cfg.noise_std * rng.standard_normal(image.shape)
        frames[t] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return frames, masks


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_avs_synthetic(out, config: AVSSyntheticConfig | None = None, overwrite: bool = False,
                        progress: bool = False) -> AVSData:
    """Write the built-in segmentation set to `out` in the AVSBench-S4 layout; returns it, read back."""
    cfg = config or AVSSyntheticConfig()
    cfg.check()
    check_output(out)
    world_cfg = synthetic_config("default", seed=cfg.seed)
    world = _make_world(world_cfg)
    # The event fills the clip's five seconds; the world (maps, constants) stays the default preset's.
    clip_cfg = dataclasses.replace(world_cfg, segments=FRAMES, min_event_segments=FRAMES, max_event_segments=FRAMES)
    names, prompts = class_names_and_prompts(world_cfg.num_classes, cfg.seed)
    featurizer = HashedTextFeaturizer(dim=world_cfg.text_dim, max_tokens=world_cfg.text_tokens, seed=cfg.seed)
    folder_names = [n.replace(" ", "_") for n in names]
    splits = ["train"] * cfg.num_train + ["val"] * cfg.num_val + ["test"] * cfg.num_test
    with atomic_output_dir(out, overwrite) as tmp:
        rows = []
        blocks = range(-(-len(splits) // 256))
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, unit="block", desc="synth avs")
        for block in blocks:
            clips = range(block * 256, min((block + 1) * 256, len(splits)))
            audio = _finish_block(world, clip_cfg, np.random.default_rng([cfg.seed, _PURPOSE_AVS_CLIPS, block]),
                                  np.zeros(len(clips), bool))
            frame_rng = np.random.default_rng([cfg.seed, _PURPOSE_AVS_FRAMES, block])
            for row, clip in enumerate(clips):
                category, split, name = int(audio["category"][row]), splits[clip], f"avs-{clip:06d}"
                frames, masks = render_clip(frame_rng, category, len(names), cfg)
                where = Path(split) / folder_names[category]
                (tmp / "visual_frames" / where / name).mkdir(parents=True, exist_ok=True)
                (tmp / "gt_masks" / where / name).mkdir(parents=True, exist_ok=True)
                (tmp / "audio_features" / where).mkdir(parents=True, exist_ok=True)
                for k in range(FRAMES):
                    (tmp / "visual_frames" / where / name / f"{name}_{k + 1}.png").write_bytes(_png(frames[k]))
                for k in range(1 if split == "train" else FRAMES):  # train: the first frame's mask only
                    (tmp / "gt_masks" / where / name / f"{name}_{k + 1}.png").write_bytes(_png(masks[k]))
                np.save(tmp / "audio_features" / where / f"{name}.npy", audio["audio"][row].astype(np.float32))
                rows.append((name, folder_names[category], split))
        with open(tmp / META_FILE, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("name", "category", "split"), *rows])
        with open(tmp / "prompts.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("category", "prompt"), *zip(folder_names, prompts)])
        np.save(tmp / TEXT_FEATURES, prompt_table(prompts, featurizer))
        info = {"source": "synthetic", "preset": "avs", "config": dataclasses.asdict(cfg),
                "audio_text_world": {"preset": "default", "seed": cfg.seed}, "text_featurizer": featurizer.describe(),
                "note": "audio and prompts read by a model pretrained on the default preset with the same seed"}
        (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return load_avsbench(out, image_size=cfg.image_size, audio_dim=world_cfg.audio_dim)
