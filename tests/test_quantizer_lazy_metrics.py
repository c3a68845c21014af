"""A call's metrics are computed when first read, with the values of that call: reading them after
later updates (which rewrite the codebook, the usage ages and the counters in place) changes nothing."""

import torch

from codaar.quantizer import CrossModalQuantizer

MODS = ("video", "audio", "text")


def batches(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(6, 16, generator=gen)
    for _ in range(steps):
        labels = torch.randint(0, 6, (4, 5), generator=gen)
        yield {m: centres[labels] + 0.1 * torch.randn(4, 5, 16, generator=gen) for m in MODS}


def quantizer():
    torch.manual_seed(0)
    q = CrossModalQuantizer(modalities=MODS, num_codes=24, dim=16, dead_after=2, active_window=1)
    q.set_codebooks(3 * torch.randn(3, 24, 16, generator=torch.Generator().manual_seed(1)))
    return q.train()


def test_metrics_read_late_equal_metrics_read_at_once():
    eager, lazy = quantizer(), quantizer()
    read_at_once, outputs = [], []
    for batch in batches(6):
        read_at_once.append(dict(eager(batch).metrics))
        outputs.append(lazy(batch))  # not read yet
    resets = 0
    for now, out in zip(read_at_once, outputs):
        late = dict(out.metrics)
        assert late.keys() == now.keys()
        for key in now:
            assert torch.equal(late[key], now[key]), key
        resets += int(now["codes_reset"])
    assert resets > 0, "the trajectory was meant to include dead-code resets (they rewrite the state)"
    assert outputs[0].metrics["codes_dead/video"] is outputs[0].metrics["codes_dead/video"]  # computed once


def test_metrics_without_an_update():
    q = quantizer().eval()
    out = q(next(batches(1)))
    assert "codes_reset" not in out.metrics and "perplexity/audio" in out.metrics
    assert len(out.metrics) == len(list(out.metrics))
