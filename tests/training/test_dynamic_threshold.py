"""Eq. (3) of the paper (section 3.3) for floats, numpy arrays and torch tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sohes_hf.training.dynamic_threshold import dynamic_score_threshold


def paper_eq3(a: float, large: float = 0.7, small: float = 0.3, gamma: float = 200.0) -> float:
    """theta = (1 - (1 - a)^gamma)(theta_large - theta_small) + theta_small, written out."""
    return (1.0 - math.pow(1.0 - a, gamma)) * (large - small) + small


AREAS = [0.0, 1e-5, 1e-4, 1e-3, 3.4e-3, 0.01, 0.05, 0.3, 0.999, 1.0]


@pytest.mark.parametrize("area", AREAS)
def test_float_matches_equation(area: float) -> None:
    assert dynamic_score_threshold(area) == pytest.approx(paper_eq3(area), abs=1e-12)


def test_endpoints_for_every_input_type() -> None:
    assert dynamic_score_threshold(0.0) == pytest.approx(0.3)
    assert dynamic_score_threshold(1.0) == pytest.approx(0.7)
    array = dynamic_score_threshold(np.array([0.0, 1.0]))
    np.testing.assert_allclose(array, [0.3, 0.7])
    tensor = dynamic_score_threshold(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(tensor, torch.tensor([0.3, 0.7]))


def test_numpy_and_torch_match_equation_elementwise() -> None:
    expected = np.array([paper_eq3(a, 0.8, 0.2, 50.0) for a in AREAS])
    areas = np.array(AREAS).reshape(2, 5)
    out_np = dynamic_score_threshold(areas, theta_large=0.8, theta_small=0.2, gamma=50.0)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 5)
    np.testing.assert_allclose(out_np.ravel(), expected, rtol=1e-12)
    out_t = dynamic_score_threshold(torch.tensor(areas), theta_large=0.8, theta_small=0.2, gamma=50.0)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy().ravel(), expected, rtol=1e-12)


def test_threshold_rises_with_area() -> None:
    values = dynamic_score_threshold(np.linspace(0, 1, 101))
    assert np.all(np.diff(values) >= 0)
    # gamma = 200: half-way between the end points at a = 1 - 0.5 ** (1 / 200) ~= 0.35 %.
    assert dynamic_score_threshold(1 - 0.5 ** (1 / 200)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"theta_large": 0.3, "theta_small": 0.3}, "theta_small must be smaller"),
        ({"theta_large": 0.2, "theta_small": 0.5}, "theta_small must be smaller"),
        ({"gamma": 1.0}, "gamma must be > 1"),
        ({"theta_large": 1.5}, "theta_large must be in"),
    ],
)
def test_invalid_parameters_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dynamic_score_threshold(0.5, **kwargs)


@pytest.mark.parametrize("area", [-0.1, 1.1, float("nan")])
def test_area_outside_unit_interval_raises(area: float) -> None:
    with pytest.raises(ValueError, match="area_ratio"):
        dynamic_score_threshold(area)
    with pytest.raises(ValueError, match="area_ratio"):
        dynamic_score_threshold(np.array([0.5, area]))
    with pytest.raises(ValueError, match="area_ratio"):
        dynamic_score_threshold(torch.tensor([0.5, area]))


def test_wrong_type_raises() -> None:
    with pytest.raises(TypeError, match="area_ratio"):
        dynamic_score_threshold("0.5")  # type: ignore[arg-type]
