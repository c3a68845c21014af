"""Which files an extraction reads: media files found in folders, given directly or listed in
``.txt`` files, and their clip ids (the file name without its extension, unique)."""

from __future__ import annotations

from pathlib import Path

from ..fingerprint import file_fingerprint
from ..text_files import read_text_lines
from .media import MEDIA_EXTENSIONS


def find_media(inputs) -> list[Path]:
    """Media files from folders (searched recursively for known extensions, sorted), files, and
    ``.txt`` lists (one path per line, relative to the list's folder)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [line.strip() for _, line in read_text_lines(item, "media list")]
            files += [item.parent / line for line in lines if line and not line.startswith("#")]
        elif item.exists() or item.is_symlink():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no media files ({', '.join(MEDIA_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return files


def clip_ids_of(files: list[Path]) -> list[str]:
    """A file's clip id is its name without the extension; ids must be unique (captions and labels use them)."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"two input files have the clip id {f.stem!r}: {seen[f.stem]} and {f} "
                             "(a clip id is the file name without its extension; rename one)")
        seen[f.stem] = f
    return [f.stem for f in files]


def input_path(path: Path) -> str:
    """The resolved path: what names an input in the run's digest (its content is journalled per file)."""
    try:
        return str(path.resolve())
    except OSError:
        return str(path)


def input_fingerprint(path: Path) -> dict | None:
    """Size, mtime and sampled content digest of an input (`codaar.data.fingerprint`), journalled with
    its features: a resumed run recomputes a file whose fingerprint changed. None: unreadable (the
    decoder then says why)."""
    try:
        return file_fingerprint(path)
    except OSError:
        return None
