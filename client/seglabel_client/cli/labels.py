"""``seglabel vocab`` (named vocabularies and their examples), ``relabel`` (a kept answer scored
again) and ``eval-labels`` (zero-shot vs k-shot accuracy on an ImageFolder)."""

from __future__ import annotations

import sys

from seglabel_api import flags, options

from seglabel_client.cli.common import connect, format_labels, print_json
from seglabel_client.client import example


def register(sub) -> None:
    voc = sub.add_parser(
        "vocab",
        help="named vocabularies: labels, prompts and few-shot examples kept on the server",
        description="A vocabulary is a named list of labels stored on the server (memory, disk or Redis, as "
        "uploads). Each label is scored by CLIP zero-shot against its prompts, plus a cache of its examples "
        "(Tip-Adapter): crops like a positive example score higher, like a negative one lower. Segment "
        "with --vocabulary-name NAME; relabel a kept answer with `seglabel relabel`.",
    )
    vs = voc.add_subparsers(dest="vocab_cmd", required=True)
    p = vs.add_parser("create", help="create (or --replace) a vocabulary")
    p.add_argument("name")
    p.add_argument("--labels", type=options.parse_csv, required=True, help="comma-separated label names")
    p.add_argument("--prompt", dest="prompts", action="append", metavar="LABEL=PROMPT", default=[],
                   help="a prompt for a label ('{}' is replaced by its name; repeatable; default: the server's templates)")  # fmt: skip
    p.add_argument(
        "--replace", action="store_true", help="overwrite a vocabulary of this name (examples dropped)"
    )
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the examples (0: the default, 10)")
    p.add_argument(
        "--beta", type=float, default=0.0, help="sharpness of an example's reach (0: the default, 7)"
    )
    p.set_defaults(func=create)
    vs.add_parser("show", help="a vocabulary, its examples and thresholds").set_defaults(func=show)
    vs.add_parser("delete", help="delete a vocabulary").set_defaults(func=delete)
    for name in ("show", "delete"):
        vs.choices[name].add_argument("name")
    vs.add_parser("list", help="the stored vocabularies").set_defaults(func=listing)
    p = vs.add_parser("add", help="teach a label by examples (images, a box of each, or a mask of an answer)")
    p.add_argument("name")
    p.add_argument("label", help="the label (added to the vocabulary when it has none of this name)")
    p.add_argument(
        "images", nargs="*", help="image files: each uploaded, whole or --box of it, is an example"
    )
    p.add_argument(
        "--box", type=lambda s: options.parse_boxes(s)[0], help="'x0,y0,x1,y1': the region of each image"
    )
    p.add_argument("--request-id", default="", help="a recent answer's request_id: its mask --mask-index")
    p.add_argument("--mask-index", type=int, default=0)
    p.add_argument("--negative", action="store_true", help="negative examples: crops like them score lower")
    p.set_defaults(func=add)
    p = vs.add_parser("remove", help="forget a label's examples (all, or --id ...)")
    p.add_argument("name")
    p.add_argument("label")
    p.add_argument("--id", dest="ids", action="append", help="an example id (repeatable; default: all)")
    p.add_argument("--remove-label", action="store_true", help="also remove the label")
    p.set_defaults(func=remove)

    p = sub.add_parser("relabel", help="score a recent answer's masks again (no SAM2, no CLIP image tower)")
    p.add_argument("request_id", help="SegmentResponse.request_id (seglabel segment --json prints it)")
    p.add_argument("--json", action="store_true")
    flags.add_flags(p, options.RELABEL)
    p.set_defaults(func=relabel)

    p = sub.add_parser(
        "eval-labels",
        help="zero-shot vs k-shot label accuracy on an ImageFolder (one folder per label)",
        description="Each image is segmented once (one box around it); a fixed-seed split per label holds half "
        "out; the rest are examples: accuracy on the held-out images zero-shot, then with k examples per label.",
    )
    p.add_argument("dir")
    p.add_argument("--shots", default="1,2,4,8,16", help="examples per label to try (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.5, help="share of each label's images held out")
    p.add_argument("--alpha", type=float, default=0.0, help="the temporary vocabularies' alpha (0: default)")
    p.add_argument("--beta", type=float, default=0.0, help="their beta (0: default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=eval_labels)


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


def create(args) -> int:
    prompts: dict[str, list[str]] = {}
    for item in args.prompts:
        label, _, prompt = item.partition("=")
        prompts.setdefault(label, []).append(prompt)
    labels = [{"name": n, "prompts": prompts.get(n, [])} for n in args.labels]
    with connect(args) as client:
        v = client.create_vocabulary(
            args.name, labels, replace=args.replace, alpha=args.alpha, beta=args.beta
        )
    print(format_vocabulary(v))
    return 0


def show(args) -> int:
    with connect(args) as client:
        print(format_vocabulary(client.get_vocabulary(args.name)))
    return 0


def delete(args) -> int:
    with connect(args) as client:
        client.delete_vocabulary(args.name)
    print(f"deleted {args.name}")
    return 0


def listing(args) -> int:
    with connect(args) as client:
        for v in client.list_vocabularies().vocabularies:
            print(
                f"{v.name:<24} {v.labels:>4} labels {v.examples:>5} examples  CLIP {v.clip_model}  rev {v.revision}"
            )
    return 0


def add(args) -> int:
    with connect(args) as client:
        examples = [
            example(client.upload(image).file_id, box=args.box, negative=args.negative)
            for image in args.images
        ]
        if args.request_id:
            examples.append(
                example(request_id=args.request_id, mask_index=args.mask_index, negative=args.negative)
            )
        got = client.add_examples(args.name, args.label, examples)
    print(f"added {len(got.example_ids)} examples: {', '.join(got.example_ids)}")
    print(format_vocabulary(got.vocabulary))
    return 0


def remove(args) -> int:
    with connect(args) as client:
        v = client.remove_examples(args.name, args.label, ids=args.ids or (), remove_label=args.remove_label)
    print(format_vocabulary(v))
    return 0


def relabel(args) -> int:
    with connect(args) as client:
        resp = client.relabel(args.request_id, options=flags.from_args(args, options.RELABEL))
    if args.json:
        print_json(resp)
        return 0
    print(f"{len(resp.labels)} masks relabelled in {resp.timings.total_ms:.1f} ms (server)")
    print(format_labels(resp.labels))
    return 0


def _segmented(done: int, total: int) -> None:
    sys.stderr.write(f"\rsegmented {done}/{total} images (one mask each)")
    sys.stderr.flush()


def eval_labels(args) -> int:
    import json

    from seglabel_client.labels_eval import evaluate_labels, format_report

    shots = tuple(int(v) for v in options.parse_csv(args.shots))
    with connect(args) as client:
        report = evaluate_labels(client, args.dir, shots, args.seed, args.test_fraction, args.alpha, args.beta,
                                 progress=None if args.json else _segmented)  # fmt: skip
    if not args.json:
        sys.stderr.write("\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
