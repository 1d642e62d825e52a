"""What the commands share: the client of the global flags, JSON output, a mask's labels as a line."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

from seglabel_client.client import SegmenterClient


def connect(args) -> SegmenterClient:
    """The blocking client of the global flags (``--server``, ``--timeout``, ``--tls-ca``, ``--token``)."""
    return SegmenterClient(args.server, timeout=args.timeout, tls_ca=args.tls_ca, token=args.token)


def message_dict(msg) -> dict:
    return MessageToDict(msg, preserving_proto_field_name=True)


def print_json(data) -> None:
    print(json.dumps(data if isinstance(data, (dict, list)) else message_dict(data), indent=2))


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
