"""One pretraining step (forward, backward, per-module clipping, Adam) two ways, for bench/ and profiles/.

- `codaar`: our model and trainer step, float32, the vectorised quantizer (Triton kernels on CUDA).
- `codaar-graph` (CUDA only): the same step captured in a CUDA graph (codaar/train/graph_step.py).
- `authors`: the same model in float64 with the quantizer step written the authors' way
  (tests/authors_formulation.py: one-hot [N, K] matmuls, a Python loop over the batch for CMCM,
  per-element dead-code bookkeeping) and autograd anomaly detection on, as in their script (docs/design.md §2).

Shapes: `default` (the built-in data: audio 128, video 64-d vectors, text 10 x 128, B = 80) and
`paper` (audio 128, video 7 x 7 x 512 maps, text 10 x 768; B = 4 here, so a float64 CPU step takes
seconds rather than minutes; the ratio, not the batch, is the point).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from codaar.model import CoDAARModel, ModelConfig
from codaar.train.graph_step import GraphedTrainStep
from tests.authors_formulation import AuthorsState, authors_step

SHAPES = {
    "default": dict(batch=80, model=dict(audio_dim=128, video_input="vector", video_dim=64, text_dim=128)),
    "paper": dict(batch=4, model=dict(audio_dim=128, video_input="spatial", video_dim=512, text_dim=768)),
}
FRAMES = 10


@dataclass
class _Output:  # what CoDAARModel reads from its quantizer
    indices: dict
    quantized: dict
    tri_code: dict
    loss: torch.Tensor
    losses: dict
    metrics: dict


class AuthorsQuantizer(nn.Module):
    """Stands in for CrossModalQuantizer inside CoDAARModel, computing the step the authors' way."""

    def __init__(self, quantizer):
        super().__init__()
        self.config = quantizer.config
        self.state = AuthorsState(quantizer)
        self.steps = 0

    def forward(self, latents):
        names = self.config.modalities
        z = [latents[m] for m in names]
        batch, frames, dim = z[0].shape
        out = authors_step(self.state, z, self.config, self.steps)
        self.steps += 1
        everything = torch.cat([zm.reshape(-1, dim) for zm in z], dim=1)  # Z = [z_v; z_a; z_t]
        tri = {m: (everything + (out["rows"][i] - everything).detach()).view(batch, frames, -1)
               for i, m in enumerate(names)}
        losses = {f"commit/{m}": out["commit"][i] for i, m in enumerate(names)}
        losses["dqa"] = out["cmcm"]
        metrics = {f"perplexity/{m}": out["perplexity"][i].detach() for i, m in enumerate(names)}
        return _Output({m: out["indices"][i].view(batch, frames) for i, m in enumerate(names)}, {}, tri,
                       sum(losses.values()), losses, metrics)


def make_step(contestant: str, shape: str, device: str = "cpu"):
    """A zero-argument callable running one full training step on a fixed random batch."""
    spec = SHAPES[shape]
    dtype = torch.float64 if contestant == "authors" else torch.float32
    torch.manual_seed(0)
    model = CoDAARModel(ModelConfig(**spec["model"])).to(device, dtype).train()
    if contestant == "authors":
        model.quantizer = AuthorsQuantizer(model.quantizer)
    cfg = model.config
    video = (FRAMES, 7, 7, cfg.video_dim) if cfg.video_input == "spatial" else (FRAMES, cfg.video_dim)
    gen = torch.Generator().manual_seed(1)
    batch = {"audio": torch.randn(spec["batch"], FRAMES, cfg.audio_dim, generator=gen),
             "video": torch.randn(spec["batch"], *video, generator=gen),
             "text": torch.randn(spec["batch"], FRAMES, cfg.text_dim, generator=gen)}
    batch = {m: x.to(device, dtype) for m, x in batch.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    groups = [list(module.parameters()) for module in (model.encoders, model.text_lstm, model.cpc, model.decoders)]

    def optimize(inputs, **model_inputs):
        with torch.autograd.set_detect_anomaly(contestant == "authors"):
            out = model(inputs, **model_inputs)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        for params in groups:
            torch.nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()
        return {"loss": out.loss.detach()}, out.indices

    if contestant == "codaar-graph":
        graphed = GraphedTrainStep(model, optimizer, optimize)
        generator = torch.Generator().manual_seed(2)
        for _ in range(graphed.warmup + 1):  # warm-up steps, then the capture
            graphed(batch, generator)

        def step():
            graphed(batch, generator)
            torch.cuda.synchronize()
    else:
        def step():
            optimize(batch)
            if device == "cuda":
                torch.cuda.synchronize()

    return step
