"""The AVSBench-S4 tables: the paper's Table 4 layout (A->T and T->A, mIoU and F-score) and the
references beside it (T->T, A->A, a wrong-class text query, no query)."""

from __future__ import annotations

from codaar.evaluate import tables

from .task import NO_QUERY, WRONG_CLASS

CROSS = (("audio", "text"), ("text", "audio"))
REFERENCES = (("text", "text"), ("audio", "audio"), ("text", WRONG_CLASS), (NO_QUERY, NO_QUERY))
_NAMES = {("text", "text"): "T->T", ("audio", "audio"): "A->A", ("text", WRONG_CLASS): "T->T, wrong class",
          (NO_QUERY, NO_QUERY): "no query"}


def _cell(result: dict, source: str, target: str, key: str) -> str:
    value = result["by_source"].get(source, {}).get("test", {}).get(target, {}).get(key)
    return tables.fmt(value)


def markdown(result: dict, name: str) -> str:
    header = ["method"] + [f"{tables.arrow(s, t)} {k}" for s, t in CROSS for k in ("mIoU", "F")]
    row = [name] + [_cell(result, s, t, k) for s, t in CROSS for k in ("miou", "f_score")]
    settings = result["settings"]
    notes = ["'X->Y': segmenter trained with X's code-row queries, tested with Y's (the paper's Table 4). mIoU and "
             "F-score (beta^2 = 0.3, max over 255 thresholds) in %, per test clip over its 5 masks, mean over clips.",
             f"backbone {settings['backbone']}, {settings['epochs']} epochs, lr {settings['lr']}, batch "
             f"{settings['batch_size']}; the epoch with the best validation mIoU under the training modality's "
             "queries."]
    parts = [tables.markdown("Table 4 layout -- AVSBench-S4 cross-modal segmentation", header, [row], notes)]
    ref_header = ["method"] + [f"{_NAMES[p]} {k}" for p in REFERENCES for k in ("mIoU", "F")]
    ref_row = [name] + [_cell(result, s, t, k) for s, t in REFERENCES for k in ("miou", "f_score")]
    seconds = {s: v["info"]["train_seconds"] for s, v in result["by_source"].items()}
    parts.append(tables.markdown(
        "AVSBench-S4 references", ref_header, [ref_row],
        ["T->T, A->A: tested with the training modality's queries; wrong class: the text-trained segmenter queried "
         "with the prompt of another class (drawn per clip); no query: the same segmenter trained and tested with a "
         "zero query (it cannot tell which object sounds).",
         "training time (s): " + ", ".join(f"{s} {v:.0f}" for s, v in seconds.items())]))
    return "\n".join(parts)
