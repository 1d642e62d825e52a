"""The CLI of labels that learn: `seglabel vocab ...`, `seglabel relabel`, `seglabel eval-labels` on a
synthetic ImageFolder (random weights: the report says so; its numbers mean nothing)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from PIL import Image, ImageDraw
from seglabel_client import cli


def image_folder(root, per_label: int = 5) -> None:
    """Three labels, each a shape of its own colour, at random places and sizes, on noise."""
    colours = {"red-disc": (220, 30, 30), "blue-bars": (20, 40, 200), "green-box": (30, 180, 60)}
    rng = np.random.default_rng(0)
    for label, colour in colours.items():
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            im = Image.fromarray((rng.random((96, 128, 3)) * 80 + 80).astype(np.uint8))
            d = ImageDraw.Draw(im)
            x, y, r = rng.integers(30, 98), rng.integers(30, 66), rng.integers(14, 28)
            shape = d.ellipse if label == "red-disc" else d.rectangle
            shape([x - r, y - r, x + r, y + r], fill=colour)
            im.save(root / label / f"{i}.png")


async def test_vocab_commands_and_eval_labels(make_server, tmp_path, capsys):
    server = await make_server()
    target = ["--server", f"127.0.0.1:{server.port}"]

    def run(*args) -> str:
        assert cli.main([*target, *args]) == 0
        return capsys.readouterr().out

    image_folder(tmp_path / "folder")
    img = tmp_path / "folder" / "red-disc" / "0.png"
    out = await asyncio.to_thread(run, "vocab", "create", "shapes", "--labels", "disc,bars",
                                  "--prompt", "disc=a red {}", "--alpha", "50")  # fmt: skip
    assert "shapes: 2 labels" in out and "prompts ['a red {}']" in out and "alpha 50" in out
    out = await asyncio.to_thread(run, "vocab", "add", "shapes", "disc", str(img), "--box", "0,0,60,60")
    assert "added 1 examples" in out and "box (0,0,60,60)" in out
    out = await asyncio.to_thread(run, "segment", str(img), "--prompt", "box", "--boxes", "0,0,128,96",
                                  "--vocabulary-name", "shapes", "--label-mode", "multi",
                                  "--json")  # fmt: skip
    seg = json.loads(out)
    assert seg["label_mode"] == "LABEL_MODE_MULTI" and seg["request_id"]
    out = await asyncio.to_thread(run, "relabel", seg["request_id"], "--labels", "cat,dog")
    assert "masks relabelled in" in out
    assert "shapes" in await asyncio.to_thread(run, "vocab", "list")
    # a dataset labelled with the stored vocabulary: its labels are the categories
    out = await asyncio.to_thread(run, "label", str(tmp_path / "folder"), "--out", str(tmp_path / "labelled"),
                                  "--vocabulary-name", "shapes", "--quiet", "--grid", "2")  # fmt: skip
    coco = json.loads((tmp_path / "labelled" / "annotations.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["disc", "bars"] and "15 of 15 images labelled" in out
    out = await asyncio.to_thread(run, "vocab", "remove", "shapes", "disc")
    assert "0 positive" in out
    await asyncio.to_thread(run, "vocab", "delete", "shapes")
    out = await asyncio.to_thread(run, "eval-labels", str(tmp_path / "folder"), "--shots", "1,2,4", "--json")
    report = json.loads(out)
    assert report["labels"] == 3 and report["test_images"] == 6 and report["pool_images"] == 9
    assert [r["shots"] for r in report["rows"]] == [0, 1, 2, 4] and report["random_weights"]
    assert report["rows"][3]["accuracy"] is None  # 3 pool images per label: no 4-shot
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["rows"][:3])
    out = await asyncio.to_thread(run, "eval-labels", str(tmp_path / "folder"), "--shots", "1,2")
    assert "zero-shot" in out and "RANDOM WEIGHTS" in out
    assert "eval-labels" not in await asyncio.to_thread(run, "vocab", "list")  # its vocabulary is gone
