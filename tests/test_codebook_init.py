"""Data-dependent codebook init (issue 7): k-means++ seeding, the aligned init, its state, DDP."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from codaar.quantizer import CrossModalQuantizer
from codaar_kernels.kmeans_init import kmeans_codebook, kmeans_plus_plus

MODS = ("video", "audio", "text")


def synthetic_latents(batch=6, steps=5, dim=8, seed=0, scale=(1.0, 3.0, 0.5)):
    """Independent Gaussian frames per modality, with different scales per modality."""
    gen = torch.Generator().manual_seed(seed)
    return {m: s * torch.randn(batch, steps, dim, generator=gen, dtype=torch.float64) for m, s in zip(MODS, scale)}


def quantizer(init="aligned-kmeans", num_codes=16, dim=8, **settings):
    torch.manual_seed(0)
    return CrossModalQuantizer(num_codes=num_codes, dim=dim, codebook_init=init, **settings).double().train()


def frame_position(frames: torch.Tensor, row: torch.Tensor) -> int:
    """The index of the frame equal (bit for bit) to `row`; exactly one must match."""
    hits = (frames == row).all(dim=-1).nonzero().flatten().tolist()
    assert len(hits) == 1, hits
    return hits[0]


# ------------------------------------------------------------------------------ k-means++
def test_kmeans_plus_plus_gives_every_cluster_a_code():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50.0, -80.0]])
    labels = torch.arange(5).repeat_interleave(torch.tensor([40, 3, 1, 20, 7]))  # very unequal sizes
    x = centres[labels] + 0.01 * torch.randn(len(labels), 2, generator=gen)
    for seed in range(5):
        picks, duplicate = kmeans_plus_plus(x.unsqueeze(0), 5, torch.Generator().manual_seed(seed))
        assert sorted(labels[picks[0]].tolist()) == [0, 1, 2, 3, 4]
        assert not duplicate.any()


def test_more_codes_than_distinct_frames_falls_back_to_jittered_duplicates():
    distinct = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = distinct[torch.tensor([0, 1, 2, 0, 1, 2, 2])].unsqueeze(0)  # 3 distinct frames, 7 positions
    centres, sizes, picks, duplicate = kmeans_codebook(x, 6, torch.Generator().manual_seed(0), jitter=1e-3)
    first = x[0, picks[0, :3]]
    assert len({tuple(row.tolist()) for row in first}) == 3, "the first picks cover every distinct frame"
    assert duplicate[0].tolist() == [False, False, False, True, True, True]
    assert torch.equal(centres[0, :3], first)
    # duplicates: close to a frame (jitter 1e-3 x RMS), yet no two codewords are equal
    assert (torch.cdist(centres[0, 3:], distinct).min(dim=1).values < 0.01).all()
    assert len({tuple(row.tolist()) for row in centres[0]}) == 6
    assert sizes.sum() == 7


def test_lloyd_moves_centres_to_cluster_means():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]]).unsqueeze(0)
    centres, sizes, _, _ = kmeans_codebook(x, 2, torch.Generator().manual_seed(0), iterations=3)
    assert sorted(centres[0, :, 0].tolist()) == [0.5, 10.5]
    assert sizes[0].tolist() == [2.0, 2.0]


# ------------------------------------------------------------------------- quantizer init
def test_aligned_init_code_k_is_the_same_frame_in_every_modality():
    latents = synthetic_latents()
    q = quantizer()
    assert not q.is_initialized and int(q.initialized) == 0
    assert q.initialize(latents)
    frames = {m: z.reshape(-1, z.shape[-1]) for m, z in latents.items()}
    positions = set()
    for k in range(q.config.num_codes):
        n = frame_position(frames["video"], q.codebook[0, k])
        for i, m in enumerate(MODS):
            assert torch.equal(q.codebook[i, k], frames[m][n]), (k, m)
        positions.add(n)
    assert len(positions) == q.config.num_codes  # K distinct frames
    assert int(q.initialized) == 1 and not q.initialize(latents), "runs once"


def test_kmeans_init_uses_each_modalitys_own_frames():
    latents = synthetic_latents()
    q = quantizer("kmeans")
    q.initialize(latents)
    aligned = 0
    for i, m in enumerate(MODS):
        frames = latents[m].reshape(-1, 8)
        positions = [frame_position(frames, q.codebook[i, k]) for k in range(16)]
        assert len(set(positions)) == 16
        if i == 0:
            video_positions = positions
        else:
            aligned += sum(a == b for a, b in zip(video_positions, positions))
    assert aligned < 16, "per-modality picks are not aligned across modalities"


def test_init_state_is_consistent_and_does_not_explode_unlike_official():
    latents = synthetic_latents(batch=4, steps=5)  # 20 frames; K = 64 > frames: the fallback fills the rest
    bound = max(float(z.abs().max()) for z in latents.values())
    q = quantizer(num_codes=64)
    q.initialize(latents)
    assert (q.ema_count >= 1).all()
    assert torch.allclose(q.ema_sum, q.codebook * q.ema_count.unsqueeze(-1))
    assert ((q.ema_count.sum(dim=1) >= 20) & (q.ema_count.sum(dim=1) <= 20 + 64)).all()  # frames, >= 1 each
    out = q(latents)
    assert float(out.metrics["max_abs_codeword/audio"]) <= 2 * bound
    assert all(float(out.metrics[f"max_abs_codeword/{m}"]) < 2 * bound for m in MODS)

    official = quantizer("official", num_codes=64)
    out = official(latents)
    # the finding: codes not chosen in step 1 are divided by ~eps and explode (|e| ~ 1e2..1e3)
    assert all(float(out.metrics[f"max_abs_codeword/{m}"]) > 100 * bound for m in MODS)
    assert float(official.codebook.abs().max()) > 100


def test_official_init_and_global_rng_unchanged_by_the_choice_of_init():
    draws = {}
    for init in ("official", "kmeans", "aligned-kmeans"):
        torch.manual_seed(7)
        q = CrossModalQuantizer(num_codes=12, dim=4, codebook_init=init)
        draws[init] = (q.codebook.clone(), torch.rand(3))
        q.train().initialize(synthetic_latents(dim=4))
        if init != "official":
            assert not torch.equal(q.codebook, draws[init][0])
    torch.manual_seed(7)
    table = torch.empty(12, 3 * 4).uniform_(-1 / 12, 1 / 12)
    assert torch.equal(draws["official"][0], table.view(12, 3, 4).transpose(0, 1))
    for init in ("kmeans", "aligned-kmeans"):  # same construction draws, so the rest of a model inits alike
        assert torch.equal(draws[init][0], draws["official"][0]) and torch.equal(draws[init][1], draws["official"][1])


def test_init_is_deterministic_given_the_seed():
    latents = synthetic_latents()
    a, b, c = quantizer(), quantizer(), quantizer(reset_seed=1)
    for q in (a, b, c):
        q.initialize(latents)
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.ema_count, b.ema_count)
    assert not torch.equal(a.codebook, c.codebook)


def test_first_training_call_initialises_and_resume_does_not_reinitialise():
    gen = torch.Generator().manual_seed(3)
    batches = [{m: torch.randn(4, 5, 8, generator=gen, dtype=torch.float64) for m in MODS} for _ in range(6)]
    first = quantizer()
    first.eval()
    first(batches[0])  # eval: no update, no init
    assert not first.is_initialized
    first.train()
    for batch in batches[:3]:
        first(batch)
    assert first.is_initialized
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    assert int(saved["initialized"]) == 1

    resumed = quantizer()  # fresh: not initialised until the state is loaded
    resumed.load_state_dict(saved)
    assert resumed.is_initialized
    for batch in batches[3:]:
        a, b = first(batch), resumed(batch)
        for m in MODS:
            assert torch.equal(a.indices[m], b.indices[m])
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_checkpoint_from_before_the_new_buffers_loads_as_initialised():
    q = quantizer("official")
    old = {k: v for k, v in q.state_dict().items() if k not in ("last_used", "initialized")}
    fresh = quantizer("aligned-kmeans")
    fresh.load_state_dict(old)
    assert fresh.is_initialized and int(fresh.last_used.sum()) == 0


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="codebook_init"):
        CrossModalQuantizer(num_codes=4, dim=2, codebook_init="random")


# ------------------------------------------------------------------------------------ DDP
SPLIT = (2, 2)


def ddp_latents():
    return synthetic_latents(batch=sum(SPLIT), steps=5, seed=11)


def run_rank(rank: int, world: int, tmpdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=world)
    try:
        q = quantizer(num_codes=12)
        start = sum(SPLIT[:rank])
        q({m: z[start : start + SPLIT[rank]] for m, z in ddp_latents().items()})  # init + first update
        state = {k: v.tolist() for k, v in q.state_dict().items()}
        with open(os.path.join(tmpdir, f"rank{rank}.json"), "w") as f:
            json.dump(state, f)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_get_the_init_of_the_union_batch(tmp_path):
    mp.spawn(run_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = quantizer(num_codes=12)
    single(ddp_latents())
    for rank in range(2):
        state = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, expected in single.state_dict().items():
            got = torch.tensor(state[name], dtype=expected.dtype)
            assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12), (rank, name)
