"""The segmenter's backbones against the published parameter layouts (written out here, no download)."""

import pytest
import torch

from codaar.data import DataFormatError
from codaar.evaluate.segmentation.backbones import backbone, build_backbone, load_weights


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet50_layout():
    """torchvision.models.resnet50().state_dict() without fc: names and shapes."""
    layout = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            layout[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            layout.update(bn(f"{p}.bn1", planes))
            layout[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            layout.update(bn(f"{p}.bn2", planes))
            layout[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            layout.update(bn(f"{p}.bn3", planes * 4))
            if b == 0:
                layout[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                layout.update(bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    return layout


def pvt_v2_b5_layout():
    """The PVT-v2 release's pvt_v2_b5 state_dict without head: names and shapes."""
    dims, depths, srs = (64, 128, 320, 512), (3, 6, 40, 3), (8, 4, 2, 1)
    layout = {}
    for i in range(4):
        s, c = i + 1, dims[i]
        k, cin = (7, 3) if i == 0 else (3, dims[i - 1])
        layout.update({f"patch_embed{s}.proj.weight": (c, cin, k, k), f"patch_embed{s}.proj.bias": (c,),
                       f"patch_embed{s}.norm.weight": (c,), f"patch_embed{s}.norm.bias": (c,)})
        for b in range(depths[i]):
            p = f"block{s}.{b}"
            layout.update({f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,),
                           f"{p}.attn.q.weight": (c, c), f"{p}.attn.q.bias": (c,),
                           f"{p}.attn.kv.weight": (2 * c, c), f"{p}.attn.kv.bias": (2 * c,),
                           f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
                           f"{p}.norm2.weight": (c,), f"{p}.norm2.bias": (c,),
                           f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc1.bias": (4 * c,),
                           f"{p}.mlp.dwconv.dwconv.weight": (4 * c, 1, 3, 3), f"{p}.mlp.dwconv.dwconv.bias": (4 * c,),
                           f"{p}.mlp.fc2.weight": (c, 4 * c), f"{p}.mlp.fc2.bias": (c,)})
            if srs[i] > 1:
                layout.update({f"{p}.attn.sr.weight": (c, c, srs[i], srs[i]), f"{p}.attn.sr.bias": (c,),
                               f"{p}.attn.norm.weight": (c,), f"{p}.attn.norm.bias": (c,)})
        layout.update({f"norm{s}.weight": (c,), f"norm{s}.bias": (c,)})
    return layout


@pytest.mark.parametrize("name, layout, with_head, head", [
    ("resnet50", torchvision_resnet50_layout, 25_557_032, 2048 * 1000 + 1000),  # torchvision's count
    ("pvt_v2_b5", pvt_v2_b5_layout, 82.0e6, 512 * 1000 + 1000),  # the release's 82.0M
])
def test_names_and_shapes_are_the_published_ones(name, layout, with_head, head):
    module = build_backbone(name)
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert got == layout()
    params = sum(p.numel() for p in module.parameters()) + head
    assert params == with_head if isinstance(with_head, int) else round(params / 1e6, 1) == with_head / 1e6


def test_resnet_spot_checks_and_counts():
    layout = torchvision_resnet50_layout()
    assert len(layout) + 2 == 320  # torchvision's resnet50 state_dict has 320 entries with fc
    assert layout["layer3.5.conv2.weight"] == (256, 256, 3, 3) and layout["layer4.0.downsample.0.weight"] == (
        2048, 1024, 1, 1)
    assert pvt_v2_b5_layout()["block3.39.attn.sr.weight"] == (320, 320, 2, 2)


@pytest.mark.parametrize("name, channels", [("tiny", (16, 32, 64, 128)), ("resnet50", (256, 512, 1024, 2048)),
                                            ("pvt_v2_b5", (64, 128, 320, 512))])
def test_pyramid_strides(name, channels):
    maps = build_backbone(name).eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_published_file_loads_and_bad_files_are_named(tmp_path):
    from safetensors.torch import save_file

    source = build_backbone("resnet50")
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    pth = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, pth)
    loaded = backbone("resnet50", pth)
    assert torch.equal(loaded.layer2[1].conv2.weight, source.layer2[1].conv2.weight)
    safe = tmp_path / "r.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    assert torch.equal(backbone("resnet50", safe).conv1.weight, source.conv1.weight)

    bad = dict(state)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DataFormatError, match=r"bad.pth: field 'weights\['layer1.0.conv1.weight'\]': expected shape "
                                              r"\[64, 64, 1, 1\], found shape \[64, 64, 3, 3\]"):
        load_weights(build_backbone("resnet50"), tmp_path / "bad.pth")
    del bad["layer1.0.conv1.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DataFormatError, match=r"'weights\['layer1.0.conv1.weight'\]'.* missing"):
        load_weights(build_backbone("resnet50"), tmp_path / "bad.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DataFormatError, match=r"evil.pth: field 'weights'.*weights_only"):
        backbone("resnet50", tmp_path / "evil.pth")


def test_random_published_backbone_only_when_asked():
    with pytest.raises(ValueError, match=r"--avs-backbone pvt_v2_b5: expected --backbone-weights FILE"):
        backbone("pvt_v2_b5")
    assert backbone("tiny") is not None and backbone("resnet50", random_ok=True) is not None
