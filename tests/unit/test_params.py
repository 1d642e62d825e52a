"""A Segment request resolved once by the service: defaults and limits, and what the answer will
hold given what the server serves (Capabilities)."""

from __future__ import annotations

import pytest
from seglabel_server.errors import InvalidArgument, LimitExceeded
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.service.capabilities import Capabilities
from seglabel_server.service.params import check_prompts_inside, plan_segment
from seglabel_server.types import SegmentOptions

CFG = PipelineConfig()


def test_everything_served_and_asked():
    job = plan_segment(CFG, SegmentOptions(with_depth=True, with_text=True), Capabilities())
    assert (job.labels, job.depth, job.text, job.complete, job.notes) == (True, True, True, True, {})
    assert job.params.points_per_side == CFG.points_per_side and job.params.vocabulary == CFG.vocabulary


def test_what_is_not_served_is_noted_and_makes_the_answer_incomplete():
    caps = Capabilities({"labels": "no CLIP models in /m", "depth": "no depth models in /m"})
    job = plan_segment(CFG, SegmentOptions(with_depth=True), caps)
    assert not job.labels and not job.depth and not job.text and not job.complete
    assert job.notes == {"labels": "no CLIP models in /m", "depth": "no depth models in /m"}
    # depth not asked for: no note, and labels missing still makes it incomplete
    job = plan_segment(CFG, SegmentOptions(), caps)
    assert job.notes == {"labels": "no CLIP models in /m"} and not job.complete


def test_skipped_labels_are_noted_but_complete():
    job = plan_segment(CFG, SegmentOptions(skip_labels=True), Capabilities({"labels": "no CLIP"}))
    assert not job.labels and job.complete and "skip_labels" in job.notes["labels"]


@pytest.mark.parametrize(
    "params,error",
    [
        (SegmentOptions(points_per_side=CFG.max_points_per_side + 1), LimitExceeded),
        (SegmentOptions(prompt_type="points"), InvalidArgument),
        (SegmentOptions(pred_iou_thresh=float("nan")), InvalidArgument),
        (SegmentOptions(vocabulary=("cat", " ")), InvalidArgument),
    ],
)
def test_bad_parameters_are_refused_before_any_work(params, error):
    with pytest.raises(error):
        plan_segment(CFG, params, Capabilities())


def test_prompts_are_checked_against_the_image():
    job = plan_segment(CFG, SegmentOptions(prompt_type="box", boxes=[(0, 0, 50, 50)]), Capabilities())
    check_prompts_inside(job.params, 64, 64)
    with pytest.raises(InvalidArgument, match="outside the 40x40 image"):
        check_prompts_inside(job.params, 40, 40)
