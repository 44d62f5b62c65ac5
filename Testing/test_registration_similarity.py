"""Similarity measures: exact values on known images, masks, invariances, gradients, and a peak at alignment."""

import numpy as np
import pytest
import torch

from XrayToDRRLib.errors import InputError
from XrayToDRRRegistrationLib import similarity as S


def blobs(shift=(0.0, 0.0), size=48) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    img = torch.zeros(size, size, dtype=torch.float64)
    for cy, cx, s, a in ((18, 20, 5, 1.0), (30, 28, 7, 0.6), (14, 34, 3, 0.8), (34, 12, 4, 0.5)):
        img += a * torch.exp(-(((y - cy - shift[0]) ** 2 + (x - cx - shift[1]) ** 2) / (2 * s * s)))
    return img[None, None]


def test_ncc_equals_pearson_correlation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(32, 32)), rng.normal(size=(32, 32))
    b = 0.6 * a + 0.4 * b
    expected = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    value = S.ncc(torch.tensor(a)[None, None], torch.tensor(b)[None, None])
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_ncc_is_invariant_to_linear_intensity_maps_and_sign_flips_it():
    a = blobs()
    assert S.ncc(a, 3.0 * a + 7.0).item() == pytest.approx(1.0, abs=1e-6)
    assert S.ncc(a, -a).item() == pytest.approx(-1.0, abs=1e-6)


def test_mask_ignores_what_lies_outside_it():
    a = blobs()
    b = a.clone()
    b[..., :, :8] = 5.0  # a "collimator" band only in b
    mask = torch.ones_like(a)
    mask[..., :, :8] = 0
    for name in S.SIMILARITIES:
        f = S.get(name)
        assert f(a, b, mask).item() == pytest.approx(f(a, a, mask).item(), abs=1e-6), name
        assert f(a, b).item() < f(a, a).item() - 0.01, name
    assert S.ncc(a, b, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert S.gradncc(a, b, mask).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", S.SIMILARITIES)
def test_each_similarity_peaks_at_alignment_and_has_finite_gradients(name):
    f = S.get(name)
    a = blobs()
    values = [f(a, blobs((dy, 0.0))).item() for dy in (-4, -2, 0, 2, 4)]
    assert int(np.argmax(values)) == 2, values
    b = blobs((1.0, 1.0)).requires_grad_()
    f(a, b).sum().backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_mutual_information_is_highest_for_identical_images_and_near_zero_for_noise():
    a = blobs()
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(0), dtype=a.dtype)
    same, shifted, unrelated = (S.mutual_information(a, b).item() for b in (a, blobs((3.0, 3.0)), noise))
    assert same > shifted > unrelated
    assert unrelated < 0.1 * same
    # monotonic intensity changes keep it
    assert S.mutual_information(a, a.sqrt()).item() == pytest.approx(same, rel=0.2)


def test_unknown_similarity_is_an_input_error():
    with pytest.raises(InputError, match="unknown similarity"):
        S.get("ssd")
