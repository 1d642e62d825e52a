"""AOTInductor packages: each model compiled ahead of time by ``seglabel-export aot`` into a
``.pt2`` package next to its ONNX graph, loaded by the torch backend (``--torch-compile aot``)
without tracing or compiling anything at start (the cold start of torch.compile engines is their
compile time; a package loads in seconds).

A package is built for one device type, precision and decoder layout, with the batch axes dynamic
(any batch size runs the same kernels, no buckets). Its metadata records what it was built from:
the server refuses a package of another torch version, device, precision or repository export, and
names the command that builds the right one.

Where packages live and what their metadata must say is the repository's contract
(:mod:`seglabel_server.models.aot`), shared with the export that builds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from seglabel_server.errors import ModelError
from seglabel_server.models.aot import build_command, expected_metadata, package_path


class AotModule:
    """A loaded package behind the torch backend's module interface: ``input_names``,
    ``optional_inputs``, ``output_names`` and a call. Inputs are bound by position, as exported;
    an optional input the caller leaves out is filled as the module would (the decoder's
    ``image_index``: every prompt on image 0)."""

    def __init__(self, runner, meta: dict, path: Path):
        self.runner = runner
        self.path = path
        self.input_names = json.loads(meta["inputs"])
        self.optional_inputs = json.loads(meta["optional_inputs"])
        self.output_names = json.loads(meta["outputs"])
        self.dtypes = json.loads(meta["input_dtypes"])  # name -> torch dtype name, as exported

    def __call__(self, *inputs, **optional):
        import torch

        args = list(inputs)
        for name in self.optional_inputs:
            x = optional.get(name)
            if x is None and name == "image_index":
                coords = inputs[self.input_names.index("point_coords")]
                x = torch.zeros(coords.shape[0], dtype=torch.int64, device=coords.device)
            args.append(x)
        # A package reads its inputs with the strides it was traced with (contiguous) and does not
        # check them: SAM2's encoder hands over channels-last views, which read as contiguous give
        # wrong answers silently (seen: masks rel L2 0.59). Its dtypes are checked: an fp16/bf16
        # output of the previous model (autocast there, inside the package here) is cast back.
        for i, name in enumerate(self.input_names + self.optional_inputs):
            args[i] = args[i].to(getattr(torch, self.dtypes[name])).contiguous()
        outs = self.runner(*args)
        outs = tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)
        return outs if len(outs) > 1 else outs[0]

    def warm_up(self, example) -> int:
        """One call at batch 1 and one at 2: the first call initialises the runtime's handles."""
        for b in (1, 2):
            self(*example(b))
        return 2


def load_package(
    root: str | Path, manifest: dict, model: str, device, precision: str, layout: str
) -> AotModule:
    """The package serving ``model`` on ``device`` (a torch.device), checked against the repository
    and this torch; a clear ModelError naming the build command otherwise."""
    import torch

    kind = device.type
    path = package_path(root, model, kind, precision, layout)
    cmd = build_command(root, kind, precision, layout)
    if not path.is_file():
        raise ModelError(f"{model}: no AOTInductor package {path}; build it with `{cmd}`")
    try:
        kwargs = {"device_index": device.index if device.index is not None else 0} if kind == "cuda" else {}
        runner = torch._inductor.aoti_load_package(str(path), **kwargs)
        meta = dict(runner.get_metadata())
    except Exception as exc:
        raise ModelError(
            f"{model}: cannot load AOTInductor package {path} ({exc}); rebuild with `{cmd}`"
        ) from exc
    want = expected_metadata(manifest, model, kind, precision, layout)
    stale = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    built_for = "".join(c for c in meta.get("AOTI_COMPUTE_CAPABILITY", "") if c.isdigit())
    if kind == "cuda" and built_for:  # kernels compiled for one GPU architecture
        here = "".join(str(v) for v in torch.cuda.get_device_capability(device))
        if built_for != here:
            stale["GPU compute capability"] = (built_for, here)
    if stale:
        what = ", ".join(f"{k} {got!r} (needs {need!r})" for k, (got, need) in sorted(stale.items()))
        raise ModelError(f"{model}: AOTInductor package {path} was built for {what}; rebuild with `{cmd}`")
    return AotModule(runner, meta, path)
