"""`--compile` (codaar/model/compiled.py): each compiled region is one graph, real Trainer steps compile
once and never again, the compiled step computes the eager step's losses and gradients, a platform
that cannot compile is one line; and the precision and layout `--bf16` relies on (docs/design.md §9).

Tracing tests use the "aot_eager" backend: Dynamo and AOTAutograd make the same graphs, guards and
decompositions as for Inductor, without its C++ code generation (minutes on a CI CPU). The one test
through Inductor is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from codaar.model import CoDAARModel, ModelConfig, compiled
from codaar.model.compiled import DYNAMO_SETTINGS, REGIONS, compile_regions, video_channels_last
from codaar.model.encoders import unrolled_lstm
from codaar.runtime import profiling
from codaar.runtime.distributed import ProcessGroup
from codaar.train.config import config_from_args
from codaar.train.loop import Trainer
from tests.test_train import TINY, exits_with_usage_error

AVT = ("video", "audio", "text")
B, T = 4, 6
# compiled against eager, float32, dropout 0: the graphs reorder and fuse float32 sums
LOSS_TOLERANCE = dict(rtol=1e-4, atol=1e-6)
GRADIENT_TOLERANCE = dict(rtol=1e-3, atol=1e-5)


def tiny_model(seed: int = 0, **changes) -> CoDAARModel:
    settings = dict(
        audio_dim=6, video_dim=8, video_gate_dim=4, video_hidden_channels=6, video_projection_channels=10,
        text_dim=12, text_lstm_dim=5, dim=8, projection_dim=7, temporal_heads=2, temporal_ffn_dim=16,
        num_codes=16, cpc_context_dim=9, modalities=AVT, dropout=0.0,
    )
    settings.update(changes)
    torch.manual_seed(seed)
    return CoDAARModel(ModelConfig(**settings))


def tiny_batch(model: CoDAARModel, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg, g = model.config, torch.Generator().manual_seed(seed)
    batch = {"video": torch.randn(B, T, 7, 7, cfg.video_dim, generator=g),
             "audio": torch.randn(B, T, cfg.audio_dim, generator=g),
             "text": torch.randn(B, T, cfg.text_dim, generator=g)}
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False  # one caption with padding: the masked BiLSTM path, as per-clip text trains
    batch["text_mask"] = mask
    return {k: v for k, v in batch.items() if k in cfg.modalities or k == "text_mask"}


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv(compiled.BACKEND_VARIABLE, "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def region_inputs(model: CoDAARModel, batch: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """The arguments each region gets in a training step, computed eagerly."""
    masks = {"text": batch["text_mask"]} if "text" in model.modalities else {}
    inputs = {m: batch[m] for m in model.modalities}
    targets, latents, projections = model._run_encoders(inputs, masks)
    quantized = model._quantize(latents)
    return {"_run_encoders": (inputs, masks), "_run_cpc": (latents, torch.tensor(2), masks),
            "_run_decoders": (quantized.tri_code, projections, targets, masks)}


def test_every_region_is_one_graph_without_breaks():
    model = tiny_model()
    model.train()
    inputs = region_inputs(model, tiny_batch(model))
    assert set(inputs) == set(REGIONS)
    with torch._dynamo.config.patch(**DYNAMO_SETTINGS):
        for name in REGIONS:
            explained = torch._dynamo.explain(getattr(model, name))(*inputs[name])
            # a skipped frame (Dynamo gives up on a function: an nn.LSTM without allow_rnn) shows as
            # graph_count 0, a graph break as 2 graphs or more
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (name, explained.break_reasons)


def test_real_trainer_steps_compile_each_region_once(tmp_path, aot_eager):
    """Six real steps (two epochs: a new data order, a new learning rate, new t* draws, dead-code
    resets): 3 graphs in all, no graph break, no recompilation, the quantizer never traced."""
    args = TINY + ["--out", str(tmp_path / "run"), "--compile", "--max-steps", "6", "--batch-size", "20",
                   "--pretrain-clips", "60", "--lr-milestones", "1", "--checkpoint-every", "4"]
    trainer = Trainer(config_from_args(args), ProcessGroup())
    assert trainer.model.compiled and trainer.ddp is None
    counters.clear()
    traced = []
    quantizer_forward = type(trainer.model.quantizer).forward

    def watch(self, *a, **k):
        traced.append(torch.compiler.is_compiling())
        return quantizer_forward(self, *a, **k)

    with torch._dynamo.config.patch(error_on_recompile=True):
        type(trainer.model.quantizer).forward = watch
        try:
            summary = trainer.run()
        finally:
            type(trainer.model.quantizer).forward = quantizer_forward
    assert summary["steps"] == 6
    assert counters["stats"]["unique_graphs"] == len(REGIONS)
    assert not counters["graph_break"] and not counters["unimplemented"], (counters["graph_break"],
                                                                           counters["unimplemented"])
    assert traced == [False] * 6  # the quantizer ran eagerly at every step


def _step(model: CoDAARModel, batch: dict[str, torch.Tensor], seed: int) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    out = model(batch, cpc_generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    losses = {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.losses.items()}}
    return losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _compare_with_eager(modalities=AVT, steps: int = 2) -> None:
    eager, fast = tiny_model(modalities=modalities), tiny_model(modalities=modalities)
    compile_regions(fast)
    for step in range(steps):  # the second step: after a codebook update and a different t*
        batch = tiny_batch(eager, seed=step)
        want_losses, want_grads = _step(eager, batch, seed=step)
        got_losses, got_grads = _step(fast, batch, seed=step)
        assert want_losses.keys() == got_losses.keys() and want_grads.keys() == got_grads.keys()
        for key in want_losses:
            torch.testing.assert_close(got_losses[key], want_losses[key], **LOSS_TOLERANCE, msg=key)
        for key in want_grads:
            torch.testing.assert_close(got_grads[key], want_grads[key], **GRADIENT_TOLERANCE, msg=key)
        for key, buffer in eager.quantizer.state_dict().items():
            torch.testing.assert_close(fast.quantizer.state_dict()[key], buffer, **LOSS_TOLERANCE, msg=key)
        # the parameters stay equal: apply the same SGD step to both
        with torch.no_grad():
            for a, b in zip(eager.parameters(), fast.parameters()):
                if a.grad is not None:
                    a.sub_(0.1 * a.grad)
                    b.sub_(0.1 * a.grad)


def test_compiled_losses_and_gradients_match_eager(aot_eager):
    _compare_with_eager()


@pytest.mark.slow
def test_inductor_losses_and_gradients_match_eager():
    torch._dynamo.reset()
    _compare_with_eager(modalities=("video", "audio"), steps=1)


def test_compiling_twice_changes_nothing(aot_eager):
    model = tiny_model()
    compile_regions(model)
    first = {name: getattr(model, name) for name in REGIONS}
    compile_regions(model)
    assert {name: getattr(model, name) for name in REGIONS} == first
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # no "_orig_mod." keys


def test_a_platform_that_cannot_compile_is_one_line(tmp_path, capsys, monkeypatch):
    """No working C++ compiler for Inductor's CPU code (a real failure: a fresh cache, a compiler that
    does not exist): the run stops before training with one line, exit 2."""
    import torch._inductor.config as inductor_config

    from codaar.train import main

    monkeypatch.delenv(compiled.BACKEND_VARIABLE, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    torch._dynamo.reset()
    run = tmp_path / "run"
    exits_with_usage_error(capsys, lambda: main(TINY + ["--out", str(run), "--compile", "--max-steps", "1"]),
                           "--compile: torch.compile cannot compile for cpu on this machine", "run without --compile")
    assert not (run / "checkpoints").exists()
    torch._dynamo.reset()


def test_compile_with_cuda_graph_is_refused(capsys):
    from codaar.train import main

    exits_with_usage_error(capsys, lambda: main(TINY + ["--compile", "--cuda-graph"]), "compile", "--cuda-graph")


def test_unrolled_lstm_is_torch_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    x = torch.randn(3, 7, 6)
    want = lstm(x)[0]
    weights = [[getattr(lstm, f"{name}_l0{d}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
               for d in ("", "_reverse")]
    got = torch.cat([unrolled_lstm(x, *weights[0]), unrolled_lstm(x, *weights[1], reverse=True)], dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_nvtx_ranges_do_not_break_a_compiled_graph():
    def marked(x):
        with profiling.nvtx_range("encoders"):
            return torch.relu(x) + 1

    explained = torch._dynamo.explain(marked)(torch.ones(3))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_nvtx_ranges_fall_back_without_the_package(monkeypatch):
    monkeypatch.setattr(profiling, "nvtx", None)
    monkeypatch.setattr(profiling, "_backend", None)
    want = "torch.cuda.nvtx" if torch.cuda.is_available() else "none"
    assert profiling.nvtx_backend() == want
    with profiling.nvtx_range("encoders"):
        value = 1
    assert value == 1


# --------------------------------------------------------------------------- precision, layout
def test_the_quantizer_ignores_autocast():
    """Under CPU bf16 autocast around the model, the quantizer gets float32 latents and computes
    exactly what it computes on them without autocast: losses, metrics, indices and its update."""
    model = tiny_model()
    before = copy.deepcopy(model.quantizer)  # its state before the step
    seen, outputs = {}, []
    model.quantizer.register_forward_pre_hook(lambda module, args: seen.update(args[0]))
    model.quantizer.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(tiny_batch(model), cpc_generator=torch.Generator().manual_seed(0))
    assert seen and all(z.dtype == torch.float32 for z in seen.values())
    with torch.no_grad():
        plain = before({m: z.detach() for m, z in seen.items()})
    (under_autocast,) = outputs
    for name in ("losses", "metrics", "indices"):
        got, want = getattr(under_autocast, name), getattr(plain, name)
        assert got.keys() == want.keys() and got
        for key in want:
            assert torch.equal(got[key].detach(), want[key].detach()), (name, key)
    for key, buffer in before.state_dict().items():
        assert torch.equal(model.quantizer.state_dict()[key], buffer), key


def test_channels_last_video_convolutions_compute_the_same():
    plain, fast = tiny_model(), tiny_model()
    video_channels_last(fast)
    convs = [m for m in fast.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 7  # the encoder's two 3x3, the decoder's three transposed and two residual
    layouts = []
    for conv in convs:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        conv.register_forward_hook(lambda module, args, out: layouts.append(
            (args[0].is_contiguous(memory_format=torch.channels_last),
             out.is_contiguous(memory_format=torch.channels_last))))
    batch = tiny_batch(plain)
    want_losses, want_grads = _step(plain, batch, seed=0)
    got_losses, got_grads = _step(fast, batch, seed=0)
    assert layouts == [(True, True)] * len(convs)
    for key in want_losses:
        torch.testing.assert_close(got_losses[key], want_losses[key], **LOSS_TOLERANCE, msg=key)
    for key in want_grads:
        torch.testing.assert_close(got_grads[key], want_grads[key], **GRADIENT_TOLERANCE, msg=key)
