"""What TensorRT consumes, checked without TensorRT (it cannot be installed in this project's
environment): every exported graph passes onnx's full checker and strict shape inference, and the
optimisation profiles `seglabel-export trt` builds cover every dynamic axis of every graph input
(min <= opt <= max, fixed axes as exported)."""

from __future__ import annotations

import onnx
import pytest
from seglabel_export.trt import profiles
from seglabel_server.models.repository import ModelRepository


@pytest.fixture(scope="module", params=["tiny_repo", "scene_repo"])
def repo(request):
    return ModelRepository.load(request.getfixturevalue(request.param))


def test_graphs_pass_the_checker_and_strict_shape_inference(repo):
    """Every graph checks, and strict inference gives every output an element type and a rank (what
    TensorRT's parser needs of it); the same checks refuse a graph broken on purpose."""
    checked = []
    for name in repo.manifest["models"]:
        path = repo.model_path(name)
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        for out in inferred.graph.output:
            t = out.type.tensor_type
            assert t.elem_type != onnx.TensorProto.UNDEFINED and t.HasField("shape"), f"{name}.{out.name}"
            assert len(t.shape.dim) >= 1, f"{name}.{out.name}: no rank"
        checked.append(name)
    assert len(checked) == len(repo.manifest["models"]) >= 4
    broken = onnx.load(str(repo.model_path(checked[0])))
    next(n for n in broken.graph.node if n.input).input[0] = "no_such_tensor"
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(broken, full_check=True)


def test_profiles_cover_every_dynamic_axis(repo):
    prof = profiles(repo.manifest, max_batch=8, max_prompts=256, max_crops=64)
    checked = 0
    for name in repo.manifest["models"]:
        graph = onnx.load(str(repo.model_path(name)), load_external_data=False).graph
        init = {i.name for i in graph.initializer}
        for inp in graph.input:
            if inp.name in init:
                continue
            dims = inp.type.tensor_type.shape.dim
            # a named or unknown axis, or rapidocr's -1: dynamic (the manifest may pin one to the one
            # size the server feeds, e.g. the angle classifier's 48 x 192)
            fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
            dynamic = [i for i, f in enumerate(fixed) if f is None]
            if not dynamic:
                continue
            assert inp.name in prof.get(name, {}), (
                f"{name}.{inp.name}: dynamic axes {dynamic} without a profile"
            )
            lo, opt, hi = prof[name][inp.name]
            assert len(lo) == len(opt) == len(hi) == len(dims)
            for i, f in enumerate(fixed):
                assert 1 <= lo[i] <= opt[i] <= hi[i], (
                    f"{name}.{inp.name} axis {i}: {lo[i]}, {opt[i]}, {hi[i]}"
                )
                if f is not None:
                    assert lo[i] == opt[i] == hi[i] == f
            checked += 1
    assert checked >= 4
