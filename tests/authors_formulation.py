"""The CoDAAR quantizer step written the way the authors wrote it (docs/method.md §4), independently of
codaar_kernels: one-hot [N, K] matrices times latents in float64, a Python loop over the batch for
CMCM, Python loops with per-element writes for the dead-code bookkeeping.

Used by tests/test_authors_formulation.py (equality with the vectorised reference) and by bench/
(the "authors" contestant). It consumes the same reset draws as the reference (one uniform and
one noise vector per code, from `reset_generator(seed, step)`), so reset rows compare exactly.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from codaar.quantizer import CrossModalQuantizer, reset_generator

F64 = torch.float64


class AuthorsState:
    """The authors' buffers: E and W as [K, M*D] tables, per-modality counts C_m [K], shared U [K]."""

    def __init__(self, quantizer: CrossModalQuantizer):
        num_mod, num_codes, dim = quantizer.codebook.shape
        self.E = quantizer.codebook.permute(1, 0, 2).reshape(num_codes, num_mod * dim).clone()
        self.W = quantizer.ema_sum.permute(1, 0, 2).reshape(num_codes, num_mod * dim).clone()
        self.C = [quantizer.ema_count[m].clone() for m in range(num_mod)]
        self.U = quantizer.unused_steps.clone().double()
        self.dim = dim

    def block(self, table, m):
        return table[:, m * self.dim : (m + 1) * self.dim]


def authors_step(state: AuthorsState, z: list[torch.Tensor], cfg, step: int) -> dict:
    num_mod, dim = len(z), state.dim
    batch, steps = z[0].shape[:2]
    num_codes = state.E.shape[0]
    flat = [zm.reshape(-1, dim) for zm in z]
    start_E = state.E.clone()

    distances, indices, onehots = [], [], []
    for m in range(num_mod):
        E_m = state.block(start_E, m)
        d = torch.addmm(torch.sum(E_m**2, dim=1) + torch.sum(flat[m] ** 2, dim=1, keepdim=True),
                        flat[m], E_m.t(), alpha=-2.0, beta=1.0)
        distances.append(d)
        indices.append(torch.argmin(d.detach(), dim=-1))
        onehots.append(F.one_hot(indices[-1], num_codes).double())

    # CMCM with the authors' loop over the batch
    usage = [torch.softmax(-torch.sqrt(d.clamp(min=0)), dim=-1).view(batch, steps, -1).mean(1) for d in distances]
    cmcm = 0.0
    for x, y in itertools.combinations(range(num_mod), 2):
        scores = usage[x] @ torch.log(usage[y] + 1e-10).t() + usage[y] @ torch.log(usage[x] + 1e-10).t()
        exp_scores = torch.exp(scores + torch.max(-scores))
        pair = 0.0
        for i in range(batch):
            pair = pair - torch.log(exp_scores[i, i] / (torch.sum(exp_scores[i]) + 1e-5))
        cmcm = cmcm + pair / batch
    cmcm = cfg.dqa_weight * cmcm

    # commitment from the start-of-step codebook, gathered by one-hot matmuls
    own = [onehots[m] @ state.block(start_E, m) for m in range(num_mod)]
    commit = []
    for m in range(num_mod):
        loss = 0.0
        for p in range(num_mod):
            if cfg.commit_cross_target == "partner_code" or p == m:
                target = own[p]
            else:
                target = onehots[m] @ state.block(start_E, p)
            weight = cfg.commit_self_weight if p == m else cfg.commit_cross_weight
            if cfg.loss_reduction == "mean":
                loss = loss + weight * F.mse_loss(flat[m], target.detach())
            else:
                loss = loss + weight * ((flat[m] - target.detach()) ** 2).sum() / batch
        commit.append(loss)

    # DTA + EMA, one modality at a time, one-hot matmuls for the sums
    self_w, cross_w = cfg.effective_dta_weights()
    denominators = []
    for m in range(num_mod):
        n_m = torch.sum(onehots[m], dim=0)
        state.C[m] = cfg.decay * state.C[m] + (1 - cfg.decay) * n_m
        if cfg.laplace_smoothing:
            total = torch.sum(state.C[m])
            state.C[m] = (state.C[m] + cfg.eps) / (total + num_codes * cfg.eps) * total
        H = self_w * (onehots[m].t() @ flat[m].detach())
        for p in range(num_mod):
            if p != m:
                H = H + cross_w * (onehots[m].t() @ flat[p].detach())
        W_m = cfg.decay * state.block(state.W, m) + (1 - cfg.decay) * H
        state.W[:, m * dim : (m + 1) * dim] = W_m
        denom = state.C[m] if cfg.laplace_smoothing else state.C[m] + cfg.eps
        denominators.append(denom)
        state.E[:, m * dim : (m + 1) * dim] = W_m / denom.unsqueeze(1)

    if cfg.csa:
        order = [cfg.modalities.index(name) for name in cfg.cascade]
        for m in order:
            mean = sum(state.block(state.E, p) for p in range(num_mod)) / num_mod
            state.E[:, m * dim : (m + 1) * dim] = mean
        if cfg.csa_persistent:
            for m in range(num_mod):
                state.W[:, m * dim : (m + 1) * dim] = state.block(state.E, m) * denominators[m].unsqueeze(1)

    # dead-code bookkeeping, element by element
    state.U = state.U + 1
    for m in range(num_mod):
        for n in range(indices[m].shape[0]):
            state.U[indices[m][n].item()] = 0
    dead, active = [], []
    for k in range(num_codes):
        if state.U[k] > cfg.dead_after:
            dead.append(k)
            state.U[k] = 0
        elif 0 <= state.U[k] < cfg.active_window:
            active.append(k)
    generator = reset_generator(cfg.reset_seed, step)
    uniform = torch.rand(num_codes, generator=generator, dtype=F64)
    noise = torch.randn(num_codes, num_mod, dim, generator=generator, dtype=torch.float32).double()
    if dead and active:
        snapshot = state.E.clone()
        for k in dead:
            source = active[min(int(uniform[k] * len(active)), len(active) - 1)]
            state.E[k] = snapshot[source] + cfg.reset_noise_std * noise[k].reshape(-1)
            if cfg.reset_persistent:
                for m in range(num_mod):
                    state.W[k, m * dim : (m + 1) * dim] = state.block(state.E, m)[k] * denominators[m][k]
    # what the decoders and the logs get: the full start-of-step row at each frame's own index, and
    # perplexities from the one-hot means
    rows = [onehots[m] @ start_E for m in range(num_mod)]
    usage = [onehots[m].mean(dim=0) for m in range(num_mod)]
    perplexity = [torch.exp(-torch.sum(p * torch.log(p + 1e-10))) for p in usage]
    return {"indices": indices, "cmcm": cmcm, "commit": commit, "dead": dead, "rows": rows, "perplexity": perplexity}
