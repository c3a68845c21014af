"""Each kernel of the quantizer step, three contestants on the same inputs:

- `triton`: our fused kernel (CUDA only; `triton-tf32` also for assign);
- `eager`: our vectorised PyTorch reference (codaar_kernels.*_reference);
- `authors`: the operation as the authors' code does it (docs/method.md §4, docs/design.md §2), as described there:
  float64 copies and one addmm + argmin per modality, one-hot [N, K] float64 matrices times latents,
  a modality-by-modality EMA with clones of the codebook.

Shapes: `paper` (M=3, N=B*T=800, K=800, D=256) and `scaled` (M=3, N=65,536, K=8,192, D=256; CUDA only:
on a CPU the eager and one-hot versions need minutes and many GB per call).

    python -m pytest bench/bench_kernels.py --benchmark-columns=mean,stddev,rounds --benchmark-group-by=group

Every timed call ends with torch.cuda.synchronize() on a GPU, so kernel time is counted, not launches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import codaar_kernels as ops

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SHAPES = {"paper": (3, 800, 800, 256), "scaled": (3, 65536, 8192, 256)}
WEIGHTS = (0.6, 0.2)
UPDATE = ops.EmaCsaConfig(decay=0.99, eps=1e-5, laplace_smoothing=True, csa_order=(2, 1, 0), csa_persistent=False,
                          dead_after=300, active_window=100)


def synchronize():
    if CUDA:
        torch.cuda.synchronize()


def inputs(shape: str):
    num_mod, frames, codes, dim = SHAPES[shape]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    z = torch.randn(num_mod, frames, dim, device=DEVICE, generator=gen)
    codebook = torch.randn(num_mod, codes, dim, device=DEVICE, generator=gen)
    idx = torch.randint(0, codes, (num_mod, frames), device=DEVICE, generator=gen)
    return z, codebook, idx


# ------------------------------------------------------------------ the authors' formulations
def authors_assign(z, codebook):
    found = []
    for m in range(z.shape[0]):
        zm, em = z[m].double(), codebook[m].double()
        d = torch.addmm(torch.sum(em**2, dim=1) + torch.sum(zm**2, dim=1, keepdim=True), zm, em.t(),
                        alpha=-2.0, beta=1.0)
        found.append(torch.argmin(d, dim=-1))
    return torch.stack(found)


def authors_dta(z, idx, codes):
    z = z.double()
    sums, counts = [], []
    for m in range(z.shape[0]):
        onehot = F.one_hot(idx[m], codes).double()
        total = WEIGHTS[0] * (onehot.t() @ z[m])
        for p in range(z.shape[0]):
            if p != m:
                total = total + WEIGHTS[1] * (onehot.t() @ z[p])
        sums.append(total)
        counts.append(onehot.sum(dim=0))
    return torch.stack(sums), torch.stack(counts)


def authors_ema_csa(codebook, ema_sum, ema_count, sums, counts):
    decay, eps = UPDATE.decay, UPDATE.eps
    num_codes = codebook.shape[1]
    for m in range(codebook.shape[0]):
        ema_count[m] = decay * ema_count[m] + (1 - decay) * counts[m]
        total = torch.sum(ema_count[m])
        ema_count[m] = (ema_count[m] + eps) / (total + num_codes * eps) * total
        ema_sum[m] = decay * ema_sum[m] + (1 - decay) * sums[m]
        codebook[m] = ema_sum[m] / ema_count[m].unsqueeze(-1)
    old = codebook.clone()
    codebook[2] = (old[0] + old[1] + old[2]) / 3
    codebook[1] = (old[1] + old[0] + codebook[2]) / 3
    codebook[0] = (old[0] + codebook[1] + codebook[2]) / 3


# ----------------------------------------------------------------------------- the benches
def contestant_or_skip(contestant: str, shape: str) -> None:
    if contestant.startswith("triton") and not CUDA:
        pytest.skip("Triton contestants need a CUDA device")
    if shape == "scaled" and not CUDA:
        pytest.skip("the scaled shape needs a CUDA device")


def timed(benchmark, group: str, fn, rounds: int = 10) -> None:
    def run():
        out = fn()
        synchronize()
        return out

    run()  # warm-up: compile and autotune outside the timing
    benchmark.group = group
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton", "triton-tf32", "eager", "authors"])
def test_assign(benchmark, contestant, shape):
    contestant_or_skip(contestant, shape)
    z, codebook, _ = inputs(shape)
    fns = {"eager": lambda: ops.assign_reference(z, codebook), "authors": lambda: authors_assign(z, codebook)}
    if contestant.startswith("triton"):
        from codaar_kernels.assign_triton import assign_triton

        fns[contestant] = lambda: assign_triton(z, codebook, allow_tf32=contestant == "triton-tf32")
    timed(benchmark, f"assign {shape}", fns[contestant])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton", "eager", "authors"])
def test_soft_usage_forward_backward(benchmark, contestant, shape):
    contestant_or_skip(contestant, shape)
    if contestant == "authors":
        pytest.skip("the authors' DQA is the eager computation plus a per-sample loop; see bench_quantizer_step")
    z, codebook, _ = inputs(shape)
    z.requires_grad_()
    if contestant == "triton":
        from codaar_kernels.soft_usage_triton import soft_usage_triton as soft_usage
    else:
        soft_usage = ops.soft_usage_reference

    def run():
        usage = soft_usage(z, codebook, 10)
        (grad,) = torch.autograd.grad(usage.square().sum(), z)
        return grad

    timed(benchmark, f"soft usage fwd+bwd {shape}", run, rounds=5)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton", "triton-deterministic", "eager", "authors"])
def test_dta_accumulate(benchmark, contestant, shape):
    contestant_or_skip(contestant, shape)
    z, codebook, idx = inputs(shape)
    codes = codebook.shape[1]
    fns = {"eager": lambda: ops.dta_accumulate_reference(z, idx, codes, *WEIGHTS),
           "authors": lambda: authors_dta(z, idx, codes)}
    if contestant.startswith("triton"):
        from codaar_kernels.dta_accumulate_triton import dta_accumulate_triton

        fns[contestant] = lambda: dta_accumulate_triton(z, idx, codes, *WEIGHTS,
                                                        deterministic=contestant == "triton-deterministic")
    timed(benchmark, f"dta_accumulate {shape}", fns[contestant])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton", "eager", "authors"])
def test_ema_csa_update(benchmark, contestant, shape):
    contestant_or_skip(contestant, shape)
    z, codebook, idx = inputs(shape)
    codes = codebook.shape[1]
    sums, counts = ops.dta_accumulate_reference(z, idx, codes, *WEIGHTS)
    dtype = torch.float64 if contestant == "authors" else torch.float32
    state = [codebook.to(dtype), codebook.to(dtype), torch.ones(codebook.shape[:2], device=DEVICE, dtype=dtype)]
    unused = torch.zeros(codes, dtype=torch.long, device=DEVICE)
    sums, counts = sums.to(dtype), counts.to(dtype)
    fns = {"eager": lambda: ops.ema_csa_update_reference(*state, unused, sums, counts, UPDATE),
           "authors": lambda: authors_ema_csa(*state, sums, counts)}
    if contestant == "triton":
        from codaar_kernels.ema_csa_update_triton import ema_csa_update_triton

        fns["triton"] = lambda: ema_csa_update_triton(*state, unused, sums, counts, UPDATE)
    timed(benchmark, f"ema_csa_update {shape}", fns[contestant])
