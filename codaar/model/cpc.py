"""Cross-modal contrastive predictive coding (paper Eq. 2; docs/method.md §5 and §9.9).

Each modality summarises its latents z_m [B, T, D] up to a time t* with a unidirectional LSTM and
predicts the next H latents with one Linear per step. For an ordered pair (target x <- context y)
the scores A[i, j] = y_x[i] . p_y[j] [B, B] are scored as an InfoNCE with the diagonal as positives.

Variants:
  "official" (authors' code): log-softmax over the predictions j for a fixed target i (rows of A);
      every ordered cross pair with weight 1, every self pair with weight `self_weight` (0.1);
      L = -(sum of weighted pair terms) / (B * H).
  "paper" (Eq. 2): log-softmax over the candidate futures i for a fixed context j (columns of A);
      cross pairs only; L = -(mean of pair terms) / (B * H).

Padded text (a mask [B, T] per modality, True = a real step): a clip whose context step t* is
padding predicts nothing, and a padded future step is no target. Such entries leave every
softmax (they are no candidates), their terms are dropped, and each pair term is the mean over the
scored clips times B (so the loss stays a mean over what is scored). With an all-True mask the
loss, accuracies and gradients are the unmasked ones bit for bit (the fills and the selection are
no-ops and the scale is exactly 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from codaar.runtime.distributed import gather_batch

VARIANTS = ("official", "paper")


@dataclass
class CPCOutput:
    loss: torch.Tensor  # scalar
    accuracies: dict[str, torch.Tensor]  # "cpc_acc/<target><-<context>": detached scalars, last prediction step
    t_star: int | torch.Tensor  # the context's last time index used in this call


def cpc_pairs(
    modalities: Sequence[str], variant: str = "official", self_weight: float = 0.1
) -> list[tuple[str, str, float]]:
    """(target, context, weight) for every pair scored: ordered cross pairs, then self pairs (official)."""
    if variant not in VARIANTS:
        raise ValueError(f"cpc_pairs: variant must be one of {VARIANTS}, got {variant!r}")
    pairs = [(x, y, 1.0) for x, y in itertools.permutations(modalities, 2)]
    if variant == "official" and self_weight != 0.0:
        pairs += [(m, m, self_weight) for m in modalities]
    return pairs


def _masked_scores(
    scores: torch.Tensor, variant: str, target_valid: torch.Tensor | None, prediction_valid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores with the candidates no softmax may see at the dtype's lowest value, the valid targets
    [B], the scored clips [B]: a valid target whose own prediction is valid too)."""
    ones = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    target_valid = ones if target_valid is None else target_valid
    prediction_valid = ones if prediction_valid is None else prediction_valid
    # official normalises over the predictions j of a row, paper over the targets i of a column
    hidden = ~prediction_valid[None, :] if variant == "official" else ~target_valid[:, None]
    scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    return scores, target_valid, target_valid & prediction_valid


def _over_scored(value: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """A sum or mean over all B clips, rescaled to one over the scored clips (x 1.0 when all are)."""
    return value * (scored.numel() / scored.sum().clamp(min=1).to(value.dtype))


def pair_term(
    targets: torch.Tensor, predictions: torch.Tensor, variant: str = "official",
    target_valid: torch.Tensor | None = None, prediction_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over the batch of the log-probability of the matching (diagonal) entry; [B, D] each.

    official: A[i, :] normalised over predictions j (fixed target i); paper: A[:, j] normalised over
    targets i (fixed context j). target_valid / prediction_valid [B] bool (None: all valid): see the
    module docstring."""
    scores = targets @ predictions.T  # [B, B]: target i . prediction j
    axis = 1 if variant == "official" else 0
    if target_valid is None and prediction_valid is None:
        return torch.log_softmax(scores, dim=axis).diagonal().sum()
    scores, _, scored = _masked_scores(scores, variant, target_valid, prediction_valid)
    terms = torch.log_softmax(scores, dim=axis).diagonal()
    return _over_scored(torch.where(scored, terms, 0).sum(), scored)


@torch.no_grad()
def pair_accuracy(
    targets: torch.Tensor, predictions: torch.Tensor, variant: str = "official",
    target_valid: torch.Tensor | None = None, prediction_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of columns j whose highest-probability row is j, with A softmaxed along the axis the
    variant normalises (official: rows, as the authors log it, docs/method.md §5.3); with masks, over the
    scored columns, an invalid target never being the best row."""
    scores = targets @ predictions.T
    masked = target_valid is not None or prediction_valid is not None
    if masked:
        scores, target_valid, scored = _masked_scores(scores, variant, target_valid, prediction_valid)
    probs = torch.softmax(scores, dim=1 if variant == "official" else 0)
    if masked:
        probs = probs.masked_fill(~target_valid[:, None], -1.0)
    hits = probs.argmax(dim=0) == torch.arange(scores.shape[1], device=scores.device)
    if masked:
        return _over_scored((hits & scored).to(scores.dtype).mean(), scored)
    return hits.to(scores.dtype).mean()


def cpc_loss(
    targets: Mapping[str, torch.Tensor],
    predictions: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str, float]],
    variant: str = "official",
    target_valid: Mapping[str, torch.Tensor] | None = None,
    context_valid: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The CPC loss from targets / predictions per modality, each [H, B, D] (step k = 0..H-1).

    target_valid {modality: [H, B] bool}, context_valid {modality: [B] bool}: the real steps of the
    modalities that have padding (absent: all real). Returns the loss and the accuracies of the
    last step per pair."""
    steps, batch = next(iter(targets.values())).shape[:2]
    target_valid, context_valid = target_valid or {}, context_valid or {}
    total = None
    accuracies = {}
    for target, context, weight in pairs:
        valid_t, valid_c = target_valid.get(target), context_valid.get(context)

        def at(k: int, valid_t: torch.Tensor | None = valid_t) -> torch.Tensor | None:
            return None if valid_t is None else valid_t[k]

        term = sum(pair_term(targets[target][k], predictions[context][k], variant, at(k), valid_c)
                   for k in range(steps))
        total = weight * term if total is None else total + weight * term
        accuracies[f"cpc_acc/{target}<-{context}"] = pair_accuracy(
            targets[target][-1], predictions[context][-1], variant, at(steps - 1), valid_c
        )
    if variant == "paper":
        total = total / len(pairs)  # the paper averages the pair contributions; the code sums them
    return -total / (batch * steps), accuracies


class CrossModalCPC(nn.Module):
    """Per modality: LSTM context network (D -> context, num_layers) and H Linear predictors."""

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int = 256,
        context_dim: int = 256,
        num_layers: int = 2,
        prediction_steps: int = 1,
        variant: str = "official",
        self_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.prediction_steps = prediction_steps
        self.variant = variant
        self.pairs = cpc_pairs(self.modalities, variant, self_weight)
        self.context = nn.ModuleDict(
            {m: nn.LSTM(dim, context_dim, num_layers=num_layers, batch_first=True) for m in self.modalities}
        )
        self.predictors = nn.ModuleDict(
            {m: nn.ModuleList(nn.Linear(context_dim, dim) for _ in range(prediction_steps)) for m in self.modalities}
        )

    def draw_t_star(self, steps: int, generator: torch.Generator | None = None) -> int:
        """t* = 1 + randint(T - H - 1): one per call, shared by all samples and pairs.

        Drawn on the CPU from `generator`, or from torch's global CPU RNG when None (authors' code).
        A host integer: it picks how much of the sequence the LSTM reads."""
        high = steps - self.prediction_steps - 1
        if high < 1:
            raise ValueError(f"CPC needs T >= H + 2 time steps, got T={steps}, H={self.prediction_steps}")
        return 1 + int(torch.randint(high, (1,), generator=generator).item())

    def forward(
        self, latents: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
        t_star: torch.Tensor | None = None, masks: Mapping[str, torch.Tensor] | None = None,
    ) -> CPCOutput:
        """CPC loss of {modality: z [B, T, D]} at a t* drawn from `generator`, or at `t_star`.

        t_star: a 0-d int64 tensor on the latents' device (drawn by the caller with `draw_t_star`).
        Then no shape depends on t*: the LSTM reads the whole sequence and its output at t* is
        picked by index (the same value: the LSTM is causal), so the call can be captured in a
        CUDA graph and replayed with a new t*. It costs the LSTM steps after t*.
        masks: {modality: [B, T] bool, True = a real step, real steps first} for padded modalities
        (text): a context at a padded t* and padded targets are not scored (module docstring)."""
        steps = latents[self.modalities[0]].shape[1]
        if t_star is None:
            t_star = self.draw_t_star(steps, generator)
        elif steps < self.prediction_steps + 2:
            raise ValueError(f"CPC needs T >= H + 2 time steps, got T={steps}, H={self.prediction_steps}")
        targets, predictions, target_valid, context_valid = {}, {}, {}, {}
        masks = masks or {}
        for m in self.modalities:
            z = latents[m]
            if isinstance(t_star, int):
                context = self.context[m](z[:, : t_star + 1])[0][:, t_star]  # [B, context]: output at t*
                future = z[:, t_star + 1 : t_star + 1 + self.prediction_steps]
                if masks.get(m) is not None:
                    context_valid[m] = masks[m][:, t_star]  # real steps come first: all of 0..t* are real
                    target_valid[m] = masks[m][:, t_star + 1 : t_star + 1 + self.prediction_steps].T
            else:
                at = t_star.view(1)
                ahead = at + 1 + torch.arange(self.prediction_steps, device=z.device)
                context = self.context[m](z)[0].index_select(1, at).squeeze(1)
                future = z.index_select(1, ahead)
                if masks.get(m) is not None:
                    context_valid[m] = masks[m].index_select(1, at).squeeze(1)
                    target_valid[m] = masks[m].index_select(1, ahead).T
            targets[m] = future.transpose(0, 1)  # [H, B, D]
            predictions[m] = torch.stack([head(context) for head in self.predictors[m]])  # [H, B, D]
        # Under DDP the other ranks' clips are negatives too: the loss is that of the global batch,
        # and the masks travel with their clips.
        targets = {m: gather_batch(t, dim=1) for m, t in targets.items()}
        predictions = {m: gather_batch(p, dim=1) for m, p in predictions.items()}
        target_valid = {m: _gather_mask(v, dim=1) for m, v in target_valid.items()}
        context_valid = {m: _gather_mask(v, dim=0) for m, v in context_valid.items()}
        loss, accuracies = cpc_loss(targets, predictions, self.pairs, self.variant, target_valid, context_valid)
        return CPCOutput(loss=loss, accuracies=accuracies, t_star=t_star)


def _gather_mask(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """`gather_batch` for a bool mask (collectives move it as bytes)."""
    return gather_batch(mask.to(torch.uint8), dim=dim).bool()
