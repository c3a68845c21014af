"""codaar_kernels: the math of the CoDAAR quantizer, once.

Each module holds one operation of a training step with its eager PyTorch reference
(`<op>_reference`) and, beside it in `<op>_triton.py`, its Triton kernel; see the module
docstrings for the equations. `assign`, `assign_with_soft_usage`, `dta_accumulate` and
`ema_csa_update` (its settings: `EmaCsaConfig`) dispatch between the two (see dispatch.py). Shapes use M modalities,
N = B*T frames, K codes, D dims. utilities.py holds what every Triton launcher shares (where the
kernels run, input checks, launches that can be recorded); ahead_of_time.py compiles every launch
production makes for sm_80 and sm_90 without a GPU and reads what the compiler made of it.
"""

from .assign import assign_reference, assign_with_soft_usage_reference, soft_usage_reference, squared_distances
from .codes import codes_at_indices, full_rows, own_codes
from .dead_code_reset import reset_dead_codes_reference
from .dispatch import (
    BACKENDS,
    assign,
    assign_with_soft_usage,
    dta_accumulate,
    ema_csa_update,
    get_backend,
    set_backend,
    use_backend,
)
from .dta_accumulate import code_counts, dta_accumulate_reference
from .ema_csa_update import EmaCsaConfig, csa_cascade_, ema_csa_update_reference, ema_denominator
from .losses import cmcm_pair_reference, cmcm_reference, commitment_reference
from .metrics import codebook_alignment, index_agreement, mode_agreement_count, perplexity, temporal_modes

__all__ = [
    "BACKENDS",
    "EmaCsaConfig",
    "assign",
    "assign_with_soft_usage",
    "dta_accumulate",
    "ema_csa_update",
    "get_backend",
    "set_backend",
    "use_backend",
    "assign_reference",
    "assign_with_soft_usage_reference",
    "cmcm_pair_reference",
    "cmcm_reference",
    "code_counts",
    "codes_at_indices",
    "full_rows",
    "codebook_alignment",
    "commitment_reference",
    "csa_cascade_",
    "dta_accumulate_reference",
    "ema_csa_update_reference",
    "ema_denominator",
    "index_agreement",
    "mode_agreement_count",
    "own_codes",
    "perplexity",
    "reset_dead_codes_reference",
    "soft_usage_reference",
    "squared_distances",
    "temporal_modes",
]
