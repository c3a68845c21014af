"""Dead-code reset (docs/method.md §4.6 step 3), vectorised and without host synchronisation.

If some code is dead and some is active, every dead row k (all modalities at once, the whole
M*D row) becomes a copy of a uniformly drawn active row plus N(0, noise_std^2) noise. Sources are
read from the codebook as it was before any row is written. The draws have a fixed shape (one
uniform per code, one noise vector per code), so the step needs no data-dependent branch.
"""

from __future__ import annotations

import torch


def reset_dead_codes_reference(
    codebook: torch.Tensor,
    dead: torch.Tensor,
    active: torch.Tensor,
    generator: torch.Generator,
    noise_std: float,
) -> torch.Tensor:
    """Reset dead rows of E [M, K, D] in place; return the mask [K] of rows that were reset."""
    num_mod, num_codes, dim = codebook.shape
    device = codebook.device
    uniform = torch.rand(num_codes, generator=generator, device=device, dtype=torch.float64)
    # Noise is drawn in float32 whatever the codebook dtype, so float32 and float64 runs reset alike.
    noise = torch.randn(num_codes, num_mod, dim, generator=generator, device=device, dtype=torch.float32)

    num_active = active.sum()
    # rank-th active code: the first position where the running count of active codes reaches rank+1
    rank = torch.minimum((uniform * num_active).long(), (num_active - 1).clamp(min=0))
    source = torch.searchsorted(torch.cumsum(active.long(), 0), rank + 1).clamp(max=num_codes - 1)
    reset = dead & (num_active > 0)

    replacement = codebook[:, source] + noise_std * noise.to(codebook.dtype).transpose(0, 1)
    codebook.copy_(torch.where(reset.view(1, -1, 1), replacement, codebook))
    return reset
