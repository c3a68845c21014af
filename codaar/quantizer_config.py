"""Configuration of the cross-modal quantizer: switches, and the two presets that name sets of them.

`official` reproduces the authors' code that produced the published numbers; `paper` follows the
equations as printed. Every quantizer difference of spec §8 is its own switch below; a preset only
fills the switches the caller left at None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PRESETS: dict[str, dict[str, object]] = {
    "official": {
        "commit_self_weight": 0.5,  # spec §8.1: 2*beta
        "commit_cross_target": "partner_code",  # §8.2: E_p[k_p]
        "loss_reduction": "mean",  # §8.3: mse over B*T*D
        "decoder_code": "own_index_row",  # §8.4: full row E[k_m] for decoder m
        "laplace_smoothing": True,  # §8.6
        "csa_persistent": False,  # §8.7: CSA shifts only the lookup codebook
        "dqa_weight": 0.5,  # §8.8: global factor 0.5
        "reset_persistent": False,  # §8.10: reset rows not written to the EMA state
    },
    "paper": {
        "commit_self_weight": 0.25,  # Eq. 8: beta
        "commit_cross_target": "same_index",  # Eq. 8: e_n(k_m)
        "loss_reduction": "sum",  # Eq. 8: squared norms summed over t
        "decoder_code": "concat_codes",  # Eq. 9: [z_a; z_v; z_t] quantized, same for all decoders
        "laplace_smoothing": False,  # Eq. 5: S / (C + eps)
        "csa_persistent": True,  # Sec. 4.2: the codewords are moved
        "dqa_weight": 1.0,  # Eq. 10: one CMCM term per pair
        "reset_persistent": True,  # Sec. 4: the code is re-initialised
    },
}

DEFAULT_DTA_WEIGHTS = {1: (1.0, 0.0), 2: (0.75, 0.25), 3: (0.6, 0.2)}  # (self, cross); paper Sec. 4.1
CHOICES = {
    "commit_cross_target": ("partner_code", "same_index"),
    "loss_reduction": ("mean", "sum"),
    "decoder_code": ("own_index_row", "concat_codes"),
    "codebook_init": ("official", "kmeans", "aligned-kmeans"),
}


@dataclass(frozen=True)
class QuantizerConfig:
    """All settings of `CrossModalQuantizer`. Fields left at None are filled from `preset`."""

    modalities: tuple[str, ...] = ("video", "audio", "text")  # order of the [M, K, D] state and of full rows
    num_codes: int = 800  # K
    dim: int = 256  # D, per modality
    preset: str = "official"
    dta: bool = True  # Discrete Temporal Alignment: partners' latents enter the EMA sums (Eq. 4)
    csa: bool = True  # Cascading Semantic Alignment (Eq. 6-7)
    dqa: bool = True  # the CMCM loss
    cascade: tuple[str, ...] | None = None  # CSA order; None = reversed(modalities): T->A->V, A->V
    dta_self_weight: float | None = None  # None: 0.6 (three modalities) / 0.75 (two)
    dta_cross_weight: float | None = None  # None: 0.2 / 0.25, per partner
    decay: float = 0.99  # rho of Eq. 5
    eps: float = 1e-5  # epsilon of Eq. 5 and of the Laplace smoothing
    commit_self_weight: float | None = None
    commit_cross_weight: float = 0.125  # beta / 2, the same in paper and code
    commit_cross_target: str | None = None
    loss_reduction: str | None = None
    decoder_code: str | None = None
    laplace_smoothing: bool | None = None
    csa_persistent: bool | None = None
    dqa_weight: float | None = None
    reset_persistent: bool | None = None
    dead_after: int = 300  # N_re: a code unused for more than this many steps is reset
    active_window: int = 100  # reset sources: codes used within this many steps
    reset_noise_std: float = 0.001
    reset_seed: int = 0  # seeds the reset draws (a fresh generator per step, from seed and step)
    # official: Uniform(-1/K, 1/K) drawn in float32 from torch's global RNG, EMA sums = a copy, counts 0
    # (the authors'; collapses at step 1, see FINDINGS.md 1). kmeans: each modality's codebook from
    # k-means++ on its own latents of the first training batch (indices not aligned). aligned-kmeans:
    # k-means++ on the frames of all modalities concatenated; code k of every modality is the same
    # (sample, time) frame. Both data-dependent inits run once, at the first update (or `initialize`),
    # with EMA counts = frames per code (>= 1) and sums = codeword x count. Deviations from the authors.
    codebook_init: str = "official"
    init_iterations: int = 0  # Lloyd steps after the k-means++ seeding (0: codewords are the picked frames)
    init_jitter: float = 1e-3  # K > distinct frames: duplicated picks get N(0, (jitter x RMS)^2) noise
    # Guard (deviation from the authors, 0 = off): after the EMA a code whose count is below the floor
    # is held at its previous codeword (count := floor, sum := codeword x floor) instead of W / ~eps.
    count_floor: float = 0.0
    deterministic: bool = False  # on GPU: sorted (bit-reproducible) instead of atomic DTA accumulation
    sync_distributed: bool = True  # under torch.distributed, sum the step's DTA sums and counts over ranks

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"QuantizerConfig.preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "modalities", tuple(self.modalities))
        mods = self.modalities
        if not mods or len(set(mods)) != len(mods):
            raise ValueError(f"QuantizerConfig.modalities: expected distinct names, got {mods!r}")
        cascade = tuple(reversed(mods)) if self.cascade is None else tuple(self.cascade)
        if sorted(cascade) != sorted(mods):
            raise ValueError(f"QuantizerConfig.cascade: expected an order of {mods!r}, got {cascade!r}")
        object.__setattr__(self, "cascade", cascade)
        default_self, default_cross = DEFAULT_DTA_WEIGHTS.get(len(mods), (1.0 / len(mods),) * 2)
        if self.dta_self_weight is None:
            object.__setattr__(self, "dta_self_weight", default_self)
        if self.dta_cross_weight is None:
            object.__setattr__(self, "dta_cross_weight", default_cross)
        if self.num_codes < 1 or self.dim < 1:
            raise ValueError(f"QuantizerConfig: num_codes and dim must be >= 1, got {self.num_codes}, {self.dim}")
        if self.count_floor < 0 or self.init_iterations < 0 or self.init_jitter < 0:
            raise ValueError(f"QuantizerConfig: count_floor, init_iterations and init_jitter must be >= 0, got "
                             f"{self.count_floor}, {self.init_iterations}, {self.init_jitter}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"QuantizerConfig.decay: expected 0 <= decay < 1, got {self.decay}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"QuantizerConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def effective_dta_weights(self) -> tuple[float, float]:
        """(self, cross) weights of the EMA sums: DTA off is plain per-modality EMA k-means."""
        return (self.dta_self_weight, self.dta_cross_weight) if self.dta else (1.0, 0.0)

    def replace(self, **changes: object) -> QuantizerConfig:
        """A copy with some fields changed; preset-filled switches follow a new preset."""
        if "preset" in changes:
            current = dataclasses.asdict(self)
            for name in PRESETS[self.preset]:
                if name not in changes and current[name] == PRESETS[self.preset][name]:
                    changes[name] = None
        return dataclasses.replace(self, **changes)
