"""`evaluate(checkpoint, ...)`: the downstream protocols of one pretrained checkpoint, as tables.

Encoders and codebooks are frozen; light heads train on one modality's quantized codes and are scored
zero-shot on the others (docs/method.md §7); see `protocols` for the tasks and the `clean` / `official`
variants. Cross-dataset transfer maps the test data's classes onto the training data's
(`--class-map`). The command line is `python -m codaar.evaluate` (`__main__`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from codaar.data import DataFormatError, TriModalData, build_synthetic, load_dataset, synthetic_config
from codaar.data import splits as split_check
from codaar.data.text_files import read_csv_records
from codaar.evaluate import tables
from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.features import check_compatible, load_eval_data, load_pretrained
from codaar.evaluate.protocols import (
    AVE_DEFAULTS,
    AVVP_DEFAULTS,
    RETRIEVAL_DOC,
    Task,
    run_ave,
    run_avvp,
    run_retrieval,
    with_settings,
)
from codaar.pretrained import Pretrained, PretrainedDataError, data_provenance, provenance_note, read_paths
from codaar.runtime.outputs import check_output
from codaar.runtime.publish import staged_files

TASKS = ("ave", "avvp", "retrieval")  # the default; "avs" runs when asked (it needs --avs-data)
ALL_TASKS = (*TASKS, "avs")


# ------------------------------------------------------------------------------ class mapping
def load_class_map(path: str | Path) -> dict[str, str]:
    """A JSON object {class in A: class in B} or a CSV of two columns (A, B; an optional header
    'source,target')."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise EvaluationError(f"--class-map {path}: unreadable ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EvaluationError(f"--class-map {path}: invalid JSON ({exc})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise EvaluationError(f"--class-map {path}: expected a JSON object of class name -> class name, "
                                  f"found {type(mapping).__name__}")
        return dict(mapping)
    try:
        records = read_csv_records(path, delimiter=",")
    except DataFormatError as exc:
        raise EvaluationError(f"--class-map {exc}") from None
    mapping = {}
    for index, (line, row) in enumerate(records):
        if not any(c.strip() for c in row) or (index == 0 and [c.strip().lower() for c in row] == ["source", "target"]):
            continue
        if len(row) != 2:
            raise EvaluationError(f"--class-map {path}: line {line}: expected 2 columns (class in A, class in B), "
                                  f"found {len(row)}")
        mapping[row[0].strip()] = row[1].strip()
    return mapping


def label_mapping(a: TriModalData, b: TriModalData, mapping: dict[str, str] | None, source: str = "--class-map"):
    """[C_B + 1, C_A + 1] matrix turning B's labels into A's columns, and the B clips to keep (all their
    foreground events map to an A class)."""
    if mapping is None:
        if list(a.class_names) != list(b.class_names):
            if set(a.class_names) != set(b.class_names):
                raise EvaluationError("cross-dataset transfer: the class names of the two data sets differ "
                                      f"(training data: {len(a.class_names)} classes, test data: "
                                      f"{len(b.class_names)}); give --class-map FILE (JSON or CSV: class in training "
                                      "data -> class in test data)")
        mapping = {name: name for name in a.class_names}
    a_index = {n: i for i, n in enumerate(a.class_names)}
    b_index = {n: i for i, n in enumerate(b.class_names)}
    matrix = np.zeros((b.num_classes + 1, a.num_classes + 1), np.float32)
    matrix[-1, -1] = 1.0  # background
    for name_a, name_b in mapping.items():
        if name_a not in a_index:
            raise EvaluationError(f"{source}: class {name_a!r}: expected a class of the training data, found none "
                                  f"(it has {a.class_names[:5]}...)")
        if name_b not in b_index:
            raise EvaluationError(f"{source}: class {name_b!r}: expected a class of the test data, found none "
                                  f"(it has {b.class_names[:5]}...)")
        matrix[b_index[name_b], a_index[name_a]] = 1.0
    unmapped = matrix[:-1].sum(axis=1) == 0  # B classes without an A counterpart
    keep = np.ones(b.num_clips, bool)
    for labels in b.labels.values():
        present = np.asarray(labels)[..., :-1].max(axis=1) > 0  # [N, C_B]
        keep &= ~(present & unmapped[None, :]).any(axis=1)
    if not keep.any():
        raise EvaluationError(f"{source}: no clip of the test data has only mapped classes")
    return matrix, keep


def load_other_data(pretrained: Pretrained, folder: str | None, preset: str | None, seed: int | None) -> TriModalData:
    try:
        if folder is not None:
            data = load_dataset(folder)
        else:
            data = build_synthetic(synthetic_config(preset, seed=seed if seed is not None else 0))
    except (DataFormatError, OSError, ValueError) as exc:
        raise EvaluationError(f"--transfer-data: {exc}") from None
    check_compatible(pretrained, data, name="transfer data")
    return data


# ------------------------------------------------------------------------------------ evaluate
def evaluate(checkpoint, data: str | None = None, data_preset: str | None = None, data_seed: int | None = None,
             protocols=("clean",), tasks=TASKS, head_input: str = "row", ave: dict | None = None,
             avvp: dict | None = None, transfer_data: str | None = None, transfer_preset: str | None = None,
             transfer_seed: int | None = None, class_map: str | None = None, directions=None,
             out: str | Path | None = None, plots: bool = True, name: str | None = None, log=print,
             eval_data: TriModalData | None = None, allow_split_problems: bool = False, avs_data: str | None = None,
             avs: dict | None = None, avs_image_size: int | None = None, vggish_weights: str | None = None) -> dict:
    """Run the protocols on one checkpoint; write tables (and plots) to `out` when given.

    Returns {"checkpoint", "modalities", "<protocol>": {"ave": {src: {tgt: {...}}, "_info": ...},
    "avvp": ..., "retrieval": ...}, "data": the data's fingerprint and how it differs from the
    pretraining data (`codaar.pretrained.data_provenance`; the tables say so when it does), ...}.
    `ave` / `avvp`: HeadSettings overrides (lr, batch_size, epochs).
    `eval_data`: a data set already loaded (several checkpoints of one run) instead of data/data_preset.
    Splits that share clips or list one twice are refused unless `allow_split_problems`.
    `avs_data`: the AVSBench-S4 folder of the "avs" task; `avs`: its AVSSettings overrides; `vggish_weights`:
    VGGish for log-mel audio there."""
    pretrained = load_pretrained(checkpoint)
    if eval_data is not None:
        check_compatible(pretrained, eval_data)
    data_a = eval_data if eval_data is not None else load_eval_data(pretrained, data, data_preset, data_seed)
    data_b, label_map, keep = data_a, None, None
    if transfer_data is not None or transfer_preset is not None:
        data_b = load_other_data(pretrained, transfer_data, transfer_preset, transfer_seed)
        label_map, keep = label_mapping(data_a, data_b, load_class_map(class_map) if class_map else None)
    elif class_map is not None:
        raise EvaluationError("--class-map needs --transfer-data or --transfer-preset (the data set to test on)")
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise EvaluationError(f"--tasks: expected names from {ALL_TASKS}, found {unknown}")
    if "avs" in tasks and avs_data is None:
        raise EvaluationError("--tasks avs: expected --avs-data DIR (an AVSBench-S4 folder; python -m codaar.data "
                              "synth DIR --preset avs writes the built-in one), found none")
    for checked in ([data_a] if data_b is data_a else [data_a, data_b]) if not allow_split_problems else ():
        if problem := split_check.refusal(checked, "evaluation"):
            raise EvaluationError(problem)
    if out is not None:
        check_output(out, {**read_paths(pretrained, data_a, data_b), "--class-map": class_map,
                           "--avs-data": avs_data if "avs" in tasks else None,
                           "--vggish-weights": vggish_weights if "avs" in tasks else None,
                           "--backbone-weights": (avs or {}).get("backbone_weights") if "avs" in tasks else None})
    mods = pretrained.modalities
    pairs = directions or tables.directions(mods)
    ave_settings = with_settings(AVE_DEFAULTS, **(ave or {}))
    avvp_settings = with_settings(AVVP_DEFAULTS, **(avvp or {}))
    result = {"checkpoint": str(pretrained.path), "name": name or Path(pretrained.path).parent.parent.name,
              "modalities": list(mods), "checkpoint_epoch": pretrained.epoch, "cross_dataset": data_b is not data_a,
              "ave_settings": vars(ave_settings), "avvp_settings": vars(avvp_settings),
              "data": _provenance(pretrained, data_a)}
    sources = sorted({s for s, _ in pairs}, key=mods.index)
    for protocol in protocols:  # refused before any head trains, not after the first protocol's tables
        planned = Task(pretrained, data_a, data_b, protocol=protocol, head_input=head_input)
        for task_name, settings in (("ave", ave_settings), ("avvp", avvp_settings)):
            if task_name in tasks:
                planned.planned_epochs(settings, task_name.upper())
    for protocol in protocols:
        task = Task(pretrained, data_a, data_b, protocol=protocol, head_input=head_input, label_map=label_map,
                    keep_b=keep)
        res = result[protocol] = {}
        for task_name, runner, settings in (("ave", run_ave, ave_settings), ("avvp", run_avvp, avvp_settings)):
            if task_name not in tasks:
                continue
            res[task_name] = {"_info": {}}
            for s in sources:
                started = time.perf_counter()
                r = runner(task, s, [t for ss, t in pairs if ss == s], settings)
                res[task_name]["_info"][s] = r.pop("_info")
                res[task_name][s] = r
                log(f"[{protocol}] {task_name} {s}: " + ", ".join(
                    f"->{t} {v['precision']:.1f}" for t, v in r.items()) + f" ({time.perf_counter() - started:.1f} s)")
        if "retrieval" in tasks and protocol == protocols[0]:  # no head: the same under both protocols
            result["retrieval"] = run_retrieval(task, pairs)
    avs_pictures = None
    if "avs" in tasks:  # its own protocol (the clean one's rules), once
        from codaar.evaluate.segmentation.run import run_avs_folder

        result["avs"], avs_pictures = run_avs_folder(pretrained, data_a, avs_data, avs, avs_image_size,
                                                     vggish_weights, log)
    if out is not None:
        with staged_files(out) as staging:  # out gets every file or none, even when interrupted
            write_report(result, staging, protocols)
            if plots:
                from codaar.evaluate import plots as plotting

                plotting.plot_all(pretrained, data_a, staging)
                if avs_pictures is not None:
                    from codaar.evaluate.segmentation.plots import plot_masks

                    plot_masks(avs_pictures, staging / "avs_masks.png")
    return result


def training_notes(protocol_result: dict) -> list[str]:
    """How many epochs each head trained, and a WARNING where that is fewer than the epochs given
    (the official loop starts at the checkpoint's epoch + 1): the table says it, not only the JSON."""
    counts, warnings = [], []
    for task_name in ("ave", "avvp"):
        infos = protocol_result.get(task_name, {}).get("_info", {})
        if not infos:
            continue
        trained = sorted({info["head_epochs"] for info in infos.values()})
        counts.append(f"{task_name.upper()} {', '.join(map(str, trained))} epochs")
        warnings += list(dict.fromkeys(f"WARNING: {info['head_epochs_note']}" for info in infos.values()
                                       if "head_epochs_note" in info))
    return ([f"heads trained: {'; '.join(counts)}"] if counts else []) + warnings


def _provenance(pretrained, data: TriModalData) -> dict:
    try:
        return data_provenance(pretrained, data)
    except PretrainedDataError as exc:
        raise EvaluationError(str(exc)) from None


def write_report(result: dict, out: Path, protocols) -> str:
    """tables.md / tables.json (Tables 1-3 layout) and results.json."""
    out.mkdir(parents=True, exist_ok=True)
    mods = result["modalities"]
    table_no = "1" if "text" not in mods else "2"
    data_notes = [note] if "data" in result and (note := provenance_note(result["data"])) else []
    parts = []
    for protocol in protocols:
        if not any(task in result[protocol] for task in ("ave", "avvp")):
            continue
        header, values = tables.transfer_row(result[protocol], mods)
        notes = ["'X->Y': head trained on X, scored on Y. AVE: the authors' batch-wise macro precision (%); "
                 "AVVP: precision at 0.5 over all segment x class cells (%) (the paper's 'segment-level accuracy').",
                 f"protocol {protocol}: " + ("encoder in train mode for head training, AVE scored on the training "
                                             "split, AVVP best epoch chosen on the test modality (as coded)"
                                             if protocol == "official" else
                                             "encoder in eval mode, epoch selected on the source modality's val "
                                             "split, scored on the held-out test split")]
        notes += training_notes(result[protocol]) + data_notes
        parts.append(tables.markdown(f"Table {table_no} layout -- cross-modal transfer ({protocol})",
                                     ["method"] + header, [[result["name"]] + [tables.fmt(v) for v in values]], notes))
        # accuracy and F1 (not in the paper's tables, but what a reader wants too)
        extra_header, extra = [], []
        for task, key in (("ave", "accuracy"), ("avvp", "f1")):
            for s, t in tables.directions(mods):
                if t in result[protocol].get(task, {}).get(s, {}):  # `directions=` may score fewer
                    extra_header.append(f"{task.upper()} {key} {tables.arrow(s, t)}")
                    extra.append(tables.fmt(result[protocol][task][s][t][key]))
            for s in mods:
                if task in result[protocol] and s in result[protocol][task]:
                    extra_header.append(f"{task.upper()} {key} {tables.arrow(s, s)}")
                    extra.append(tables.fmt(result[protocol][task][s][s][key]))
        if extra:
            parts.append(tables.markdown(f"Accuracy / F1 and same-modality references ({protocol})",
                                         ["method"] + extra_header, [[result["name"]] + extra]))
    if "retrieval" in result:
        header, cells = tables.retrieval_row(result["retrieval"])
        parts.append(tables.markdown("Table 3 layout -- zero-shot retrieval, Recall@1/5/10 (%)", ["method"] + header,
                                     [[result["name"]] + cells], [RETRIEVAL_DOC, *data_notes]))
    if "avs" in result:
        from codaar.evaluate.segmentation.report import markdown as avs_markdown

        parts.append(avs_markdown(result["avs"], result["name"]))
    text = "\n".join(parts)
    tables.write(out, "tables", text, result)
    return text
