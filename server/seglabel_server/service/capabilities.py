"""What this server serves, decided once when its models load: segmentation always, and each optional
family (CLIP labels, depth, text) either served or not, with the reason. Every "not available"
message a client sees comes from here."""

from __future__ import annotations

from dataclasses import dataclass, field

# The optional families a request can ask for, and the export option that adds each.
FAMILIES = ("labels", "depth", "text", "tracking")
HINTS = {
    "labels": "export with --clip",
    "depth": "export with --depth (make models does)",
    "text": "pip install rapidocr_onnxruntime, then export (--ocr yes)",
    "tracking": "export again with this version (make models)",
}


@dataclass(frozen=True)
class Capabilities:
    """``missing``: family -> why it is not served; a family absent from it is served."""

    missing: dict[str, str] = field(default_factory=dict)

    def serves(self, family: str) -> bool:
        return family not in self.missing

    def why_not(self, family: str) -> str:
        """The reason ``family`` is not served ("" when it is)."""
        return self.missing.get(family, "")
