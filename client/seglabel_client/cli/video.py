"""``seglabel track``: a video file through the server's Track stream; YouTube-VIS JSON, MOT boxes
and an overlay MP4 out; resumable."""

from __future__ import annotations

import sys

from seglabel_api import flags, options


def register(sub) -> None:
    p = sub.add_parser(
        "track",
        help="track objects through a video: YouTube-VIS JSON, MOT boxes, overlay MP4; resumable",
        description="Track objects through VIDEO with the server's Track stream (SAM2's memory). Each --box and "
        "--point starts a new object on its frame (ids 1, 2, ... in flag order); --detect-every N starts one for "
        "every mask of a grid Segment of every N-th frame that overlaps no tracked object. Writes "
        "OUT/tracks.ytvis.json, OUT/tracks.mot.txt and OUT/overlay.mp4; the answers are journalled in "
        "OUT/track.journal.jsonl: the same command continues an interrupted run (--restart starts over). "
        "--labels a,b,c or --vocabulary-name NAME: each track labelled (CLIP on the mean of its crops), its "
        "label the YouTube-VIS category.",
    )
    p.add_argument("video")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--box", action="append", default=[], metavar="FRAME:x0,y0,x1,y1", help="a new object's box"
    )
    p.add_argument("--point", action="append", default=[], metavar="FRAME:x,y[,positive]",
                   help="a new object's click (positive 1, the default, or 0)")  # fmt: skip
    p.add_argument(
        "--detect-every", type=int, default=0, metavar="N", help="new objects from every N-th frame"
    )
    p.add_argument("--format", default="ytvis,mot,overlay", help="ytvis, mot, overlay; comma-separated")
    p.add_argument("--category", default="object", help="the tracks' category in the YouTube-VIS file")
    p.add_argument("--restart", action="store_true", help="ignore the journal in OUT and start over")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    flags.add_flags(p, options.DATASET, title="the keyframes' grid Segment (--detect-every)")
    p.set_defaults(func=track)


def _progress(frames: int, seconds: float) -> None:
    rate = frames / seconds if seconds > 0 else 0.0
    sys.stderr.write(f"\r{frames} frames  {rate:5.2f} frames/s")
    sys.stderr.flush()


def track(args) -> int:
    from seglabel_client.video import TrackJob, VideoPrompt, track_video

    try:
        prompts = [VideoPrompt.parse("box", b) for b in args.box] + [
            VideoPrompt.parse("point", q) for q in args.point
        ]
        if not prompts and not args.detect_every:
            raise ValueError("nothing to track: give --box, --point or --detect-every")
        detect = flags.from_args(args, options.DATASET)
        job = TrackJob(prompts, args.detect_every, tuple(f.strip() for f in args.format.split(",") if f.strip()),
                       args.category, detect_options=detect, labels=tuple(detect.vocabulary or ()),
                       vocabulary_name=detect.vocabulary_name or "")  # fmt: skip
        r = track_video(args.video, args.out, args.server, job, restart=args.restart,
                        progress=None if args.quiet else _progress, timeout=args.timeout,
                        tls_ca=args.tls_ca, token=args.token)  # fmt: skip
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        sys.stderr.write("\n")
    print(f"{r['frames']} frames, {len(r['objects'])} objects ({r['resumed_from_journal']} frames from the journal), "
          f"{r['frames_per_s']:.2f} frames/s")  # fmt: skip
    for kind, path in r["outputs"].items():
        print(f"  {kind}: {path}")
    if r["random_weights"]:
        print("  note: the server runs RANDOM WEIGHTS: the tracks are meaningless")
    return 0
