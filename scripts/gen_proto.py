"""Generate the Python gRPC stubs from proto/ into OUT (default client/seglabel_api/pb).

Imports (and the messages' module name) are rewritten so the stubs live inside the seglabel_api package. Run by `make proto` and by
client/setup.py when the client package is built."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO = "seglabel/v1/seglabel.proto"


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "proto" / PROTO),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    files = sorted((out / "seglabel" / "v1").glob("*.py*"))
    for f in files:
        text = re.sub(
            r"^from seglabel\.v1 import", "from seglabel_api.pb.seglabel.v1 import", f.read_text(), flags=re.M
        )
        # The messages' __module__ is where they really live, so that they pickle (Ray Serve sends
        # requests to its replicas pickled).
        text = text.replace("'seglabel.v1.seglabel_pb2'", "'seglabel_api.pb.seglabel.v1.seglabel_pb2'")
        f.write_text(text)
    for d in (out, out / "seglabel", out / "seglabel" / "v1"):
        (d / "__init__.py").touch()
    return files


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "client/seglabel_api/pb")
