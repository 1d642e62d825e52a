"""``seglabel depth``, ``text``, ``info`` and ``health``: the other models and the server itself."""

from __future__ import annotations

from seglabel_client.cli.common import connect, print_json
from seglabel_client.client import depth_array


def register(sub) -> None:
    p = sub.add_parser("depth", help="estimate relative depth")
    p.add_argument("image")
    p.add_argument("--out", help="write the coloured depth PNG here")
    p.add_argument("--raw", help="write the depth values as a float32 .npy here")
    p.set_defaults(func=depth)
    p = sub.add_parser("text", help="read the text in an image (OCR)")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=text)
    sub.add_parser("info", help="print GetServerInfo").set_defaults(func=info)
    sub.add_parser("health", help="print the health status").set_defaults(func=health)


def depth(args) -> int:
    with connect(args) as client:
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


def text(args) -> int:
    with connect(args) as client:
        resp = client.extract_text(args.image)
    if args.json:
        print_json(resp)
        return 0
    print(f"{len(resp.text.lines)} lines ({resp.width}x{resp.height}, {resp.timings.total_ms:.0f} ms)")
    for ln in resp.text.lines:
        x0, y0 = min(v.x for v in ln.box), min(v.y for v in ln.box)
        print(f"  {ln.confidence:5.3f}  ({x0:5.0f},{y0:5.0f})  {ln.text}")
    return 0


def info(args) -> int:
    with connect(args) as client:
        print_json(client.server_info())
    return 0


def health(args) -> int:
    with connect(args) as client:
        print(client.health())
    return 0
