"""``seglabel``: the command-line client. One module per command family, each with its parser and
its handler (``set_defaults(func=...)``); a request's options are the flags of their declaration
(``seglabel_api.options``).

seglabel segment IMAGE [--stream] [--labels a,b,c] [--out overlay.png] [--json] [--with-depth] [--with-text]
seglabel depth IMAGE [--out depth.png] [--raw depth.npy]
seglabel text IMAGE [--json]
seglabel label DIR --out OUT [--format coco,yolo-seg] [--mask-format polygon] [--labels a,b,c] [--restart]
seglabel eval --gt gt.coco.json --pred OUT/annotations.coco.json
seglabel track VIDEO --out OUT [--box F:x0,y0,x1,y1] [--point F:x,y] [--detect-every N] [--restart]
seglabel vocab create|show|list|delete|add|remove ...   named vocabularies and their examples
seglabel relabel REQUEST_ID [--vocabulary-name NAME | --labels a,b] [--label-mode multi]
seglabel eval-labels DIR     zero-shot vs k-shot accuracy on an ImageFolder
seglabel info | seglabel health
"""

from __future__ import annotations

import argparse
import sys

import grpc

from seglabel_client.cli import datasets, labels, scene, segment, video
from seglabel_client.client import DEFAULT_TARGET

COMMANDS = (segment, scene, datasets, video, labels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglabel", description="seglabel gRPC client")
    parser.add_argument("--server", default=DEFAULT_TARGET)
    parser.add_argument("--tls-ca", help="PEM CA certificate that signed the server's (enables TLS)")
    parser.add_argument("--token", help="bearer token (default: $SEGLABEL_TOKEN)")
    parser.add_argument("--timeout", type=float, default=600.0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
