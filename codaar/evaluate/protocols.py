"""The downstream protocols (docs/method.md §7): AVE-style classification, AVVP-style localisation, retrieval.

Encoders and codebooks are frozen; only a light head trains on one modality's code features and is
scored on every other modality (cross-modal generalisation, "m1->m2") and on its own (reference).

Two protocol variants (`protocol=`):

* ``official`` -- the authors' downstream scripts as coded (docs/method.md §7.1-7.3, §9.12-9.14): head input is
  the full codebook row; the encoder stays in train mode while the head trains (dropout on; its
  features are recomputed for every batch) and is in eval mode for scoring; head epochs run from
  checkpoint epoch + 1 to `epochs` (MultiStepLR counted from the first head epoch); AVE is scored on
  the *training* split (other modality) after the last epoch; AVVP is scored on the training split of
  the test modality (the authors' AVVP test videos are their training videos) and the best epoch's
  precision *on the test modality* is reported. AVVP adds the ExpLogLoss to BCE.
* ``clean`` (default) -- encoder in eval mode throughout (features computed once), all `epochs` head
  epochs, the epoch is selected on the *source* modality's validation split (the target modality's
  labels are never seen), and the score is on the held-out test split. BCE only for AVVP.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from codaar.data import TriModalData, video_level_class
from codaar.pretrained import Pretrained
from codaar.runtime.schedule import step_decay

from . import metrics
from .errors import EvaluationError
from .features import code_features, require_labels, require_split
from .heads import AVEHead, AVVPHead, ExpLogLoss

PROTOCOLS = ("clean", "official")


@dataclass(frozen=True)
class HeadSettings:
    lr: float
    batch_size: int
    epochs: int
    seed: int = 43
    clip_norm: float = 0.5
    milestones: tuple[int, ...] = (10, 20, 30)
    gamma: float = 0.5


AVE_DEFAULTS = HeadSettings(lr=2.5e-4, batch_size=256, epochs=30)  # docs/method.md §7.2 (sbatch)
AVVP_DEFAULTS = HeadSettings(lr=4e-4, batch_size=64, epochs=50)  # docs/method.md §7.3 (sbatch)


@dataclass
class Task:
    """Where the head trains (data set A) and where it is scored (data set B; the same by default).

    `label_map` turns B's label tensors into A's label columns (cross-dataset transfer), `keep_b` the
    B clips whose events all have a counterpart in A."""

    pretrained: Pretrained
    train_data: TriModalData
    test_data: TriModalData
    protocol: str = "clean"
    head_input: str = "row"
    label_map: np.ndarray | None = None  # [C_B + 1, C_A + 1] 0/1
    keep_b: np.ndarray | None = None  # [N_B] bool
    _cache: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise EvaluationError(f"--protocol: expected one of {PROTOCOLS}, found {self.protocol!r}")
        if self.protocol == "official" and self.head_input != "row":
            raise EvaluationError("--head-input: the official protocol uses the full codebook row ('row'), "
                                  f"found {self.head_input!r}")

    @property
    def cross_dataset(self) -> bool:
        return self.test_data is not self.train_data

    @property
    def model(self):
        return self.pretrained.model

    # splits: (data, split) of training, selection and scoring
    def train_split(self) -> np.ndarray:
        return require_split(self.train_data, "train", "training the head")

    def val_split(self) -> np.ndarray:
        return require_split(self.train_data, "val", "clean model selection")

    def score_split(self) -> np.ndarray:
        split = "train" if self.protocol == "official" and not self.cross_dataset else "test"
        clips = require_split(self.test_data, split, "scoring", name="test data" if self.cross_dataset else "data")
        if self.keep_b is not None:
            clips = clips[self.keep_b[clips]]
        return clips

    def labels(self, data: TriModalData, modality: str, protocol_name: str) -> np.ndarray:
        labels = require_labels(data, modality, protocol_name)
        if data is self.test_data and self.cross_dataset and self.label_map is not None:
            labels = np.minimum(np.asarray(labels, dtype=np.float32) @ self.label_map, 1.0)
        return np.asarray(labels, dtype=np.float32)

    def features(self, data: TriModalData, modality: str, clips: np.ndarray, train_mode: bool = False) -> torch.Tensor:
        if train_mode:  # recomputed every call: dropout draws differ
            return code_features(self.model, data, modality, clips, self.head_input, train_mode=True)["x"]
        key = (id(data), modality, clips.tobytes())
        if key not in self._cache:
            self._cache[key] = code_features(self.model, data, modality, clips, self.head_input)
        return self._cache[key]["x"]

    def head_epochs(self, settings: HeadSettings) -> range:
        """Official: from checkpoint epoch + 1 to `epochs` (the authors' loop); clean: `epochs` epochs."""
        if self.protocol == "official":
            return range(self.pretrained.epoch + 1, settings.epochs)
        return range(settings.epochs)

    def planned_epochs(self, settings: HeadSettings, head: str) -> range:
        """`head_epochs`, refused when empty: a head that never trains is never reported as a result.
        The authors' loop is empty once the checkpoint's epoch + 1 reaches `epochs` (a pretraining of
        30 epochs or more under the default 30 AVE epochs)."""
        epochs = self.head_epochs(settings)
        if len(epochs) == 0 and self.protocol != "official":
            raise EvaluationError(f"--{head.lower()}-epochs: expected at least 1, found {settings.epochs}")
        if len(epochs) == 0:
            first = self.pretrained.epoch + 1
            raise EvaluationError(
                f"--protocol official: the {head} head would train 0 epochs: the authors' loop runs from the "
                f"checkpoint's epoch + 1 = {first} to --{head.lower()}-epochs {settings.epochs}; give "
                f"--{head.lower()}-epochs {first + settings.epochs} for {settings.epochs} head epochs, or use "
                "--protocol clean")
        return epochs

    def training_record(self, settings: HeadSettings, head: str, trained: int, steps: int) -> dict:
        """What the head went through, checked against the plan: a head that ran fewer epochs than its
        protocol specifies, or took no optimizer step, is refused rather than reported."""
        planned = len(self.head_epochs(settings))
        if trained != planned or steps == 0:
            raise EvaluationError(f"{head} head ({self.protocol} protocol): trained {trained} epochs and {steps} "
                                  f"steps, expected {planned} epochs of at least one step; no result is reported")
        record = {"head_epochs": trained, "head_epochs_given": settings.epochs, "head_steps": steps}
        if trained < settings.epochs:  # the official loop, from checkpoint epoch + 1
            record["head_epochs_note"] = (
                f"{head} heads trained {trained} of the {settings.epochs} epochs given (--{head.lower()}-epochs): "
                f"the official protocol starts at the checkpoint's epoch + 1 = {self.pretrained.epoch + 1}, as the "
                f"authors' loop; --{head.lower()}-epochs {self.pretrained.epoch + 1 + settings.epochs} gives "
                f"{settings.epochs}")
        return record


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _train_epoch(task: Task, head: nn.Module, params: list, optimizer, loss_fn, modality: str, clips: np.ndarray,
                 targets: torch.Tensor, settings: HeadSettings, generator: torch.Generator,
                 cached: torch.Tensor | None) -> int:
    """One epoch over `clips`; returns the number of optimizer steps taken."""
    head.train()
    steps = 0
    for batch in _batches(len(clips), settings.batch_size, generator):
        if cached is not None:
            x = cached[batch]
        else:  # official: the encoder in train mode, features of this batch only
            x = task.features(task.train_data, modality, clips[batch], train_mode=True)
        loss = loss_fn(head(x), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
        optimizer.step()
        steps += 1
    return steps


def _fit(task: Task, head: nn.Module, params: list, optimizer, loss_fn, modality: str, clips: np.ndarray,
         targets: torch.Tensor, settings: HeadSettings, cached: torch.Tensor | None,
         validate: Callable[[int], float | None], epochs: range) -> tuple[int | None, list[float], int, int]:
    """Train the head for `epochs` (step-decay learning rate). After each epoch `validate(epoch)`
    gives the selection score, or None where nothing is selected; the head ends at its best-scoring
    epoch. Returns (that epoch or None, the scores, the epochs trained, the optimizer steps)."""
    generator = torch.Generator().manual_seed(settings.seed)
    best_state, best_value, best_epoch, history = None, -1.0, None, []
    trained = steps = 0
    for i, _ in enumerate(epochs):
        for group in optimizer.param_groups:
            group["lr"] = step_decay(settings.lr, settings.gamma, settings.milestones, i)
        steps += _train_epoch(task, head, params, optimizer, loss_fn, modality, clips, targets, settings, generator,
                              cached)
        trained += 1
        value = validate(i)
        if value is None:
            continue
        history.append(value)
        if value > best_value:
            best_state, best_value, best_epoch = copy.deepcopy(head.state_dict()), value, i
    if best_state is not None:
        head.load_state_dict(best_state)
    return best_epoch, history, trained, steps


@torch.no_grad()
def _predict(head: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


# -------------------------------------------------------------------- AVE (docs/method.md §7.2)
def _ave_score(logits: torch.Tensor, target: np.ndarray, batch_size: int, generator: torch.Generator | None) -> dict:
    pred = logits.argmax(dim=-1).numpy()
    batches = [(pred[b], target[b]) for b in _batches(len(pred), batch_size, generator)]
    return {"precision": metrics.ave_precision(batches), "accuracy": metrics.accuracy(pred, target)}


def run_ave(task: Task, source: str, targets: list[str], settings: HeadSettings = AVE_DEFAULTS) -> dict:
    """Train the AVE head on `source`'s code features; score it on each of `targets` (and on `source`).

    Returns {target: {"precision", "accuracy"}, ..., "_info": {...}}; precision is the authors'
    batch-wise macro precision (%), accuracy plain top-1 (%)."""
    a, b = task.train_data, task.test_data
    epochs = task.planned_epochs(settings, "AVE")
    train = task.train_split()
    y_train = video_level_class(task.labels(a, None, "AVE"))
    num_classes = a.num_classes
    score_clips = task.score_split()
    y_score = video_level_class(task.labels(b, None, "AVE")[score_clips])
    official = task.protocol == "official"

    torch.manual_seed(settings.seed)
    x_train = None if official else task.features(a, source, train)
    in_dim = task.features(a, source, train[:1]).shape[-1]
    head = AVEHead(in_dim, num_classes)
    params = list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    loss_fn = nn.CrossEntropyLoss()
    targets_t = torch.from_numpy(y_train[train])
    modalities = [source] + [m for m in targets if m != source]

    def validate(_epoch: int) -> float | None:
        return None if official else metrics.accuracy(_predict(head, x_val).argmax(-1).numpy(), y_val)

    if not official:
        val = task.val_split()
        x_val, y_val = task.features(a, source, val), video_level_class(task.labels(a, None, "AVE")[val])
    best_epoch, history, trained, steps = _fit(task, head, params, optimizer, loss_fn, source, train, targets_t,
                                               settings, x_train, validate, epochs)
    training = task.training_record(settings, "AVE", trained, steps)

    results = {}
    eval_generator = torch.Generator().manual_seed(settings.seed + 1) if official else None
    for m in modalities:
        logits = _predict(head, task.features(b, m, score_clips))
        results[m] = _ave_score(logits, y_score, settings.batch_size, eval_generator)
    results["_info"] = {
        "split": "train" if official and not task.cross_dataset else "test", "clips": int(len(score_clips)),
        **training, "selected_epoch": best_epoch,
        "selection": "last epoch (no selection, as coded)" if official else "best val accuracy on the source modality",
        "val_accuracy_history": history, "chance_accuracy": 100.0 / num_classes,
    }
    return results


# ------------------------------------------------------------------ AVVP (docs/method.md §7.3)
def run_avvp(task: Task, source: str, targets: list[str], settings: HeadSettings = AVVP_DEFAULTS) -> dict:
    """Train the per-segment AVVP head on `source`'s codes with `source`'s labels; score on each target
    modality with that modality's labels. Returns {target: {"precision", "recall", "f1"}, "_info": ...}."""
    a, b = task.train_data, task.test_data
    official = task.protocol == "official"
    epochs = task.planned_epochs(settings, "AVVP")
    train = task.train_split()
    y_train = torch.from_numpy(task.labels(a, source, "AVVP")[train])
    score_clips = task.score_split()
    modalities = [source] + [m for m in targets if m != source]

    torch.manual_seed(settings.seed)
    in_dim = task.features(a, source, train[:1]).shape[-1]
    head = AVVPHead(in_dim, y_train.shape[-1])
    bce = nn.BCEWithLogitsLoss()
    params = list(head.parameters())
    if official:
        explog = ExpLogLoss(y_train.shape[-1])
        params += list(explog.parameters())

        def loss_fn(logits, y):
            return bce(logits, y) + explog(logits, y)
    else:
        loss_fn = bce
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    x_train = None if official else task.features(a, source, train)

    def score(m: str, clips: np.ndarray, data: TriModalData) -> dict:
        prob = torch.sigmoid(_predict(head, task.features(data, m, clips))).numpy()
        y = task.labels(data, m, "AVVP")[clips]
        return metrics.avvp_prf([(prob[i], y[i]) for i in _batches(len(clips), settings.batch_size, None)])

    best: dict[str, tuple[float, dict, int]] = {}

    def validate(epoch: int) -> float | None:
        if not official:
            return score(source, val, a)["f1"]
        for m in modalities:  # best precision over epochs, chosen on each test modality itself (as coded)
            s = score(m, score_clips, b)
            if m not in best or s["precision"] > best[m][0]:
                best[m] = (s["precision"], s, epoch)
        return None

    if not official:
        val = task.val_split()
    best_epoch, _, trained, steps = _fit(task, head, params, optimizer, loss_fn, source, train, y_train, settings,
                                         x_train, validate, epochs)
    training = task.training_record(settings, "AVVP", trained, steps)

    results = {}
    if official:  # every epoch scored every modality (training_record: at least one epoch ran)
        for m in modalities:
            results[m] = dict(best[m][1], best_epoch=best[m][2])
    else:
        for m in modalities:
            results[m] = score(m, score_clips, b)
    results["_info"] = {
        "split": "train" if official and not task.cross_dataset else "test", "clips": int(len(score_clips)),
        **training, "selected_epoch": best_epoch,
        "selection": ("best precision over epochs on the test modality (as coded)" if official
                      else "best val F1 on the source modality"),
    }
    return results


# ------------------------------------------------------------- retrieval (docs/method.md §7.7)
RETRIEVAL_DOC = ("similarity: cosine between the time-means of the clips' full codebook rows (the quantized "
                 "space the heads see; for per-clip text the mean over its real tokens); relevance: the same clip "
                 "for audio<->video and for per-clip text (captions), the same class when class-prompt text is "
                 "involved (one prompt per class); ties count against the query")


def relevance_rule(data: TriModalData, query: str, gallery: str) -> str:
    """"instance" (the same clip is the one relevant item) or "class" (every clip of the class):
    class-prompt text is shared by all clips of a class, so only its class can be retrieved."""
    return "class" if "text" in (query, gallery) and data.text_kind == "class-prompt" else "instance"


def clip_embedding(features: dict[str, torch.Tensor]) -> np.ndarray:
    """The time-mean of a clip's code rows [N, F]; for text, over its real tokens only."""
    x, mask = features["x"], features.get("mask")
    if mask is None or bool(mask.all()):  # the plain mean: class prompts give today's numbers exactly
        return x.mean(dim=1).numpy()
    weight = mask.unsqueeze(-1).to(x.dtype)
    return ((x * weight).sum(dim=1) / weight.sum(dim=1)).numpy()


def run_retrieval(task: Task, pairs: list[tuple[str, str]], ks=(1, 5, 10), relevance: str = "auto") -> dict:
    """Zero-shot retrieval in the quantized space on the test split, both ways for every pair."""
    data = task.train_data
    clips = require_split(data, "test", "retrieval")
    category = np.asarray(data.category)[clips]
    emb = {m: clip_embedding(code_features(task.model, data, m, clips, "row"))
           for m in {m for pair in pairs for m in pair}}
    results = {}
    for q, g in pairs:
        rule = relevance if relevance != "auto" else relevance_rule(data, q, g)
        rel = category[:, None] == category[None, :] if rule == "class" else np.eye(len(clips), dtype=bool)
        results[f"{q}->{g}"] = dict(metrics.recall_at_k(metrics.cosine_similarity(emb[q], emb[g]), rel, ks),
                                    relevance=rule)
    results["_info"] = {"split": "test", "clips": int(len(clips)), "definition": RETRIEVAL_DOC}
    return results


def with_settings(base: HeadSettings, **changes) -> HeadSettings:
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
