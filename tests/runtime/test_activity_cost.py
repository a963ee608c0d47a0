"""The cost model deciding which activities may run inside a partition's process."""

from __future__ import annotations

import duraray as dr
from duraray.runtime.engine.activity import ActivityCostModel, execute_activity
from duraray.runtime.engine.records import ActivityTask


def test_an_activity_is_cheap_only_after_warmup():
    """No activity counts as cheap before it has run ``warmup`` times."""
    model = ActivityCostModel(threshold=0.001, warmup=3)
    model.observe("fast", 0.00001)
    model.observe("fast", 0.00001)
    assert not model.is_cheap("fast")
    model.observe("fast", 0.00001)
    assert model.is_cheap("fast")


def test_slow_and_unknown_activities_are_not_cheap():
    """An activity above the threshold, or never seen, goes to the workers."""
    model = ActivityCostModel(threshold=0.001, warmup=1)
    model.observe("slow", 0.05)
    assert not model.is_cheap("slow")
    assert not model.is_cheap("never-seen")


def test_a_cheap_activity_that_turns_slow_goes_back_to_the_workers():
    """The moving average follows an activity that becomes slow, so it stops being cheap."""
    model = ActivityCostModel(threshold=0.001, warmup=2, alpha=0.5)
    for _ in range(5):
        model.observe("varies", 0.0001)
    assert model.is_cheap("varies")
    for _ in range(3):
        model.observe("varies", 0.02)
    assert not model.is_cheap("varies")


def test_execute_activity_reports_its_duration():
    """An activity result says how long the activity ran, for success and failure alike."""
    app = dr.App("cost")

    @app.activity
    def ok(ctx, n: int) -> int:
        return n + 1

    @app.activity
    def boom(ctx, _):
        raise ValueError("no")

    from duraray.runtime.engine import codec

    for name, failed in (("ok", False), ("boom", True)):
        task = ActivityTask("i", "e", 0, name, codec.encode(1), 0)
        result = execute_activity(app.registry, task)
        assert failed == (result.failure is not None)
        assert result.duration >= 0.0
