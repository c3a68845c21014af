"""Under torch.distributed (2 CPU processes, gloo), a quantizer step on each rank's share of the
batch leaves every rank with the codebooks of one single-process step on the union of the batches."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from codaar.quantizer import CrossModalQuantizer

SETTINGS = dict(num_codes=24, dim=6, dead_after=2, active_window=2, reset_seed=5)
SPLIT = (3, 5)  # uneven shares of each step's 8 clips
STEPS = 5


def batches():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 2
    for _ in range(STEPS):
        labels = torch.randint(0, 4, (sum(SPLIT), 7), generator=gen)
        yield {m: centres[labels] + 0.2 * torch.randn(sum(SPLIT), 7, 6, generator=gen, dtype=torch.float64)
               for m in ("video", "audio", "text")}


def fresh_quantizer() -> CrossModalQuantizer:
    torch.manual_seed(1)
    return CrossModalQuantizer(**SETTINGS).double().train()


def run_rank(rank: int, world: int, tmpdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=world)
    try:
        quantizer = fresh_quantizer()
        start = sum(SPLIT[:rank])
        resets = 0
        for batch in batches():
            out = quantizer({m: z[start : start + SPLIT[rank]] for m, z in batch.items()})
            resets += int(out.metrics["codes_reset"])
        state = {k: v.tolist() for k, v in quantizer.state_dict().items()}
        with open(os.path.join(tmpdir, f"rank{rank}.json"), "w") as f:
            json.dump({"state": state, "resets": resets}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_step_equals_single_process_on_the_union(tmp_path):
    mp.spawn(run_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = fresh_quantizer()
    resets = 0
    for batch in batches():
        resets += int(single(batch).metrics["codes_reset"])
    assert resets > 0, "the run was meant to include dead-code resets"
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["resets"] == resets
        for name, expected in single.state_dict().items():
            got = torch.tensor(result["state"][name], dtype=expected.dtype)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"rank {rank}: {name}")
