"""Memory given back after large bodies: one malloc_trim per burst, none for small requests
(the RSS effect itself is measured on a real gateway process in test_hostile.py)."""

from __future__ import annotations

import asyncio

from mlops_autoserve.gateway.memory import TRIM_AFTER_BYTES, TRIM_DELAY_S, Trimmer

from tests.mlops_autoserve.gateway.test_gateway_inprocess import in_loop


@in_loop
async def test_a_burst_of_large_requests_costs_one_trim_and_small_ones_none():
    trimmer = Trimmer()
    assert trimmer._trim is not None  # glibc here
    for _ in range(100):
        trimmer.after(1024)
    await asyncio.sleep(TRIM_DELAY_S * 2)
    assert trimmer.trims == 0
    for _ in range(5):
        trimmer.after(TRIM_AFTER_BYTES)
    await asyncio.sleep(TRIM_DELAY_S * 2)
    assert trimmer.trims == 1
    trimmer.after(TRIM_AFTER_BYTES * 8)
    await asyncio.sleep(TRIM_DELAY_S * 2)
    assert trimmer.trims == 2
