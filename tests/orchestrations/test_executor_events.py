"""Replay executor: external events, send_event and continue_as_new."""

from __future__ import annotations

from typing import Any

import pytest

from duraray._errors import TaskCancelledError
from duraray.orchestrations import history as h


def collect_three(ctx, _):
    values = []
    for name in ("A", "B", "C"):
        values.append((yield ctx.wait_for_external_event(name)))
    return values


def test_event_resumes_a_waiting_orchestration_with_its_payload(kit):
    """An event arriving while the orchestration waits completes the wait with its data."""

    def orch(ctx, _):
        return (yield ctx.wait_for_external_event("approve"))

    run = kit.run(orch, kit.start(), kit.episode(5, kit.raised("approve", {"ok": True})))
    expected_steps: list[list[Any]] = [[], [kit.completed({"ok": True}, t=5)]]
    assert expected_steps == run.steps


def test_events_raised_before_the_wait_are_buffered_in_order(kit):
    """Events A, B, C arriving before the orchestration waits are consumed in order."""
    start = [*kit.start(), kit.raised("A", "a"), kit.raised("B", "b"), kit.raised("C", "c")]
    run = kit.run(collect_three, start)
    expected = ["a", "b", "c"]
    assert expected == run.output()


def test_events_arriving_in_reverse_order_are_matched_by_name(kit):
    """Events buffered out of order are still delivered to the waits with their names."""
    run = kit.run(
        collect_three,
        kit.start(),
        kit.episode(1, kit.raised("C", "c"), kit.raised("B", "b")),
        kit.episode(2, kit.raised("A", "a")),
    )
    expected = ["a", "b", "c"]
    assert expected == run.output()


def test_event_names_match_case_insensitively(kit):
    """raise("APPROVE") satisfies wait_for_external_event("approve")."""

    def orch(ctx, _):
        return (yield ctx.wait_for_external_event("approve"))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.raised("APPROVE", "yes")))
    expected = "yes"
    assert expected == run.output()


def test_same_name_events_are_delivered_fifo(kit):
    """Two events with the same name go to two successive waits, first in first out."""

    def orch(ctx, _):
        first = yield ctx.wait_for_external_event("vote")
        second = yield ctx.wait_for_external_event("Vote")
        return [first, second]

    run = kit.run(orch, [*kit.start(), kit.raised("vote", 1), kit.raised("VOTE", 2)])
    expected = [1, 2]
    assert expected == run.output()


def test_cancelled_wait_does_not_consume_a_later_event(kit):
    """A cancelled wait consumes nothing: the event stays buffered for the next waiter."""

    def orch(ctx, _):
        early = ctx.wait_for_external_event("approve")
        early.cancel()
        yield ctx.call_activity("prepare")
        late = yield ctx.wait_for_external_event("approve")
        return [early.is_cancelled, late]

    episodes = [kit.start(), kit.episode(1, kit.raised("approve", "granted"))]
    waiting = kit.run(orch, *episodes)
    expected_buffered = [("approve", kit.enc("granted"))]
    assert expected_buffered == waiting.executor.buffered_events()
    run = kit.run(orch, *episodes, kit.episode(2, kit.done(0)))
    expected = [True, "granted"]
    assert expected == run.output()


def test_awaiting_a_cancelled_wait_raises_task_cancelled_error(kit):
    """Yielding a cancelled task raises TaskCancelledError into the orchestrator."""

    def orch(ctx, _):
        wait = ctx.wait_for_external_event("x")
        wait.cancel()
        try:
            yield wait
        except TaskCancelledError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "wait_for_external_event('x') was cancelled"
    assert expected == run.output()


def test_unconsumed_events_are_reported_in_arrival_order(kit):
    """buffered_events() lists unconsumed events with their first-seen names, by arrival."""

    def orch(ctx, _):
        yield ctx.wait_for_external_event("never")

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.raised("b", 1), kit.raised("a", 2), kit.raised("B", 3)),
    )
    expected = [("b", kit.enc(1)), ("a", kit.enc(2)), ("b", kit.enc(3))]
    assert expected == run.executor.buffered_events()


@pytest.mark.parametrize("name", ["", None])
def test_wait_for_external_event_needs_a_name(kit, name):
    """wait_for_external_event with an empty or missing name raises ValueError."""

    def orch(ctx, _):
        try:
            ctx.wait_for_external_event(name)
        except ValueError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "event name must be a non-empty string"
    assert expected == run.output()


def test_send_event_records_one_event_sent_action(kit):
    """send_event records an EventSent action with the target, name and encoded data."""

    def orch(ctx, _):
        ctx.send_event("other-1", "Approval", data={"by": "ann"})
        yield ctx.call_activity("a")
        return "sent"

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1)))
    expected_first = [kit.sent(0, "other-1", "Approval", {"by": "ann"}), kit.scheduled(1, "a")]
    assert expected_first == run.steps[0]
    expected_second = [kit.completed("sent", t=1)]
    assert expected_second == run.steps[1]


def test_send_event_is_not_repeated_on_replay(kit):
    """Replaying a history that contains the EventSent produces no second EventSent."""

    def orch(ctx, _):
        ctx.send_event("other-1", "Approval")
        yield ctx.call_activity("a")
        yield ctx.call_activity("b")

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1)))
    _, new = kit.replay(orch, run.history, kit.episode(2, kit.done(2)))
    expected = [kit.completed(None, t=2)]
    assert expected == new
    expected_sent = 1
    assert expected_sent == len(run.of_type(h.EventSent))


def test_send_event_to_itself_is_allowed(kit):
    """An orchestration may send an event to its own instance id."""

    def orch(ctx, _):
        ctx.send_event(ctx.instance_id, "ping")
        return (yield ctx.wait_for_external_event("ping"))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.raised("ping", "pong")))
    expected = [kit.sent(0, kit.INSTANCE_ID, "ping")]
    assert expected == run.steps[0]
    expected_output = "pong"
    assert expected_output == run.output()


@pytest.mark.parametrize(
    ("target", "name", "error"),
    [
        ("", "e", ValueError),
        ("x\x00y", "e", ValueError),
        (7, "e", TypeError),
        ("x", "", ValueError),
    ],
)
def test_send_event_validates_target_and_name(kit, target, name, error):
    """send_event rejects invalid instance ids and empty event names at the call site."""

    def orch(ctx, _):
        try:
            ctx.send_event(target, name)
        except error:
            return "rejected"

    run = kit.run(orch, kit.start())
    expected = "rejected"
    assert expected == run.output()
    assert not run.of_type(h.EventSent)


def test_continue_as_new_completes_with_the_encoded_input(kit):
    """continue_as_new ends the execution with a ContinueAsNew carrying the new input."""

    def orch(ctx, n):
        yield ctx.call_activity("work", input=n)
        ctx.continue_as_new(n + 1)

    run = kit.run(orch, kit.start(4), kit.episode(1, kit.done(0)))
    expected = [h.ContinueAsNew(timestamp=kit.at(1), input=kit.enc(5))]
    assert expected == run.new
    expected_status = h.OrchestrationStatus.CONTINUED_AS_NEW
    assert expected_status == run.status


def test_continue_as_new_from_a_plain_function(kit):
    """A plain orchestrator calling continue_as_new continues as new, not completes."""

    def orch(ctx, n):
        ctx.continue_as_new(n + 1)
        return "ignored"

    run = kit.run(orch, kit.start(1))
    expected = [h.ContinueAsNew(timestamp=kit.at(0), input=kit.enc(2))]
    assert expected == run.new


def test_continue_as_new_takes_effect_at_the_next_yield(kit):
    """Code after continue_as_new runs until the next yield; work scheduled there is kept."""

    def orch(ctx, n):
        ctx.continue_as_new(n + 1)
        yield ctx.call_activity("flush")

    run = kit.run(orch, kit.start(1))
    expected = [kit.scheduled(0, "flush"), h.ContinueAsNew(timestamp=kit.at(0), input=kit.enc(2))]
    assert expected == run.new


def test_continue_as_new_with_save_events_reports_unconsumed_events(kit):
    """With save_events=True the unconsumed buffered events are there to carry over."""

    def orch(ctx, n):
        first = yield ctx.wait_for_external_event("item")
        ctx.continue_as_new([n, first], save_events=True)

    run = kit.run(
        orch,
        kit.start(0),
        kit.episode(1, kit.raised("item", 1), kit.raised("item", 2), kit.raised("other", 3)),
    )
    expected = [("item", kit.enc(2)), ("other", kit.enc(3))]
    assert run.executor.save_events
    assert expected == run.executor.buffered_events()
    expected_input = [0, 1]
    assert expected_input == kit.dec(run.completion.input)


def test_continue_as_new_without_save_events_does_not_carry_events(kit):
    """Without save_events the executor says unconsumed events are dropped."""

    def orch(ctx, n):
        yield ctx.wait_for_external_event("item")
        ctx.continue_as_new(n + 1)

    run = kit.run(orch, kit.start(0), kit.episode(1, kit.raised("item", 1), kit.raised("item", 2)))
    expected_status = h.OrchestrationStatus.CONTINUED_AS_NEW
    assert expected_status == run.status
    assert not run.executor.save_events


def test_exception_after_continue_as_new_fails_the_execution(kit):
    """An exception raised after continue_as_new fails the execution instead."""

    def orch(ctx, n):
        ctx.continue_as_new(n + 1)
        raise ValueError("changed my mind")

    run = kit.run(orch, kit.start(1))
    expected = ("ValueError", "changed my mind")
    assert expected == (run.failure.error_type, run.failure.message)


def test_unencodable_continue_as_new_input_raises_at_the_call_site(kit):
    """continue_as_new with an input msgpack cannot carry raises before anything changes."""
    from duraray._errors import SerializationError

    def orch(ctx, _):
        try:
            ctx.continue_as_new(object())
        except SerializationError:
            return "kept running"

    run = kit.run(orch, kit.start())
    expected = "kept running"
    assert expected == run.output()


def test_events_after_continue_as_new_are_not_taken_by_an_abandoned_wait(kit):
    """A wait left open at continue_as_new does not swallow a later event: it is carried over."""

    def orch(ctx, n):
        pending = ctx.wait_for_external_event("item")
        ctx.continue_as_new(n + 1, save_events=True)
        yield pending

    run = kit.run(orch, [*kit.start(0), kit.raised("item", 1)])
    expected = [("item", kit.enc(1))]
    assert expected == run.executor.buffered_events()


def test_send_event_before_returning_is_not_resent_by_a_replay(kit):
    """Replaying a finished execution's history emits its completion, not its EventSent again."""

    def orch(ctx, _):
        yield ctx.call_activity("a")
        ctx.send_event("other", "Done")
        return "ok"

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)))
    expected_last = [kit.sent(1, "other", "Done", t=1), kit.completed("ok", t=1)]
    assert expected_last == run.new
    fresh, new = kit.replay(orch, run.history[:-1])
    expected = [kit.completed("ok", t=1)]
    assert expected == new
    assert fresh.is_complete
