"""AOTInductor packages (``seglabel-export aot``, ``--torch-compile aot``): built by the CLI on the
CPU (inductor's C++ kernels; CUDA builds Triton kernels the same way, not run here), loaded by the
torch backend without compiling, equal to the eager modules, and refused with the command that
fixes it when missing or stale. The SAM2 decoder is built (data-dependent kept prompts, several
images per call; about a minute on two cores): every model goes through the same code."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from seglabel_export.cli import main as export_main
from seglabel_export.parity import rel_l2
from seglabel_server.backends import create_backend
from seglabel_server.errors import ModelError
from seglabel_server.models import images
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository

pytestmark = pytest.mark.slow  # AOTInductor builds (minutes of C++ compilation on a CPU)

MODELS = ["sam2_mask_decoder"]


@pytest.fixture(scope="module")
def aot_repo(tiny_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "tiny"
    shutil.copytree(tiny_repo, out)
    rc = export_main(
        ["aot", str(out), "--device", "cpu", "--decoder-layout", "multi-image", "--models", ",".join(MODELS)]
    )
    assert rc == 0
    return out


def test_packages_equal_eager_modules(aot_repo, photo):
    repo = ModelRepository.load(aot_repo)
    assert (aot_repo / "sam2_mask_decoder" / "aoti" / "cpu-fp32-multi-image.pt2").is_file()
    eager = create_backend(
        "torch", repo, decoder_layout="multi-image", models=["sam2_image_encoder", *MODELS]
    )
    aot = create_backend("torch", repo, decoder_layout="multi-image", compile_mode="aot", models=MODELS)
    assert "multi_image" in aot.capabilities
    runs, seconds = aot.warm_up()
    assert runs == 2  # two calls per package, nothing compiled
    print(f"AOT warm-up: {runs} runs in {seconds:.2f}s")

    s, meta = repo.sam2["image_size"], repo.sam2
    x = images.sam_preprocess(photo, s, meta["pixel_mean"], meta["pixel_std"])[None]
    feats = sam2.encode(eager, np.concatenate([x, x[:, :, ::-1].copy()]))
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, 7, 40):
        coords = rng.uniform(0, s, (n, 2, 2)).astype(np.float32)
        labels = np.ones((n, 2), np.int32)
        ref = sam2.decode(eager, feats[0], coords, labels)
        for min_iou in (float("-inf"), float(np.median(ref.iou.max(axis=1)))):
            a = sam2.decode(eager, feats[0], coords, labels, min_iou)
            b = sam2.decode(aot, feats[0], coords, labels, min_iou)  # one image: no image_index given
            assert b.kept.tolist() == a.kept.tolist() and b.iou.shape == (n, 3)
            worst = max(worst, rel_l2(b.iou, a.iou))
            if len(a.kept):
                worst = max(worst, rel_l2(b.masks.numpy(), a.masks.numpy()))
        # prompts of two images in one call (the package's dynamic image axis)
        reqs = [
            sam2.DecodeRequest(f, coords[i::2], labels[i::2], float("-inf"), True)
            for i, f in enumerate(feats)
            if len(coords[i::2])
        ]
        for r, got in zip(reqs, sam2.DECODER.execute(aot, reqs)):
            want = sam2.decode(eager, r.features, r.coords, r.labels)
            worst = max(worst, rel_l2(got.masks.numpy(), want.masks.numpy()))
    print(f"AOT packages vs eager: worst rel L2 {worst:.1e}")
    assert worst < 1e-4


def test_missing_or_stale_packages_name_the_build_command(aot_repo):
    repo = ModelRepository.load(aot_repo)
    with pytest.raises(
        ModelError, match="seglabel-export aot .* --device cpu --precision fp32 --decoder-layout per-image"
    ):
        create_backend(
            "torch", repo, decoder_layout="per-image", compile_mode="aot", models=["sam2_mask_decoder"]
        )
    with pytest.raises(ModelError, match="no AOTInductor package .*clip_image_encoder"):
        create_backend("torch", repo, compile_mode="aot", models=["clip_image_encoder"])
    repo.manifest["created_at"] = "a later export"
    with pytest.raises(ModelError, match="built for repository .* rebuild with `seglabel-export aot"):
        create_backend("torch", repo, decoder_layout="multi-image", compile_mode="aot", models=MODELS)


def test_aot_cli_refuses_half_precision_on_the_cpu(aot_repo, capsys):
    assert export_main(["aot", str(aot_repo), "--device", "cpu", "--precision", "bf16"]) == 2
    assert "need --device cuda" in capsys.readouterr().err


def test_a_server_without_its_packages_says_how_to_build_them(tiny_repo):
    import asyncio

    from seglabel_server.service import SeglabelService
    from seglabel_server.service.config import ServerConfig

    cfg = ServerConfig(models=str(tiny_repo), backend="torch", torch_compile="aot", load_clip=False)
    service = SeglabelService(cfg)
    with pytest.raises(ModelError, match="no AOTInductor package"):
        asyncio.run(service.load())
    from seglabel_server.errors import Unavailable

    with pytest.raises(Unavailable) as refused:  # what every call is answered with
        service.lifecycle.require_ready()
    assert "seglabel-export aot" in str(refused.value) and "--device cpu --precision fp32" in str(
        refused.value
    )
