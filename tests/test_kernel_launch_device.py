"""Every Triton launcher runs under its inputs' device, and refuses inputs on two devices.

Triton launches on (and autotunes on, and takes the stream of) CUDA's *current* device, so a process
whose tensors live on cuda:1 while its current device is cuda:0 needs each launcher to make cuda:1
current first (`codaar_kernels.utilities.launch_device`, flash-attn's `torch.cuda.device(index)`).

Without a second GPU (or any), the tensors here are torch fake tensors that say they live on cuda:1
(no memory behind them), the launches are recorded instead of run (`record_launches`), and
`torch.cuda.device` is replaced by a recorder of the index entered. What this covers, for every
launcher and every dispatch entry point the quantizer calls: the guard is entered with the inputs'
device index, every launch happens inside it, and every tensor a kernel is given (outputs and
temporaries included) or a launcher returns is on that device. What it cannot cover: that Triton and
the CUDA driver then really run the kernel on that GPU, with that device's stream (only a machine
with two GPUs can show it).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import codaar_kernels as ops
from codaar_kernels import ema_csa_update_triton as ema_module
from codaar_kernels.assign_triton import assign_triton
from codaar_kernels.dta_accumulate_triton import dta_accumulate_triton
from codaar_kernels.ema_csa_update import EmaCsaConfig
from codaar_kernels.ema_csa_update_triton import ema_csa_update_triton
from codaar_kernels.soft_usage_triton import soft_usage_backward, soft_usage_forward
from codaar_kernels.utilities import record_launches

M, B, T, K, D = 3, 4, 5, 24, 40
CONFIG = EmaCsaConfig(decay=0.99, eps=1e-5, laplace_smoothing=True, csa_order=(2, 1, 0), csa_persistent=False,
                      dead_after=300, active_window=100, count_floor=1.0)


class DeviceRecorder:
    """Stands in for `torch.cuda.device`: records each index entered and the number of launches
    recorded so far when the block is entered and left."""

    def __init__(self, launches: list):
        self.launches, self.entered, self.spans, self.current = launches, [], [], None

    def __call__(self, index):
        @contextlib.contextmanager
        def guard():
            self.entered.append(index)
            outer, self.current = self.current, index
            start = len(self.launches)
            try:
                yield
            finally:
                self.spans.append((start, len(self.launches)))
                self.current = outer
        return guard()


@pytest.fixture
def on_cuda1(monkeypatch):
    """(make, recorder, launches): `make(shape, dtype, device="cuda:1")` makes a fake tensor."""
    fake = FakeTensorMode()
    with record_launches() as launches:
        recorder = DeviceRecorder(launches)
        monkeypatch.setattr(torch.cuda, "device", recorder)
        with fake:
            yield (lambda shape, dtype=torch.float32, device="cuda:1": torch.zeros(shape, dtype=dtype, device=device),
                   recorder, launches)
    ema_module._order_tensor.cache_clear()  # it cached a fake tensor for cuda:1


def _state(make):
    return (make((M, K, D)), make((M, K, D)), make((M, K)), make((K,), torch.int64))


CALLS = {
    "assign_triton": lambda make: assign_triton(make((M, B * T, D)), make((M, K, D))),
    "soft_usage_forward": lambda make: soft_usage_forward(make((M, B * T, D)), make((M, K, D)), T),
    "soft_usage_backward": lambda make: soft_usage_backward(make((M, B * T, D)), make((M, K, D)), T,
                                                            make((M, B * T)), make((M, B, K))),
    "dta_accumulate_triton": lambda make: dta_accumulate_triton(make((M, B * T, D)), make((M, B * T), torch.int64),
                                                                K, 0.6, 0.2),
    "dta_accumulate_triton deterministic": lambda make: dta_accumulate_triton(
        make((M, B * T, D)), make((M, B * T), torch.int64), K, 0.6, 0.2, deterministic=True),
    "ema_csa_update_triton": lambda make: ema_csa_update_triton(*_state(make), make((M, K, D)), make((M, K)), CONFIG),
    # the dispatch entry points the quantizer calls, forced onto the kernels
    "ops.assign": lambda make: ops.assign(make((M, B * T, D)), make((M, K, D))),
    "ops.assign_with_soft_usage": lambda make: ops.assign_with_soft_usage(make((M, B * T, D)), make((M, K, D)), T),
    "ops.dta_accumulate": lambda make: ops.dta_accumulate(make((M, B * T, D)), make((M, B * T), torch.int64),
                                                          K, 0.6, 0.2),
    "ops.ema_csa_update": lambda make: ops.ema_csa_update(*_state(make), make((M, K, D)), make((M, K)), CONFIG),
}


def _tensors(value):
    """Every tensor in a launch argument or a launcher's result (tuples nested)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", list(CALLS))
def test_launches_run_under_the_inputs_device(name, on_cuda1):
    make, recorder, launches = on_cuda1
    with ops.use_backend("triton"):
        result = CALLS[name](make)
    assert launches, "nothing was launched"
    assert recorder.entered and set(recorder.entered) == {1}, recorder.entered
    inside = {i for start, end in recorder.spans for i in range(start, end)}
    assert inside == set(range(len(launches))), f"launches outside the guard: {recorder.spans}, {len(launches)}"
    for launch in launches:
        devices = {t.device for t in _tensors(launch.args)}
        assert devices == {torch.device("cuda:1")}, (launch.kernel, devices)
    assert {t.device for t in _tensors(result)} == {torch.device("cuda:1")}


MIXED = {  # the second named tensor on cuda:0
    "assign_triton": (lambda make: assign_triton(make((M, B * T, D)), make((M, K, D), device="cuda:0")), "codebook"),
    "soft_usage_forward": (lambda make: soft_usage_forward(make((M, B * T, D)), make((M, K, D), device="cuda:0"), T),
                           "codebook"),
    "soft_usage_backward": (lambda make: soft_usage_backward(make((M, B * T, D)), make((M, K, D)), T, make((M, B * T)),
                                                             make((M, B, K), device="cuda:0")), "grad_p"),
    "dta_accumulate_triton": (lambda make: dta_accumulate_triton(
        make((M, B * T, D)), make((M, B * T), torch.int64, device="cuda:0"), K, 0.6, 0.2), "idx"),
    "ema_csa_update_triton": (lambda make: ema_csa_update_triton(
        *_state(make), make((M, K, D)), make((M, K), device="cuda:0"), CONFIG), "counts"),
    "assign_triton out": (lambda make: assign_triton(make((M, B * T, D)), make((M, K, D)), out=(
        make((M, B * T), torch.int64), make((M, B * T), device="cuda:0"))), "out min_dist"),
}


@pytest.mark.parametrize("name", list(MIXED))
def test_inputs_on_two_devices_are_refused_by_name(name, on_cuda1):
    make, recorder, launches = on_cuda1
    call, culprit = MIXED[name]
    with pytest.raises(ValueError, match=rf"{culprit} is on cuda:0, expected cuda:1"):
        call(make)
    assert not launches


def test_cpu_tensors_enter_no_cuda_guard(monkeypatch):
    # Under the interpreter (or recording) the kernels take CPU tensors: nothing to make current.
    with record_launches() as launches:
        recorder = DeviceRecorder(launches)
        monkeypatch.setattr(torch.cuda, "device", recorder)
        assign_triton(torch.zeros(M, B * T, D), torch.zeros(M, K, D))
    assert launches and not recorder.entered
