"""How long a listing may take (pure: dffs.fs.namespace.collect_with_progress on trio's autojump
clock; the pages are an async generator standing in for a paginated origin, whose timing is the
point here)."""

from __future__ import annotations

import pytest
import trio

from dffs.fs.namespace import collect_with_progress


async def _pages(pages: int, per_page: int, gap: float):
    for page in range(pages):
        await trio.sleep(gap)
        for i in range(per_page):
            yield page * per_page + i


async def test_a_big_listing_may_take_longer_than_the_timeout_while_pages_keep_coming(autojump_clock):
    started = trio.current_time()
    items = await collect_with_progress(_pages(pages=40, per_page=1000, gap=0.9), timeout=1.0)
    assert items == list(range(40_000))
    assert trio.current_time() - started == pytest.approx(36.0)  # 36 s of pages under a 1 s timeout


async def test_a_stalled_listing_times_out(autojump_clock):
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await collect_with_progress(_pages(pages=3, per_page=10, gap=5.0), timeout=1.0)
    assert trio.current_time() - started == pytest.approx(1.0)
