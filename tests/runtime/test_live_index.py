"""Recovery reads only the ``live`` index of unfinished instances (store format 2)."""

from __future__ import annotations

import duraray as dr
from duraray.config import HubConfig
from duraray.runtime.engine import codec
from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.records import FORMAT_VERSION, ClientRequest
from duraray.runtime.engine.store import MemoryStore, WriteBatch

app = dr.App("live-index", partitions=1)


@app.orchestration
def waits(ctx, _):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def done(ctx, _):
    return "done"


def _core(store: MemoryStore) -> PartitionCore:
    return PartitionCore(
        hub="live-index",
        index=0,
        store=store,
        registry=app.registry,
        config=HubConfig(partitions=1),
    )


def _start(core: PartitionCore, instance_id: str, name: str) -> None:
    core.submit_request(
        ClientRequest(
            "start", {"instance_id": instance_id, "name": name, "input": codec.encode(None)}
        )
    )
    while core.has_work():
        core.run_batch()


def test_only_unfinished_instances_are_indexed():
    """A finished instance leaves the live index; a waiting one stays in it."""
    store = MemoryStore()
    core = _core(store)
    _start(core, "waiting", "waits")
    _start(core, "finished", "done")
    expected = [b"waiting"]
    assert expected == [key for key, _ in store.scan("live")]


def test_recovery_finds_unfinished_instances_through_the_index():
    """A reopened partition recovers the waiting instance and can complete it."""
    store = MemoryStore()
    _start(_core(store), "waiting", "waits")
    core = _core(store)
    assert ["waiting"] == core.instances.ids()
    core.submit_request(
        ClientRequest(
            "raise_event", {"instance_id": "waiting", "name": "go", "data": codec.encode(1)}
        )
    )
    while core.has_work():
        core.run_batch()
    assert [] == [key for key, _ in store.scan("live")]


def test_a_format_one_store_gets_its_index_built_once():
    """Opening a store written before the index existed builds it, then records the
    current format."""
    store = MemoryStore()
    _start(_core(store), "waiting", "waits")
    old = WriteBatch()
    old.delete_prefix("live", b"")
    old.put("meta", b"format_version", codec.encode(1))
    store.commit(old)
    core = _core(store)
    assert ["waiting"] == core.instances.ids()
    assert FORMAT_VERSION == codec.decode(store.get("meta", b"format_version"))
    assert [b"waiting"] == [key for key, _ in store.scan("live")]


def test_a_format_two_store_gets_its_stored_replies_indexed_once():
    """Replies stored before the time index existed are indexed when the store is first
    opened (stamped then), so they too are pruned one retention window later."""
    store = MemoryStore()
    core = _core(store)
    core.submit_request(
        ClientRequest(
            "start", {"instance_id": "w", "name": "waits", "input": None}, request_id="req-1"
        )
    )
    core.run_batch()
    old = WriteBatch()
    old.delete_prefix("dedup", b"t")
    old.put("meta", b"format_version", codec.encode(2))
    store.commit(old)
    assert [] == store.scan("dedup", prefix=b"t")
    _core(store)
    assert FORMAT_VERSION == codec.decode(store.get("meta", b"format_version"))
    [(key, _)] = store.scan("dedup", prefix=b"t")
    assert key.endswith(b"req-1")
    _core(store)  # once: opening again adds nothing
    assert 1 == len(store.scan("dedup", prefix=b"t"))
