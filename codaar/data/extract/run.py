"""One extraction: media files (+ captions, labels) -> a data set folder in the project's format.

Order of work: find the inputs and check the CSVs against them (cheap errors first), build the
models (which may download published weights), then stream the files through the decode workers
and the models into the work folder (`workdir`), and finally assemble the output folder
atomically. Files that cannot give a clip are skipped and reported; the run fails only when more
than ``max_bad_fraction`` of the files are bad (and stops early once that is certain).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from codaar.runtime.outputs import check_output

from ..container import BACKGROUND, TriModalData
from ..format import atomic_output_dir, load_dataset, write_dataset_files
from ..official_import import fit_segments
from ..text import caption_tokens, make_text_featurizer, prompt_table
from ..text_files import read_csv_rows
from . import annotations as label_files
from . import captions as caption_files
from .inputs import clip_ids_of, find_media, input_fingerprint, input_path
from .logmel import EXAMPLE_FRAMES, NUM_BANDS, SAMPLE_RATE
from .media import DecodeSettings, UnusableMedia, decoded_in_order
from .settings import ExtractSettings

REPORT = "extract_report.json"
UNLABELED = "unlabeled"


class TooManyBadFiles(RuntimeError):
    """More than ``max_bad_fraction`` of the input files could not be used."""


def _csv_digest(path) -> str | None:
    from .weights import sha256_of

    return None if path is None else sha256_of(path)


def _codaar_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codaar")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------ the run
class _Run:
    def __init__(self, inputs, out: Path, settings: ExtractSettings, progress: bool):
        self.s, self.out, self.progress = settings, out, progress
        self.work_root = out.parent / f".{out.name}.extract"
        self.files = find_media(inputs)
        self.ids = clip_ids_of(self.files)
        t = settings.segments

        self.captions = None
        if settings.captions is not None:
            self.captions = caption_files.read_captions(settings.captions)
        self.classes, self.annotations = [UNLABELED], None
        if settings.labels is not None:
            self.classes, self.annotations = label_files.read_labels(settings.labels)
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.prompts = self._prompts()
        reads = {"an input": inputs, "the media file": self.files}
        for name in ("captions", "labels", "prompts", "vggish_weights", "vggish_pca_params", "vgg19_weights",
                     "bert_path", "bert_keep_ids"):
            reads[f"--{name.replace('_', '-')}"] = getattr(settings, name)
        check_output(out, reads)
        check_output(self.work_root, reads, "the work folder of --out")  # --restart deletes it

        self.featurizer = None
        if self.captions is not None or self.annotations is not None:
            self.featurizer = make_text_featurizer(settings.text_featurizer, dim=settings.text_dim, max_tokens=t,
                                                   seed=settings.seed, bert_path=settings.bert_path,
                                                   keep_token_ids_json=settings.bert_keep_ids)

        import torch

        from .features import FeatureModels, ModelSettings

        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models = FeatureModels(ModelSettings(
            vggish_weights=settings.vggish_weights, vggish_pca_params=settings.vggish_pca_params,
            vgg19_weights=settings.vgg19_weights, random_weights=settings.random_weights, seed=settings.seed,
            vggish_postprocess=settings.vggish_postprocess, frame_size=settings.frame_size,
            video_pooling=settings.video_pooling, video=settings.video, device=device))
        self.decode = DecodeSettings(segments=t, window=settings.window, frames_per_second=settings.frames_per_second,
                                     frame_size=settings.frame_size, video=settings.video)

        self.arrays = {"audio": ((t, 128), settings.dtype), "video": ((t,) + self.models.video_shape, settings.dtype)}
        if self.captions is not None:
            self.arrays["text_clips"] = ((t, self.featurizer.dim), "float32")
            self.arrays["text_mask"] = ((t,), "bool")
        if self.annotations is not None:
            self.arrays["labels_segment"] = ((t, len(self.classes) + 1), "float32")

    def _prompts(self) -> list[str]:
        if self.s.prompts is None:
            return list(self.classes)  # the class name is its own prompt
        prompt_of = {row["label"]: row["prompt"] for _, row in read_csv_rows(self.s.prompts, ("label", "prompt"))}
        missing = [c for c in self.classes if c not in prompt_of]
        if missing:
            raise ValueError(f"{self.s.prompts}: no prompt for the classes {missing[:3]}")
        return [prompt_of[c] for c in self.classes]

    def fingerprint(self) -> dict:
        settings = {k: v for k, v in asdict(self.s).items() if k not in ("workers", "max_bad_fraction", "device")}
        return {"files": [input_path(f) for f in self.files], "settings": settings,
                "csv_sha256": {k: _csv_digest(getattr(self.s, k)) for k in ("captions", "labels", "prompts")},
                "weights": self.models.records, "text": self.featurizer.describe() if self.featurizer else None}

    # -------------------------------------------------------------------------------- one file
    def missing_annotation(self, index: int) -> str | None:
        """Why file ``index`` cannot be used before decoding it: no caption or no label row."""
        clip_id = self.ids[index]
        if self.captions is not None and clip_id not in self.captions:
            return f"no caption in {Path(self.s.captions).name}"
        if self.annotations is not None and clip_id not in self.annotations:
            return f"no row in {Path(self.s.labels).name}"
        return None

    def append_rows(self, index: int, windows) -> list[dict]:
        """Append the rows of file ``index``, window by window as they are decoded, to the work folder's
        arrays; returns their journal rows. UnusableMedia from the decoder passes through (the caller
        discards the rows appended so far)."""
        t, clip_id = self.s.segments, self.ids[index]
        rows = []
        captions = (caption_files.clip_captions(self.captions[clip_id], self.s.caption_policy) if self.captions
                    else [None])
        for window in windows:
            blocks = {name: [] for name in self.arrays}
            count = window.log_mel.shape[0]
            audio, fix = fit_segments(self.models.audio(window.log_mel), t)
            video, _ = fit_segments(self.models.video(window.frames, count), t)
            window_id = f"{clip_id}@{window.start}s" if self.s.window == "every" else clip_id
            labels = None
            if self.annotations is not None:
                labels = label_files.window_labels(self.annotations[clip_id], window.start, t, self.class_index)
            for k, caption in enumerate(captions):
                row_id = f"{window_id}#{k}" if self.s.caption_policy == "each" and self.captions else window_id
                row = {"id": row_id, "start": window.start, "segments": count, "fix": fix,
                       "video": window.frames is not None}
                blocks["audio"].append(audio)
                blocks["video"].append(video)
                if caption is not None:
                    tokens, mask = caption_tokens([caption], self.featurizer)
                    blocks["text_clips"].append(tokens[0])
                    blocks["text_mask"].append(mask[0])
                    row["caption"] = caption
                if labels is not None:
                    blocks["labels_segment"].append(labels)
                rows.append(row)
            self.work.append({name: np.stack(b) for name, b in blocks.items()})
        return rows

    def extract(self, restart: bool) -> None:
        from .workdir import WorkFolder

        self.work = WorkFolder(self.work_root, self.fingerprint(), self.arrays, restart)
        self._rewind_changed_inputs()
        done = len(self.work.entries)
        bad = sum(1 for e in self.work.entries if e["skipped"] is not None)
        unannotated = {i: reason for i in range(done, len(self.files)) if (reason := self.missing_annotation(i))}
        jobs = [(i, str(self.files[i]), self.decode) for i in range(done, len(self.files)) if i not in unannotated]
        decoded = decoded_in_order(jobs, self.s.workers, fingerprint=input_fingerprint)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.files), initial=done, unit="file", desc="extract")
        started = time.perf_counter()
        try:
            for index in range(done, len(self.files)):
                entry = {"file": str(self.files[index]), "input": None, "skipped": None, "rows": []}
                try:
                    if index in unannotated:
                        entry["input"] = input_fingerprint(self.files[index])
                        raise UnusableMedia(unannotated[index])
                    windows = next(decoded)[1]
                    # Taken just before the file was decoded: a later change is seen on resume.
                    entry["input"] = windows.fingerprint
                    entry["rows"] = self.append_rows(index, windows)
                except UnusableMedia as exc:
                    self.work.discard_uncommitted()  # the rows of the windows before a corrupt part
                    entry.update(skipped=str(exc), rows=[])
                    bad += 1
                self.work.commit(entry)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(skipped=bad)
                if bad > self.s.max_bad_fraction * len(self.files):  # certain now: stop early
                    self._fail(bad)
        finally:
            decoded.close()  # stops the decode workers
            if bar is not None:
                bar.close()
        self.seconds = time.perf_counter() - started
        self.files_this_run = len(self.files) - done
        if bad > self.s.max_bad_fraction * len(self.files):  # a resumed run that had nothing left to do
            self._fail(bad)

    def _rewind_changed_inputs(self) -> None:
        """Forget the work from the first input whose fingerprint changed since it was extracted: the
        arrays hold the files in input order, so it and every file after it are extracted again."""
        self.recomputed = None
        for index, entry in enumerate(self.work.entries):
            if entry.get("input") != input_fingerprint(self.files[index]):
                self.recomputed = {"file": entry["file"], "files": len(self.work.entries) - index}
                print(f"extract: {entry['file']} changed since it was extracted; extracting it and the "
                      f"{self.recomputed['files'] - 1} file(s) after it again", file=sys.stderr)
                self.work.rewind(index)
                return

    # -------------------------------------------------------------------------------- report
    def report(self) -> dict:
        entries = self.work.entries
        skipped = [{"file": e["file"], "reason": e["skipped"]} for e in entries if e["skipped"] is not None]
        report = {"inputs": len(self.files), "processed": len(entries), "extracted": len(entries) - len(skipped),
                  "clips": self.work.rows, "skipped": skipped,
                  "without_video": [e["file"] for e in entries if e["rows"] and not e["rows"][0]["video"]],
                  "bad_fraction": len(skipped) / len(self.files), "max_bad_fraction": self.s.max_bad_fraction}
        if getattr(self, "recomputed", None):
            report["recomputed"] = self.recomputed
        if getattr(self, "files_this_run", 0):
            report["this_run"] = {"files": self.files_this_run, "seconds": round(self.seconds, 3),
                                  "seconds_per_file": round(self.seconds / self.files_this_run, 4)}
        return report

    def _fail(self, bad: int) -> None:
        report = self.report()
        path = self.work.root / REPORT
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        reasons = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in report["skipped"][:3])
        raise TooManyBadFiles(
            f"{bad} of {len(self.files)} files are unusable, more than --max-bad-fraction {self.s.max_bad_fraction} "
            f"allows ({reasons}{' ...' if bad > 3 else ''}); every skipped file and its reason: {path}. "
            "Rerunning the same command with a higher --max-bad-fraction resumes where this run stopped")

    # -------------------------------------------------------------------------------- assembly
    def info(self) -> dict:
        s = self.s
        fix = {"ok": 0, "padded": 0}
        for entry in self.work.entries:
            for row in entry["rows"]:
                fix[row["fix"]] = fix.get(row["fix"], 0) + 1
        frames = ("the frame nearest the centre of each second" if s.frames_per_second == 1 else
                  f"the mean of the pool5 maps of {s.frames_per_second} frames evenly spread in each second")
        info = {
            "source": "extract",
            "codaar_version": _codaar_version(),
            "random_weights": s.random_weights,
            "models": self.models.describe(),
            "audio": {"sample_rate": SAMPLE_RATE, "channels": "mean of the channels (mono)",
                      "examples": f"one 0.96 s log-mel example ({EXAMPLE_FRAMES} x {NUM_BANDS}) per one-second "
                                  "segment"},
            "video": {"frame_policy": frames if s.video else "none (--no-video: zero features)",
                      "frames_per_second": s.frames_per_second, "frame_size": s.frame_size,
                      "missing_video": "zero features for files without a video stream"},
            "segments": {"per_clip": s.segments, "window": s.window,
                         "padding": "clips shorter than the window repeat their last second"},
            "dtype": s.dtype,
            "files": {k: v for k, v in self.report().items() if k in ("inputs", "extracted")},
            "skipped_files": len(self.report()["skipped"]),
            "segment_fix": fix,
            "clips_without_video": sum(1 for e in self.work.entries for row in e["rows"] if not row["video"]),
        }
        if s.random_weights:
            info["warning"] = "RANDOM WEIGHTS: these features are meaningless; for tests and smoke runs only"
        if self.featurizer is not None:
            info["text_featurizer"] = self.featurizer.describe()
        if self.captions is not None:
            info["captions"] = {"file": Path(s.captions).name, "policy": s.caption_policy}
        if self.annotations is not None:
            info["labels_file"] = Path(s.labels).name
        return info

    def assemble(self, overwrite: bool) -> TriModalData:
        rows = [(entry, row) for entry in self.work.entries for row in entry["rows"]]
        if not rows:
            raise TooManyBadFiles(f"none of the {len(self.files)} files gave a clip; see {self.work.root / REPORT}")
        n = len(rows)
        clip_ids = np.array([row["id"] for _, row in rows])
        splits = {"pretrain": np.arange(n, dtype=np.int64)}
        category = np.zeros(n, np.int64)
        if self.annotations is not None:
            files = list(dict.fromkeys(Path(entry["file"]).stem for entry, _ in rows))
            split_of = label_files.assign_splits(files, self.annotations, self.s.splits, self.s.seed)
            category = np.array([self.class_index[self.annotations[Path(e["file"]).stem].events[0][2]]
                                 for e, _ in rows], dtype=np.int64)
            for name in dict.fromkeys(split_of[f] for f in sorted(files)):
                splits[name] = np.array([i for i, (e, _) in enumerate(rows) if split_of[Path(e["file"]).stem] == name],
                                        dtype=np.int64)
        text_table = None
        if self.annotations is not None and self.captions is None:
            text_table = prompt_table(self.prompts, self.featurizer)  # class prompts, as the authors' data sets
        filenames = {"audio": "audio.npy", "video": "video.npy", "text_clips": "text_clips.npy",
                     "text_mask": "text_mask.npy", "labels_segment": "labels_segment.npy"}
        with atomic_output_dir(self.out, overwrite) as tmp:
            self.work.link_arrays(tmp, filenames)
            arrays = {name: np.load(tmp / filenames[name], mmap_mode="r", allow_pickle=False) for name in self.arrays}
            labels = {"segment": arrays["labels_segment"]} if "labels_segment" in arrays else {}
            data = TriModalData(
                audio=arrays["audio"], video=arrays["video"], text_table=text_table, category=category,
                class_names=list(self.classes), prompts=list(self.prompts), splits=splits, labels=labels,
                label_classes={"segment": self.classes + [BACKGROUND]} if labels else {}, clip_ids=clip_ids,
                info=self.info())
            written = {"audio", "video"} | ({"labels.segment"} if labels else set())
            if self.captions is not None:
                data = replace(data, clip_text=arrays["text_clips"], clip_text_mask=arrays["text_mask"],
                               clip_captions=[row["caption"] for _, row in rows])
                written |= {"text_clips", "text_mask"}
            write_dataset_files(data, tmp, already_written=frozenset(written))
            (tmp / REPORT).write_text(json.dumps(self.report(), indent=2) + "\n", encoding="utf-8")
            del arrays, labels, data
        self.work.remove()
        return load_dataset(self.out, check_finite=False)


def extract(inputs, out, settings: ExtractSettings | None = None, *, overwrite: bool = False, restart: bool = False,
            progress: bool = False) -> TriModalData:
    """Extract features from media files into a data set folder at ``out``; returns it opened.
    Resumes an unfinished run of the same
    inputs and settings; see the package docstring for every policy."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    run = _Run(inputs, out, settings or ExtractSettings(), progress)
    run.extract(restart)
    return run.assemble(overwrite)
