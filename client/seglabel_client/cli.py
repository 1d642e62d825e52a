"""``seglabel``: command-line client.

seglabel segment IMAGE [--stream] [--labels a,b,c] [--out overlay.png] [--json] [--with-depth] [--with-text]
seglabel depth IMAGE [--out depth.png] [--raw depth.npy]
seglabel text IMAGE [--json]
seglabel label DIR --out OUT [--format coco,yolo-seg] [--mask-format polygon] [--labels a,b,c] [--restart]
seglabel eval --gt gt.coco.json --pred OUT/annotations.coco.json
seglabel vocab create|show|list|delete|add|remove ...   named vocabularies and their examples
seglabel relabel REQUEST_ID [--vocabulary-name NAME | --labels a,b] [--label-mode multi]
seglabel eval-labels DIR     zero-shot vs k-shot accuracy on an ImageFolder
seglabel info | seglabel health
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
from google.protobuf.json_format import MessageToDict

from seglabel_client.analysis import group_by_label, most_common_labels, scene_summary
from seglabel_client.client import DEFAULT_TARGET, SegmenterClient, depth_array


def _pairs(text: str, n: int) -> list[tuple[float, ...]]:
    out = []
    for chunk in filter(None, text.split(";")):
        vals = tuple(float(v) for v in chunk.split(","))
        if len(vals) not in (n, n + 1 if n == 2 else n):
            raise argparse.ArgumentTypeError(f"{chunk!r}: expected {n} numbers")
        out.append(vals)
    return out


def format_table(resp) -> str:
    lines = [f"Segment Labels ({resp.mask_count} masks, {resp.width}x{resp.height})"]
    if not resp.labels:
        reason = resp.labels_unavailable_reason or "no masks"
        lines.append(f"  (no labels: {reason})")
    else:
        lines.append(f"  {'mask':>4}  {'label':<18} {'conf':>6}  {'area':>8}  top-k")
        areas = {m.index: m.area for m in resp.masks}
        for lab in sorted(resp.labels, key=lambda lab: -lab.confidence):
            alts = ", ".join(f"{t.label} {t.confidence:.2f}" for t in lab.top_k[1:])
            lines.append(
                f"  {lab.mask_index:>4}  {lab.label:<18} {lab.confidence:>6.3f}  "
                f"{areas.get(lab.mask_index, 0):>8}  {alts}"
            )
        multi = [lab for lab in resp.labels if lab.labels]
        if multi:
            lines.append("  multi-label:")
            lines.append(format_labels(multi))
        common = ", ".join(f"{k} x{v}" for k, v in most_common_labels(resp.labels, 5))
        lines.append(f"  most common: {common}")
        lines.append(f"  distinct labels: {len(group_by_label(resp.labels))}")
    if resp.request_id:
        lines.append(
            f"  request_id {resp.request_id} (seglabel relabel / vocab add --request-id, while kept)"
        )
    t = resp.timings
    lines.append(
        f"  time {t.total_ms:.0f} ms (encoder {t.encoder_ms:.0f}, decoder {t.decoder_ms:.0f}, "
        f"filter {t.filter_ms:.0f}, upsample {t.upsample_ms:.0f}, crops {t.crops_ms:.0f}, "
        f"clip {t.clip_ms:.0f}, queue {t.queue_ms:.0f})"
    )
    return "\n".join(lines)


def _progress(done: int, total: int, width: int = 30) -> None:
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\rClassified {done}/{total} masks [{'#' * filled}{' ' * (width - filled)}]")
    sys.stderr.flush()


def _segment(args) -> int:
    kw = dict(
        prompt_type=args.prompt,
        points_per_side=args.grid,
        labels=args.labels or (),
        max_masks=args.max_masks,
        top_k=args.top_k,
        min_confidence=args.min_confidence,
        overlay=bool(args.out),
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        points=args.points or (),
        boxes=args.boxes or (),
        multimask=args.multimask,
        with_depth=args.with_depth,
        with_text=args.with_text,
        vocabulary_name=args.vocabulary_name,
        label_mode=args.label_mode,
        thresholds=dict(args.threshold or ()),
    )
    with SegmenterClient(args.server, timeout=args.timeout, tls_ca=args.tls_ca, token=args.token) as client:
        up = client.upload(args.image)
        if not args.json:
            print(
                f"uploaded {args.image}: file_id {up.file_id[:12]}... ({up.width}x{up.height})",
                file=sys.stderr,
            )
        if args.stream:
            from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

            resp, masks, labels, extras = None, [], [], {}
            t0 = time.perf_counter()
            for ev in client.stream_segment(file_id=up.file_id, **kw):
                kind = ev.WhichOneof("event")
                if kind == "masks":
                    first = not masks
                    masks += list(ev.masks.masks)
                    if first and not args.json:
                        print(
                            f"first {len(masks)} masks after {1000 * (time.perf_counter() - t0):.0f} ms",
                            file=sys.stderr,
                        )
                elif kind == "label_update":
                    labels += list(ev.label_update.labels)
                    if not args.json:
                        _progress(ev.label_update.done, ev.label_update.total)
                elif kind == "depth":
                    extras["depth"] = ev.depth
                elif kind == "text":
                    extras["text"] = ev.text
                elif kind == "summary":
                    resp = ev.summary
            if not args.json and labels:
                sys.stderr.write("\n")
            final = pb.SegmentResponse()
            final.CopyFrom(resp)
            del final.masks[:]
            final.masks.extend(masks)
            if "depth" in extras:
                final.depth.CopyFrom(extras["depth"].depth)
                final.mask_depth.extend(extras["depth"].mask_depth)
            if "text" in extras:
                final.text.CopyFrom(extras["text"].text)
                final.mask_text.extend(extras["text"].mask_text)
            resp = final
        else:
            resp = client.segment(file_id=up.file_id, **kw)
    if args.out and resp.segmented_image:
        with open(args.out, "wb") as f:
            f.write(resp.segmented_image)
    if args.json:
        data = MessageToDict(resp, preserving_proto_field_name=True)
        data.pop("segmented_image", None)
        data.get("depth", {}).pop("data", None)  # the raw map: `seglabel depth --raw` writes it
        data.get("depth", {}).pop("colorized_png", None)
        print(json.dumps(data, indent=2))
    else:
        print(format_table(resp))
        if args.with_depth or args.with_text:
            print(scene_summary(resp))
        if args.out:
            print(f"overlay written to {args.out}")
    return 0


def _depth(args, client) -> int:
    resp = client.estimate_depth(args.image)
    d = resp.depth
    if args.out:
        with open(args.out, "wb") as f:
            f.write(d.colorized_png)
    if args.raw:
        import numpy as np

        np.save(args.raw, depth_array(d))
    print(
        f"depth {d.width}x{d.height}: relative inverse depth (larger is nearer) from {d.min:.4g} to {d.max:.4g}, "
        f"{resp.timings.total_ms:.0f} ms" + (f"; coloured map written to {args.out}" if args.out else "")
        + (f"; float32 array written to {args.raw}" if args.raw else "")
    )  # fmt: skip
    return 0


def _text(args, client) -> int:
    resp = client.extract_text(args.image)
    if args.json:
        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2))
        return 0
    print(f"{len(resp.text.lines)} lines ({resp.width}x{resp.height}, {resp.timings.total_ms:.0f} ms)")
    for ln in resp.text.lines:
        x0, y0 = min(v.x for v in ln.box), min(v.y for v in ln.box)
        print(f"  {ln.confidence:5.3f}  ({x0:5.0f},{y0:5.0f})  {ln.text}")
    return 0


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _label(args) -> int:
    from seglabel_api.datasets.job import progress_bar
    from seglabel_api.datasets.journal import JobMismatch

    from seglabel_client.dataset import LabelOptions, ServerGone, label_folder

    opts = LabelOptions(
        labels=tuple(args.labels or ()),
        vocabulary_name=args.vocabulary_name,
        points_per_side=args.grid,
        max_masks=args.max_masks,
        top_k=args.top_k,
        min_confidence=args.min_confidence,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        skip_labels=args.no_labels,
        with_depth=args.with_depth,
        with_text=args.with_text,
        formats=tuple(_csv(args.format)),
        mask_format=args.mask_format,
        polygon_tolerance=args.polygon_tolerance,
        window=args.window,
        timeout=args.timeout,
        server_wait_s=args.server_wait,
    )
    show = None if args.quiet else progress_bar()
    try:
        report = label_folder(args.dir, args.out, args.server, opts, restart=args.restart, progress=show,
                              tls_ca=args.tls_ca, token=args.token)  # fmt: skip
    except (JobMismatch, ServerGone, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = report
    print(
        f"{r['labelled']} of {r['images']} images labelled ({r['duplicates']} duplicate names labelled once, "
        f"{r['resumed_from_journal']} from the journal), {len(r['failed'])} failed, "
        f"{r['skipped_not_images']} files skipped (not images); {r['images_per_s']:.2f} images/s over "
        f"{r['seconds']:.0f} s"
    )
    for f in r["failed"][:20]:
        print(f"  failed: {f['file']}: {f['reason']}")
    if len(r["failed"]) > 20:
        print(f"  ... {len(r['failed']) - 20} more in report.json")
    top = ", ".join(f"{k} {v}" for k, v in list(r["masks_per_label"].items())[:10])
    print(f"  masks per label: {top or 'none'}")
    for kind, o in r["outputs"].items():
        print(f"  {kind}: {o.get('file') or o.get('folder')}")
    if r["random_weights"]:
        print("  note: the server runs RANDOM WEIGHTS: masks and labels are meaningless")
    return 0


def _eval(args) -> int:
    from seglabel_client.dataset import evaluate, format_eval

    result = evaluate(args.gt, args.pred)
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    return 0


def _threshold(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=VALUE")
    return label, float(value)


def format_labels(labels) -> str:
    """One line per mask: SINGLE its label; MULTI every label above its threshold."""
    out = []
    for lab in labels:
        if lab.labels:
            shown = ", ".join(f"{t.label} {t.confidence:.2f}>={t.threshold:.2f}" for t in lab.labels)
        else:
            shown = f"{lab.label} {lab.confidence:.3f}"
        out.append(f"  {lab.mask_index:>4}  {shown}")
    return "\n".join(out)


def format_vocabulary(v) -> str:
    lines = [f"{v.name}: {len(v.labels)} labels, CLIP {v.clip_model}, revision {v.revision}, "
             f"alpha {v.alpha:g} beta {v.beta:g}, {v.stored_bytes} bytes"]  # fmt: skip
    for lab in v.labels:
        prompts = f" prompts {list(lab.label.prompts)}" if lab.label.prompts else ""
        lines.append(
            f"  {lab.label.name:<24} {lab.positives:>3} positive {lab.negatives:>3} negative  multi threshold "
            f"{lab.threshold:.3f} ({lab.threshold_source}: {lab.threshold_note}){prompts}"
        )
        for e in lab.examples:
            src = e.source
            where = f"box ({src.box.x0:g},{src.box.y0:g},{src.box.x1:g},{src.box.y1:g})" if src.HasField("box") else (
                "mask" if src.HasField("mask") else "whole image")  # fmt: skip
            lines.append(f"      {e.id}  {'+' if e.positive else '-'}  {src.file_id[:12]}  {where}")
    return "\n".join(lines)


def _vocab(args, client) -> int:
    from seglabel_client.client import example

    op = args.vocab_cmd
    if op == "list":
        for v in client.list_vocabularies().vocabularies:
            print(
                f"{v.name:<24} {v.labels:>4} labels {v.examples:>5} examples  CLIP {v.clip_model}  rev {v.revision}"
            )
        return 0
    if op == "delete":
        client.delete_vocabulary(args.name)
        print(f"deleted {args.name}")
        return 0
    if op == "create":
        labels = [{"name": n, "prompts": [p for p in (args.prompts or {}).get(n, [])]} for n in args.labels]
        v = client.create_vocabulary(
            args.name, labels, replace=args.replace, alpha=args.alpha, beta=args.beta
        )
    elif op == "show":
        v = client.get_vocabulary(args.name)
    elif op == "add":
        examples = []
        for image in args.images:
            fid = client.upload(image).file_id
            examples.append(example(fid, box=args.box, negative=args.negative))
        if args.request_id:
            examples.append(
                example(request_id=args.request_id, mask_index=args.mask_index, negative=args.negative)
            )
        got = client.add_examples(args.name, args.label, examples)
        print(f"added {len(got.example_ids)} examples: {', '.join(got.example_ids)}")
        v = got.vocabulary
    else:
        v = client.remove_examples(args.name, args.label, ids=args.ids or (), remove_label=args.remove_label)
    print(format_vocabulary(v))
    return 0


def _relabel(args, client) -> int:
    resp = client.relabel(args.request_id, labels=args.labels or (), vocabulary_name=args.vocabulary_name,
                          label_mode=args.label_mode, top_k=args.top_k, min_confidence=args.min_confidence,
                          thresholds=dict(args.threshold or ()))  # fmt: skip
    if args.json:
        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2))
        return 0
    print(f"{len(resp.labels)} masks relabelled in {resp.timings.total_ms:.1f} ms (server)")
    print(format_labels(resp.labels))
    return 0


def _segmented(done: int, total: int) -> None:
    sys.stderr.write(f"\rsegmented {done}/{total} images (one mask each)")
    sys.stderr.flush()


def _eval_labels(args, client) -> int:
    from seglabel_client.labels_eval import evaluate_labels, format_report

    shots = tuple(int(v) for v in _csv(args.shots))
    report = evaluate_labels(client, args.dir, shots, args.seed, args.test_fraction, args.alpha, args.beta,
                             progress=None if args.json else _segmented)  # fmt: skip
    if not args.json:
        sys.stderr.write("\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_label_options(p) -> None:
    p.add_argument(
        "--vocabulary-name", default="", help="a stored vocabulary (seglabel vocab) instead of --labels"
    )
    p.add_argument("--label-mode", choices=["single", "multi"], default="single",
                   help="single: one softmax label per mask; multi: every label above its threshold")  # fmt: skip
    p.add_argument("--threshold", type=_threshold, action="append", metavar="LABEL=VALUE",
                   help="multi: a label's threshold for this request (repeatable)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seglabel", description="seglabel gRPC client")
    parser.add_argument("--server", default=DEFAULT_TARGET)
    parser.add_argument("--tls-ca", help="PEM CA certificate that signed the server's (enables TLS)")
    parser.add_argument("--token", help="bearer token (default: $SEGLABEL_TOKEN)")
    parser.add_argument("--timeout", type=float, default=600.0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    seg = sub.add_parser("segment", help="segment and label an image")
    seg.add_argument("image")
    seg.add_argument("--stream", action="store_true", help="stream masks and label updates")
    seg.add_argument(
        "--labels",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        help="comma-separated vocabulary (default: the server's)",
    )
    seg.add_argument("--out", help="write the overlay PNG here")
    seg.add_argument("--json", action="store_true", help="print the response as JSON")
    seg.add_argument("--prompt", choices=["grid", "points", "box"], default="grid")
    seg.add_argument("--grid", type=int, default=0, help="points per side (grid)")
    seg.add_argument("--points", type=lambda s: _pairs(s, 2), help="'x,y[,positive];...' in pixels")
    seg.add_argument("--boxes", type=lambda s: _pairs(s, 4), help="'x0,y0,x1,y1;...' in pixels")
    seg.add_argument("--multimask", action="store_true")
    seg.add_argument("--max-masks", type=int, default=0)
    seg.add_argument("--top-k", type=int, default=0)
    seg.add_argument("--min-confidence", type=float, default=None)
    seg.add_argument("--pred-iou-thresh", type=float, default=None)
    seg.add_argument("--stability-score-thresh", type=float, default=None)
    seg.add_argument("--box-nms-thresh", type=float, default=None)
    seg.add_argument("--with-depth", action="store_true", help="also depth: per-object depth, front to back")
    seg.add_argument("--with-text", action="store_true", help="also OCR: the text on each object")
    _add_label_options(seg)
    dep = sub.add_parser("depth", help="estimate relative depth")
    dep.add_argument("image")
    dep.add_argument("--out", help="write the coloured depth PNG here")
    dep.add_argument("--raw", help="write the depth values as a float32 .npy here")
    txt = sub.add_parser("text", help="read the text in an image (OCR)")
    txt.add_argument("image")
    txt.add_argument("--json", action="store_true")
    lab = sub.add_parser(
        "label",
        help="label every image of a folder: COCO / YOLO-seg annotations, resumable",
        description="Label every image under DIR (recursively) with the server: COCO instance segmentation "
        "in OUT/annotations.coco.json, YOLO-seg in OUT/yolo with --format yolo-seg, a report in "
        "OUT/report.json. Progress is journalled in OUT/journal.jsonl: the same command continues an "
        "interrupted run (--restart starts over).",
    )
    lab.add_argument("dir")
    lab.add_argument("--out", required=True, help="output folder")
    lab.add_argument("--format", default="coco", help="coco, yolo-seg or both (comma-separated)")
    lab.add_argument("--mask-format", choices=["rle", "polygon"], default="rle",
                     help="COCO segmentation: RLE (exact) or polygons (masks with holes stay RLE)")  # fmt: skip
    lab.add_argument("--polygon-tolerance", type=float, default=1.0,
                     help="polygon simplification in pixels (Douglas-Peucker; 0: every boundary pixel)")  # fmt: skip
    lab.add_argument(
        "--labels", type=_csv, help="comma-separated vocabulary = the categories (default: the server's)"
    )
    lab.add_argument("--vocabulary-name", default="",
                     help="a stored vocabulary (seglabel vocab): its labels are the categories")  # fmt: skip
    lab.add_argument("--no-labels", action="store_true", help="masks only, one category 'object'")
    lab.add_argument("--grid", type=int, default=0, help="points per side (default: the server's)")
    lab.add_argument("--max-masks", type=int, default=0)
    lab.add_argument("--top-k", type=int, default=0)
    lab.add_argument("--min-confidence", type=float, default=None,
                     help="masks whose best label is under this are left out (counted in the report)")  # fmt: skip
    lab.add_argument("--pred-iou-thresh", type=float, default=None)
    lab.add_argument("--stability-score-thresh", type=float, default=None)
    lab.add_argument("--box-nms-thresh", type=float, default=None)
    lab.add_argument("--with-depth", action="store_true", help="each annotation also gets its median depth")
    lab.add_argument(
        "--with-text", action="store_true", help="each annotation also gets the text on it (OCR)"
    )
    lab.add_argument("--window", type=int, default=0, help="requests in flight (default 8)")
    lab.add_argument("--server-wait", type=float, default=600.0,
                     help="seconds an unreachable server is waited for before the run stops (resumable)")  # fmt: skip
    lab.add_argument("--restart", action="store_true", help="ignore the journal in OUT and start over")
    lab.add_argument("--resume", action="store_true", help="continue from OUT's journal (the default)")
    lab.add_argument("--quiet", action="store_true", help="no progress bar")
    ev = sub.add_parser("eval", help="COCO segmentation AP/AR of annotations against ground truth")
    ev.add_argument("--gt", required=True, help="ground truth, COCO instance segmentation JSON")
    ev.add_argument("--pred", required=True, help="annotations.coco.json from seglabel label")
    ev.add_argument("--json", action="store_true")
    voc = sub.add_parser(
        "vocab",
        help="named vocabularies: labels, prompts and few-shot examples kept on the server",
        description="A vocabulary is a named list of labels stored on the server (memory, disk or Redis, as "
        "uploads). Each label is scored by CLIP zero-shot against its prompts, plus a cache of its examples "
        "(Tip-Adapter): crops like a positive example score higher, like a negative one lower. Segment "
        "with --vocabulary-name NAME; relabel a kept answer with `seglabel relabel`.",
    )
    vs = voc.add_subparsers(dest="vocab_cmd", required=True)
    vc = vs.add_parser("create", help="create (or --replace) a vocabulary")
    vc.add_argument("name")
    vc.add_argument("--labels", type=_csv, required=True, help="comma-separated label names")
    vc.add_argument("--prompt", dest="prompt_list", action="append", metavar="LABEL=PROMPT",
                    help="a prompt for a label ('{}' is replaced by its name; repeatable; default: the server's templates)")  # fmt: skip
    vc.add_argument(
        "--replace", action="store_true", help="overwrite a vocabulary of this name (examples dropped)"
    )
    vc.add_argument("--alpha", type=float, default=0.0, help="weight of the examples (0: the default, 10)")
    vc.add_argument(
        "--beta", type=float, default=0.0, help="sharpness of an example's reach (0: the default, 7)"
    )
    for name, text in (
        ("show", "a vocabulary, its examples and thresholds"),
        ("delete", "delete a vocabulary"),
    ):
        vs.add_parser(name, help=text).add_argument("name")
    vs.add_parser("list", help="the stored vocabularies")
    va = vs.add_parser(
        "add", help="teach a label by examples (images, a box of each, or a mask of an answer)"
    )
    va.add_argument("name")
    va.add_argument("label", help="the label (added to the vocabulary when it has none of this name)")
    va.add_argument(
        "images", nargs="*", help="image files: each uploaded, whole or --box of it, is an example"
    )
    va.add_argument("--box", type=lambda s: _pairs(s, 4)[0], help="'x0,y0,x1,y1': the region of each image")
    va.add_argument("--request-id", default="", help="a recent answer's request_id: its mask --mask-index")
    va.add_argument("--mask-index", type=int, default=0)
    va.add_argument("--negative", action="store_true", help="negative examples: crops like them score lower")
    vr = vs.add_parser("remove", help="forget a label's examples (all, or --id ...)")
    vr.add_argument("name")
    vr.add_argument("label")
    vr.add_argument("--id", dest="ids", action="append", help="an example id (repeatable; default: all)")
    vr.add_argument("--remove-label", action="store_true", help="also remove the label")
    rl = sub.add_parser("relabel", help="score a recent answer's masks again (no SAM2, no CLIP image tower)")
    rl.add_argument("request_id", help="SegmentResponse.request_id (seglabel segment --json prints it)")
    rl.add_argument("--labels", type=_csv, help="comma-separated vocabulary (default: the server's)")
    rl.add_argument("--top-k", type=int, default=0)
    rl.add_argument("--min-confidence", type=float, default=None)
    rl.add_argument("--json", action="store_true")
    _add_label_options(rl)
    el = sub.add_parser(
        "eval-labels",
        help="zero-shot vs k-shot label accuracy on an ImageFolder (one folder per label)",
        description="Each image is segmented once (one box around it); a fixed-seed split per label holds half "
        "out; the rest are examples: accuracy on the held-out images zero-shot, then with k examples per label.",
    )
    el.add_argument("dir")
    el.add_argument("--shots", default="1,2,4,8,16", help="examples per label to try (comma-separated)")
    el.add_argument("--seed", type=int, default=0)
    el.add_argument("--test-fraction", type=float, default=0.5, help="share of each label's images held out")
    el.add_argument("--alpha", type=float, default=0.0, help="the temporary vocabularies' alpha (0: default)")
    el.add_argument("--beta", type=float, default=0.0, help="their beta (0: default)")
    el.add_argument("--json", action="store_true")
    sub.add_parser("info", help="print GetServerInfo")
    sub.add_parser("health", help="print the health status")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "segment":
            return _segment(args)
        if args.cmd == "label":
            return _label(args)
        if args.cmd == "eval":
            return _eval(args)
        with SegmenterClient(
            args.server, timeout=args.timeout, tls_ca=args.tls_ca, token=args.token
        ) as client:
            if args.cmd == "depth":
                return _depth(args, client)
            if args.cmd == "text":
                return _text(args, client)
            if args.cmd == "vocab":
                if args.vocab_cmd == "create":
                    args.prompts = {}
                    for item in args.prompt_list or ():
                        label, _, prompt = item.partition("=")
                        args.prompts.setdefault(label, []).append(prompt)
                return _vocab(args, client)
            if args.cmd == "relabel":
                return _relabel(args, client)
            if args.cmd == "eval-labels":
                return _eval_labels(args, client)
            if args.cmd == "info":
                print(
                    json.dumps(
                        MessageToDict(client.server_info(), preserving_proto_field_name=True), indent=2
                    )
                )
            else:
                print(client.health())
        return 0
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
