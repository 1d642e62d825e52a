"""``seglabel label`` (a folder of images in, COCO / YOLO-seg annotations out, resumable) and
``seglabel eval`` (COCO AP / AR of annotations against ground truth)."""

from __future__ import annotations

import json
import sys

from seglabel_api import flags, options


def register(sub) -> None:
    p = sub.add_parser(
        "label",
        help="label every image of a folder: COCO / YOLO-seg annotations, resumable",
        description="Label every image under DIR (recursively) with the server: COCO instance segmentation "
        "in OUT/annotations.coco.json, YOLO-seg in OUT/yolo with --format yolo-seg, a report in "
        "OUT/report.json. Progress is journalled in OUT/journal.jsonl: the same command continues an "
        "interrupted run (--restart starts over).",
    )
    p.add_argument("dir")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="coco",
                   help="coco, yolo-seg, label-studio (tasks with predictions + labeling config), cvat (CVAT for "
                   "images 1.1 XML); comma-separated")  # fmt: skip
    p.add_argument("--order", choices=["none", "uncertainty"], default="none",
                   help="uncertainty: also OUT/images-by-uncertainty.txt, the images most doubtful first (lowest "
                   "mean label confidence), and Label Studio's tasks in that order")  # fmt: skip
    p.add_argument("--image-url-prefix", default="/data/local-files/?d=",
                   help="Label Studio tasks: data.image is this + the image's path under DIR (default: Label "
                   "Studio's local storage, with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=DIR)")  # fmt: skip
    p.add_argument("--mask-format", choices=["rle", "polygon"], default="rle",
                   help="COCO segmentation: RLE (exact) or polygons (masks with holes stay RLE)")  # fmt: skip
    p.add_argument("--polygon-tolerance", type=float, default=1.0,
                   help="polygon simplification in pixels (Douglas-Peucker; 0: every boundary pixel)")  # fmt: skip
    p.add_argument("--window", type=int, default=0, help="requests in flight (default 8)")
    p.add_argument("--server-wait", type=float, default=600.0,
                   help="seconds an unreachable server is waited for before the run stops (resumable)")  # fmt: skip
    p.add_argument("--restart", action="store_true", help="ignore the journal in OUT and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    flags.add_flags(p, options.DATASET)
    p.set_defaults(func=label)
    p = sub.add_parser("eval", help="COCO segmentation AP/AR of annotations against ground truth")
    p.add_argument("--gt", required=True, help="ground truth, COCO instance segmentation JSON")
    p.add_argument("--pred", required=True, help="annotations.coco.json from seglabel label")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_eval)


def label(args) -> int:
    from seglabel_api.datasets.job import progress_bar
    from seglabel_api.datasets.journal import JobMismatch

    from seglabel_client.dataset import LabelOptions, ServerGone, label_folder

    opts = LabelOptions(
        flags.from_args(args, options.DATASET),
        formats=options.parse_csv(args.format),
        mask_format=args.mask_format,
        polygon_tolerance=args.polygon_tolerance,
        window=args.window,
        timeout=args.timeout,
        server_wait_s=args.server_wait,
        order=args.order,
        image_url_prefix=args.image_url_prefix,
    )
    show = None if args.quiet else progress_bar()
    try:
        r = label_folder(args.dir, args.out, args.server, opts, restart=args.restart, progress=show,
                         tls_ca=args.tls_ca, token=args.token)  # fmt: skip
    except (JobMismatch, ServerGone, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        print(
            f"  {kind}: {o.get('file') or o.get('folder')}" + (f" (+ {o['config']})" if "config" in o else "")
        )
    if r["random_weights"]:
        print("  note: the server runs RANDOM WEIGHTS: masks and labels are meaningless")
    return 0


def run_eval(args) -> int:
    from seglabel_client.dataset import evaluate, format_eval

    result = evaluate(args.gt, args.pred)
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    return 0
