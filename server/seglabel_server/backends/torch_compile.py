"""Compiled torch engines: each model's module under ``torch.compile`` with its batch axis padded up
to a small set of bucket sizes (as vLLM and TGI pad to captured batch sizes), so variable batches
reuse a handful of compiled graphs (and, with ``reduce-overhead``, CUDA graphs) instead of
recompiling. :meth:`warm_up` compiles every bucket before the server reports SERVING.

- Batch-first models (SAM2 encoder, CLIP towers, depth): every input and output has the batch on
  axis 0; padded rows are zeros and are cut off the outputs.
- The SAM2 decoder: its ``kept`` output has a data-dependent size, which no static graph holds, so
  it runs as two compiled parts around one eager ``nonzero``: the prompt transformer over N prompts
  (padded with "not a point" prompts), then the upscaling of the M kept prompts (padded with
  prompt 0's rows); the outputs are sliced back to N and M. The images of a multi-image batch
  are padded to a bucket too (zero images no prompt points at).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seglabel_server.models.torch_modules.modules import Sam2MaskDecoderGraph

# "aot": no torch.compile at serve time, AOTInductor packages built by `seglabel-export aot` (torch_aot.py)
MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "aot")


def buckets(max_size: int, smallest: int = 1) -> list[int]:
    """Powers of two from ``smallest`` up to the first one >= ``max_size``."""
    out, b = [], max(1, smallest)
    while True:
        out.append(b)
        if b >= max_size:
            return out
        b *= 2


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest bucket holding ``n`` (past the largest: the next power of two, compiled then)."""
    for b in sizes:
        if b >= n:
            return b
    b = sizes[-1]
    while b < n:
        b *= 2
    return b


def _pad(x: torch.Tensor, n: int, value=0) -> torch.Tensor:
    if x.shape[0] == n:
        return x
    pad = x.new_full((n - x.shape[0], *x.shape[1:]), value)
    return torch.cat([x, pad])


GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


def _step(graphs: bool) -> None:
    """With CUDA graphs: a new step begins (outputs of earlier replays are the caller's clones)."""
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()


def _own(x: torch.Tensor, graphs: bool) -> torch.Tensor:
    """A CUDA graph's output lives in the graph's memory pool and is overwritten by its next replay:
    whatever outlives the call (cached features, mask logits read later) is cloned."""
    return x.clone() if graphs else x


def _compile(fn: Callable, mode: str) -> Callable:
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, fullgraph=False)


def allow_recompiles(n: int = 256) -> None:
    """One compiled graph per bucket: raise dynamo's per-function recompile limit above their number."""
    cfg = torch._dynamo.config
    names = (
        "recompile_limit",
        "cache_size_limit",
        "accumulated_recompile_limit",
        "accumulated_cache_size_limit",
    )
    for name in names:
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), n))


class CompiledBatchFirst(nn.Module):
    """``module`` compiled, its batch padded to ``sizes``."""

    def __init__(self, module: nn.Module, mode: str, sizes: list[int]):
        super().__init__()
        self.module = module
        self.input_names = list(module.input_names)
        self.output_names = list(module.output_names)
        self.sizes = sizes
        self.graphs = mode in GRAPH_MODES
        self.compiled = _compile(module.forward, mode)

    def forward(self, *inputs):
        n = inputs[0].shape[0]
        b = bucket_for(n, self.sizes)
        _step(self.graphs)
        outs = self.compiled(*[_pad(x, b) for x in inputs])
        outs = outs if isinstance(outs, tuple) else (outs,)
        outs = tuple(_own(o[:n], self.graphs) for o in outs)
        return outs if len(outs) > 1 else outs[0]

    def warm_up(self, example: Callable[[int], tuple]) -> int:
        """Compile every bucket; ``example(b)`` gives inputs of batch b. Returns the buckets run.
        Twice each: sam2's position encoding fills a Python cache on its first call, which changes
        a guard, so the second call compiles once more (seen with TORCH_LOGS=recompiles); after
        that the graphs are stable."""
        for b in self.sizes:
            self(*example(b))
            self(*example(b))
        return len(self.sizes)


class CompiledDecoder(nn.Module):
    """:class:`Sam2MaskDecoderGraph` (or its multi-image form) as two compiled parts around the
    data-dependent selection of kept prompts (see the module docstring)."""

    def __init__(self, module: Sam2MaskDecoderGraph, mode: str, sizes: list[int], image_sizes: list[int]):
        super().__init__()
        self.module = module
        self.input_names = [n for n in module.input_names if n != "image_index"]
        self.optional_inputs = ["image_index"]
        self.output_names = list(module.output_names)
        self.sizes = sizes
        self.image_sizes = image_sizes
        self.graphs = mode in GRAPH_MODES
        self.attend = _compile(module.attend, mode)
        self.upscale = _compile(module.upscale_masks, mode)

    def forward(
        self,
        image_embed,
        high_res_feats_0,
        high_res_feats_1,
        point_coords,
        point_labels,
        min_iou,
        image_index=None,
    ):
        n = point_coords.shape[0]
        nb = bucket_for(n, self.sizes)
        coords = _pad(point_coords, nb, 0.0)
        labels = _pad(point_labels, nb, -1)  # padding prompts: "not a point" only
        feats = (image_embed, high_res_feats_0, high_res_feats_1)
        index = None
        if image_index is not None and image_embed.shape[0] > 1:
            ib = bucket_for(image_embed.shape[0], self.image_sizes)
            feats = tuple(_pad(f, ib) for f in feats)
            index = _pad(image_index, nb, 0)
        _step(self.graphs)
        all_iou, hyper_in, keys = self.attend(feats[0], coords, labels, index)
        all_iou = _own(all_iou[:n], self.graphs)
        kept = self.module.kept(all_iou, min_iou)
        m = int(kept.shape[0])
        mb = bucket_for(max(m, 1), self.sizes)
        rows = _pad(kept, mb, 0)
        sub = None if index is None else index[rows]
        masks = self.upscale(keys[rows], hyper_in[rows], feats[1], feats[2], sub)
        return self.module.outputs(all_iou, kept, _own(masks[:m], self.graphs), all_iou[kept])

    def warm_up(self, feats: tuple, multi_image: bool) -> int:
        """Compile every (prompt bucket) for one image, and for a multi-image batch when used: with
        ``min_iou`` -inf every prompt is kept, so the upscaling part meets the same buckets."""
        runs = 0
        s = self.module.prompt_encoder.input_image_size[0]
        for b in self.sizes:
            coords = torch.rand(b, 1, 2, device=feats[0].device) * s
            labels = torch.ones(b, 1, dtype=torch.int32, device=feats[0].device)
            low = torch.tensor([float("-inf")], device=feats[0].device)
            self(*feats, coords, labels, low)
            runs += 1
            if multi_image:
                for ib in self.image_sizes:
                    many = tuple(f.expand(ib, *f.shape[1:]).contiguous() for f in feats)
                    index = torch.arange(b, device=feats[0].device) % ib
                    self(*many, coords, labels, low, index)
                    runs += 1
        return runs


def compile_module(module: nn.Module, mode: str, max_batch: int) -> nn.Module:
    """The compiled form of one model's module (the decoder must be the graph formulation)."""
    allow_recompiles()
    if isinstance(module, Sam2MaskDecoderGraph):
        return CompiledDecoder(module, mode, buckets(max_batch, 16), [2, 4, 8])
    return CompiledBatchFirst(module, mode, buckets(max_batch))
