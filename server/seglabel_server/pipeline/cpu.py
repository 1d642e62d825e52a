"""The pipeline's host work (filters, upsampling, RLE, crops, rendering) runs in a small thread pool,
so the asyncio loop stays free; numpy and Pillow release the GIL for most of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class CpuPool:
    def __init__(self, threads: int, name: str = "seglabel-cpu"):
        self.threads = max(1, threads)
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=name)

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` on a pool thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def chunks(self, n: int) -> list[range]:
        """``range(n)`` cut into at most one contiguous chunk per thread."""
        k = max(1, min(n, self.threads))
        step = -(-n // k) if n else 1
        return [range(i, min(i + step, n)) for i in range(0, n, step)]

    async def parallel(self, fn: Callable[[range], object], n: int) -> list:
        """``fn`` over contiguous chunks of ``range(n)``, one chunk per pool thread, in order."""
        return await asyncio.gather(*[self.run(fn, r) for r in self.chunks(n)])

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
