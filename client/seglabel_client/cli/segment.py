"""``seglabel segment``: one image's masks and labels (streamed with ``--stream``), as a table, JSON
or an overlay PNG; its request options are the flags of their declaration."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from seglabel_api import flags, options

from seglabel_client.analysis import group_by_label, most_common_labels, scene_summary
from seglabel_client.cli.common import connect, format_labels, message_dict, print_json
from seglabel_client.stream import merge


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment and label an image")
    p.add_argument("image")
    p.add_argument("--stream", action="store_true", help="stream masks and label updates")
    p.add_argument("--out", help="write the overlay PNG here")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    flags.add_flags(p, options.SEGMENT)
    p.set_defaults(func=run)


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


class _Progress:
    """Stderr lines while a stream runs: when the first masks came, and a bar of labelled masks."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.masks = 0
        self.bar = False

    def __call__(self, ev) -> None:
        kind = ev.WhichOneof("event")
        if kind == "masks":
            if not self.masks and ev.masks.masks:
                ms = 1000 * (time.perf_counter() - self.t0)
                print(f"first {len(ev.masks.masks)} masks after {ms:.0f} ms", file=sys.stderr)
            self.masks += len(ev.masks.masks)
        elif kind == "label_update":
            done, total, width = ev.label_update.done, ev.label_update.total, 30
            filled = int(width * done / max(total, 1))
            sys.stderr.write(f"\rClassified {done}/{total} masks [{'#' * filled}{' ' * (width - filled)}]")
            sys.stderr.flush()
            self.bar = True

    def close(self) -> None:
        if self.bar:
            sys.stderr.write("\n")


def run(args) -> int:
    request = replace(flags.from_args(args, options.SEGMENT), return_overlay=bool(args.out))
    with connect(args) as client:
        up = client.upload(args.image)
        if not args.json:
            print(
                f"uploaded {args.image}: file_id {up.file_id[:12]}... ({up.width}x{up.height})",
                file=sys.stderr,
            )
        if args.stream:
            progress = None if args.json else _Progress()
            resp = merge(client.stream_segment(file_id=up.file_id, options=request), progress)
            if progress is not None:
                progress.close()
        else:
            resp = client.segment(file_id=up.file_id, options=request)
    if args.out and resp.segmented_image:
        with open(args.out, "wb") as f:
            f.write(resp.segmented_image)
    if args.json:
        data = message_dict(resp)
        data.pop("segmented_image", None)
        data.get("depth", {}).pop("data", None)  # the raw map: `seglabel depth --raw` writes it
        data.get("depth", {}).pop("colorized_png", None)
        print_json(data)
        return 0
    print(format_table(resp))
    if request.with_depth or request.with_text:
        print(scene_summary(resp))
    if args.out:
        print(f"overlay written to {args.out}")
    return 0
