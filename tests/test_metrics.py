"""FD / KID / accuracy with the shipped reference extractor, and ddpm-eval."""


import pytest
import torch

from ddpm_lab.data.digits import load_digits_tensors
from ddpm_lab.errors import UserError
from ddpm_lab.metrics import (
    FeatureExtractor,
    class_accuracy,
    frechet_distance,
    kernel_distance,
    load_reference,
    reference_extractor,
)
from ddpm_lab.metrics.distances import InceptionFeatures, check_metric_names


@pytest.fixture(scope="module")
def digits_reference():
    return load_reference("digits16")


@pytest.fixture(scope="module")
def digits_split():
    from ddpm_lab.data import DigitsDataModule

    dm = DigitsDataModule(image_size=16)
    dm.setup()
    train, val = dm.train_set.columns, dm.val_set.columns
    return (train.image, train.label), (val.image, val.label)


def test_shipped_reference_accuracy_is_rechecked(digits_reference, digits_split):
    model, record = digits_reference
    (_, _), (x_val, y_val) = digits_split
    acc = class_accuracy(model, x_val, y_val)
    assert record["held_out_accuracy"] >= 0.97
    assert acc == pytest.approx(record["held_out_accuracy"], abs=1e-6)
    assert record["held_out_count"] == len(x_val)


def test_fd_of_data_against_itself_is_zero_and_against_noise_large(digits_split):
    extractor = reference_extractor("digits16")[0]
    (x_train, _), (x_val, _) = digits_split
    noise = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    fd_self = frechet_distance(extractor, x_train, x_train)
    fd_val = frechet_distance(extractor, x_train, x_val)
    fd_noise = frechet_distance(extractor, x_train, noise)
    assert abs(fd_self) < 1e-3
    assert fd_noise > 20 * fd_val > 0
    kid_self, _ = kernel_distance(extractor, x_train, x_train[:500])
    kid_val, _ = kernel_distance(extractor, x_train, x_val)
    kid_noise, kid_noise_std = kernel_distance(extractor, x_train, noise)
    assert abs(kid_self) < kid_noise / 100 and abs(kid_val) < kid_noise / 10   # KID agrees in order
    assert 0 <= kid_noise_std < kid_noise / 5       # O(1) features: a usable spread


def fresh_fd(extractor, real, fake):
    """FD with a new torchmetrics metric per call, the real side extracted every time."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    for i in range(0, len(real), 500):
        metric.update(real[i:i + 500], real=True)
    for i in range(0, len(fake), 500):
        metric.update(fake[i:i + 500], real=False)
    return float(metric.compute())


def fresh_kid(extractor, real, fake, subset_size=100, seed=0):
    from torchmetrics.image.kid import KernelInceptionDistance
    metric = KernelInceptionDistance(feature=extractor, subsets=100, normalize=True,
                                     subset_size=min(subset_size, len(real), len(fake)))
    for i in range(0, len(real), 500):
        metric.update(real[i:i + 500], real=True)
    metric.update(fake, real=False)
    torch.manual_seed(seed)
    return tuple(float(v) for v in metric.compute())


def test_real_features_extracted_once_give_the_per_call_values(digits_split):
    from ddpm_lab.metrics.distances import RealReference
    extractor = reference_extractor("digits16")[0]
    (x_train, _), (x_val, _) = digits_split
    noise = torch.randn(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    fakes = [x_val, noise, x_train[:100], x_train[100:200], x_val]      # as ddpm-eval: floor, model, subsets
    seen = []
    hook = extractor.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    real = RealReference(extractor, x_train)
    fds = [real.fd(f) for f in fakes]
    kids = [real.kid(f, subset_size=50, seed=3) for f in fakes[:2]]
    hook.remove()
    state = torch.get_rng_state()
    real.kid(noise, subset_size=50, seed=3)
    assert torch.equal(torch.get_rng_state(), state)           # KID's subsets leave the global generator as it was
    # the training split passes the extractor once for FD and once for KID
    assert sum(seen) == 2 * len(x_train) + sum(map(len, fakes)) + sum(map(len, fakes[:2]))
    for fake, fd in zip(fakes, fds):
        assert fd == pytest.approx(fresh_fd(extractor, x_train, fake), rel=1e-6, abs=1e-6)
    for fake, kid in zip(fakes[:2], kids):
        assert kid == pytest.approx(fresh_kid(extractor, x_train, fake, subset_size=50, seed=3), rel=1e-6, abs=1e-9)


def test_scaled_features_have_unit_rms_on_the_training_split(digits_split):
    extractor, _, record = reference_extractor("digits16")
    (x_train, _), _ = digits_split
    assert extractor(x_train).pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    assert record["feature_scale"] > 0


def test_too_few_samples_for_fd_names_the_minimum(digits_reference, digits_split):
    extractor = FeatureExtractor(digits_reference[0])
    (x_train, _), _ = digits_split
    with pytest.raises(UserError, match="needs at least 65 generated images, got 10"):
        frechet_distance(extractor, x_train, x_train[:10])


def test_wrong_image_size_for_the_reference(digits_reference):
    extractor = FeatureExtractor(digits_reference[0])
    with pytest.raises(UserError, match=r"expects images of shape \(1, 16, 16\), got \(1, 32, 32\)"):
        extractor(torch.zeros(2, 1, 32, 32))


def test_unknown_metric_and_missing_inception_weights(tmp_path):
    with pytest.raises(UserError, match="metrics='is'.*fd, kid, accuracy"):
        check_metric_names(["fd", "is"])
    with pytest.raises(UserError, match="inception_weights=.*nothing is downloaded.*pt_inception-2015-12-05"):
        InceptionFeatures(str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="inception_weights=None"):
        InceptionFeatures(None)


def test_digits_loader_matches_sklearn_counts():
    x, y = load_digits_tensors(8)
    assert x.shape == (1797, 1, 8, 8) and y.bincount().min() >= 170


def test_inception_features_load_a_weights_file_the_test_writes(tmp_path, monkeypatch):
    """The real Inception loading path, on a randomly initialised weights file (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:     # build the architecture without any weights to get its keys
        m.setattr(fe.torch, "load", lambda *a, **k: {})
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None)
        random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                    feature_extractor_weights_path="unused")
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_net.state_dict(), path)
    features = InceptionFeatures(str(path))
    out = features(torch.rand(3, 1, 16, 16) * 2 - 1)      # grey images are repeated to RGB
    assert out.shape == (3, 2048) and torch.isfinite(out).all()
