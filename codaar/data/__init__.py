"""codaar.data: the built-in data set, the project's on-disk format, the import of the authors'
layout, the text featurizer, the DataLoader helper and the trainer's batches (`batches`: gathered
ahead with one copy); `fingerprint` (what a run was trained on, what an extraction read) and
`splits` (clips listed twice, train/val/test sharing clips).

Typical use::

    from codaar.data import build_synthetic, load_dataset, make_dataloader
    data = build_synthetic()                 # in memory, no files (the trainer's default)
    data = load_dataset("runs/vggsound40k")  # a converted folder, memory-mapped
    loader = make_dataloader(data, "pretrain", batch_size=80)

Command line: ``python -m codaar.data {synth,inspect,import-official,extract} --help``.
"""

from .container import BACKGROUND, MODALITIES, TriModalData, validate, video_level_class
from .errors import DataFormatError
from .format import FORMAT_NAME, SCHEMA_VERSION, load_dataset, read_manifest, write_dataset
from .labels import labels_from_events
from .official_import import fit_segments, import_official, read_zipped_array
from .safe_pickle import SafeArrayUnpickler, load_array
from .synthetic import PRESETS, SyntheticConfig, build_synthetic, synthetic_config, write_synthetic
from .text import BertTextFeaturizer, HashedTextFeaturizer, caption_tokens, make_text_featurizer, prompt_table


def __getattr__(name):
    # The torch-based loader is imported on first use: the CLI and numpy-only users skip torch's import time.
    if name in ("TriModalDataset", "make_dataloader"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'codaar.data' has no attribute {name!r}")


__all__ = [
    "BACKGROUND", "MODALITIES", "FORMAT_NAME", "SCHEMA_VERSION", "PRESETS",
    "TriModalData", "DataFormatError", "SyntheticConfig", "TriModalDataset",
    "SafeArrayUnpickler", "HashedTextFeaturizer", "BertTextFeaturizer",
    "build_synthetic", "synthetic_config", "write_synthetic", "load_dataset", "write_dataset", "read_manifest",
    "validate", "video_level_class", "labels_from_events", "make_dataloader", "import_official",
    "read_zipped_array", "fit_segments", "load_array", "make_text_featurizer", "prompt_table", "caption_tokens",
]
