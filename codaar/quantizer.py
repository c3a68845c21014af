"""`CrossModalQuantizer`: CoDAAR's per-modality codebooks with DTA, CSA, DQA and dead-code reset.

One training step (docs/method.md §4.13 step 2), in the authors' order:
  1. assign every frame of every modality to its nearest codeword of the start-of-step codebook;
  2. losses (commitment, DQA) and the straight-through outputs, all from that codebook;
  3. state update: DTA sums -> EMA -> E = W / C -> CSA cascade -> dead-code counters -> reset.

Codebook init (`codebook_init`): the authors' tiny uniform table (`official`), or a data-dependent
one (`kmeans`, `aligned-kmeans`) computed once from the latents of the first training call (or an
explicit `initialize(latents)`), before its update; the `initialized` buffer records that it ran, so
a resumed run never re-initialises. Codebook health metrics (per modality, no host sync): codes used
in the batch, codes used within the last `active_window` updates, codes not used for more than
`dead_after` updates (never-used included), the largest |codeword| entry.

The math lives in `codaar_kernels`; this module holds the state (all of it in buffers, so a
state_dict round-trip restores a run exactly) and the order of operations.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import codaar_kernels as ops
from codaar.quantizer_config import QuantizerConfig
from codaar.runtime.distributed import active as distributed_active
from codaar.runtime.distributed import gather_batch
from codaar.runtime.seeding import SEED_MIX
from codaar_kernels.kmeans_init import kmeans_codebook

_INIT_STREAM = 0x5EED1717  # the data-dependent init's generator: (reset_seed, this), apart from any reset step
# A warning names the size of what a call (or the state) is about to allocate above this many bytes.
LARGE_ALLOCATION_BYTES = 2 << 30
_EMA_STATISTICS = ("ema_sum", "ema_count")
# buffers newer than the first checkpoints: absent from an older state dict, they load as defaults
# (see `_load_from_state_dict`)
DEFAULTED_BUFFERS = ("last_used", "initialized", "modality_order")


def _encode_names(names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor(list(",".join(names).encode()), dtype=torch.uint8)


def _decode_names(tensor: torch.Tensor) -> tuple[str, ...]:
    return tuple(bytes(tensor.to(torch.uint8).tolist()).decode(errors="replace").split(","))


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _warn_if_large(what: str, nbytes: int) -> None:
    if nbytes > LARGE_ALLOCATION_BYTES:
        warnings.warn(f"CrossModalQuantizer: {what} needs about {_size(nbytes)}; allocating it now",
                      ResourceWarning, stacklevel=3)


def reset_seed_for(seed: int, step: int) -> int:
    """The seed of the generator that drives the dead-code reset of update number `step` (0-based).

    Reseeded every update from (seed, step): the draws need no stored RNG state, are the same on
    every DDP rank, and a resumed run draws exactly what an uninterrupted one would.
    """
    return (seed * SEED_MIX + step) % (1 << 63)


def reset_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator in the state the reset of update number `step` starts from."""
    return torch.Generator(device=device).manual_seed(reset_seed_for(seed, step))


@dataclass
class QuantizerOutput:
    """What one call returns. Dicts are keyed by modality name."""

    indices: dict[str, torch.Tensor]  # [B, T] int64: the chosen code per frame
    quantized: dict[str, torch.Tensor]  # [B, T, D]: straight-through quantized latent (value = codeword)
    tri_code: dict[str, torch.Tensor]  # [B, T, M*D]: what decoder m reconstructs from (docs/method.md §4.8)
    loss: torch.Tensor  # scalar: sum of the commitment losses + dqa_weight * CMCM
    losses: dict[str, torch.Tensor]  # "commit/<m>" and "dqa" (already weighted), scalars
    # detached scalars: perplexity, codes used, index agreement, ...; a read-only mapping computed on
    # first read (LazyMetrics), with the values of this call
    metrics: Mapping[str, torch.Tensor]


class LazyMetrics(Mapping):
    """A call's metrics, computed on first read: a call whose metrics nobody reads (a benchmark, an
    evaluation loop, a step not logged) does not pay for them. What they read from the quantizer's
    state is taken at the call, so the values are those of the call whenever they are read."""

    def __init__(self, compute) -> None:
        self._compute, self._values = compute, None

    def _get(self) -> dict[str, torch.Tensor]:
        if self._values is None:
            with torch.no_grad():
                self._values = self._compute()
            self._compute = None
        return self._values

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return f"LazyMetrics({self._get()!r})"


@dataclass
class LookupOutput:
    indices: torch.Tensor  # [...]: nearest code in the modality's own codebook
    codes: torch.Tensor  # [..., D]: that codeword
    rows: torch.Tensor  # [..., M*D]: the full row at that index, all modalities (the authors' head input)


class CrossModalQuantizer(nn.Module):
    """Per-modality codebooks E [M, K, D] whose index k means the same thing in every modality.

    Construct from a `QuantizerConfig` or its fields: `CrossModalQuantizer(num_codes=800, dim=256)`.
    Call with {modality: latents [B, T, D]}; in training mode (and unless frozen) the call also
    updates the codebooks. `lookup` and `codes_from_indices` never touch the state.

    `capturable = True` makes a training call safe to capture in a CUDA graph, on any device: no
    data-dependent branch, and its host-side work (seeding the reset generator, counting the update)
    is left to the caller, who calls `prepare_update()` before each training call (outside the graph)
    and registers `reset_rng` with the graph. The results are those of the default mode.

    What cannot work is refused: latents of no clip or no frame (B = 0 or T = 0) raise ValueError;
    a state dict saved with another modality order (or other names) is refused naming both orders,
    since codebook m would silently serve another modality; a state dict without the EMA statistics
    is completed, not refused (see `_load_from_state_dict`). Above `LARGE_ALLOCATION_BYTES`, a
    ResourceWarning says how much the state or a call's [M, B*T, K] distances need before allocating.
    """

    def __init__(self, config: QuantizerConfig | None = None, **settings: object) -> None:
        super().__init__()
        if config is None:
            config = QuantizerConfig(**settings)
        elif settings:
            config = config.replace(**settings)
        self.config = config
        self.frozen = False
        num_mod, num_codes = config.num_modalities, config.num_codes
        self._position = {name: m for m, name in enumerate(config.modalities)}
        self._cascade = [self._position[name] for name in config.cascade] if config.csa else []

        # codebook, EMA sums (M x K x D each), counts, last use (M x K), unused steps (K)
        _warn_if_large(f"the state of M={num_mod} codebooks of K={num_codes} codes of D={config.dim}",
                       (3 * num_mod * num_codes * config.dim + 3 * num_mod * num_codes + num_codes) * 4)
        codebook = self._initial_codebook()
        self.register_buffer("codebook", codebook)  # E: what lookups use (post-CSA, post-reset)
        self.register_buffer("ema_sum", codebook.clone())  # W: EMA of the DTA sums
        self.register_buffer("ema_count", torch.zeros(num_mod, num_codes))  # C: EMA of the counts
        self.register_buffer("unused_steps", torch.full((num_codes,), -1, dtype=torch.long))  # U
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # per modality: num_updates after the last update in which m chose code k (0: never chosen)
        self.register_buffer("last_used", torch.zeros(num_mod, num_codes, dtype=torch.long))
        # 1 once the codebook init is done (at once for `official`; data-dependent: at the first update)
        official = config.codebook_init == "official"
        self.register_buffer("initialized", torch.full((), int(official), dtype=torch.long))
        # which modality codebook m serves: a state dict of another order is refused on load
        self.register_buffer("modality_order", _encode_names(config.modalities))
        self._num_updates_host = 0  # mirror of num_updates, so seeding the reset never reads the device
        self._reset_rng: torch.Generator | None = None  # reseeded every update
        self._update_prepared = False
        self.capturable = False
        self._initialized_host = official  # mirror of initialized, for the same reason

    # ----------------------------------------------------------------------------------- state
    def _initial_codebook(self) -> torch.Tensor:
        cfg = self.config
        num_mod, num_codes, dim = cfg.num_modalities, cfg.num_codes, cfg.dim
        # The authors draw one [K, M*D] float32 table; drawing it the same way reproduces their init.
        table = torch.empty(num_codes, num_mod * dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        return table.view(num_codes, num_mod, dim).transpose(0, 1).contiguous()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    @property
    def codebooks(self) -> torch.Tensor:
        """The lookup codebooks [M, K, D] (a detached view of the state)."""
        return self.codebook.detach()

    @torch.no_grad()
    def set_codebooks(self, codebooks: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Replace the codebooks [M, K, D]; the EMA state is made consistent with them.

        counts [M, K] (default: one observation per code) become the EMA counts, and the EMA sums
        are set so that the next update starts from exactly these codewords.
        """
        expected = tuple(self.codebook.shape)
        if tuple(codebooks.shape) != expected:
            raise ValueError(f"set_codebooks: codebooks must be {list(expected)}, got {list(codebooks.shape)}")
        if counts is None:
            counts = torch.ones_like(self.ema_count)
        elif tuple(counts.shape) != expected[:2]:
            raise ValueError(f"set_codebooks: counts must be {list(expected[:2])}, got {list(counts.shape)}")
        self.codebook.copy_(codebooks)
        self.ema_count.copy_(counts)
        denom = ops.ema_denominator(self.ema_count, self.config.eps, self.config.laplace_smoothing)
        self.ema_sum.copy_(self.codebook * denom.unsqueeze(-1))

    def freeze(self, frozen: bool = True) -> CrossModalQuantizer:
        """Stop (or resume) codebook updates, also in training mode."""
        self.frozen = frozen
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Load the state, refusing or completing what would not work.

        * Another modality order (or other names) than this quantizer's: refused (ValueError naming
          both), since the codebooks are stored by position.
        * Without the EMA statistics (`ema_sum`, `ema_count`, e.g. a codebook-only state dict loaded
          with ``strict=False``): they are **recomputed** from the loaded codebook as `set_codebooks`
          does (the saved counts if present, else one observation per code; the sums then
          `codebook x denominator`), so the next update starts from exactly the loaded codewords
          instead of jumping to W / C of unrelated statistics. With ``strict=True`` the missing keys
          are still reported, as torch does.
        * Checkpoints from before `last_used`, `initialized` and `modality_order` existed:
          official-initialised, usage unknown, order that of this quantizer.
        """
        order_key = prefix + "modality_order"
        if order_key in state_dict:
            saved = _decode_names(state_dict[order_key])
            if saved != tuple(self.modalities):
                raise ValueError(f"CrossModalQuantizer: the state dict is of the modality order {','.join(saved)}, "
                                 f"this quantizer's is {','.join(self.modalities)} (codebook m serves modality m: "
                                 "build the quantizer with the saved order)")
        if prefix + "codebook" in state_dict:
            state_dict.setdefault(prefix + "last_used", torch.zeros_like(self.last_used))
            state_dict.setdefault(prefix + "initialized", torch.ones_like(self.initialized))
            state_dict.setdefault(order_key, self.modality_order.clone())
        absent = [name for name in _EMA_STATISTICS if prefix + name not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if absent and prefix + "codebook" in state_dict and not error_msgs:
            counts = None if "ema_count" in absent else self.ema_count.clone()
            self.set_codebooks(self.codebook.clone(), counts)
        self._num_updates_host = int(self.num_updates)
        self._initialized_host = bool(self.initialized)

    @property
    def is_initialized(self) -> bool:
        return self._initialized_host

    @torch.no_grad()
    def initialize(self, latents: Mapping[str, torch.Tensor], *, force: bool = False) -> bool:
        """Data-dependent codebook init from {modality: [B, T, D]} (`codebook_init` kmeans / aligned-kmeans).

        Runs once: returns False and changes nothing if already initialised (unless `force`) or if
        `codebook_init` is `official`. Under torch.distributed (with `sync_distributed`) the frames of
        all ranks are gathered, so every rank computes the init of the union batch; rank 0's result
        is then broadcast. Draws come from a generator seeded by `reset_seed`, never the global RNG.

        aligned-kmeans: k-means++ over the frames of all modalities concatenated (each modality
        scaled by its RMS, so none dominates the distances); code k of every modality is the same
        (sample, time) frame (or, with `init_iterations`, the mean of the same set of frames).
        kmeans: k-means++ on each modality's own frames; indices are not aligned across modalities.
        EMA counts = frames nearest to the code (at least 1), EMA sums = codeword x count.
        K > distinct frames: see codaar_kernels.kmeans_init (jittered duplicates).
        """
        cfg = self.config
        if cfg.codebook_init == "official" or (self._initialized_host and not force):
            return False
        z = self._stack_latents(latents).detach()
        num_mod, batch, steps, dim = z.shape
        _require_finite(z.reshape(num_mod, batch * steps, dim), self.modalities, (batch, steps))
        z = z.reshape(num_mod, batch * steps, dim)
        if cfg.sync_distributed and distributed_active():
            z = gather_batch(z.contiguous(), dim=1)
        generator = reset_generator(cfg.reset_seed, _INIT_STREAM, z.device)  # a stream no reset step uses
        num_codes = cfg.num_codes
        if cfg.codebook_init == "kmeans":
            codebooks, sizes, _, _ = kmeans_codebook(z, num_codes, generator,
                                                     iterations=cfg.init_iterations, jitter=cfg.init_jitter)
        else:  # aligned-kmeans
            frames = z.shape[1]
            scale = z.square().mean(dim=(1, 2)).sqrt().clamp(min=torch.finfo(z.dtype).tiny).view(num_mod, 1, 1)
            joint = (z / scale).permute(1, 0, 2).reshape(1, frames, num_mod * dim)
            centres, sizes, picks, duplicate = kmeans_codebook(joint, num_codes, generator,
                                                               iterations=cfg.init_iterations, jitter=cfg.init_jitter)
            codebooks = centres.view(num_codes, num_mod, dim).permute(1, 0, 2) * scale
            if cfg.init_iterations == 0:  # the picked frames themselves, bit for bit
                exact = ~duplicate.view(1, num_codes, 1)
                codebooks = torch.where(exact, z[:, picks[0]], codebooks)
            sizes = sizes.expand(num_mod, num_codes)
        codebooks, counts = codebooks.contiguous(), sizes.clamp(min=1).contiguous()
        if cfg.sync_distributed and distributed_active():
            dist.broadcast(codebooks, src=0)
            dist.broadcast(counts, src=0)
        self.set_codebooks(codebooks.to(self.codebook.dtype), counts.to(self.ema_count.dtype))
        self.initialized.fill_(1)
        self._initialized_host = True
        return True

    # --------------------------------------------------------------------------------- forward
    def _stack_latents(self, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Validate {modality: [B, T, D]} and stack it to [M, B, T, D] in the codebook's dtype."""
        missing = [m for m in self.modalities if m not in latents]
        unknown = [m for m in latents if m not in self._position]
        if missing or unknown:
            raise KeyError(f"CrossModalQuantizer: expected latents for {list(self.modalities)}, "
                           f"missing {missing}, unknown {unknown}")
        first = latents[self.modalities[0]]
        if first.dim() != 3:
            raise ValueError(f"CrossModalQuantizer: latents['{self.modalities[0]}'] must be [B, T, D], "
                             f"got shape {list(first.shape)}")
        expected = (first.shape[0], first.shape[1], self.config.dim)
        for m in self.modalities:
            if tuple(latents[m].shape) != expected:
                raise ValueError(f"CrossModalQuantizer: latents['{m}'] must be [B, T, D] = {list(expected)}, "
                                 f"got {list(latents[m].shape)}")
            _require_float(latents[m], f"latents['{m}']")
        if first.shape[0] == 0 or first.shape[1] == 0:
            # the losses are means over clips and frames, DQA's softmax needs a frame: nothing defines them
            raise ValueError(f"CrossModalQuantizer: latents must hold at least one clip and one frame "
                             f"(B >= 1, T >= 1), got [B, T, D] = {list(first.shape)}")
        return torch.stack([latents[m] for m in self.modalities]).to(self.codebook.dtype)

    def _warn_if_large_call(self, z: torch.Tensor, soft_usage: bool) -> None:
        """The eager kernels hold the [M, N, K] distances (DQA: also their softmax, kept for the
        backward); the Triton kernels never materialise them."""
        if ops.dispatch.use_triton(z, self.codebook):
            return
        num_mod, frames, _ = z.shape
        copies = 2 if soft_usage else 1
        _warn_if_large(f"a call on N={frames} frames (B x T) against K={self.config.num_codes} codes "
                       f"({copies} x [M={num_mod}, N, K] distances)",
                       copies * num_mod * frames * self.config.num_codes * z.element_size())

    def forward(self, latents: Mapping[str, torch.Tensor], *, update: bool | None = None) -> QuantizerOutput:
        """Quantize {modality: [B, T, D]}; update the codebooks if `update` (default: training, not frozen)."""
        if update is None:
            update = self.training and not self.frozen
        cfg = self.config
        stacked = self._stack_latents(latents)
        num_mod, batch, steps, dim = stacked.shape
        z = stacked.reshape(num_mod, batch * steps, dim)
        self._warn_if_large_call(z, cfg.dqa)  # before the init too: k-means holds [N, K] distances as well
        if update and not self._initialized_host:
            self.initialize(latents)  # once, from this first training batch, before its update
        # A non-finite training batch skips its update (see _update_state); its losses are not finite.
        if not update:
            _require_finite(z, self.modalities, (batch, steps))
        # A snapshot: the update below rewrites the buffer in place while autograd still needs it.
        codebook = self.codebook.clone() if update else self.codebook

        if cfg.dqa:
            idx, _, usage = ops.assign_with_soft_usage(z, codebook, steps)
            if cfg.sync_distributed:  # CMCM's negatives are the other clips, on every rank
                usage = gather_batch(usage, dim=1)
            dqa = cfg.dqa_weight * ops.cmcm_reference(usage)
        else:
            idx, _ = ops.assign(z.detach(), codebook)
            dqa = z.new_zeros(())
        commit = ops.commitment_reference(
            z, codebook, idx,
            self_weight=cfg.commit_self_weight, cross_weight=cfg.commit_cross_weight,
            cross_target=cfg.commit_cross_target, reduction=cfg.loss_reduction, frames_per_sample=steps,
        )
        quantized, tri_code = self._straight_through(z, codebook, idx, latents)

        counts = None
        if update:
            counts, num_reset, skipped = self._update_state(z.detach(), idx)
        update_metrics = {"codes_reset": num_reset, "update_skipped": skipped} if update else {}
        metrics = self._metrics(idx.view(num_mod, batch, steps), counts, update_metrics)

        names = self.modalities
        losses = {f"commit/{m}": commit[i] for i, m in enumerate(names)}
        losses["dqa"] = dqa
        return QuantizerOutput(
            indices={m: idx[i].view(batch, steps) for i, m in enumerate(names)},
            quantized={m: quantized[i].view(batch, steps, dim).to(latents[m].dtype) for i, m in enumerate(names)},
            tri_code={m: tri_code[i].view(batch, steps, -1).to(latents[m].dtype) for i, m in enumerate(names)},
            loss=commit.sum() + dqa,
            losses=losses,
            metrics=metrics,
        )

    def _straight_through(
        self, z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, latents: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """quantized [M, N, D] and the decoders' code [M, N, M*D], both z + sg(code - z)."""
        num_mod, num_frames, dim = z.shape
        # rows[m, n] = the full row E[:, k_m[n]] (every modality's codeword at m's index), gathered
        # once; m's own codeword E_m[k_m] is its m-th block (a view).
        rows = ops.full_rows(codebook.detach(), idx)
        own_codes = rows.view(num_mod, num_frames, num_mod, dim).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        # z + sg(code - z), summed in place into the fresh difference (a + b == b + a, bit for bit)
        quantized = (own_codes - z.detach()).add_(z)
        if self.config.decoder_code == "concat_codes":
            # Eq. 9: one tri-modal code, every modality's own quantized latent, for all decoders
            tri = quantized.permute(1, 0, 2).reshape(num_frames, num_mod * dim)
            return quantized, tri.unsqueeze(0).expand(num_mod, -1, -1)
        # Authors: decoder m gets the full row E[k_m], with the gradient going to all encoders
        # through the concatenated latents (in place: rows is a fresh gather nobody else reads).
        all_latents = z.permute(1, 0, 2).reshape(1, num_frames, num_mod * dim)
        return quantized, rows.sub_(all_latents.detach()).add_(all_latents)

    @torch.no_grad()
    def _update_state(self, z: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DTA -> EMA -> CSA -> dead-code counters -> reset, in place; skipped (the state left as it
        was, on every rank) when any latent is not finite: a branch on the CPU, masked on a GPU or when
        capturable (no host sync).

        Returns the step's counts [M, K], the number of codes reset and whether the update was skipped
        (tensors: no host sync)."""
        cfg = self.config
        if not self.capturable:
            self.prepare_update()
        elif not self._update_prepared:  # a host-side check: runs once when a graph is captured
            raise RuntimeError("CrossModalQuantizer(capturable=True): call prepare_update() before each training call")
        self._update_prepared = False
        self_weight, cross_weight = cfg.effective_dta_weights()
        sums, counts = ops.dta_accumulate(z, idx, cfg.num_codes, self_weight, cross_weight,
                                          deterministic=cfg.deterministic)
        self._all_reduce_statistics(sums, counts)
        # A non-finite latent makes the (all-reduced) sums non-finite on every rank, so all skip
        # together (overflow too). As for the reset below: on the CPU the branch is free; on a GPU
        # (or capturable) the update runs and is masked back to the state before it.
        finite = torch.isfinite(z).all() & torch.isfinite(sums).all()
        host_branch = not self.capturable and self.codebook.device.type == "cpu"
        if host_branch and not bool(finite):
            self.num_updates.add_(1)
            zero = torch.zeros((), dtype=torch.long)
            return torch.zeros_like(self.ema_count), zero, torch.ones((), dtype=self.ema_count.dtype)
        before = None if host_branch else [buffer.clone() for buffer in self._updated_state()]
        update = ops.EmaCsaConfig(
            decay=cfg.decay, eps=cfg.eps, laplace_smoothing=cfg.laplace_smoothing, csa_order=self._cascade,
            csa_persistent=cfg.csa_persistent, dead_after=cfg.dead_after, active_window=cfg.active_window,
            count_floor=cfg.count_floor,
        )
        dead, active = ops.ema_csa_update(self.codebook, self.ema_sum, self.ema_count, self.unused_steps, sums, counts,
                                          update)
        self.last_used.copy_(torch.where(counts > 0, self.num_updates + 1, self.last_used))
        # On the CPU a branch costs nothing; the draws depend only on (seed, step), so skipping
        # them when no code is dead changes no later result. On a GPU (or capturable) the masked
        # path always runs.
        num_reset = dead.new_zeros((), dtype=torch.long)
        if self.capturable or self.codebook.device.type != "cpu" or bool(dead.any()):
            reset = ops.reset_dead_codes_reference(self.codebook, dead, active, self._reset_rng, cfg.reset_noise_std)
            if cfg.reset_persistent:
                denom = ops.ema_denominator(self.ema_count, cfg.eps, cfg.laplace_smoothing).unsqueeze(-1)
                self.ema_sum.copy_(torch.where(reset.view(1, -1, 1), self.codebook * denom, self.ema_sum))
            num_reset = reset.sum()
        if before is not None:  # a non-finite batch changes nothing
            for buffer, old in zip(self._updated_state(), before):
                buffer.copy_(torch.where(finite, buffer, old))
            counts, num_reset = torch.where(finite, counts, 0), torch.where(finite, num_reset, 0)
        self.num_updates.add_(1)
        return counts, num_reset, (~finite).to(counts.dtype)

    def _updated_state(self) -> tuple[torch.Tensor, ...]:
        """The buffers a codebook update writes (num_updates counts calls, skipped ones included)."""
        return self.codebook, self.ema_sum, self.ema_count, self.unused_steps, self.last_used

    def _all_reduce_statistics(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Under DDP, sum the step's statistics over ranks before the EMA, so that every rank applies
        the same update (and sees the same code usage, hence the same dead codes) and the codebooks
        stay identical: the update is then that of the union of the ranks' batches. One collective."""
        if not (self.config.sync_distributed and distributed_active()):
            return
        flat = torch.cat([sums.reshape(-1), counts.reshape(-1)])
        dist.all_reduce(flat)
        sums.copy_(flat[: sums.numel()].view_as(sums))
        counts.copy_(flat[sums.numel() :].view_as(counts))

    def prepare_update(self) -> None:
        """The host side of the next codebook update: seed `reset_rng` for it and count it."""
        device = self.codebook.device
        if self._reset_rng is None or self._reset_rng.device != device:
            # One generator, reseeded every update: a CUDA graph registers it once.
            self._reset_rng = torch.Generator(device=device)
        self._reset_rng.manual_seed(reset_seed_for(self.config.reset_seed, self._num_updates_host))
        self._num_updates_host += 1
        self._update_prepared = True

    @property
    def reset_rng(self) -> torch.Generator | None:
        """The generator of the dead-code reset draws (None before the first update)."""
        return self._reset_rng

    @torch.no_grad()
    def _metrics(self, idx: torch.Tensor, counts: torch.Tensor | None,
                 update_metrics: dict[str, torch.Tensor]) -> LazyMetrics:
        """Per-modality perplexity, codes used (batch / recent / dead), max |codeword|; per-pair index
        agreement; authors' equal_num; with an update, codes reset and whether it was skipped. All
        tensors: no host sync. The state they read (usage ages, codebook) is read now; the rest waits
        for the first read."""
        cfg = self.config
        num_mod = idx.shape[0]
        age = self.num_updates - self.last_used  # updates since m last chose k (meaningless if never)
        ever = self.last_used > 0
        codebook = self.codebook.detach()
        max_abs = torch.maximum(codebook.amax(dim=(1, 2)), -codebook.amin(dim=(1, 2)))  # max |entry|, no |E| copy

        def compute() -> dict[str, torch.Tensor]:
            call_counts = counts
            if call_counts is None:
                call_counts = ops.code_counts(idx.view(num_mod, -1), cfg.num_codes, self.codebook.dtype)
            names = self.modalities
            ppl = ops.perplexity(call_counts)
            used = (call_counts > 0).sum(dim=1)
            agreement = ops.index_agreement(idx.view(num_mod, -1))
            recent = (ever & (age < cfg.active_window)).sum(dim=1)
            dead = (~ever | (age > cfg.dead_after)).sum(dim=1)
            metrics = {}
            for i, m in enumerate(names):
                metrics[f"perplexity/{m}"] = ppl[i]
                metrics[f"codes_used/{m}"] = used[i]  # in this batch
                metrics[f"codes_recent/{m}"] = recent[i]  # chosen by m within the last active_window updates
                metrics[f"codes_dead/{m}"] = dead[i]  # not chosen by m for more than dead_after updates, or never
                metrics[f"max_abs_codeword/{m}"] = max_abs[i]  # largest |entry| of m's codebook, after the update
            for i, j in itertools.combinations(range(num_mod), 2):
                metrics[f"agreement/{names[i]}-{names[j]}"] = agreement[i, j]
            metrics["equal_num"] = ops.mode_agreement_count(idx)
            metrics.update(update_metrics)
            return metrics

        return LazyMetrics(compute)

    # ------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def lookup(self, modality: str, latents: torch.Tensor) -> LookupOutput:
        """Nearest code of `latents` [..., D] in `modality`'s codebook. Never changes the state."""
        if modality not in self._position:
            raise KeyError(f"lookup: unknown modality {modality!r}; expected one of {list(self.modalities)}")
        if latents.shape[-1] != self.config.dim:
            raise ValueError(f"lookup: latents must be [..., {self.config.dim}], got {list(latents.shape)}")
        _require_float(latents, "lookup: latents")
        _require_finite(latents.reshape(1, -1, latents.shape[-1]), (modality,), latents.shape[:-1])
        m = self._position[modality]
        flat = latents.reshape(1, -1, self.config.dim).to(self.codebook.dtype)
        self._warn_if_large_call(flat, soft_usage=False)
        idx, _ = ops.assign(flat, self.codebook[m : m + 1])
        idx = idx.view(latents.shape[:-1])
        return LookupOutput(indices=idx, codes=self.codebook[m][idx], rows=self.codes_from_indices(idx))

    @torch.no_grad()
    def codes_from_indices(self, indices: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Codewords at `indices`: [..., D] of one modality, or the full rows [..., M*D] if None."""
        if modality is not None:
            return self.codebook[self._position[modality]][indices]
        return self.codebook.permute(1, 0, 2).reshape(self.config.num_codes, -1)[indices]

    @torch.no_grad()
    def codebook_alignment(self) -> torch.Tensor:
        """The authors' `segment_loss` metric on the current codebooks (costs K x K per pair)."""
        return ops.codebook_alignment(self.codebook)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"modalities={cfg.modalities}, num_codes={cfg.num_codes}, dim={cfg.dim}, preset={cfg.preset!r}, "
                f"dta={cfg.dta}, csa={cfg.csa}, dqa={cfg.dqa}, cascade={cfg.cascade}")


def _require_float(latents: torch.Tensor, name: str) -> None:
    if not latents.is_floating_point():
        raise TypeError(f"CrossModalQuantizer: {name} must be floating point (they are continuous latents), "
                        f"got {latents.dtype}")


def _require_finite(z: torch.Tensor, names: tuple[str, ...], frame_shape: tuple[int, ...]) -> None:
    """Inference on non-finite latents has no nearest code: say where they are instead of returning
    code 0 for them. z: [M, frames, D], the frames laid out as `frame_shape`. Reads back one value:
    inference only (a training call skips its update on the device instead)."""
    bad = ~torch.isfinite(z).all(dim=-1)
    if bool(bad.any()):
        m, frame = (int(i) for i in bad.nonzero()[0])
        position = tuple(int(i) for i in np.unravel_index(frame, tuple(frame_shape)))
        raise ValueError(f"CrossModalQuantizer: latents of '{names[m]}' are not finite at frame {position} "
                         f"({int(bad.sum())} frame(s) in all); no code can be assigned to them")
