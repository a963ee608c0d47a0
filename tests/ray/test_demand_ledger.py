"""The cluster's demand ledger without a cluster: every hub's figure summed into the one
autoscaler request, published only when the sum changes, a hub saying 0 (or stopping)
leaving the others' in place, a stopped hub's late report ignored, and a silent hub's
figure lapsing."""

from __future__ import annotations

import asyncio

import pytest

from duraray.runtime.ray.demand import DEMAND_REPORT_S
from duraray.runtime.ray.ledger import ENTRY_TTL_S, MAX_PUBLISHED_CPUS, DemandLedgerImpl


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger(published: list[int], clock: Clock | None = None) -> DemandLedgerImpl:
    return DemandLedgerImpl(publish=published.append, clock=clock or Clock())


def test_hubs_figures_are_summed_and_published_when_the_sum_changes():
    async def scenario():
        published: list[int] = []
        ledger = _ledger(published)
        assert 3 == await ledger.report("a", 3)
        assert 5 == await ledger.report("b", 2)
        assert 5 == await ledger.report("a", 3)  # unchanged: not published again
        assert 2 == await ledger.report("a", 0)  # a is done: b's figure stays
        assert {"b": 2} == await ledger.entries()
        assert 0 == await ledger.report("b", 0)
        assert [0, 3, 5, 2, 0] == published  # the first 0: the ledger started
        assert 0 == await ledger.published()

    asyncio.run(scenario())


def test_a_new_ledger_publishes_zero_at_once():
    """A restarted ledger replaces whatever its earlier process left published (which may
    name hubs that are gone); live hubs report again within DEMAND_REPORT_S, well inside
    the time a figure may go unrenewed."""

    async def scenario():
        published: list[int] = []
        ledger = _ledger(published)
        assert [0] == published
        assert 0 == await ledger.published()
        assert 0 == await ledger.report("a", 0)
        assert [0] == published
        assert ENTRY_TTL_S >= 3 * DEMAND_REPORT_S

    asyncio.run(scenario())


def test_a_stopped_hubs_late_report_does_not_bring_its_figure_back():
    async def scenario():
        published: list[int] = []
        ledger = _ledger(published)
        await ledger.report("a", 2, "pools-1")
        await ledger.report("b", 3, "pools-2")
        assert 3 == await ledger.retire("a", "pools-1")
        # Sent by a's pools actor before it died, arriving after the stop:
        assert 3 == await ledger.report("a", 2, "pools-1")
        # A new hub of the same name (a new pools actor) counts again.
        assert 7 == await ledger.report("a", 4, "pools-3")
        assert [0, 2, 5, 3, 7] == published

    asyncio.run(scenario())


def test_a_silent_hubs_figure_lapses():
    async def scenario():
        published: list[int] = []
        clock = Clock()
        ledger = _ledger(published, clock)
        await ledger.report("gone", 4)
        clock.now += ENTRY_TTL_S / 2
        await ledger.report("alive", 1)
        clock.now += ENTRY_TTL_S / 2 + 1  # "gone" last reported more than the TTL ago
        assert {"alive": 1} == await ledger.entries()
        assert 1 == await ledger.report("alive", 1)  # renewed; the sum drops to 1
        assert [0, 4, 5, 1] == published

    asyncio.run(scenario())


def test_a_failed_publish_is_tried_again_by_the_next_report():
    async def scenario():
        published: list[int] = []
        fail = [True]

        def publish(cpus: int) -> None:
            if fail[0]:
                raise RuntimeError("GCS unreachable")
            published.append(cpus)

        ledger = DemandLedgerImpl(publish=publish, clock=Clock())
        assert await ledger.published() is None  # its first 0 failed too
        assert 2 == await ledger.report("a", 2)
        assert [] == published
        fail[0] = False
        assert 2 == await ledger.report("a", 2)
        assert [2] == published

    asyncio.run(scenario())


def test_the_sum_is_capped_and_bad_reports_are_refused():
    async def scenario():
        published: list[int] = []
        ledger = _ledger(published)
        await ledger.report("a", MAX_PUBLISHED_CPUS)
        assert MAX_PUBLISHED_CPUS == await ledger.report("b", 5)
        assert MAX_PUBLISHED_CPUS == await ledger.report("c", -3)  # negative: 0, no entry
        assert {"a", "b"} == set(await ledger.entries())
        with pytest.raises(ValueError, match="hub"):
            await ledger.report("", 1)
        with pytest.raises(ValueError, match="hub"):
            await ledger.retire(None)  # type: ignore[arg-type]

    asyncio.run(scenario())
