"""Non-contiguous inputs for the kernel tests: the launchers read views through their strides."""

from __future__ import annotations

import torch


def strided_views(num_mod, num_frames, num_codes, dim, gen, layout, device):
    """(z [M, N, D], codebook [M, K, D]) on `device` as non-contiguous views of larger or permuted
    storage (made there: moving a view copies it into a dense tensor)."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    if layout == "transposed":  # D-major z, K-major codebook across modalities
        z = randn(num_mod, dim, num_frames).transpose(1, 2)
        codebook = randn(num_codes, num_mod, dim).permute(1, 0, 2)
    elif layout == "sliced":  # a window of wider rows, every other frame and code
        z = randn(num_mod, 2 * num_frames, dim + 7)[:, ::2, 3:3 + dim]
        codebook = randn(num_mod + 1, 2 * num_codes, dim)[1:, 1::2]
    else:  # "expanded": one modality's frames for all (stride 0), a codebook of [M, K, D] from [K, M*D]
        z = randn(1, num_frames, dim).expand(num_mod, -1, -1)
        codebook = randn(num_codes, num_mod * dim).view(num_codes, num_mod, dim).transpose(0, 1)
    assert not z.is_contiguous() and not codebook.is_contiguous()
    return z, codebook
