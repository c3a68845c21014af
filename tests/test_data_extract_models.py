"""The extraction's feature models: VGGish's log-mel frontend against the published parameters,
VGGish and VGG-19 layouts against the published state_dicts' names, PCA/quantisation by hand,
and weight files (formats, digests, refusals, the cached download and its failure)."""

import hashlib
import zipfile

import numpy as np
import pytest
import torch

from codaar.data import DataFormatError
from codaar.data.extract import logmel, weights
from codaar.data.extract.features import FeatureModels, ModelSettings
from codaar.data.extract.vgg19 import IMAGENET_MEAN, IMAGENET_STD, VGG19Pool5
from codaar.data.extract.vggish import VGGish, VGGishPostprocess

RATE = 16000


def tone(freq, seconds=1.0, amplitude=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def mel_to_hertz(mel):
    return 700.0 * (np.exp(np.asarray(mel) / 1127.0) - 1.0)


# ------------------------------------------------------------------------------- log-mel frontend
def test_frontend_uses_the_published_parameters():
    # vggish_params.py: 16 kHz, 25 ms window, 10 ms hop, 64 bands over 125-7500 Hz, log offset 0.01, 0.96 s examples
    assert (logmel.SAMPLE_RATE, logmel.NUM_BANDS, logmel.MEL_MIN_HZ, logmel.MEL_MAX_HZ) == (16000, 64, 125.0, 7500.0)
    assert (logmel.WINDOW_SAMPLES, logmel.HOP_SAMPLES, logmel.FFT_LENGTH) == (400, 160, 512)
    assert (logmel.LOG_OFFSET, logmel.EXAMPLE_FRAMES) == (0.01, 96)


def test_frame_counts_per_second():
    # one frame per 10 ms hop where a 25 ms window fits: 1 + (16000 - 400) // 160 = 98 per second
    assert logmel.log_mel(np.zeros(RATE)).shape == (98, 64)
    assert logmel.log_mel(np.zeros(2 * RATE + 8000)).shape == (1 + (40000 - 400) // 160, 64)
    assert logmel.examples_per_second(np.zeros((3, RATE))).shape == (3, 96, 64)
    with pytest.raises(ValueError, match="one-second"):
        logmel.examples_per_second(np.zeros((2, 8000)))


def test_mel_bands_are_htk_triangles_between_125_and_7500_hz():
    weights_ = logmel.mel_matrix()
    assert weights_.shape == (257, 64)
    assert (weights_[0] == 0).all() and weights_.min() >= 0 and weights_.max() <= 1
    bin_hz = np.linspace(0, 8000, 257)
    assert (weights_[(bin_hz <= 125.0) | (bin_hz >= 7500.0)] == 0).all()
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    centres_hz = mel_to_hertz(edges[1:-1])
    # every band peaks at the FFT bin nearest its centre frequency
    peaks = bin_hz[weights_.argmax(axis=0)]
    assert np.all(np.abs(peaks - centres_hz) <= 8000 / 256 / 2 + 1e-9)


@pytest.mark.parametrize("freq", [180.0, 440.0, 1000.0, 2500.0, 4800.0, 7000.0])
def test_a_tone_lands_in_the_band_nearest_its_frequency(freq):
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    expected = int(np.argmin(np.abs(edges[1:-1] - 1127 * np.log1p(freq / 700))))
    example = logmel.examples_per_second(tone(freq)[None])[0]
    assert int(example.mean(axis=0).argmax()) == expected


def test_log_of_magnitude_not_power_with_the_offset():
    # silence gives log(0.01) everywhere; halving the amplitude lowers a loud band by log 2 (magnitude, not power)
    assert np.allclose(logmel.log_mel(np.zeros(RATE)), np.log(0.01))
    loud = logmel.log_mel(tone(1000.0, amplitude=0.5))
    soft = logmel.log_mel(tone(1000.0, amplitude=0.25))
    band = loud.mean(axis=0).argmax()
    assert np.allclose(loud[:, band] - soft[:, band], np.log(2.0), atol=1e-3)


def test_vectorised_frontend_equals_a_frame_by_frame_loop():
    rng = np.random.default_rng(3)
    signal = rng.standard_normal(RATE + 777) * 0.1
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    mel = logmel.mel_matrix()
    frames = []
    for start in range(0, signal.size - 400 + 1, 160):
        spectrum = np.abs(np.fft.rfft(signal[start:start + 400] * window, 512))
        frames.append(np.log(spectrum @ mel + 0.01))
    assert np.allclose(logmel.log_mel(signal), np.array(frames), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- VGGish
VGGISH_PARAMS = {  # the torchvggish port of the published model (vggish-10086976.pth)
    "features.0": (64, 1, 3, 3), "features.3": (128, 64, 3, 3), "features.6": (256, 128, 3, 3),
    "features.8": (256, 256, 3, 3), "features.11": (512, 256, 3, 3), "features.13": (512, 512, 3, 3),
    "embeddings.0": (4096, 12288), "embeddings.2": (4096, 4096), "embeddings.4": (128, 4096),
}


def test_vggish_parameters_match_the_published_layout():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}
    expected = ({f"{k}.weight": v for k, v in VGGISH_PARAMS.items()}
                | {f"{k}.bias": (v[0],) for k, v in VGGISH_PARAMS.items()})
    assert shapes == expected


def test_vggish_flattens_in_tensorflow_order_and_has_no_final_relu():
    torch.manual_seed(0)
    model = VGGish().eval()
    seen = {}
    one_hot = torch.zeros(1, 512, 6, 4)
    one_hot[0, 5, 2, 3] = 1.0  # channel 5 at height 2, width 3
    model.features.register_forward_hook(lambda m, i, o: one_hot)
    model.embeddings[0].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    with torch.no_grad():
        out = model(torch.zeros(1, 96, 64))
    assert int(seen["x"].argmax()) == (2 * 4 + 3) * 512 + 5  # height, width, channel
    assert out.shape == (1, 128)
    assert isinstance(model.embeddings[-1], torch.nn.Linear)
    with torch.no_grad():
        assert (model(torch.randn(4, 96, 64)) < 0).any()


def test_pca_and_quantisation_by_hand():
    post = VGGishPostprocess("pca-quantize")
    eigen = torch.zeros(128, 128)
    eigen[0, 1] = 2.0  # output 0 = 2 * (e1 - m1)
    eigen[1, 0] = -1.0  # output 1 = -(e0 - m0)
    eigen[2, 2] = 0.5
    post.pca_eigen_vectors.copy_(eigen)
    post.pca_means.copy_(torch.arange(128, dtype=torch.float32) / 10)
    e = torch.zeros(1, 128)
    e[0, 0], e[0, 1], e[0, 2] = 3.0, 0.6, 0.2  # -> pca [1.0, -3.0, 0.0, ...]
    pca = VGGishPostprocess("pca")
    pca.load_state_dict(post.state_dict())
    assert torch.allclose(pca(e)[0, :3], torch.tensor([1.0, -3.0, 0.0]), atol=1e-6)
    q = post(e)[0]
    # clip to [-2, 2], then round((x + 2) * 255 / 4): 1 -> 191.25 -> 191, -3 -> -2 -> 0,
    # 0 -> 127.5 -> 128 (half to even)
    assert q[:3].tolist() == [191.0, 0.0, 128.0]
    assert q.min() >= 0 and q.max() <= 255


# ------------------------------------------------------------------------------- VGG-19
# torchvision's vgg19().features: conv indices and shapes (configuration E)
VGG19_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
               16: (256, 256), 19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512), 28: (512, 512),
               30: (512, 512), 32: (512, 512), 34: (512, 512)}


def test_vgg19_parameters_match_torchvision_and_end_at_pool5():
    with torch.device("meta"):
        model = VGG19Pool5()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {}
    for i, (out, inp) in VGG19_CONVS.items():
        expected[f"features.{i}.weight"] = (out, inp, 3, 3)
        expected[f"features.{i}.bias"] = (out,)
    assert shapes == expected
    assert len(model.features) == 37 and isinstance(model.features[36], torch.nn.MaxPool2d)


def test_vgg19_normalises_like_torchvision_and_gives_the_pool5_map():
    model = VGG19Pool5().eval()
    seen = {}
    model.features[0].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    frames = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 0, 51
    with torch.no_grad():
        out = model(frames)
    assert out.shape == (2, 2, 2, 512) and (out >= 0).all()
    expected = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (0.2 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    assert torch.allclose(seen["x"][0, :, 10, 20], torch.tensor(expected), atol=1e-6)


def test_a_224_frame_gives_the_papers_7x7x512_map():
    models = FeatureModels(ModelSettings(random_weights=True, frame_size=224))
    frames = np.random.default_rng(0).integers(0, 256, (1, 1, 224, 224, 3), dtype=np.uint8)
    assert models.video_shape == (7, 7, 512)
    assert models.video(frames, 1).shape == (1, 7, 7, 512)


# ------------------------------------------------------------------------------- weight files
def small_model():
    from codaar.data.extract.vgg_stack import conv_stack

    return torch.nn.Sequential(conv_stack(3, (8, "M", 16)), torch.nn.Flatten(), torch.nn.Linear(16 * 4, 5))


def test_weight_files_round_trip_with_their_digest(tmp_path):
    torch.manual_seed(1)
    source = small_model().eval()
    pth, legacy, st = tmp_path / "model.pth", tmp_path / "legacy.pth", tmp_path / "model.safetensors"
    torch.save(source.state_dict(), pth)
    # torchvision's vgg19-dcbb9e9d.pth predates torch's zip format
    torch.save(source.state_dict(), legacy, _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(st))
    x = torch.randn(2, 3, 4, 4)
    for path in (pth, legacy, st):
        target = small_model().eval()
        weights.load_into(target, weights.read_state_dict(path), path)
        with torch.no_grad():
            assert torch.equal(target(x), source(x))
        file, record = weights.weight_file("vggish", path)
        assert record == {"source": "file", "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _RunsCode()}, path)
    with pytest.raises(DataFormatError, match="evil.pth.*unreadable"):
        weights.read_state_dict(path)
    assert not (tmp_path / "PWNED").exists()


def _legacy_numpy_spelling(path):
    """Rewrite a torch zip so its pickle names numpy 1.x's module (numpy.core), as older files do."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(info, data)


@pytest.mark.parametrize("variant", ["zip", "numpy-1.x names", "pre-zip torch format"])
def test_pca_parameters_stored_as_numpy_arrays_load(tmp_path, variant):
    rng = np.random.default_rng(0)
    eigen, means = rng.standard_normal((128, 128)), rng.standard_normal((128, 1))  # the published file's layout
    path = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means}, path,
               _use_new_zipfile_serialization=variant != "pre-zip torch format")
    if variant == "numpy-1.x names":
        _legacy_numpy_spelling(path)
    post = VGGishPostprocess("pca")
    weights.load_into(post, weights.read_state_dict(path), path)
    assert np.allclose(post.pca_eigen_vectors.numpy(), eigen, atol=1e-6)
    assert np.allclose(post.pca_means.numpy(), means[:, 0], atol=1e-6)


def test_missing_or_misshapen_parameters_are_named(tmp_path):
    state = small_model().state_dict()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k != "0.3.weight"}, path)
    with pytest.raises(DataFormatError, match=r"partial.pth.*0\.3\.weight.*missing"):
        weights.load_into(small_model(), weights.read_state_dict(path), path)
    state["2.weight"] = torch.zeros(4, 64)
    torch.save(state, path)
    with pytest.raises(DataFormatError, match=r"2\.weight.*shape \[5, 64\].*shape \[4, 64\]"):
        weights.load_into(small_model(), weights.read_state_dict(path), path)
    torch.save({"0.0.weight": [1, 2]}, path)
    with pytest.raises(DataFormatError, match="a tensor or numpy array"):
        weights.read_state_dict(path)


def test_published_weights_come_from_torch_hubs_cache_and_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # a local address that refuses connections: no test ever reaches the network
    monkeypatch.setitem(weights.PUBLISHED, "vgg19", weights.Published(
        "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "torchvision's VGG19_Weights.IMAGENET1K_V1", "--vgg19-weights"))
    with pytest.raises(RuntimeError, match=r"could not download torchvision's VGG19.*--vgg19-weights PATH"):
        weights.cached_download("vgg19")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, cached)  # any file: only the cache lookup is tested
    file, record = weights.weight_file("vgg19")
    assert file == cached and record["source"] == "published" and record["sha256"] == weights.sha256_of(cached)


def test_random_weights_are_seeded_and_files_reproduce_them(tmp_path):
    settings = ModelSettings(random_weights=True, seed=3, frame_size=32, vggish_postprocess="pca")
    a, b = FeatureModels(settings), FeatureModels(settings)
    log_mel = np.random.default_rng(0).standard_normal((3, 96, 64)).astype(np.float32)
    frames = np.random.default_rng(1).integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(a.audio(log_mel), b.audio(log_mel)) and np.array_equal(a.video(frames, 3), b.video(frames, 3))
    assert a.audio(log_mel).std() > 1e-3 and a.video(frames, 3).std() > 1e-3  # torchvision's init keeps the scale
    assert a.records["vgg19"] == {"source": "random", "seed": 3}
    # the same weights as files: identical features, and the manifest records their digests
    files = {"vggish": tmp_path / "vggish.pth", "vggish_pca": tmp_path / "pca.pth", "vgg19": tmp_path / "vgg19.pth"}
    torch.save(a.vggish.state_dict(), files["vggish"])
    torch.save(a.postprocess.state_dict(), files["vggish_pca"])
    torch.save(a.vgg19.state_dict(), files["vgg19"])
    loaded = FeatureModels(ModelSettings(vggish_weights=files["vggish"], vggish_pca_params=files["vggish_pca"],
                                         vgg19_weights=files["vgg19"], frame_size=32, vggish_postprocess="pca"))
    assert np.array_equal(loaded.audio(log_mel), a.audio(log_mel))
    assert np.array_equal(loaded.video(frames, 3), a.video(frames, 3))
    for name, path in files.items():
        assert loaded.records[name]["sha256"] == weights.sha256_of(path)
    # K frames per segment are averaged map by map; a file without video gives zeros
    single = a.video(frames[:, :1], 3)
    assert single.shape == (3, 1, 1, 512) and not np.allclose(single, a.video(frames, 3))
    assert not a.video(None, 2).any() and a.video(None, 2).shape == (2, 1, 1, 512)
