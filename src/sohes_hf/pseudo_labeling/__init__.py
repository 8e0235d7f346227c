"""Phase 1 of SOHES, self-exploration: initial hierarchical pseudo-labels (paper section 3.1).

Steps, one module each: :mod:`.features` (DINO patch features), :mod:`.merge` (global
agglomerative clustering), :mod:`.region_pool` (mixing the thresholds' regions, NMS),
:mod:`.local_reclustering` (zooming in on small regions), :mod:`.refinement` (CascadePSP and the
IoU filter), :mod:`.mask_cleanup` (HASSOD's area and corner tests), :mod:`.hierarchy`
(coverage-based parents), orchestrated per image by
:mod:`.self_exploration` and over a dataset by :mod:`.explore_job`.

Names are imported lazily on first access, so ``import sohes_hf.pseudo_labeling`` does not pay
for torch, transformers or numba until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # configuration
    "SelfExplorationConfig": "config",
    # step 1: features, global clustering, region pool
    "DinoFeatureExtractor": "features",
    "preprocess_images": "features",
    "agglomerative_merge": "merge",
    "agglomerative_merge_batch": "merge",
    "DEFAULT_MERGE_THRESHOLDS": "merge",
    "RegionPool": "region_pool",
    "regions_from_label_maps": "region_pool",
    "deduplicate_regions": "region_pool",
    "build_region_pool": "region_pool",
    # step 2: local re-clustering
    "local_recluster": "local_reclustering",
    "LocalReclusteringResult": "local_reclustering",
    "FeatureExtractor": "local_reclustering",
    # step 3: refinement
    "MaskRefiner": "refinement",
    "IdentityRefiner": "refinement",
    "CascadePSPRefiner": "refinement",
    "RefinementResult": "refinement",
    "build_refiner": "refinement",
    "refine_and_filter": "refinement",
    # HASSOD's clean-up between steps 3 and 4
    "CleanupResult": "mask_cleanup",
    "clean_masks": "mask_cleanup",
    # step 4: hierarchy
    "Hierarchy": "hierarchy",
    "DEFAULT_COVERAGE_THRESHOLD": "hierarchy",
    "analyze_hierarchy": "hierarchy",
    "build_hierarchy": "hierarchy",
    "hierarchy_depths": "hierarchy",
    "order_parents_first": "hierarchy",
    # orchestration
    "explore_image": "self_exploration",
    "ImagePseudoLabels": "self_exploration",
    "ExplorationCounts": "self_exploration",
    "ExplorationTimings": "self_exploration",
    "ExploreJobConfig": "explore_job",
    "ExploreSummary": "explore_job",
    "ShardPaths": "explore_job",
    "run_explore_job": "explore_job",
    "merge_shards": "explore_job",
    "MergeSummary": "explore_job",
}

__all__ = [
    "DEFAULT_COVERAGE_THRESHOLD",
    "DEFAULT_MERGE_THRESHOLDS",
    "CascadePSPRefiner",
    "CleanupResult",
    "DinoFeatureExtractor",
    "ExplorationCounts",
    "ExplorationTimings",
    "ExploreJobConfig",
    "ExploreSummary",
    "FeatureExtractor",
    "Hierarchy",
    "IdentityRefiner",
    "ImagePseudoLabels",
    "LocalReclusteringResult",
    "MaskRefiner",
    "MergeSummary",
    "RefinementResult",
    "RegionPool",
    "SelfExplorationConfig",
    "ShardPaths",
    "agglomerative_merge",
    "agglomerative_merge_batch",
    "analyze_hierarchy",
    "build_hierarchy",
    "build_refiner",
    "build_region_pool",
    "clean_masks",
    "deduplicate_regions",
    "explore_image",
    "hierarchy_depths",
    "local_recluster",
    "merge_shards",
    "order_parents_first",
    "preprocess_images",
    "refine_and_filter",
    "regions_from_label_maps",
    "run_explore_job",
]

if TYPE_CHECKING:
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.explore_job import (
        ExploreJobConfig,
        ExploreSummary,
        MergeSummary,
        ShardPaths,
        merge_shards,
        run_explore_job,
    )
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor, preprocess_images
    from sohes_hf.pseudo_labeling.hierarchy import (
        DEFAULT_COVERAGE_THRESHOLD,
        Hierarchy,
        analyze_hierarchy,
        build_hierarchy,
        hierarchy_depths,
        order_parents_first,
    )
    from sohes_hf.pseudo_labeling.local_reclustering import (
        FeatureExtractor,
        LocalReclusteringResult,
        local_recluster,
    )
    from sohes_hf.pseudo_labeling.mask_cleanup import CleanupResult, clean_masks
    from sohes_hf.pseudo_labeling.merge import (
        DEFAULT_MERGE_THRESHOLDS,
        agglomerative_merge,
        agglomerative_merge_batch,
    )
    from sohes_hf.pseudo_labeling.refinement import (
        CascadePSPRefiner,
        IdentityRefiner,
        MaskRefiner,
        RefinementResult,
        build_refiner,
        refine_and_filter,
    )
    from sohes_hf.pseudo_labeling.region_pool import (
        RegionPool,
        build_region_pool,
        deduplicate_regions,
        regions_from_label_maps,
    )
    from sohes_hf.pseudo_labeling.self_exploration import (
        ExplorationCounts,
        ExplorationTimings,
        ImagePseudoLabels,
        explore_image,
    )


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
