"""The request options, declared once (``seglabel_api.options``): the declaration and the proto agree,
the mappings round-trip, and an option added to the declaration (and to the proto, as a developer
would) reaches the command line, the client's request, the HTTP schema, the server's parameters and
a dataset job's stored options with no other edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from seglabel_api import flags, options
from seglabel_api.datasets.job import LabelOptions, canonical_job, dataset_request
from seglabel_api.options import SegmentOptions
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_every_request_field_is_declared_and_nothing_else():
    request = pb.SegmentRequest.DESCRIPTOR
    declared = {options.proto_path(f) for f in options.declared()}
    wire = {
        f.name
        for f in request.fields
        if f.containing_oneof is None or f.containing_oneof.name != "image_source"
    }
    nested = {p.split(".")[0] for p in declared if "." in p}
    assert {p.split(".")[0] for p in declared} == wire
    for parent in nested:  # a nested message's every field is an option
        inner = {f.name for f in request.fields_by_name[parent].message_type.fields}
        assert {p.split(".", 1)[1] for p in declared if p.startswith(parent + ".")} == inner
    relabel = {f.name for f in pb.RelabelRequest.DESCRIPTOR.fields} - {"request_id"}
    assert {f.name for f in options.declared(options.RELABEL)} == relabel
    for f in options.declared():  # an enum's choices are the proto's names
        fd = request.fields_by_name.get(f.name)
        if fd is not None and fd.enum_type is not None:
            prefix = fd.enum_type.values[0].name.removesuffix("UNSPECIFIED")
            names = tuple(v.name.removeprefix(prefix).lower() for v in fd.enum_type.values if v.number)
            assert f.metadata["choices"] == names, f.name


def test_the_protobuf_mapping_round_trips():
    opts = SegmentOptions(
        prompt_type="box", points=((3.0, 4.0, 1), (5.0, 6.0, 0)), boxes=((0.0, 1.0, 30.0, 40.0),), multimask=True,
        max_masks=7, pred_iou_thresh=0.0, box_nms_thresh=0.5, vocabulary=("cat", "dog"), label_mode="multi",
        thresholds={"cat": 0.25}, top_k=2, min_confidence=0.5, skip_labels=True, return_overlay=True,
        with_text=True, text_box_thresh=0.25,
    )  # fmt: skip
    req = options.to_pb(opts, pb.SegmentRequest())
    assert req.prompt_type == pb.PROMPT_TYPE_BOX and req.label_mode == pb.LABEL_MODE_MULTI
    assert req.HasField("pred_iou_thresh") and not req.HasField("stability_score_thresh")
    assert req.text_options.box_thresh == 0.25 and not req.text_options.HasField("min_confidence")
    assert [p.positive for p in req.points] == [True, False]
    assert options.from_pb(req) == opts
    assert options.from_pb(pb.SegmentRequest()) == SegmentOptions()  # unset: the declared defaults
    relabel = options.to_pb(opts, pb.RelabelRequest(request_id="r"), options.RELABEL)
    assert options.from_pb(relabel, options.RELABEL) == SegmentOptions(
        vocabulary=("cat", "dog"), label_mode="multi", thresholds={"cat": 0.25}, top_k=2, min_confidence=0.5
    )
    with pytest.raises(ValueError, match="unknown prompt_type 9"):
        options.from_pb(pb.SegmentRequest(prompt_type=9))
    with pytest.raises(ValueError, match="must be one of grid, points, box"):
        options.to_pb(SegmentOptions(prompt_type="polygon"), pb.SegmentRequest())


def test_keywords_flags_and_server_defaults():
    opts = options.from_kwargs(labels=["cat"], overlay=True, points=[[1, 2]], thresholds=None)
    assert opts.vocabulary == ("cat",) and opts.return_overlay and opts.points == ((1, 2),)
    with pytest.raises(TypeError, match="unknown option.*points_per_sid"):
        options.from_kwargs(points_per_sid=4)
    with pytest.raises(TypeError, match="boxes"):  # a dataset job takes grid prompts only
        options.from_kwargs(options.DATASET, boxes=[(0, 0, 1, 1)])
    import argparse

    ap = argparse.ArgumentParser()
    flags.add_flags(ap, options.SEGMENT)
    args = ap.parse_args(["--prompt", "points", "--points", "1,2;3,4,0", "--labels", "a, b", "--threshold",
                          "a=0.5", "--threshold", "x=y=0.25", "--no-labels", "--grid", "8"])  # fmt: skip
    got = flags.from_args(args, options.SEGMENT)
    assert got == SegmentOptions(prompt_type="points", points=((1.0, 2.0, 1), (3.0, 4.0, 0)), vocabulary=("a", "b"),
                                 thresholds={"a": 0.5, "x=y": 0.25}, skip_labels=True, points_per_side=8)  # fmt: skip
    with pytest.raises(SystemExit):
        ap.parse_args(["--boxes", "1,2,3"])

    class Settings:  # the server's PipelineConfig, for what it defaults
        points_per_side, max_masks, top_k = 16, 100, 3
        pred_iou_thresh, stability_score_thresh, box_nms_thresh = 0.8, 0.95, 0.7
        text_box_thresh, text_min_confidence = 0.3, 0.5

    filled = options.with_defaults(SegmentOptions(pred_iou_thresh=0.0, max_masks=5), Settings)
    assert (filled.pred_iou_thresh, filled.max_masks, filled.points_per_side, filled.box_nms_thresh) == (
        0.0,
        5,
        16,
        0.7,
    )
    assert options.out_of_range(SegmentOptions(box_nms_thresh=1.5, text_min_confidence=float("nan"))) == [
        ("box_nms_thresh", 1.5), ("text_min_confidence", pytest.approx(float("nan"), nan_ok=True))]  # fmt: skip


def test_a_journal_written_before_the_declaration_names_the_same_job():
    old = {"labels": ["cat", "dog"], "points_per_side": 4, "max_masks": 6, "top_k": 0, "min_confidence": None,
           "pred_iou_thresh": 0.0, "stability_score_thresh": None, "box_nms_thresh": 1.0, "skip_labels": False,
           "with_depth": False, "with_text": False, "mask_format": "rle", "polygon_tolerance": 1.0,
           "yolo": True}  # fmt: skip
    now = LabelOptions(dataset_request(labels=("cat", "dog"), points_per_side=4, max_masks=6, pred_iou_thresh=0.0,
                                       box_nms_thresh=1.0), formats=("coco", "yolo-seg"))  # fmt: skip
    assert canonical_job(old) == now.job()
    assert canonical_job({**old, "max_masks": 7}) != now.job()
    with pytest.raises(ValueError, match="does not take boxes"):
        LabelOptions(SegmentOptions(boxes=((0, 0, 1, 1),)))


def _request_with_a_dummy_field():
    """SegmentRequest with one more field, as the .proto would declare it (built from its descriptor)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    msg = next(m for m in fdp.message_type if m.name == "SegmentRequest")
    msg.field.add(name="dummy_knob", number=999, type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    for dep in pb.DESCRIPTOR.dependencies:
        dp = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(dp)
        pool.Add(dp)
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("seglabel.v1.SegmentRequest"))


def test_an_option_added_to_the_declaration_is_everywhere(monkeypatch, capsys):
    extended = dataclasses.make_dataclass(
        "SegmentOptions",
        [
            (
                "dummy_knob",
                float,
                options.option(
                    0.0, "a knob only this test has", scopes={options.SEGMENT, options.DATASET, options.BENCH}
                ),
            )
        ],  # fmt: skip
        bases=(SegmentOptions,),
    )
    monkeypatch.setattr(options, "SegmentOptions", extended)
    monkeypatch.setattr(pb, "SegmentRequest", _request_with_a_dummy_field())
    from seglabel_client import bench, cli
    from seglabel_client.client import build_request

    # every command that sends a Segment request has the flag, with its help
    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd").choices
    for command in ("segment", "label"):
        text = sub[command].format_help()
        assert "--dummy-knob" in text and "a knob only this test has" in text, command
    assert (
        flags.from_args(
            sub["segment"].parse_args(["x.png", "--dummy-knob", "2.5"]), options.SEGMENT
        ).dummy_knob
        == 2.5
    )
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "--dummy-knob" in capsys.readouterr().out
    # the client's keyword, in the request it sends
    assert build_request(b"img", dummy_knob=2.5).dummy_knob == 2.5
    # the HTTP schema, and the server's parameters read from a JSON body
    from seglabel_server.metrics import Metrics
    from seglabel_server.transport.grpc import convert
    from seglabel_server.transport.http import json as wire
    from seglabel_server.transport.http.app import create_app

    gateway = type("Gateway", (), {"metrics": Metrics(), "max_image_bytes": 1 << 20})()
    _, app = create_app(gateway)
    try:
        schemas = app.openapi()["components"]["schemas"]
    finally:
        app.state.datasets.close()
    for model in ("SegmentBody", "DatasetOptions"):
        assert schemas[model]["properties"]["dummy_knob"]["description"] == "a knob only this test has"
    assert convert.params_from_pb(wire.segment_request({"dummy_knob": 2.5})).dummy_knob == 2.5
    # a dataset job's stored options (its journal's job), left out at the default
    assert LabelOptions(dataset_request(dummy_knob=2.5)).job()["dummy_knob"] == 2.5
    assert "dummy_knob" not in LabelOptions(dataset_request()).job()


def test_one_option_is_written_in_few_places():
    """``git grep -c stability_score_thresh -- server client`` outside tests: the declaration, the
    server's default, the filter that uses it, and the web page's form."""
    lines = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for top in ("server", "client")
        for path in sorted((ROOT / top).rglob("*"))
        if path.is_file() and path.suffix in (".py", ".js", ".html") and "/pb/" not in path.as_posix()
        for line in path.read_text().splitlines()
        if "stability_score_thresh" in line
    ]
    assert len(lines) <= 4, "\n".join(lines)
