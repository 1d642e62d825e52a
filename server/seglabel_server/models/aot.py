"""AOTInductor packages in a model repository: where they live and what their metadata must say.
``seglabel-export aot`` writes them; the torch backend (``--torch-compile aot``) refuses a package
whose metadata differs, naming the command that builds the right one.

Layout on disk: ``<repo>/<model>/aoti/<device>-<precision>-<layout>.pt2`` (layout: ``multi-image``
or ``per-image`` for the SAM2 decoder, ``any`` for the other models).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_FORMAT = "1"


def package_path(root: str | Path, model: str, device_type: str, precision: str, layout: str) -> Path:
    return Path(root) / model / "aoti" / f"{device_type}-{precision}-{layout}.pt2"


def build_command(root: str | Path, device_type: str, precision: str, layout: str) -> str:
    lay = "" if layout == "any" else f" --decoder-layout {layout}"
    return f"seglabel-export aot {root} --device {device_type} --precision {precision}{lay}"


def expected_metadata(manifest: dict, model: str, device_type: str, precision: str, layout: str) -> dict:
    """What a package must have been built from to serve ``model`` of this repository."""
    import torch

    return {
        "seglabel_aoti": PACKAGE_FORMAT,
        "model": model,
        "torch": torch.__version__,
        "device": device_type,
        "precision": precision,
        "layout": layout,
        "repository": str(manifest.get("created_at", "")),
    }
