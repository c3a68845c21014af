"""Configuration of the cross-modal quantizer: switches, and the presets that name sets of them.

`official` reproduces the authors' code that produced the published numbers; `paper` follows the
equations as printed. Every quantizer difference of docs/method.md §9 is its own switch below; a preset only
fills the switches the caller left unset (None).
"""

from __future__ import annotations

from codaar.settings import SettingsError, setting, settings

PRESETS: dict[str, dict[str, object]] = {
    "official": {
        "commit_self_weight": 0.5,  # docs/method.md §9.1: 2*beta
        "commit_cross_target": "partner_code",  # docs/method.md §9.2: E_p[k_p]
        "loss_reduction": "mean",  # docs/method.md §9.3: mse over B*T*D
        "decoder_code": "own_index_row",  # docs/method.md §9.4: full row E[k_m] for decoder m
        "laplace_smoothing": True,  # docs/method.md §9.6
        "csa_persistent": False,  # docs/method.md §9.7: CSA shifts only the lookup codebook
        "dqa_weight": 0.5,  # docs/method.md §9.8: global factor 0.5
        "reset_persistent": False,  # docs/method.md §9.10: reset rows not written to the EMA state
        "codebook_init": "official",  # the authors' tiny uniform table (collapses at step 1, docs/findings.md §1)
    },
    "paper": {
        "commit_self_weight": 0.25,  # Eq. 8: beta
        "commit_cross_target": "same_index",  # Eq. 8: e_n(k_m)
        "loss_reduction": "sum",  # Eq. 8: squared norms summed over t
        "decoder_code": "concat_codes",  # Eq. 9: [z_a; z_v; z_t] quantized, same for all decoders
        "laplace_smoothing": False,  # Eq. 5: S / (C + eps)
        "csa_persistent": True,  # paper §4.1.3: the codewords are moved
        "dqa_weight": 1.0,  # Eq. 10: one CMCM term per pair
        "reset_persistent": True,  # paper §4.1.4: the code is re-initialised
        "codebook_init": "official",
    },
}
# The authors' math with their known failure mode removed: their init collapses the codebook at
# step 1 until the first dead-code reset (docs/findings.md §1); the aligned data-dependent init does not.
# Chosen by measurement (README, "The default recipe").
PRESETS["recommended"] = {**PRESETS["official"], "codebook_init": "aligned-kmeans"}

DEFAULT_DTA_WEIGHTS = {1: (1.0, 0.0), 2: (0.75, 0.25), 3: (0.6, 0.2)}  # (self, cross); paper §4.1.3, §5.2
CODEBOOK_INITS = ("official", "kmeans", "aligned-kmeans")


@settings
class QuantizerConfig:
    """All settings of `CrossModalQuantizer`. Fields left at None are filled from `preset`."""

    modalities: tuple[str, ...] = setting(("video", "audio", "text"), "modality names, comma-separated; their order "
                                          "is the order of the [M, K, D] state and of full codebook rows (AV: "
                                          "video,audio)")
    num_codes: int = setting(800, "K: codes per modality", at_least=1)
    dim: int = setting(256, "D: latent and code dimension per modality", at_least=1)
    preset: str = setting("official", "official: the authors' code that produced the published numbers; paper: the "
                          "equations as printed; recommended: official with the aligned k-means codebook init "
                          "(no collapse at step 1). A preset fills every switch left unset", choices=tuple(PRESETS))
    dta: bool = setting(True, "Discrete Temporal Alignment: partners' same-time latents enter the EMA sums (Eq. 4)")
    csa: bool = setting(True, "Cascading Semantic Alignment of same-index codewords (Eq. 6-7)")
    dqa: bool = setting(True, "DQA: the cross-modal code matching (CMCM) loss")
    cascade: tuple[str, ...] | None = setting(None, "CSA order, e.g. text,audio,video (none: the modalities reversed: "
                                              "T->A->V, AV: A->V)")
    dta_self_weight: float | None = setting(None, "weight of a modality's own latents in its EMA sums (none: 0.6 "
                                            "with three modalities, 0.75 with two)", at_least=0)
    dta_cross_weight: float | None = setting(None, "weight of each partner's latents in the EMA sums (none: 0.2 / "
                                             "0.25)", at_least=0)
    decay: float = setting(0.99, "rho of Eq. 5: EMA decay of the code sums and counts", at_least=0, below=1)
    eps: float = setting(1e-5, "epsilon of Eq. 5 and of the Laplace smoothing", above=0)
    commit_self_weight: float | None = setting(None, "commitment weight to the own code (official 0.5, paper 0.25)",
                                               at_least=0)
    commit_cross_weight: float = setting(0.125, "commitment weight to each partner's code (beta / 2)", at_least=0)
    commit_cross_target: str | None = setting(None, "partner_code: E_p[k_p] (official); same_index: E_p[k_m] "
                                              "(paper Eq. 8)", choices=("partner_code", "same_index"))
    loss_reduction: str | None = setting(None, "squared errors: mean over B*T*D (official) or summed over t and D, "
                                         "mean over clips (paper)", choices=("mean", "sum"))
    decoder_code: str | None = setting(None, "own_index_row: decoder m gets the full row E[k_m] (official); "
                                       "concat_codes: every modality's own code (paper Eq. 9)",
                                       choices=("own_index_row", "concat_codes"))
    laplace_smoothing: bool | None = setting(None, "E = W / C~ with Laplace-smoothed counts (official) or "
                                             "W / (C + eps)")
    csa_persistent: bool | None = setting(None, "the EMA continues from the CSA-moved codewords (paper) or CSA "
                                          "moves only the lookup codebook (official)")
    dqa_weight: float | None = setting(None, "factor of the CMCM loss (official 0.5, paper 1.0)", at_least=0)
    reset_persistent: bool | None = setting(None, "dead-code resets are written into the EMA state (paper) or last "
                                            "one step unless chosen (official)")
    dead_after: int = setting(300, "N_re: a code unused for more than this many updates is reset", at_least=1)
    active_window: int = setting(100, "reset sources: codes used within this many updates", at_least=1)
    reset_noise_std: float = setting(0.001, "std of the noise added to a reset codeword", at_least=0)
    reset_seed: int = setting(0, "seeds the reset draws (a fresh generator per update, from seed and update number); "
                              "the trainer sets it from --seed", at_least=0, at_most=2**63 - 1, flag=False)
    codebook_init: str | None = setting(
        None, "official: the authors' Uniform(-1/K, 1/K) table with zero counts (codes a modality skips at step 1 "
        "explode, so the codebook collapses until the first dead-code reset, ~300 updates); kmeans: each modality's "
        "codebook from k-means++ on its own latents of the first training batch (indices not aligned); "
        "aligned-kmeans: k-means++ on the frames of all modalities together, code k of every modality is the same "
        "moment (none: the preset's)", choices=CODEBOOK_INITS)
    init_iterations: int = setting(0, "Lloyd iterations after the k-means++ seeding of a data-dependent init",
                                   at_least=0)
    init_jitter: float = setting(1e-3, "K > distinct frames: duplicated picks get N(0, (jitter x RMS)^2) noise",
                                 at_least=0)
    count_floor: float = setting(0.0, "guard, not in the authors' code: a code whose EMA count falls below this is "
                                 "held at its previous codeword instead of dividing by ~eps (0: off)", at_least=0)
    deterministic: bool = setting(False, "bit-reproducible (sorted) DTA accumulation on GPU instead of atomic adds")
    sync_distributed: bool = setting(True, "under torch.distributed, sum the step's DTA sums and counts over ranks",
                                     flag=False)

    def __post_init__(self) -> None:
        self.validate_fields()
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        mods = self.modalities
        if not mods or len(set(mods)) != len(mods):
            raise SettingsError("modalities", "distinct names, at least one", ",".join(mods))
        cascade = tuple(reversed(mods)) if self.cascade is None else self.cascade
        if sorted(cascade) != sorted(mods):
            raise SettingsError("cascade", f"an order of {','.join(mods)}", ",".join(cascade))
        object.__setattr__(self, "cascade", cascade)
        default_self, default_cross = DEFAULT_DTA_WEIGHTS.get(len(mods), (1.0 / len(mods),) * 2)
        if self.dta_self_weight is None:
            object.__setattr__(self, "dta_self_weight", default_self)
        if self.dta_cross_weight is None:
            object.__setattr__(self, "dta_cross_weight", default_cross)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def effective_dta_weights(self) -> tuple[float, float]:
        """(self, cross) weights of the EMA sums: DTA off is plain per-modality EMA k-means."""
        return (self.dta_self_weight, self.dta_cross_weight) if self.dta else (1.0, 0.0)

