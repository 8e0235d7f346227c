"""End-to-end test of the per-image self-exploration orchestrator (paper section 3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from sohes_hf.masks import decode_mask, encode_mask, mask_areas, mask_boxes_xywh
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.hierarchy import build_hierarchy
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
from sohes_hf.pseudo_labeling.self_exploration import explore_image, resize_rle_nearest


class ColorFeatures:
    """Transparent backbone: a patch's feature is its mean colour minus mid-gray (see module doc)."""

    patch_size = 8

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        grid = size // self.patch_size
        out = np.zeros((len(images), grid, grid, 3), dtype=np.float32)
        for i, image in enumerate(images):
            resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)
            out[i] = resized.reshape(grid, 8, grid, 8, 3).mean(axis=(1, 3)) - 127.5
        return out


def _scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """96 x 128 image: a red and an orange block side by side on gray.

    Feature cosines: red/orange 0.82, either/gray <= 0. With thresholds (0.9, 0.5) the finest
    partition separates the blocks and the coarser one merges them: a two-level hierarchy.
    The blocks fall on whole 8 x 8 patches of the 64 x 64 working image.
    """
    image = np.full((96, 128, 3), 200, dtype=np.uint8)
    image[24:48, 16:48] = (255, 0, 0)
    image[24:48, 48:80] = (255, 128, 0)
    masks = {name: np.zeros((96, 128), dtype=bool) for name in ("red", "orange")}
    masks["red"][24:48, 16:48] = True
    masks["orange"][24:48, 48:80] = True
    masks["both"] = masks["red"] | masks["orange"]
    masks["gray"] = ~masks["both"]
    return image, masks


# The paper's steps alone keep the gray background (all four corners) as a root; HASSOD's
# clean-up (the defaults) drops it, and the merged blocks are then the only whole entity.
WITHOUT_CLEANUP = {"min_mask_area": 0, "max_mask_corners": 4}


@pytest.mark.parametrize(
    ("cleanup", "expected_parents"),
    [
        (WITHOUT_CLEANUP, {"both": None, "gray": None, "red": "both", "orange": "both"}),
        ({}, {"both": None, "red": "both", "orange": "both"}),
    ],
)
def test_explore_image_finds_the_hierarchy_at_original_resolution(
    cleanup: dict[str, object], expected_parents: dict[str, str | None]
) -> None:
    image, expected = _scene()
    config = SelfExplorationConfig(
        image_size=64,
        local_crop_size=64,
        merge_thresholds=(0.9, 0.5),
        refiner="none",
        **cleanup,  # type: ignore[arg-type]
    )
    labels = explore_image(image, ColorFeatures(), IdentityRefiner(), config)
    found = [decode_mask(m) for m in labels.masks]
    assert all(m.shape == (96, 128) for m in found)
    names = []
    for mask in found:
        matches = [name for name, target in expected.items() if np.array_equal(mask, target)]
        assert len(matches) == 1
        names.append(matches[0])
    assert sorted(names) == sorted(expected_parents)  # gray found twice, kept at most once
    parent_name = {names[i]: (names[p] if p >= 0 else None) for i, p in enumerate(labels.parents)}
    assert parent_name == expected_parents
    depth = dict(zip(names, labels.depths.tolist(), strict=True))
    assert depth == {name: 0 if parent is None else 1 for name, parent in expected_parents.items()}
    assert all(p < i for i, p in enumerate(labels.parents))  # parents precede children
    np.testing.assert_array_equal(labels.areas, [m.sum() for m in found])
    np.testing.assert_array_equal(labels.boxes, mask_boxes_xywh(labels.masks))
    np.testing.assert_array_equal(labels.scores, 1.0)
    assert labels.counts.global_regions == 4 and labels.counts.after_nms == 4  # 3 + 2 regions, gray twice
    assert labels.counts.after_refinement == 4
    assert labels.counts.after_cleanup == len(expected_parents)
    assert labels.timings.total >= labels.timings.network >= 0.0


@pytest.mark.parametrize(
    ("cleanup", "expected_parents"),
    [
        (  # the paper's steps alone: the merged frame is the one root, every entity its part
            WITHOUT_CLEANUP,
            {
                "frame": None,
                "gray": "frame",
                "band": "frame",
                "both": "frame",
                "red": "both",
                "orange": "both",
            },
        ),
        (  # defaults: the frame (4 corners) is gone and its children are the roots
            {},
            {"gray": None, "band": None, "both": None, "red": "both", "orange": "both"},
        ),
        (  # HASSOD's hole filling as well: the gray surround, filled, becomes the blocks' parent
            {"use_hole_filling": True},
            {"gray_filled": None, "band": None, "both": "gray_filled", "red": "both", "orange": "both"},
        ),
    ],
)
def test_the_whole_frame_is_dropped_and_its_children_become_roots(
    cleanup: dict[str, object], expected_parents: dict[str, str | None]
) -> None:
    """The user's symptom in miniature: the last threshold (-0.99) merges everything into one region.

    A green band along the bottom holds two corners, the gray rest (around the blocks) the two
    top ones, the merged frame all four. All boundaries fall on whole patches.
    """
    image, expected = _scene()
    image[72:, :] = (0, 255, 0)
    expected["band"] = np.zeros((96, 128), dtype=bool)
    expected["band"][72:, :] = True
    expected["gray"] &= ~expected["band"]
    expected["gray_filled"] = expected["gray"] | expected["both"]
    expected["frame"] = np.ones((96, 128), dtype=bool)
    config = SelfExplorationConfig(
        image_size=64,
        local_crop_size=64,
        merge_thresholds=(0.9, 0.5, -0.99),
        refiner="none",
        **cleanup,  # type: ignore[arg-type]
    )
    labels = explore_image(image, ColorFeatures(), IdentityRefiner(), config)
    masks = [decode_mask(m) for m in labels.masks]
    names = [next(n for n, target in expected.items() if np.array_equal(m, target)) for m in masks]
    parents = {names[i]: (names[p] if p >= 0 else None) for i, p in enumerate(labels.parents)}
    assert parents == expected_parents
    assert labels.depths.tolist() == [0 if p < 0 else 1 + labels.depths[p] for p in labels.parents]


def test_parents_match_build_hierarchy_and_cover_their_children() -> None:
    rng = np.random.default_rng(3)
    image = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), 8, 0), 8, 1)
    config = SelfExplorationConfig(
        image_size=64, local_crop_size=32, small_region_area_ratio=1 / 30, refiner="none"
    )
    labels = explore_image(image, ColorFeatures(), IdentityRefiner(), config)
    assert len(labels) > 0
    assert labels.counts.small_regions > 0  # local re-clustering was exercised
    assert all(p < i for i, p in enumerate(labels.parents))
    np.testing.assert_array_equal(
        labels.parents, build_hierarchy(labels.masks, coverage=config.coverage_threshold)
    )
    masks = [decode_mask(m) for m in labels.masks]
    for child, parent in enumerate(labels.parents):
        if parent >= 0:
            coverage = (masks[child] & masks[parent]).sum() / masks[child].sum()
            assert coverage >= config.coverage_threshold
            assert labels.depths[child] == labels.depths[parent] + 1
        else:
            assert labels.depths[child] == 0
    np.testing.assert_array_equal(labels.areas, mask_areas(labels.masks))


def test_bad_inputs_raise() -> None:
    config = SelfExplorationConfig(image_size=64, refiner="none")
    with pytest.raises(ValueError, match="image"):
        explore_image(np.zeros((64, 64), dtype=np.uint8), ColorFeatures(), IdentityRefiner(), config)
    with pytest.raises(ValueError, match="global_features"):
        explore_image(
            np.zeros((64, 64, 3), dtype=np.uint8),
            ColorFeatures(),
            IdentityRefiner(),
            config,
            global_features=np.zeros((4, 4, 3), dtype=np.float32),
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 0),
        ("merge_thresholds", (0.1, 0.5)),
        ("merge_thresholds", ()),
        ("nms_iou_threshold", 0.0),
        ("small_region_area_ratio", 1.5),
        ("coverage_threshold", 2.0),
        ("feature_kind", "cls"),
        ("refiner", "densecrf"),
        ("local_crop_context", 0.5),
        ("precision", "fp8"),
        ("refinement_fast", "yes"),
        ("min_mask_area", -1),
        ("max_mask_corners", 5),
        ("max_mask_corners", -1),
        ("use_hole_filling", 1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SelfExplorationConfig(**{field: value})  # type: ignore[arg-type]


def test_config_defaults_are_the_papers_and_round_trip() -> None:
    config = SelfExplorationConfig()
    assert config.image_size == 1024 and config.local_crop_size == 256
    assert config.merge_thresholds == (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    assert config.small_region_area_ratio == (32 * 32) / (1024 * 1024)
    assert config.coverage_threshold == 0.9 and config.feature_kind == "keys"
    # HASSOD's clean-up (hac/hac.py): masks under 100 px or with 3-4 corners dropped.
    assert config.min_mask_area == 100 and config.max_mask_corners == 2
    assert not config.use_hole_filling  # HASSOD fills holes; see docs/self_exploration.md
    assert SelfExplorationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        SelfExplorationConfig.from_dict({"theta": 1})


@pytest.mark.parametrize(
    ("source", "target"),
    [((8, 8), (13, 5)), ((64, 64), (48, 80)), ((30, 20), (7, 9)), ((1, 7), (3, 3)), ((5, 5), (1, 1))],
)
def test_resize_rle_nearest_matches_index_sampling(source: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(source + target))
    height, width = target
    for trial in range(10):
        mask = rng.random(source) < rng.random()
        if trial == 0:
            mask[:] = True
        resized = decode_mask(resize_rle_nearest(encode_mask(mask), height, width))
        rows = (np.arange(height) * source[0]) // height
        cols = (np.arange(width) * source[1]) // width
        np.testing.assert_array_equal(resized, mask[np.ix_(rows, cols)])


def test_package_exports_resolve() -> None:
    import sohes_hf.pseudo_labeling as package

    assert all(getattr(package, name) is not None for name in package.__all__)
    assert package.explore_image is explore_image
