"""Every production launch of the Triton kernels, compiled ahead of time for sm_80 (A100) and sm_90
(H100) on this machine, GPU or not (codaar_kernels.ahead_of_time): each compiles, none spills, each
fits the architecture's shared memory, the tf32/bf16/fp16 paths of assign and soft usage run on
tensor-core MMA and the exact fp32 path never does. profiles/compiled.md is the same table.

One module-scoped compilation of every variant (186 today), in one worker process per CPU core and
a fresh Triton cache (nothing from an earlier run can hide a failure): about 2.5 minutes on 2 idle
cores, 4 to 5 on a loaded machine.
"""

import pytest

from codaar_kernels import ahead_of_time as aot

ALL_KERNELS = {
    "_assign_kernel", "_soft_usage_fwd_kernel", "_soft_usage_bwd_row_kernel", "_soft_usage_bwd_dz_kernel",
    "_dta_accumulate_kernel", "_dta_accumulate_sorted_kernel", "_ema_count_kernel", "_ema_csa_update_kernel",
}


@pytest.fixture(scope="module")
def records():
    return aot.compile_all()


def _name(record):
    return f"{record['arch']} {record['kernel']} [{record['path']}] {record['config']}"


def test_every_production_variant_compiles_without_spills_and_fits(records):
    found = {_name(r): aot.problems(r) for r in records}
    bad = {name: issues for name, issues in found.items() if issues}
    assert not bad, "\n".join(f"{name}: {'; '.join(issues)}" for name, issues in bad.items())


def test_every_kernel_path_and_autotune_config_was_compiled(records):
    from codaar_kernels.assign_triton import autotune_configs  # the interpreter is fine: only the list

    assert {r["kernel"] for r in records} == ALL_KERNELS
    for arch in ("sm_80", "sm_90"):
        mine = [r for r in records if r["arch"] == arch]
        for kernel in aot.MMA_KERNELS:
            paths = {p.strip() for r in mine if r["kernel"] == kernel for p in r["path"].split(",")}
            assert paths == {"fp32-ieee", "tf32", "bf16", "fp16"}, (arch, kernel, paths)
        for kernel in ("_dta_accumulate_kernel", "_dta_accumulate_sorted_kernel", "_ema_csa_update_kernel"):
            labels = " ".join(r["path"] for r in mine if r["kernel"] == kernel)
            assert "M=2" in labels and "M=3" in labels, (arch, kernel)
        # every config the autotuner may pick, on every dtype path it serves
        for fma, paths in ((True, {"fp32-ieee"}), (False, {"tf32", "bf16", "fp16"})):
            for config in autotune_configs(fma):
                label = aot.config_label({**config.kwargs, "num_warps": config.num_warps,
                                          "num_stages": config.num_stages})
                served = {p.strip() for r in mine if r["kernel"] == "_assign_kernel" and r["config"] == label
                          for p in r["path"].split(",")}
                assert paths <= served, (arch, label, served)

def _record(**changes):
    base = dict(kernel="_assign_kernel", path="tf32", config="N=64 K=64 D=32 w4 s3", arch="sm_90", num_warps=4,
                registers=128, stack=0, spill_stores=0, spill_loads=0, local=0, static_shared=0,
                dynamic_shared=32768, hmma=0, hgmma=8, ffma=10, mma=8)
    return {**base, **changes}


@pytest.mark.parametrize("changes,expected", [
    (dict(), None),
    (dict(error="CompilationError: out of resources"), "does not compile"),
    (dict(spill_stores=8, spill_loads=8, local=8), "spills"),
    (dict(arch="sm_80", dynamic_shared=200 * 1024), "shared memory"),
    (dict(arch="sm_90", dynamic_shared=200 * 1024), None),  # fits H100's 227 KB
    (dict(path="bf16", hgmma=0, mma=0), "no tensor-core MMA"),
    (dict(path="fp32-ieee", hgmma=4, mma=4), "exact fp32 path"),
    (dict(path="fp32-ieee", hgmma=0, mma=0), None),
    (dict(kernel="_ema_csa_update_kernel", path="float32 M=3 official", hgmma=0, mma=0), None),
])
def test_the_rules_catch_what_they_name(changes, expected):
    found = aot.problems(_record(**changes))
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_occupancy_follows_the_documented_limits():
    h100, a100 = aot.ARCHS[90], aot.ARCHS[80]
    # 128 registers x 4 warps: 16 warps by the register file -> 4 blocks -> 16/64
    assert aot.occupancy(h100, 128, 0, 4) == (0.25, "registers")
    # 255 registers round up to 256 per thread: 8 warps -> 2 blocks of 4
    assert aot.occupancy(a100, 255, 0, 4) == (0.125, "registers")
    # 100 KB + 1 KB reserved per block: one block of 2 warps fits an A100's 164 KB
    assert aot.occupancy(a100, 32, 100 * 1024, 2) == (2 / 64, "shared memory")
    assert aot.occupancy(h100, 32, 0, 1) == (32 / 64, "blocks")
    assert aot.occupancy(h100, 16, 0, 8) == (1.0, "warps")
