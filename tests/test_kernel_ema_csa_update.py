"""Triton EMA + count floor + CSA + dead-code counter update against the eager reference (in place,
all buffers), for 1 to 5 modalities. Compiled on a GPU, under the Triton interpreter on the CPU
(tests/conftest.py decides which).
"""

import dataclasses

import pytest
import torch

from codaar_kernels.ema_csa_update import EmaCsaConfig, ema_csa_update_reference
from codaar_kernels.ema_csa_update_triton import ema_csa_update_triton
from codaar_kernels.utilities import triton_device

DEVICE = triton_device()
DEAD_AFTER, ACTIVE_WINDOW = 300, 100
NEAR_THRESHOLDS = torch.tensor([299, 300, 301, 99, 100, -1, 0, 5, 298, 1000])
ORDERS = {1: [(0,), ()], 2: [(1, 0), (0, 1), ()], 3: [(2, 1, 0), (0, 1, 2), (1,), (), (0, 2, 1, 0)],
          4: [(3, 2, 1, 0), (0, 2), (1, 3, 0, 2, 1, 3, 0)], 5: [(4, 3, 2, 1, 0), (2,)]}


def _state(num_mod, num_codes, dim, dtype, gen, unused="near"):
    """(E, W, C, U) as a quantizer would hold them: C >= 0, U int64."""
    codebook = torch.randn(num_mod, num_codes, dim, generator=gen, dtype=dtype)
    ema_sum = torch.randn(num_mod, num_codes, dim, generator=gen, dtype=dtype)
    ema_count = 4 * torch.rand(num_mod, num_codes, generator=gen, dtype=dtype)
    if unused == "near":  # counters at and around dead_after / active_window, and -1
        unused_steps = NEAR_THRESHOLDS[torch.randint(0, len(NEAR_THRESHOLDS), (num_codes,), generator=gen)]
    else:  # nothing can die this step
        unused_steps = torch.randint(0, 50, (num_codes,), generator=gen)
    return [t.to(DEVICE) for t in (codebook, ema_sum, ema_count, unused_steps)]


def _step_inputs(num_mod, num_codes, dim, dtype, gen):
    """(H, n) of one step: integer counts, about half the codes unchosen per modality."""
    chosen = torch.rand(num_mod, num_codes, generator=gen) < 0.5
    counts = torch.randint(0, 4, (num_mod, num_codes), generator=gen) * chosen
    sums = torch.randn(num_mod, num_codes, dim, generator=gen, dtype=dtype) * counts.unsqueeze(-1)
    return sums.to(DEVICE), counts.to(dtype).to(DEVICE)


def _assert_state_equal(got, want, dtype):
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, g, w in zip(("codebook", "ema_sum", "ema_count"), got[:3], want[:3]):
        # atol relative to the buffer's scale: the CSA means can cancel to ~0, where an elementwise
        # relative error of a rounding-level difference is meaningless.
        atol = rtol * max(1.0, w.abs().max().item())
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(got[3], want[3]), "unused_steps"


def _run_both(ref_state, tri_state, sums, counts, config):
    want = ema_csa_update_reference(*ref_state, sums, counts, config)
    got = ema_csa_update_triton(*tri_state, sums, counts, config)
    assert got[0].dtype == torch.bool and got[1].dtype == torch.bool
    assert torch.equal(got[0], want[0]), "dead"
    assert torch.equal(got[1], want[1]), "active"
    return got


def _config(laplace, order, persistent, count_floor=0.0):
    return EmaCsaConfig(decay=0.99, eps=1e-5, laplace_smoothing=laplace, csa_order=order, csa_persistent=persistent,
                        dead_after=DEAD_AFTER, active_window=ACTIVE_WINDOW, count_floor=count_floor)


# (M, K, D, state dtype): K in {1, 3, 800, 8192}, awkward D, fp32 required / fp64 supported
SHAPES = [
    (3, 800, 200, torch.float32),
    (2, 3, 16, torch.float64),
    (1, 1, 16, torch.float32),
    (3, 8192, 16, torch.float32),
    (2, 37, 512, torch.float64),
    (3, 7, 256, torch.float64),
    (4, 300, 40, torch.float32),  # M >= 4: padded modality tile (M_PAD = 4, 8)
    (5, 37, 24, torch.float64),
]


def _shape_id(shape):
    m, k, d, dt = shape
    return f"M{m}-K{k}-D{d}-{str(dt).split('.')[-1]}"


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("laplace", [False, True], ids=["eps", "laplace"])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_one_step_matches_reference(shape, laplace, persistent):
    num_mod, num_codes, dim, dtype = shape
    gen = torch.Generator().manual_seed(num_codes * 13 + dim + 2 * laplace + persistent)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen)
    tri_state = [t.clone() for t in ref_state]
    sums, counts = _step_inputs(num_mod, num_codes, dim, dtype, gen)
    _run_both(ref_state, tri_state, sums, counts, _config(laplace, ORDERS[num_mod][0], persistent))
    _assert_state_equal(tri_state, ref_state, dtype)


@pytest.mark.parametrize(
    "num_mod,order", [(m, o) for m, orders in ORDERS.items() for o in orders], ids=lambda v: str(v).replace(" ", "")
)
@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
def test_cascade_orders(num_mod, order, persistent):
    num_codes, dim, dtype = 50, 24, torch.float64
    gen = torch.Generator().manual_seed(len(order) * 7 + num_mod + persistent)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen)
    tri_state = [t.clone() for t in ref_state]
    sums, counts = _step_inputs(num_mod, num_codes, dim, dtype, gen)
    _run_both(ref_state, tri_state, sums, counts, _config(True, order, persistent))
    _assert_state_equal(tri_state, ref_state, dtype)


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("laplace", [False, True], ids=["eps", "laplace"])
@pytest.mark.parametrize("shape", [(3, 800, 200, torch.float32), (4, 37, 24, torch.float64)], ids=_shape_id)
def test_count_floor(shape, laplace, persistent):
    # counts ~ U(0, 4) before the step and about half the codes unchosen: with a floor of 1, some
    # codes fall below it (held at their anchor), some were below it already (anchor = E), some not.
    num_mod, num_codes, dim, dtype = shape
    gen = torch.Generator().manual_seed(num_mod * 31 + 2 * laplace + persistent)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen)
    floor = 1.0
    ref_state[2][:, ::3] = 1.005  # settled, and below the floor after one step's decay unless chosen
    tri_state = [t.clone() for t in ref_state]
    settled_before = ref_state[2] >= floor
    sums, counts = _step_inputs(num_mod, num_codes, dim, dtype, gen)
    _run_both(ref_state, tri_state, sums, counts,
              _config(laplace, ORDERS[num_mod][0], persistent, count_floor=floor))
    _assert_state_equal(tri_state, ref_state, dtype)
    held = ref_state[2] == floor
    assert held.any() and (held & settled_before).any() and (held & ~settled_before).any() and (~held).any()


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("laplace", [False, True], ids=["eps", "laplace"])
@pytest.mark.parametrize("shape", [(3, 300, 40, torch.float32), (2, 3, 16, torch.float64)], ids=_shape_id)
def test_consecutive_steps(shape, laplace, persistent):
    num_mod, num_codes, dim, dtype = shape
    gen = torch.Generator().manual_seed(num_codes + 2 * laplace + persistent)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen)
    tri_state = [t.clone() for t in ref_state]
    seen_dead = False
    for _ in range(5):
        sums, counts = _step_inputs(num_mod, num_codes, dim, dtype, gen)
        dead, _ = _run_both(ref_state, tri_state, sums, counts, _config(laplace, ORDERS[num_mod][0], persistent))
        _assert_state_equal(tri_state, ref_state, dtype)
        seen_dead |= bool(dead.any())
    assert seen_dead or num_codes < 10  # the counters near the threshold did cross it


def test_no_dead_codes():
    num_mod, num_codes, dim, dtype = 3, 64, 32, torch.float32
    gen = torch.Generator().manual_seed(5)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen, unused="small")
    tri_state = [t.clone() for t in ref_state]
    sums, counts = _step_inputs(num_mod, num_codes, dim, dtype, gen)
    dead, active = _run_both(ref_state, tri_state, sums, counts, _config(True, (2, 1, 0), False))
    assert not dead.any() and active.all()
    _assert_state_equal(tri_state, ref_state, dtype)


def test_every_code_dead_and_no_frames():
    # counts all zero (no frame chose anything): every counter increments, all past dead_after die
    num_mod, num_codes, dim, dtype = 2, 20, 16, torch.float32
    gen = torch.Generator().manual_seed(11)
    ref_state = _state(num_mod, num_codes, dim, dtype, gen)
    ref_state[3].fill_(DEAD_AFTER)
    tri_state = [t.clone() for t in ref_state]
    sums = torch.zeros(num_mod, num_codes, dim, dtype=dtype, device=DEVICE)
    counts = torch.zeros(num_mod, num_codes, dtype=dtype, device=DEVICE)
    dead, active = _run_both(ref_state, tri_state, sums, counts, _config(True, (1, 0), True))
    assert dead.all() and not active.any()
    _assert_state_equal(tri_state, ref_state, dtype)


def test_launcher_rejects_bad_inputs():
    gen = torch.Generator().manual_seed(0)
    state = _state(2, 8, 16, torch.float32, gen)
    sums, counts = _step_inputs(2, 8, 16, torch.float32, gen)
    config = _config(True, (1, 0), False)
    with pytest.raises(TypeError, match="float32 or float64"):
        ema_csa_update_triton(*[t.half() if t.is_floating_point() else t for t in state], sums, counts, config)
    with pytest.raises(TypeError, match="ema_count must be float32"):
        ema_csa_update_triton(state[0], state[1], state[2].double(), state[3], sums, counts, config)
    with pytest.raises(TypeError, match="int64"):
        ema_csa_update_triton(*state[:3], state[3].int(), sums, counts, config)
    with pytest.raises(ValueError, match="sums must have shape"):
        ema_csa_update_triton(*state, sums[:, :4], counts, config)
    with pytest.raises(ValueError, match="modality indices"):
        ema_csa_update_triton(*state, sums, counts, _config(True, (2, 0), False))
    with pytest.raises(ValueError, match="sums must be contiguous"):
        ema_csa_update_triton(*state, sums.transpose(0, 1).contiguous().transpose(0, 1), counts, config)
    with pytest.raises(ValueError, match="codebook must be contiguous"):  # in place: a copy would update nothing
        ema_csa_update_triton(state[0].transpose(0, 1).contiguous().transpose(0, 1), *state[1:], sums, counts, config)
    with pytest.raises(ValueError, match="count_floor"):
        ema_csa_update_triton(*state, sums, counts, _config(True, (1, 0), False, count_floor=-1.0))


def test_config_is_one_frozen_value():
    # any sequence (or None) as the order, kept as a hashable tuple; bad values refused on construction
    config = _config(True, [2, 1, 0], False)
    assert config.csa_order == (2, 1, 0) and hash(config) == hash(_config(True, (2, 1, 0), False))
    assert _config(True, None, False).csa_order == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.decay = 0.5
    with pytest.raises(ValueError, match="csa_order must hold modality indices >= 0"):
        _config(True, (0, -1), False)
    with pytest.raises(ValueError, match="count_floor must be >= 0, got nan"):
        _config(True, (1, 0), False, count_floor=float("nan"))
