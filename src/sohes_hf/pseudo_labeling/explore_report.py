"""What a self-exploration run tells its user: which step removed every mask, and how fast it goes.

Self-exploration (paper section 3.1) counts the masks after each of its steps
(:class:`~.self_exploration.ExplorationCounts`). A step that leaves nothing is the first thing to
look at when an image (or a whole run) ends without pseudo-labels, so the job names it instead
of writing an empty COCO file in silence. Rates are printed in the unit that reads well at the
speed of the run: a CPU run at S = 1,024 with CascadePSP takes minutes per image, a GPU run
several images per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EmptiedStep:
    """The first step of self-exploration after which no mask was left.

    Attributes:
        step: the step's name as the paper calls it ("refinement", "local re-clustering", ...).
        num_before: masks that entered the step (0 for the first step).
        hint: what to check when this step removes everything.
    """

    step: str
    num_before: int
    hint: str


# (count before the step, count after it, step name, what to check), in pipeline order; the
# count fields are those of ExplorationCounts. An unknown or missing field ends the walk.
_STEPS: tuple[tuple[str | None, str, str, str], ...] = (
    (
        None,
        "global_regions",
        "global clustering",
        "the backbone's features gave no region; check --backbone and --feature",
    ),
    ("global_regions", "after_nms", "NMS", "check nms_iou_threshold"),
    (
        "after_nms",
        "after_local",
        "local re-clustering",
        "every region was below theta_small and no crop gave a complete subregion; check --image-size",
    ),
    (
        "after_local",
        "after_refinement",
        "refinement",
        "every mask moved too much under the refiner (IoU before/after below "
        "refinement_iou_threshold) or came back empty; check --refiner-weights (CascadePSP's "
        "checkpoint), or skip refinement with --refiner none",
    ),
)


def emptied_step(counts: Mapping[str, int]) -> EmptiedStep | None:
    """The first step after which ``counts`` (one image's, or totals over images) shows no mask.

    Args:
        counts: masks after each step, keyed by the field names of
            :class:`~.self_exploration.ExplorationCounts`. Fields ``after_<step>`` beyond the
            known ones are taken as later steps, in the order given (a post-processing step added
            to the pipeline is named without a change here).

    Returns:
        None when masks are left after every step.
    """
    last = None
    for before, after, step, hint in _STEPS:
        if after not in counts or (before is not None and before not in counts):
            return None
        num_before = 0 if before is None else int(counts[before])
        if int(counts[after]) == 0 and (before is None or num_before > 0):
            return EmptiedStep(step=step, num_before=num_before, hint=hint)
        if int(counts[after]) == 0:
            return None  # nothing entered this step: an earlier one is to blame (reported there)
        last = after
    known = {after for _, after, _, _ in _STEPS}
    for key, value in counts.items():
        if key.startswith("after_") and key not in known and last is not None:
            if int(value) == 0:
                step = key.removeprefix("after_").replace("_", " ")
                return EmptiedStep(
                    step=step, num_before=int(counts[last]), hint=f"check the {step} step's settings"
                )
            last = key
    return None


def format_rate(num_images: int, seconds: float) -> str:
    """Speed in the unit that reads well: "4.1 images/s", "12.3 s/image", "2.3 min/image", "1.1 h/image".

    Returns "no image processed" when ``num_images`` is 0.
    """
    if num_images <= 0:
        return "no image processed"
    if seconds <= 0 or num_images / seconds >= 1.0:
        per_second = num_images / seconds if seconds > 0 else float("inf")
        return f"{per_second:.1f} images/s"
    per_image = seconds / num_images
    if per_image < 60:
        return f"{per_image:.1f} s/image"
    if per_image < 3600:
        return f"{per_image / 60:.1f} min/image"
    return f"{per_image / 3600:.1f} h/image"
