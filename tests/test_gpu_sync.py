"""On a CUDA device: a training-mode quantizer step, and a whole model training step, run without
any host synchronisation (torch raises on one in sync-debug mode "error"). Needs a GPU: skipped on
CPU-only machines (CI); profiles/gpu_run.sh runs it."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu  # skipped without a CUDA device (conftest.py)


@pytest.fixture
def no_host_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_quantizer_training_step_never_syncs(no_host_sync):
    from codaar.quantizer import CrossModalQuantizer

    torch.cuda.set_sync_debug_mode("default")  # construction and warm-up (compilation) may sync
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=800, dim=256, dead_after=1, active_window=1).cuda().train()
    latents = {m: torch.randn(80, 10, 256, device="cuda", requires_grad=True) for m in quantizer.modalities}
    quantizer(latents).loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    for _ in range(3):  # dead_after=1: resets happen inside these steps
        quantizer(latents).loss.backward()


def test_model_training_step_never_syncs(no_host_sync):
    from codaar.model import CoDAARModel, ModelConfig

    torch.cuda.set_sync_debug_mode("default")
    torch.manual_seed(0)
    model = CoDAARModel(ModelConfig(audio_dim=128, video_input="vector", video_dim=64, text_dim=128)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    batch = {"audio": torch.randn(80, 10, 128, device="cuda"), "video": torch.randn(80, 10, 64, device="cuda"),
             "text": torch.randn(80, 10, 128, device="cuda")}

    def step():
        out = model(batch, cpc_generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    step()
