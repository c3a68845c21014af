"""The AVSBench-S4 layout as published (docs/method.md §7.6), read for cross-modal segmentation.

    ROOT/s4_meta_data.csv                          one row per clip: name, category, split (train/val/test)
    ROOT/visual_frames/SPLIT/CATEGORY/NAME/NAME_{1..5}.png     five frames, one second apart
    ROOT/gt_masks/SPLIT/CATEGORY/NAME/NAME_{k}.png             binary masks: train k = 1 only, val/test 1..5
    ROOT/audio_features/SPLIT/CATEGORY/NAME.npy    [5, 128] VGGish per second (codaar's addition), or
    ROOT/audio_log_mel/SPLIT/CATEGORY/NAME.npy|.pkl  [5, (1,) 96, 64] log-mel examples (the release's
                                                   folder), embedded here by the project's VGGish
    ROOT/prompts.csv (or AVSBenchCategories2Prompts.csv)   category,prompt: the text query of a class
    ROOT/text_features.npy                         optional [C, L, Dt] prompt features in prompts.csv order

The meta CSV's columns are found by name (`name` or `video_id`, `category`, `split`); other columns
are ignored. `.pkl` files are read through the allow-list unpickler (numpy arrays only). Every bad
or missing file raises `DataFormatError` naming it, the field, what was expected and what was found.
Frames and masks are resized to `image_size` (bilinear / nearest) and read on demand; a set small
enough (under `PRELOAD_BYTES`) is read once and kept.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataFormatError
from .safe_pickle import load_array

META_FILE = "s4_meta_data.csv"
PROMPT_FILES = ("prompts.csv", "AVSBenchCategories2Prompts.csv")
TEXT_FEATURES = "text_features.npy"
FRAMES = 5
SPLITS = ("train", "val", "test")
PRELOAD_BYTES = 1 << 29
_ID_COLUMNS = ("name", "video_id", "vid")


@dataclass
class AVSData:
    """AVSBench-S4 clips: frames and masks on demand, audio features, class-prompt text features."""

    root: Path
    names: list[str]
    category: np.ndarray  # [N] class index
    split_of: list[str]  # [N]
    class_names: list[str]
    prompts: list[str]
    audio: np.ndarray  # [N, 5, Da] float32
    text_table: np.ndarray  # [C, L, Dt] float32
    image_size: int
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_clips(self) -> int:
        return len(self.names)

    @property
    def splits(self) -> dict[str, np.ndarray]:
        split = np.array(self.split_of)
        return {s: np.flatnonzero(split == s) for s in SPLITS}

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {len(v)}" for s, v in self.splits.items())
        return (f"AVSBench-S4 layout: {self.num_clips} clips ({sizes}), {len(self.class_names)} categories, "
                f"{FRAMES} frames at {self.image_size}x{self.image_size}, audio {list(self.audio.shape[1:])}, "
                f"text {list(self.text_table.shape[1:])}")

    def text(self, clips: np.ndarray) -> np.ndarray:
        """The class prompt features of each clip [n, L, Dt]."""
        return self.text_table[self.category[np.asarray(clips)]]

    def frame_path(self, clip: int, k: int) -> Path:
        return self._clip_dir("visual_frames", clip) / f"{self.names[clip]}_{k}.png"

    def mask_path(self, clip: int, k: int) -> Path:
        return self._clip_dir("gt_masks", clip) / f"{self.names[clip]}_{k}.png"

    def masks_per_clip(self, clip: int) -> int:
        return 1 if self.split_of[clip] == "train" else FRAMES

    def frames(self, clips: np.ndarray) -> np.ndarray:
        """uint8 [n, 5, S, S, 3]."""
        return np.stack([self._read("frames", c) for c in np.asarray(clips).tolist()])

    def masks(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [n, 5, S, S] in {0, 1} and which frames have a mask, bool [n, 5] (train: the first)."""
        clips = np.asarray(clips).tolist()
        masks = np.stack([self._read("masks", c) for c in clips])
        valid = np.zeros((len(clips), FRAMES), bool)
        for row, clip in enumerate(clips):
            valid[row, : self.masks_per_clip(clip)] = True
        return masks, valid

    @property
    def fits_in_memory(self) -> bool:
        """Whether every frame and mask together fit in PRELOAD_BYTES (then each is read once and kept)."""
        return self.num_clips * FRAMES * self.image_size**2 * 7 <= PRELOAD_BYTES

    def _clip_dir(self, kind: str, clip: int) -> Path:
        return self.root / kind / self.split_of[clip] / self.class_names[self.category[clip]] / self.names[clip]

    def _read(self, kind: str, clip: int) -> np.ndarray:
        key = (kind, clip)
        if key in self._cache:
            return self._cache[key]
        size = self.image_size
        if kind == "frames":
            value = np.stack([read_image(self.frame_path(clip, k), size, "RGB") for k in range(1, FRAMES + 1)])
        else:
            value = np.zeros((FRAMES, size, size), np.float32)
            for k in range(1, self.masks_per_clip(clip) + 1):
                value[k - 1] = read_image(self.mask_path(clip, k), size, "L") > 127
        if self.fits_in_memory:
            self._cache[key] = value
        return value


def read_image(path: Path, size: int, mode: str) -> np.ndarray:
    """A PNG/JPEG as uint8 [size, size, 3] (RGB) or [size, size] (L), resized; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR if mode == "RGB" else Image.NEAREST)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataFormatError(path, "image", "a frame or mask image" if mode == "RGB" else "a mask image",
                              "no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataFormatError(path, "image", "a readable PNG or JPEG", f"unreadable ({exc})") from None


def read_meta(root: Path) -> list[tuple[str, str, str]]:
    """(name, category, split) of every clip in ROOT/s4_meta_data.csv."""
    path = root / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(path, "meta", "the AVSBench-S4 meta CSV (name,category,split)", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, "meta", "a UTF-8 CSV", f"unreadable ({exc})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DataFormatError(path, "header", "columns name,category,split", "an empty file")
    header = [c.strip().lower() for c in rows[0]]
    id_column = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    missing = [c for c in ("category", "split") if c not in header] + (["name"] if id_column is None else [])
    if missing:
        raise DataFormatError(path, "header", "columns name (or video_id), category, split", f"{rows[0]} "
                              f"(missing {missing})")
    columns = (id_column, header.index("category"), header.index("split"))
    clips, seen = [], set()
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns):
            raise DataFormatError(path, f"line {line}", f"{len(header)} columns", f"{len(row)}")
        name, category, split = (row[i].strip() for i in columns)
        if split not in SPLITS:
            raise DataFormatError(path, f"line {line}: split", f"one of {list(SPLITS)}", repr(split))
        if not name or not category:
            raise DataFormatError(path, f"line {line}", "a clip name and a category", repr(row))
        if name in seen:
            raise DataFormatError(path, f"line {line}: name", "a clip name used once", f"{name!r} again")
        seen.add(name)
        clips.append((name, category, split))
    if not clips:
        raise DataFormatError(path, "rows", "at least one clip", "none")
    return clips


def read_prompts(root: Path) -> tuple[list[str], list[str], Path]:
    """The categories (in file order: the class index) and their prompts, from ROOT/prompts.csv
    (category,prompt; an optional header)."""
    path = next((root / f for f in PROMPT_FILES if (root / f).is_file()), root / PROMPT_FILES[0])
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise DataFormatError(path, "prompts", f"a CSV category,prompt ({' or '.join(PROMPT_FILES)})",
                              "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, "prompts", "a UTF-8 CSV", f"unreadable ({exc})") from None
    table = {}
    for line, row in enumerate(rows, 1):
        if not row or (line == 1 and [c.strip().lower() for c in row[:2]] in (["category", "prompt"],
                                                                            ["label", "prompt"])):
            continue
        if len(row) < 2 or not row[0].strip():
            raise DataFormatError(path, f"line {line}", "2 columns (category, prompt)", repr(row))
        if row[0].strip() in table:
            raise DataFormatError(path, f"line {line}", "each category once", f"{row[0].strip()!r} again")
        table[row[0].strip()] = row[1].strip()
    if not table:
        raise DataFormatError(path, "rows", "a prompt per category", "none")
    return list(table), list(table.values()), path


def _numeric(array, path: Path, field_name: str, shape_text: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise DataFormatError(path, field_name, f"numbers {shape_text}", f"dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DataFormatError(path, field_name, f"finite values {shape_text}", "NaN or Inf")
    return array


def read_array_file(path: Path, field_name: str, shape_text: str) -> np.ndarray:
    """A .npy (no pickles) or an allow-listed .pkl numpy array."""
    try:
        if path.suffix == ".pkl":
            array = load_array(path.read_bytes(), str(path))
        else:
            array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(path, field_name, f"an array {shape_text}", "no such file") from None
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataFormatError(path, field_name, f"a .npy array {shape_text}", f"unreadable ({exc})") from None
    return _numeric(array, path, field_name, shape_text)


def _clip_audio(root: Path, split: str, category: str, name: str, audio_dim: int, embed_log_mel) -> np.ndarray:
    features = root / "audio_features" / split / category / f"{name}.npy"
    if features.is_file() or not (root / "audio_log_mel").is_dir():
        audio = read_array_file(features, "audio", f"[{FRAMES}, {audio_dim}]")
        if audio.shape != (FRAMES, audio_dim):
            raise DataFormatError(features, "audio", f"shape [{FRAMES}, {audio_dim}]", f"shape {list(audio.shape)}")
        return audio
    folder = root / "audio_log_mel" / split / category
    path = next((folder / f"{name}{s}" for s in (".npy", ".pkl") if (folder / f"{name}{s}").is_file()),
                folder / f"{name}.pkl")
    log_mel = read_array_file(path, "audio_log_mel", f"[{FRAMES}, 96, 64]")
    if log_mel.ndim == 4 and log_mel.shape[1] == 1:
        log_mel = log_mel[:, 0]
    if log_mel.shape != (FRAMES, 96, 64):
        raise DataFormatError(path, "audio_log_mel", f"shape [{FRAMES}, (1,) 96, 64]", f"shape {list(log_mel.shape)}")
    if embed_log_mel is None:
        raise DataFormatError(path, "audio_log_mel", "VGGish weights to embed log-mel examples (--vggish-weights)",
                              "none given")
    return embed_log_mel(log_mel)


def load_avsbench(root, image_size: int = 224, audio_dim: int = 128, text_featurizer=None,
                  embed_log_mel=None) -> AVSData:
    """Read an AVSBench-S4 folder (module docstring). `text_featurizer(prompt) -> [L, Dt]` featurizes the
    prompts when the folder has no text_features.npy; `embed_log_mel([5, 96, 64]) -> [5, audio_dim]`
    embeds log-mel audio (VGGish) when the folder has no audio_features."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "folder", "an AVSBench-S4 folder", "no such folder")
    clips = read_meta(root)
    class_names, prompts, prompt_path = read_prompts(root)
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({c for _, c, _ in clips} - set(index))
    if unknown:
        raise DataFormatError(root / META_FILE, "category", f"categories of {prompt_path.name}",
                              f"{unknown[:5]} without a prompt")
    table_path = root / TEXT_FEATURES
    if table_path.is_file():
        text_table = read_array_file(table_path, "text_features", f"[{len(class_names)}, L, Dt]")
        if text_table.ndim != 3 or text_table.shape[0] != len(class_names):
            raise DataFormatError(table_path, "text_features", f"shape [{len(class_names)} categories, L, Dt]",
                                  f"shape {list(text_table.shape)}")
    elif text_featurizer is not None:
        text_table = np.stack([text_featurizer(p) for p in prompts]).astype(np.float32)
    else:
        raise DataFormatError(table_path, "text_features", f"prompt features of {prompt_path.name}, or a text "
                              "featurizer", "neither")
    audio = np.stack([_clip_audio(root, s, c, n, audio_dim, embed_log_mel) for n, c, s in clips])
    return AVSData(root=root, names=[n for n, _, _ in clips], category=np.array([index[c] for _, c, _ in clips]),
                   split_of=[s for _, _, s in clips], class_names=class_names, prompts=prompts, audio=audio,
                   text_table=text_table, image_size=image_size)


def vggish_embedder(weights_path):
    """`embed_log_mel` through the project's VGGish with the published weights at `weights_path`."""
    import torch

    from .extract.vggish import VGGish
    from .extract.weights import load_into, read_state_dict

    model = VGGish().eval()
    load_into(model, read_state_dict(weights_path), weights_path)

    def embed(log_mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(log_mel, np.float32))).numpy()

    return embed
