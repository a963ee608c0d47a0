"""End to end: durable entities through the client and from orchestrations (SEMANTICS rows 52-61)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

import duraray as dr
from duraray.runtime.engine.routing import partition_for
from duraray.testing import run_in_process

from .helpers import TIMEOUT, poll

app = dr.App("e2e-entities", partitions=4)

Status = dr.OrchestrationStatus


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> int:
        value = self.get_state(int, 0) + amount
        self.set_state(value)
        return value

    def get(self) -> int:
        return self.get_state(int, 0)

    def clear(self) -> None:
        self.set_state(None)

    def add_and_echo(self, amount: int) -> int:
        """Add, and signal the same amount to the ``<key>-echo`` counter."""
        value = self.add(amount)
        self.signal_entity(dr.EntityId("counter", f"{self.entity_id.key}-echo"), "add", amount)
        return value

    def add_echo_then_fail(self, amount: int) -> None:
        """Do what ``add_and_echo`` does, then fail: all of it must be rolled back."""
        self.add_and_echo(amount)
        raise ValueError(f"refused {amount}")


@app.entity
class Sequence(dr.DurableEntity):
    def append(self, item: int) -> None:
        self.set_state([*self.get_state(list, []), item])

    def get(self) -> list:
        return self.get_state(list, [])


@app.entity
class Blob(dr.DurableEntity):
    def fill(self, size: int) -> int:
        self.set_state("x" * size)
        return size

    def make(self, size: int) -> str:
        return "y" * size

    def size(self) -> int:
        return len(self.get_state(str, ""))


@app.entity
def relay(ctx: dr.EntityContext, spec: dict) -> str:
    """``forward``: signal a counter and start an orchestration; ``later``: a delayed signal."""
    if ctx.operation == "later":
        ctx.signal_entity(spec["target"], "add", spec["amount"], signal_time=timedelta(seconds=2))
        return "scheduled"
    ctx.set_state(ctx.get_state(int, 0) + 1)
    ctx.signal_entity(spec["target"], "add", spec["amount"])
    ctx.schedule_new_orchestration(echo_value, input=spec["amount"], instance_id=spec["start_id"])
    if spec["fail"]:
        raise RuntimeError(f"relay refused {spec['start_id']}")
    return "forwarded"


@app.orchestration
def echo_value(ctx: dr.OrchestrationContext, value):
    return value


@app.orchestration
def read_counter(ctx: dr.OrchestrationContext, key: str):
    return (yield ctx.call_entity(dr.EntityId("counter", key), "get"))


@app.orchestration
def signal_then_call(ctx: dr.OrchestrationContext, key: str):
    counter = dr.EntityId("counter", key)
    ctx.signal_entity(counter, "add", 7)
    return (yield ctx.call_entity(counter, "get"))


@app.orchestration
def append_in_order(ctx: dr.OrchestrationContext, spec: list):
    key, count = spec
    for item in range(1, count + 1):
        ctx.signal_entity(dr.EntityId("sequence", key), "append", item)


@app.orchestration
def failing_calls(ctx: dr.OrchestrationContext, key: str):
    counter = dr.EntityId("counter", key)
    # Sent in one episode, so the entity runs them in one batch with the first call below.
    ctx.signal_entity(counter, "add", 1)
    ctx.signal_entity(counter, "add_echo_then_fail", 50)
    ctx.signal_entity(counter, "add", 2)
    caught = []
    try:
        yield ctx.call_entity(counter, "add_echo_then_fail", 5)
    except dr.EntityOperationFailedError as exc:
        caught.append(["EntityOperationFailedError", str(exc)])
    try:
        yield ctx.call_entity(counter, "add_echo_then_fail", 6)
    except dr.TaskFailedError as exc:
        caught.append([type(exc).__name__, str(exc)])
    after_success = yield ctx.call_entity(counter, "add_and_echo", 4)
    return {"caught": caught, "after_success": after_success}


@app.orchestration
def failing_first(ctx: dr.OrchestrationContext, key: str):
    caught = []
    for entity, operation in [
        (dr.EntityId("counter", key), "add_echo_then_fail"),
        (dr.EntityId("counter", key), "no_such_operation"),
        (dr.EntityId("unregistered", key), "add"),
    ]:
        try:
            yield ctx.call_entity(entity, operation, 1)
        except dr.EntityOperationFailedError as exc:
            caught.append(str(exc))
    return caught


@app.orchestration
def blob_calls(ctx: dr.OrchestrationContext, key: str):
    blob = dr.EntityId("blob", key)
    outcomes = []
    for operation, size in [("fill", 100), ("fill", 5000), ("make", 5000), ("make", 10)]:
        try:
            outcomes.append((yield ctx.call_entity(blob, operation, size)))
        except dr.EntityOperationFailedError as exc:
            outcomes.append(str(exc))
    outcomes.append((yield ctx.call_entity(blob, "size")))
    return outcomes


@app.orchestration
def signal_later(ctx: dr.OrchestrationContext, key: str):
    ctx.signal_entity(dr.EntityId("counter", key), "add", 1, signal_time=timedelta(seconds=2))
    return "sent"


def ids_on_one_partition(prefix: str, count: int) -> list[str]:
    """``count`` instance ids starting with ``prefix`` that share a partition of the app."""
    partition = partition_for(f"{prefix}0", 4)
    return list(
        itertools.islice(
            (
                f"{prefix}{n}"
                for n in itertools.count()
                if partition_for(f"{prefix}{n}", 4) == partition
            ),
            count,
        )
    )


def state_of(client: dr.Client, entity) -> object:
    """The entity's state, or None if it does not exist."""
    metadata = client.get_entity(entity)
    return None if metadata is None else metadata.state


def wait_state(client: dr.Client, entity, expected) -> None:
    """Poll until the entity's state equals ``expected`` (bounded)."""
    poll(lambda: state_of(client, entity), lambda state: state == expected)


def parked_signals(client: dr.Client) -> int:
    """Timer rows of every partition: here, only signals waiting for their signal_time."""
    return sum(stats["timers"] for stats in client.partition_stats())


# -- the client ------------------------------------------------------------------------------


def test_client_signals_add_up(client):
    """Three client signals add(5) to one counter leave state 15, with a last-modified time."""
    counter = dr.EntityId("counter", "k")
    for _ in range(3):
        client.signal_entity(counter, "add", 5)
    wait_state(client, counter, 15)
    metadata = client.get_entity("@counter@k")
    expected = dr.EntityMetadata(
        id=counter,
        last_modified=metadata.last_modified,
        state=15,
        locked_by=None,
        backlog_queue_size=0,
    )
    assert expected == metadata
    assert metadata.last_modified is not None
    assert client.get_entity(counter, include_state=False).state is None


def test_concurrent_signals_from_ten_threads_all_apply(client):
    """100 signals from 10 client threads to one counter lose no update: the state ends at 100."""
    counter = dr.EntityId("counter", "shared")
    barrier = threading.Barrier(10)

    def sender(_: int) -> None:
        barrier.wait(timeout=TIMEOUT)
        for _ in range(10):
            client.signal_entity(counter, "add", 1)

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(sender, range(10)))
    wait_state(client, counter, 100)


def test_signals_from_one_client_apply_in_send_order(client):
    """A list entity signalled append(1..200) by one client holds 1..200 in order."""
    items = dr.EntityId("sequence", "from-client")
    for item in range(1, 201):
        client.signal_entity(items, "append", item)
    expected = list(range(1, 201))
    wait_state(client, items, expected)


def test_signals_from_one_orchestration_apply_in_send_order(client):
    """A list entity signalled append(1..200) by one orchestration holds 1..200 in order."""
    iid = client.schedule_new_orchestration(append_in_order, input=["from-orchestration", 200])
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).raise_if_failed()
    expected = list(range(1, 201))
    wait_state(client, dr.EntityId("sequence", "from-orchestration"), expected)


def test_never_used_entity_does_not_exist(client):
    """get_entity of an id that never received an operation is None, and so is a query for it."""
    assert client.get_entity(dr.EntityId("counter", "never")) is None
    assert client.get_entity("@nosuchentity@x") is None
    expected: list = []
    assert expected == client.get_all_entities(name="counter", key_prefix="never")


@pytest.mark.parametrize("operation", ["clear", "delete", "DELETE"])
def test_setting_state_to_none_deletes_the_entity(client, operation):
    """set_state(None) and the built-in delete operation make the entity non-existent."""
    counter = dr.EntityId("counter", f"doomed-{operation}")
    client.signal_entity(counter, "add", 3)
    wait_state(client, counter, 3)
    client.signal_entity(counter, operation)
    poll(lambda: client.get_entity(counter), lambda metadata: metadata is None)
    expected: list = []
    assert expected == client.get_all_entities(name="counter", key_prefix="doomed")
    client.signal_entity(counter, "add", 1)  # and it can be created again
    wait_state(client, counter, 1)


def test_entity_names_are_case_insensitive_and_keys_case_sensitive(client):
    """Counter/COUNTER/@counter name one entity per key, while keys k and K are two entities."""
    client.signal_entity(dr.EntityId("Counter", "k"), "add", 1)
    client.signal_entity(("COUNTER", "k"), "add", 2)
    client.signal_entity("@cOuNtEr@k", "Add", 4)
    client.signal_entity(dr.EntityId("counter", "K"), "add", 100)
    wait_state(client, "@counter@k", 7)
    wait_state(client, "@counter@K", 100)
    expected_ids = [dr.EntityId("counter", "K"), dr.EntityId("counter", "k")]
    assert expected_ids == [m.id for m in client.get_all_entities(name="COUNTER")]
    expected_text = "@counter@k"
    assert expected_text == str(dr.EntityId.parse("@COUNTER@k"))


@pytest.mark.parametrize(
    ("entity", "error"),
    [
        ("counter@k", ValueError),
        ("@counter", ValueError),
        ("@@k", ValueError),
        ("@counter@", ValueError),
        ("@counter@a@b", ValueError),
        (("coun@ter", "k"), ValueError),
        (("counter", ""), ValueError),
        (("", "k"), ValueError),
        (("counter", "line\nbreak"), ValueError),
        (("counter", "x" * 300), ValueError),
        (("counter", 7), TypeError),
        ((None, "k"), TypeError),
        (42, TypeError),
        (["counter", "k"], TypeError),
    ],
)
def test_invalid_entity_ids_are_rejected_at_the_call_site(client, entity, error):
    """Malformed entity ids raise ValueError/TypeError from the client call and store nothing."""
    with pytest.raises(error):
        client.signal_entity(entity, "add", 1)
    with pytest.raises(error):
        client.get_entity(entity)
    expected: list = []
    assert expected == client.get_all_entities()


@pytest.mark.parametrize("operation", ["", None, 3])
def test_invalid_operation_names_are_rejected_at_the_call_site(client, operation):
    """An empty or non-string operation name raises ValueError and stores nothing."""
    with pytest.raises(ValueError):
        client.signal_entity(dr.EntityId("counter", "k"), operation, 1)
    expected: list = []
    assert expected == client.get_all_entities()


def test_unserializable_or_oversized_input_raises_serialization_error(auto_clock):
    """Inputs msgpack cannot carry, or larger than the hub's limit, raise SerializationError and store nothing."""
    with run_in_process(app, clock=auto_clock, max_payload_bytes=4096) as client:
        counter = dr.EntityId("counter", "k")
        with pytest.raises(dr.SerializationError):
            client.signal_entity(counter, "add", object())
        with pytest.raises(dr.SerializationError):
            client.signal_entity(counter, "add", {"lock": threading.Lock()})
        with pytest.raises(dr.SerializationError):
            client.signal_entity(counter, "add", b"x" * 5000)
        expected: list = []
        assert expected == client.get_all_entities()
        client.signal_entity(counter, "add", 1)  # the hub is unharmed
        wait_state(client, counter, 1)


# -- from orchestrations ---------------------------------------------------------------------


def test_call_entity_returns_the_current_value(client):
    """call_entity(get) from an orchestration returns the state the client's signals produced."""
    for amount in (2, 3):
        client.signal_entity(dr.EntityId("counter", "read"), "add", amount)
    wait_state(client, dr.EntityId("counter", "read"), 5)
    iid = client.schedule_new_orchestration(read_counter, input="read")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 5
    assert expected == state.output


def test_call_entity_sees_a_signal_the_orchestration_sent_earlier(client):
    """A signal sent by an orchestration is applied before its later call to the same entity."""
    client.signal_entity(dr.EntityId("counter", "ordered"), "add", 1)
    wait_state(client, dr.EntityId("counter", "ordered"), 1)
    iid = client.schedule_new_orchestration(signal_then_call, input="ordered")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 8
    assert expected == state.output


def test_failing_operation_raises_and_rolls_back_only_itself(client):
    """A failing operation fails call_entity (EntityOperationFailedError, a TaskFailedError) and undoes only its own state and signals."""
    iid = client.schedule_new_orchestration(failing_calls, input="acct")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_status = Status.COMPLETED
    assert expected_status == state.runtime_status, state.failure_details
    caught = state.output["caught"]
    expected_types = ["EntityOperationFailedError", "EntityOperationFailedError"]
    assert expected_types == [kind for kind, _ in caught]
    assert "refused 5" in caught[0][1]
    assert "refused 6" in caught[1][1]
    # add(1), the failed add(50) and add(2) ran in one batch: only the failure was undone.
    expected_after_success = 1 + 2 + 4
    assert expected_after_success == state.output["after_success"]
    # The failed operations' echo signals left the entity's partition before the successful
    # one's would have, so once the echo shows 4, nothing else is on its way.
    wait_state(client, dr.EntityId("counter", "acct-echo"), 4)
    expected_final = 7
    assert expected_final == state_of(client, dr.EntityId("counter", "acct"))


def test_a_failed_first_operation_creates_no_entity(client):
    """Failing operations on a new entity (an error, an unknown operation, an unknown entity name) leave it non-existent."""
    iid = client.schedule_new_orchestration(failing_first, input="fresh")
    caught = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).output
    expected_count = 3
    assert expected_count == len(caught), caught
    assert "refused 1" in caught[0]
    assert "no_such_operation" in caught[1]
    assert "unregistered" in caught[2]
    for entity in ("@counter@fresh", "@counter@fresh-echo", "@unregistered@fresh"):
        assert client.get_entity(entity) is None, entity


def test_entity_state_and_results_obey_the_hub_payload_limit(auto_clock):
    """An operation whose new state or result exceeds the hub's max_payload_bytes fails and changes nothing."""
    with run_in_process(app, clock=auto_clock, max_payload_bytes=4096) as client:
        iid = client.schedule_new_orchestration(blob_calls, input="b")
        outcomes = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).output
        expected_ok = [100, "y" * 10, 100]  # fill(100), make(10), the size kept from fill(100)
        assert expected_ok == [outcomes[0], outcomes[3], outcomes[4]], outcomes
        for failed in (outcomes[1], outcomes[2]):
            assert isinstance(failed, str) and "4096" in failed, outcomes
        expected_size = 100
        assert expected_size == len(client.get_entity("@blob@b").state)


def test_entity_signals_and_starts_only_when_the_operation_succeeds(client):
    """An entity operation's signal and orchestration start happen if it succeeds and not at all if it fails."""
    failed_id, ok_id = ids_on_one_partition("relay-start-", 2)
    target = dr.EntityId("counter", "relay-target")
    relay_id = dr.EntityId("relay", "r")
    client.signal_entity(
        relay_id,
        "forward",
        {"target": str(target), "amount": 100, "start_id": failed_id, "fail": True},
    )
    client.signal_entity(
        relay_id, "forward", {"target": str(target), "amount": 1, "start_id": ok_id, "fail": False}
    )
    started = client.wait_for_orchestration_completion(ok_id, timeout=TIMEOUT)
    expected_output = 1
    assert expected_output == started.output
    # Both starts go from the relay's partition to one partition, in order: the failed
    # one would have arrived first. Likewise for the two signals to the target.
    wait_state(client, target, 1)
    assert client.get_orchestration_state(failed_id) is None
    expected_forwards = 1  # the failed operation's own state change was rolled back too
    assert expected_forwards == state_of(client, relay_id)


# -- scheduled signals -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["client-delay", "client-datetime", "orchestration", "entity"])
def test_scheduled_signal_waits_for_its_signal_time(manual_client, manual_clock, source):
    """A signal with signal_time two seconds ahead, from a client, an orchestration or an entity, applies only once the clock passes it."""
    counter = dr.EntityId("counter", f"later-{source}")
    if source == "client-delay":
        manual_client.signal_entity(counter, "add", 1, signal_time=timedelta(seconds=2))
    elif source == "client-datetime":
        when = manual_clock.now() + timedelta(seconds=2)
        manual_client.signal_entity(counter, "add", 1, signal_time=when)
    elif source == "orchestration":
        iid = manual_client.schedule_new_orchestration(signal_later, input=counter.key)
        manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).raise_if_failed()
    else:
        manual_client.signal_entity(
            dr.EntityId("relay", "timer"), "later", {"target": str(counter), "amount": 1}
        )
    # The signal reached the counter's partition and waits there as a timer.
    poll(lambda: parked_signals(manual_client), lambda n: n == 1)
    assert manual_client.get_entity(counter) is None
    manual_clock.advance(timedelta(seconds=1.5))
    manual_client.hub_runtime.wait_idle()
    assert manual_client.get_entity(counter) is None
    expected_parked = 1
    assert expected_parked == parked_signals(manual_client)
    manual_clock.advance(timedelta(seconds=1))
    wait_state(manual_client, counter, 1)
    expected_parked = 0
    assert expected_parked == parked_signals(manual_client)
