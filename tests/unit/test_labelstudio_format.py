"""Label Studio's formats as seglabel writes and reads them: the labeling config, the brush RLE
(checked bit for bit against the SDK's encoder in the Label Studio tests; here against the format's
definition), regions in percent, and the corrections an annotation makes to a prediction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seglabel_api.formats import labelstudio as ls
from seglabel_server.transport.http.labelstudio.learn import Correction, corrections, started_from

CONFIG = """<View>
  <Image name="img" value="$photo"/>
  <PolygonLabels name="poly" toName="img"><Label value="cat"/><Label value="dog"/></PolygonLabels>
  <BrushLabels name="brush" toName="img"><Label value="dog"/><Label value="tree"/></BrushLabels>
  <KeyPointLabels name="kp" toName="img"><Label value="cat"/></KeyPointLabels>
</View>"""


def test_the_config_gives_the_tags_their_labels_and_the_image_key():
    cfg = ls.parse_config(CONFIG)
    assert [c.type for c in cfg.outputs] == ["polygonlabels", "brushlabels"]
    assert cfg.output.type == "brushlabels"  # a brush tag first: the masks as they are
    assert cfg.labels == ("cat", "dog", "tree")
    assert {c.key for c in cfg.outputs} == {"photo"} and cfg.prompts[0].from_name == "kp"
    assert ls.parse_config(CONFIG.replace("BrushLabels", "RectangleLabels")).output.type == "polygonlabels"


@pytest.mark.parametrize(
    "xml, says",
    [
        ("", "empty"),
        ("<View><Image name='i' value='$x'/>", "not valid XML"),
        ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'/></View>", "found: Choices, Text"),
        ("<View><Image name='i' value='$x'/><BrushLabels name='b' toName='i'/></View>", "no <Label"),
        ("<View><Image name='i' value='$x'/><BrushLabels name='b' toName='j'><Label value='a'/></BrushLabels></View>",
         "not an <Image>"),
    ],
)  # fmt: skip
def test_a_config_seglabel_cannot_fill_says_why(xml, says):
    with pytest.raises(ls.ConfigError, match=says):
        ls.parse_config(xml)


def _reference_decode(rle: list[int], n: int) -> np.ndarray:
    """The format's decoder as thi.ng/rle-pack (which Label Studio's front end uses) defines it."""
    bits = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def read(k):
        nonlocal pos
        v = int(bits[pos : pos + k], 2)
        pos += k
        return v

    assert read(32) == n
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(n, np.uint8), 0
    while i < n:
        x = read(1)
        j = i + 1 + read(sizes[read(2)])
        if x:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_brush_rle_round_trips_through_the_formats_own_decoder(h, w, seed, p):
    mask = np.random.default_rng(seed).random((h, w)) < p
    rle = ls.brush_encode(mask)
    rgba = _reference_decode(rle, h * w * 4).reshape(h, w, 4)
    assert (rgba[..., 3] > 0).tolist() == mask.tolist() and set(np.unique(rgba)) <= {0, 255}
    assert (ls.brush_decode(rle, h, w) == mask).all()


def test_brush_rle_of_long_runs_splits_them_at_65536():
    mask = np.zeros((300, 300), bool)
    mask[100:, :] = True  # a run of 4 x 60000 values
    assert (ls.brush_decode(ls.brush_encode(mask), 300, 300) == mask).all()
    with pytest.raises(ValueError, match="not 10x10x4"):
        ls.brush_decode(ls.brush_encode(mask), 10, 10)


def test_regions_are_in_percent_of_the_image_with_the_label_and_score():
    cfg = ls.parse_config(CONFIG.replace("BrushLabels", "RectangleLabels"))
    rect = next(c for c in cfg.outputs if c.type == "rectanglelabels")
    mask = np.zeros((50, 200), bool)
    (r,) = ls.regions(rect, mask, (20, 5, 40, 10), "dog", 0.75, "abc")
    assert r["value"] == {
        "x": 10.0,
        "y": 10.0,
        "width": 20.0,
        "height": 20.0,
        "rotation": 0,
        "rectanglelabels": ["dog"],
    }
    assert (r["original_width"], r["original_height"], r["score"], r["id"]) == (200, 50, 0.75, "abc")
    poly = cfg.outputs[0]
    got = ls.regions(
        poly,
        mask,
        None,
        "cat",
        0.5,
        "p",
        [np.array([[0, 0], [100, 0], [100, 25]]), np.array([[0, 0], [2, 0], [2, 2]])],
    )
    assert [g["id"] for g in got] == ["p", "p-2"] and got[0]["value"]["points"] == [[0, 0], [50, 0], [50, 50]]
    kind, box = ls.region_geometry(r)
    assert kind == "box" and box == pytest.approx((20, 5, 60, 15))
    assert ls.task_score([0.2, 0.4]) == pytest.approx(0.3) and ls.task_score([]) == 0.0


def _region(rid, label, kind="brushlabels"):
    return {"id": rid, "type": kind, "value": {kind: [label]}, "original_width": 4, "original_height": 4}


def test_corrections_are_relabels_deletions_and_new_regions_not_acceptances():
    rle = {"size": [4, 4], "counts": "x"}
    predicted = {"a": ("cat", rle), "b": ("dog", rle), "c": ("tree", rle)}
    result = [_region("a", "cat"), _region("b", "tree"), _region("new", "dog"),
              {"id": "t", "type": "choices", "value": {"choices": ["x"]}}]  # fmt: skip
    got = corrections(predicted, result)
    assert Correction("tree", False, region=result[1]) in got  # b relabelled: dog -> tree
    assert Correction("dog", True, rle=rle) in got
    assert Correction("dog", False, region=result[2]) in got  # drawn by the annotator
    assert Correction("tree", True, rle=rle) in got  # c deleted
    assert len(got) == 4  # a, accepted as predicted, teaches nothing
    # the prediction an annotation started from is the one whose region ids it shares
    older = {"x": ("cat", rle)}
    assert started_from([older, predicted], result) is predicted
    assert started_from([older], result) == {}


def test_an_annotations_regions_become_examples_of_their_pixels():
    from seglabel_server import amg
    from seglabel_server.transport.http.labelstudio.learn import example

    mask = np.zeros((40, 80), bool)
    mask[10:30, 20:60] = True
    base = {"original_width": 80, "original_height": 40}
    brush = {
        **base,
        "type": "brushlabels",
        "value": {"format": "rle", "rle": ls.brush_encode(mask), "brushlabels": ["a"]},
    }
    got = example(Correction("a", False, region=brush), "f" * 64, "label-studio:1:2")
    assert (amg.decode_rle(got.mask) == mask).all() and got.origin == "label-studio:1:2" and not got.negative
    poly = {
        **base,
        "type": "polygonlabels",
        "value": {"points": [[25, 25], [75, 25], [75, 75], [25, 75]], "polygonlabels": ["a"]},
    }
    got = example(Correction("a", True, region=poly), "f" * 64, "o")
    covered = amg.decode_rle(got.mask)
    assert got.negative and covered[10:30, 20:60].mean() > 0.95 and covered.sum() <= 21 * 41
    rect = {
        **base,
        "type": "rectanglelabels",
        "value": {"x": 25, "y": 25, "width": 50, "height": 50, "rectanglelabels": ["a"]},
    }
    assert example(Correction("a", False, region=rect), "f" * 64, "o").box == (20.0, 10.0, 60.0, 30.0)
    predicted = example(Correction("a", True, rle=amg.encode_rle(mask)), "f" * 64, "o")
    assert (amg.decode_rle(predicted.mask) == mask).all() and predicted.negative
    with pytest.raises(ValueError):
        example(
            Correction("a", False, region={**base, "type": "choices", "value": {"choices": ["a"]}}), "f", "o"
        )
