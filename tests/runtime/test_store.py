"""The partition store contract, run against MemoryStore and LmdbStore, plus LMDB-only checks.

Asserts read ``expected == actual``; ruff's SIM300 forbids literals on the left, so the
expected side is always a name (``expected`` or a helper argument).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from duraray._errors import HubConfigurationError
from duraray.runtime.engine.store import (
    DATABASES,
    MAX_KEY_SIZE,
    LmdbStore,
    MemoryStore,
    PartitionStore,
    StoreClosedError,
    StoreFullError,
    WriteBatch,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PartitionStore]:
    s: PartitionStore = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "p0")
    yield s
    s.close()


# Byte order, not string intuition: b"a" < b"a\x00" < b"ab" < b"abc" < b"ab\xff" < b"ac".
ORDERED = [b"\x00", b"a", b"a\x00", b"ab", b"abc", b"ab\xff", b"ac", b"b", b"\xff", b"\xff\xff"]


@pytest.fixture
def filled(store: PartitionStore) -> PartitionStore:
    put_all(store, "history", {k: b"v" + k for k in reversed(ORDERED)})
    return store


def put_all(store: PartitionStore, db: str, items: dict[bytes, bytes]) -> None:
    batch = WriteBatch()
    for key, value in items.items():
        batch.put(db, key, value)
    store.commit(batch)


def check(expected: object, actual: object) -> None:
    assert expected == actual


def check_keys(store: PartitionStore, expected: list[bytes], **scan: Any) -> None:
    """Assert the keys a scan of "history" returns (scan kwargs passed through)."""
    assert expected == [k for k, _ in store.scan("history", **scan)]


# -- basic reads and writes -----------------------------------------------------------------


def test_put_then_get(store: PartitionStore) -> None:
    """A committed put is visible to get."""
    put_all(store, "meta", {b"k": b"v"})
    check(b"v", store.get("meta", b"k"))


def test_get_missing_key_returns_none(store: PartitionStore) -> None:
    """get of a key never written returns None."""
    check(None, store.get("meta", b"nope"))


def test_put_overwrites(store: PartitionStore) -> None:
    """A second put of the same key replaces its value."""
    put_all(store, "meta", {b"k": b"one"})
    put_all(store, "meta", {b"k": b"two"})
    check([(b"k", b"two")], store.scan("meta"))


def test_empty_value_round_trips(store: PartitionStore) -> None:
    """An empty value is stored and distinguished from a missing key."""
    put_all(store, "meta", {b"k": b""})
    check(b"", store.get("meta", b"k"))


def test_largest_key_round_trips(store: PartitionStore) -> None:
    """A key of exactly MAX_KEY_SIZE bytes is accepted by both stores."""
    key = b"k" * MAX_KEY_SIZE
    put_all(store, "meta", {key: b"v"})
    check([(key, b"v")], store.scan("meta"))


def test_delete_removes_key(store: PartitionStore) -> None:
    """A committed delete makes the key absent and leaves other keys alone."""
    put_all(store, "meta", {b"k": b"v", b"other": b"w"})
    batch = WriteBatch()
    batch.delete("meta", b"k")
    store.commit(batch)
    check([(b"other", b"w")], store.scan("meta"))


def test_delete_missing_key_is_fine(store: PartitionStore) -> None:
    """Deleting a key that does not exist neither fails nor changes anything."""
    put_all(store, "meta", {b"k": b"v"})
    batch = WriteBatch()
    batch.delete("meta", b"absent")
    store.commit(batch)
    check([(b"k", b"v")], store.scan("meta"))


# -- scans ----------------------------------------------------------------------------------


def test_scan_returns_all_rows_in_byte_order(filled: PartitionStore) -> None:
    """An unbounded scan returns every row sorted by key bytes."""
    check(sorted(ORDERED), ORDERED)
    check([(k, b"v" + k) for k in ORDERED], filled.scan("history"))


def test_scan_reverse_returns_descending_order(filled: PartitionStore) -> None:
    """reverse=True returns the same rows in descending key order."""
    check_keys(filled, ORDERED[::-1], reverse=True)


def test_scan_prefix(filled: PartitionStore) -> None:
    """Only keys starting with the prefix are returned, the prefix itself included."""
    check_keys(filled, [b"ab", b"abc", b"ab\xff"], prefix=b"ab")
    check_keys(filled, [b"ab\xff", b"abc", b"ab"], prefix=b"ab", reverse=True)
    check_keys(filled, [], prefix=b"zz")


def test_scan_prefix_of_ff_bytes(filled: PartitionStore) -> None:
    """A prefix ending in 0xff bytes (no simple successor) still bounds the scan."""
    check_keys(filled, [b"\xff", b"\xff\xff"], prefix=b"\xff")
    check_keys(filled, [b"\xff\xff", b"\xff"], prefix=b"\xff", reverse=True)
    check_keys(filled, [b"ab\xff"], prefix=b"ab\xff")


def test_scan_start_inclusive_stop_exclusive(filled: PartitionStore) -> None:
    """start is included and stop is excluded, in both directions."""
    check_keys(filled, [b"a\x00", b"ab", b"abc", b"ab\xff"], start=b"a\x00", stop=b"ac")
    check_keys(
        filled, [b"ab\xff", b"abc", b"ab", b"a\x00"], start=b"a\x00", stop=b"ac", reverse=True
    )


def test_scan_bounds_between_keys(filled: PartitionStore) -> None:
    """start and stop need not be stored keys."""
    check_keys(filled, [b"ab\xff", b"ac"], start=b"abd", stop=b"ac\x00")
    check_keys(filled, [b"ac", b"ab\xff"], start=b"abd", stop=b"ac\x00", reverse=True)


def test_scan_only_start_or_only_stop(filled: PartitionStore) -> None:
    """A single bound leaves the other end open."""
    check_keys(filled, [b"b", b"\xff", b"\xff\xff"], start=b"b")
    check_keys(filled, [b"\xff\xff", b"\xff", b"b"], start=b"b", reverse=True)
    check_keys(filled, [b"\x00", b"a"], stop=b"a\x00")
    check_keys(filled, [b"a", b"\x00"], stop=b"a\x00", reverse=True)


def test_scan_limit(filled: PartitionStore) -> None:
    """limit caps the rows, counted from the start of the scan direction."""
    check_keys(filled, [b"\x00", b"a", b"a\x00"], limit=3)
    check_keys(filled, [b"\xff\xff", b"\xff"], limit=2, reverse=True)
    check_keys(filled, ORDERED, limit=100)
    check_keys(filled, [], limit=0)


def test_scan_prefix_combined_with_start_and_stop(filled: PartitionStore) -> None:
    """start/stop are absolute keys intersected with the prefix range."""
    check_keys(filled, [b"abc", b"ab\xff"], prefix=b"ab", start=b"ab\x01")
    # Bounds wider than the prefix range do not widen it.
    check_keys(filled, [b"ab", b"abc", b"ab\xff"], prefix=b"ab", start=b"a", stop=b"z")
    check_keys(filled, [b"abc", b"ab"], prefix=b"ab", stop=b"ab\xff", reverse=True)
    check_keys(filled, [b"ab\xff"], prefix=b"ab", start=b"ab\x01", reverse=True, limit=1)
    # Bounds entirely outside the prefix range give nothing.
    check_keys(filled, [], prefix=b"ab", start=b"b")
    check_keys(filled, [], prefix=b"ab", stop=b"aa", reverse=True)


def test_scan_empty_range(filled: PartitionStore) -> None:
    """start >= stop, or an empty database, yields no rows."""
    check_keys(filled, [], start=b"b", stop=b"b")
    check_keys(filled, [], start=b"c", stop=b"a", reverse=True)
    check([], filled.scan("meta"))


def test_scan_negative_limit_is_rejected(store: PartitionStore) -> None:
    """A negative limit is a caller bug and raises ValueError."""
    with pytest.raises(ValueError, match="limit"):
        store.scan("meta", limit=-1)


def test_count(filled: PartitionStore) -> None:
    """count returns the number of keys, optionally restricted to a prefix."""
    expected = [len(ORDERED), 6, 2, 0, 0]
    check(
        expected,
        [
            filled.count("history"),
            filled.count("history", prefix=b"a"),
            filled.count("history", prefix=b"\xff"),
            filled.count("history", prefix=b"q"),
            filled.count("meta"),
        ],
    )


# -- delete_prefix --------------------------------------------------------------------------


def delete_prefix(store: PartitionStore, db: str, prefix: bytes) -> None:
    batch = WriteBatch()
    batch.delete_prefix(db, prefix)
    store.commit(batch)


def test_delete_prefix_leaves_neighbours(filled: PartitionStore) -> None:
    """delete_prefix removes exactly the keys starting with the prefix."""
    delete_prefix(filled, "history", b"ab")
    check_keys(filled, [b"\x00", b"a", b"a\x00", b"ac", b"b", b"\xff", b"\xff\xff"])


def test_delete_prefix_of_ff_bytes(filled: PartitionStore) -> None:
    """delete_prefix with a 0xff prefix removes the tail of the keyspace only."""
    delete_prefix(filled, "history", b"\xff")
    check_keys(filled, ORDERED[:-2])


def test_delete_prefix_matching_nothing(filled: PartitionStore) -> None:
    """delete_prefix with no matching key changes nothing."""
    delete_prefix(filled, "history", b"aa")
    check_keys(filled, ORDERED)


def test_delete_empty_prefix_clears_only_that_db(filled: PartitionStore) -> None:
    """delete_prefix(b"") empties one database, leaves the others, and the db stays usable."""
    put_all(filled, "meta", {b"k": b"v"})
    delete_prefix(filled, "history", b"")
    check_keys(filled, [])
    check([(b"k", b"v")], filled.scan("meta"))
    put_all(filled, "history", {b"again": b"x"})
    check([(b"again", b"x")], filled.scan("history"))


def test_databases_are_independent(store: PartitionStore) -> None:
    """The same key in different databases holds different values."""
    batch = WriteBatch()
    for i, db in enumerate(DATABASES):
        batch.put(db, b"k", b"%d" % i)
    batch.delete("meta", b"k")
    store.commit(batch)
    expected = [None] + [b"%d" % i for i in range(1, len(DATABASES))]
    check(expected, [store.get(db, b"k") for db in DATABASES])


# -- batches --------------------------------------------------------------------------------


def test_put_then_delete_in_one_batch(store: PartitionStore) -> None:
    """Ops apply in order: a delete after a put of the same key leaves it absent."""
    batch = WriteBatch()
    batch.put("inbox", b"k", b"v")
    batch.delete("inbox", b"k")
    store.commit(batch)
    check(None, store.get("inbox", b"k"))


def test_delete_then_put_in_one_batch(store: PartitionStore) -> None:
    """Ops apply in order: a put after a delete of the same key leaves it present."""
    put_all(store, "inbox", {b"k": b"old"})
    batch = WriteBatch()
    batch.delete("inbox", b"k")
    batch.put("inbox", b"k", b"new")
    store.commit(batch)
    check(b"new", store.get("inbox", b"k"))


def test_delete_prefix_between_puts_in_one_batch(filled: PartitionStore) -> None:
    """A put before a delete_prefix in the batch is erased by it; a put after survives."""
    batch = WriteBatch()
    batch.put("history", b"a1", b"before")
    batch.delete_prefix("history", b"a")
    batch.put("history", b"a2", b"after")
    filled.commit(batch)
    check([(b"a2", b"after")], filled.scan("history", prefix=b"a"))


def test_last_put_wins_in_one_batch(store: PartitionStore) -> None:
    """Two puts of one key in a batch leave the second value."""
    batch = WriteBatch()
    batch.put("meta", b"k", b"1")
    batch.put("meta", b"k", b"2")
    store.commit(batch)
    check(b"2", store.get("meta", b"k"))


def test_failing_batch_leaves_no_partial_writes(filled: PartitionStore) -> None:
    """An op failing mid-batch undoes the puts, deletes and delete_prefix applied before it."""
    put_all(filled, "meta", {b"keep": b"old"})
    expected = {db: filled.scan(db) for db in DATABASES}
    batch = WriteBatch()
    batch.put("meta", b"new", b"1")
    batch.put("meta", b"keep", b"overwritten")
    batch.delete("history", b"b")
    batch.delete_prefix("history", b"a")
    # Smuggle in an op the stores cannot apply. WriteBatch would refuse it, so the failure
    # happens inside commit, after the ops above were really applied (to the LMDB write
    # transaction, or in place to MemoryStore's dicts).
    batch._ops.append(("put", "no-such-db", b"k", b"v"))
    with pytest.raises(KeyError):
        filled.commit(batch)
    check(expected, {db: filled.scan(db) for db in DATABASES})


def test_unknown_op_kind_fails_atomically(store: PartitionStore) -> None:
    """An unknown op kind raises ValueError and nothing of its batch is written."""
    batch = WriteBatch()
    batch.put("meta", b"k", b"v")
    batch._ops.append(("truncate", "meta", b"k"))
    with pytest.raises(ValueError, match="unknown write op"):
        store.commit(batch)
    check([], store.scan("meta"))


def test_store_usable_after_failed_batch(store: PartitionStore) -> None:
    """A failed commit does not poison the store for later commits."""
    bad = WriteBatch()
    bad.put("meta", b"k", b"v")
    bad._ops.append(("put", "no-such-db", b"k", b"v"))
    with pytest.raises(KeyError):
        store.commit(bad)
    put_all(store, "meta", {b"k": b"good"})
    check([(b"k", b"good")], store.scan("meta"))


def test_empty_commit_is_a_noop(filled: PartitionStore) -> None:
    """Committing an empty batch changes nothing."""
    expected = filled.stats()
    filled.commit(WriteBatch())
    check(expected, filled.stats())


def test_write_batch_records_ops_in_order() -> None:
    """WriteBatch keeps its ops in order and reports its length and truthiness."""
    batch = WriteBatch()
    check((0, False), (len(batch), bool(batch)))
    batch.put("meta", b"k", b"v")
    batch.delete("meta", b"k")
    batch.delete_prefix("timers", b"")
    expected = (
        3,
        True,
        (("put", "meta", b"k", b"v"), ("delete", "meta", b"k"), ("delete_prefix", "timers", b"")),
    )
    check(expected, (len(batch), bool(batch), batch.ops))


def test_stats_count_entries_per_db(store: PartitionStore) -> None:
    """stats() reports the number of entries of every database."""
    put_all(store, "timers", {b"a": b"1", b"b": b"2"})
    expected = {db: 0 for db in DATABASES} | {"timers": 2}
    check(expected, store.stats()["entries"])


# -- validation and lifecycle ---------------------------------------------------------------

BAD_KEYS = [
    pytest.param(b"", ValueError, id="empty"),
    pytest.param(b"x" * (MAX_KEY_SIZE + 1), ValueError, id="too-long"),
    pytest.param("text", TypeError, id="str"),
    pytest.param(bytearray(b"k"), TypeError, id="bytearray"),
    pytest.param(None, TypeError, id="none"),
]


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
def test_bad_keys_are_rejected_at_put_delete_and_get(
    store: PartitionStore, key: Any, error: type[Exception]
) -> None:
    """Invalid keys fail when the op is queued or the key is read, never later."""
    batch = WriteBatch()
    with pytest.raises(error, match="key"):
        batch.put("meta", key, b"v")
    with pytest.raises(error, match="key"):
        batch.delete("meta", key)
    with pytest.raises(error, match="key"):
        store.get("meta", key)
    check(0, len(batch))


@pytest.mark.parametrize("value", ["text", bytearray(b"v"), memoryview(b"v"), None, 1])
def test_non_bytes_values_are_rejected_at_put(value: Any) -> None:
    """put refuses a non-bytes value immediately, not at commit."""
    batch = WriteBatch()
    with pytest.raises(TypeError, match="value must be bytes"):
        batch.put("meta", b"k", value)
    check(0, len(batch))


def test_unknown_database_is_rejected(store: PartitionStore) -> None:
    """Every entry point refuses a database name outside DATABASES."""
    batch = WriteBatch()
    for call in (
        lambda: batch.put("nope", b"k", b"v"),
        lambda: batch.delete("nope", b"k"),
        lambda: batch.delete_prefix("nope", b""),
        lambda: store.get("nope", b"k"),
        lambda: store.scan("nope"),
        lambda: store.count("nope"),
    ):
        with pytest.raises(ValueError, match="unknown database 'nope'"):
            call()


def test_bad_prefixes_and_bounds_are_rejected(store: PartitionStore) -> None:
    """Prefixes and scan bounds must be bytes of at most MAX_KEY_SIZE."""
    too_long = b"x" * (MAX_KEY_SIZE + 1)
    text: Any = "a"
    for call, error in (
        (lambda: store.scan("meta", prefix=text), TypeError),
        (lambda: store.scan("meta", start=text), TypeError),
        (lambda: store.scan("meta", stop=text), TypeError),
        (lambda: store.scan("meta", stop=too_long), ValueError),
        (lambda: store.count("meta", prefix=text), TypeError),
        (lambda: WriteBatch().delete_prefix("meta", text), TypeError),
        (lambda: WriteBatch().delete_prefix("meta", too_long), ValueError),
    ):
        with pytest.raises(error):
            call()


def test_closed_store_raises(store: PartitionStore) -> None:
    """Every call after close raises StoreClosedError; close itself is idempotent."""
    batch = WriteBatch()
    batch.put("meta", b"k", b"v")
    store.close()
    store.close()
    check(True, store.closed)
    for call in (
        lambda: store.get("meta", b"k"),
        lambda: store.scan("meta"),
        lambda: store.scan("meta", limit=0),
        lambda: store.count("meta"),
        lambda: store.commit(batch),
        lambda: store.commit(WriteBatch()),
        lambda: store.stats(),
    ):
        with pytest.raises(StoreClosedError):
            call()


def test_path_property(store: PartitionStore, tmp_path: Path) -> None:
    """path is the data directory for LMDB and None in memory; a new store is open."""
    expected = (None if isinstance(store, MemoryStore) else str(tmp_path / "p0"), False)
    check(expected, (store.path, store.closed))


# -- LMDB only ------------------------------------------------------------------------------


def test_lmdb_data_persists_across_reopen(tmp_path: Path) -> None:
    """Committed data is read back by a new LmdbStore on the same directory."""
    with LmdbStore(tmp_path / "p") as s:
        put_all(s, "history", {b"a": b"1", b"b": b"2"})
        put_all(s, "meta", {b"m": b"x"})
    with LmdbStore(tmp_path / "p") as s:
        check([(b"a", b"1"), (b"b", b"2")], s.scan("history"))
        check(b"x", s.get("meta", b"m"))


def test_lmdb_creates_missing_parent_directories(tmp_path: Path) -> None:
    """The data directory and its parents are created on open."""
    path = tmp_path / "a" / "b" / "partition-7"
    with LmdbStore(path) as s:
        put_all(s, "meta", {b"k": b"v"})
    check(True, (path / "data.mdb").is_file())


def test_lmdb_map_grows_automatically(tmp_path: Path) -> None:
    """Commits far larger than the initial map succeed by doubling the map size."""
    initial = 64 * 1024
    value = os.urandom(256 * 1024)
    with LmdbStore(tmp_path / "p", map_size=initial, sync=False) as s:
        # One 4 MiB batch (64x the map), then 4 MiB more in single-row batches.
        batch = WriteBatch()
        for i in range(16):
            batch.put("history", b"big-%03d" % i, value)
        s.commit(batch)
        for i in range(16, 32):
            put_all(s, "history", {b"big-%03d" % i: value})
        stats = s.stats()
        check(32, s.count("history"))
    check(True, 8 * 1024 * 1024 <= stats["used_bytes"] <= stats["map_size"])
    with LmdbStore(tmp_path / "p", map_size=initial) as s:
        check([value] * 32, [v for _, v in s.scan("history")])


def test_lmdb_full_at_max_map_size_writes_nothing(tmp_path: Path) -> None:
    """A batch that cannot fit within max_map_size raises StoreFullError and writes nothing."""
    with LmdbStore(tmp_path / "p", map_size=64 * 1024, max_map_size=256 * 1024) as s:
        put_all(s, "meta", {b"k": b"v"})
        batch = WriteBatch()
        batch.put("meta", b"small", b"x")
        batch.put("history", b"huge", os.urandom(1024 * 1024))
        with pytest.raises(StoreFullError):
            s.commit(batch)
        check(([(b"k", b"v")], []), (s.scan("meta"), s.scan("history")))
        put_all(s, "meta", {b"after": b"ok"})
        check(b"ok", s.get("meta", b"after"))


def test_lmdb_rejects_bad_map_sizes(tmp_path: Path) -> None:
    """map_size must be positive and not above max_map_size."""
    with pytest.raises(ValueError):
        LmdbStore(tmp_path / "p", map_size=2 << 20, max_map_size=1 << 20)
    with pytest.raises(ValueError):
        LmdbStore(tmp_path / "p", map_size=0)


def test_lmdb_second_open_in_same_process_is_refused(tmp_path: Path) -> None:
    """A second LmdbStore on an open directory raises HubConfigurationError naming our pid."""
    first = LmdbStore(tmp_path / "p")
    expected = f"already open by another process \\(pid {os.getpid()}\\)"
    with pytest.raises(HubConfigurationError, match=expected):
        LmdbStore(tmp_path / "p")
    put_all(first, "meta", {b"still": b"works"})
    first.close()
    with LmdbStore(tmp_path / "p") as again:
        check(b"works", again.get("meta", b"still"))


CHILD = textwrap.dedent(
    """
    import sys
    from duraray._errors import HubConfigurationError
    from duraray.runtime.engine.store import LmdbStore
    try:
        LmdbStore(sys.argv[1]).close()
    except HubConfigurationError as exc:
        print("refused:", exc)
        sys.exit(3)
    print("opened")
    """
)


def run_child(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lmdb_other_process_is_refused_until_close(tmp_path: Path) -> None:
    """Another process cannot open a held directory, and can once the holder closes it."""
    path = str(tmp_path / "p")
    holder = LmdbStore(path)
    refused = run_child(path)
    expected = (3, True)
    actual = (refused.returncode, f"another process (pid {os.getpid()})" in refused.stdout)
    assert expected == actual, refused.stdout + refused.stderr
    holder.close()
    opened = run_child(path)
    expected_opened = (0, "opened\n")
    assert expected_opened == (opened.returncode, opened.stdout), opened.stderr


def test_lmdb_sync_false_works(tmp_path: Path) -> None:
    """sync=False turns off both fsync flags and still commits and persists data."""
    with LmdbStore(tmp_path / "p", sync=False) as s:
        flags = s._env.flags()
        check((False, False, False), (flags["sync"], flags["metasync"], flags["writemap"]))
        put_all(s, "outbox", {b"k": b"v"})
        check(b"v", s.get("outbox", b"k"))
    with LmdbStore(tmp_path / "p") as s:
        flags = s._env.flags()
        check((True, True, False), (flags["sync"], flags["metasync"], flags["writemap"]))
        check(b"v", s.get("outbox", b"k"))


def test_lmdb_stats(tmp_path: Path) -> None:
    """stats() reports map size, used bytes and per-db entries."""
    with LmdbStore(tmp_path / "p", map_size=1 << 20) as s:
        put_all(s, "dedup", {b"k": b"v"})
        stats = s.stats()
    check(("lmdb", 1 << 20, 1), (stats["backend"], stats["map_size"], stats["entries"]["dedup"]))
    check(True, 0 < stats["used_bytes"] <= stats["map_size"])


# -- model-based check ----------------------------------------------------------------------

# A tiny alphabet makes keys and prefixes collide often; 0xff exercises prefix successors.
_piece = st.sampled_from([b"a", b"b", b"\x00", b"\xff"])
KEYS = st.lists(_piece, min_size=1, max_size=4).map(b"".join)
PREFIXES = st.lists(_piece, min_size=0, max_size=3).map(b"".join)
DBS = st.sampled_from(["history", "timers"])
OPS = st.one_of(
    st.tuples(st.just("put"), DBS, KEYS, st.binary(max_size=8)),
    st.tuples(st.just("delete"), DBS, KEYS),
    st.tuples(st.just("delete_prefix"), DBS, PREFIXES),
)


class StoreModel(RuleBasedStateMachine):
    """Drives MemoryStore and LmdbStore with the same batches and compares them to dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="duraray-store-")
        self.stores: list[PartitionStore] = [MemoryStore(), LmdbStore(self.dir, sync=False)]
        self.model: dict[str, dict[bytes, bytes]] = {"history": {}, "timers": {}}

    @rule(ops=st.lists(OPS, max_size=8))
    def commit(self, ops: list[tuple[Any, ...]]) -> None:
        batch = WriteBatch()
        for op in ops:
            getattr(batch, op[0])(*op[1:])
            data = self.model[op[1]]
            if op[0] == "put":
                data[op[2]] = op[3]
            elif op[0] == "delete":
                data.pop(op[2], None)
            else:
                for k in [k for k in data if k.startswith(op[2])]:
                    del data[k]
        for s in self.stores:
            s.commit(batch)

    @rule(
        db=DBS,
        prefix=PREFIXES,
        start=st.none() | KEYS,
        stop=st.none() | KEYS,
        reverse=st.booleans(),
        limit=st.none() | st.integers(0, 5),
    )
    def scan(
        self,
        db: str,
        prefix: bytes,
        start: bytes | None,
        stop: bytes | None,
        reverse: bool,
        limit: int | None,
    ) -> None:
        rows = sorted(
            (k, v)
            for k, v in self.model[db].items()
            if k.startswith(prefix) and (start is None or k >= start) and (stop is None or k < stop)
        )
        if reverse:
            rows.reverse()
        expected = rows[:limit] if limit is not None else rows
        for s in self.stores:
            actual = s.scan(db, prefix=prefix, start=start, stop=stop, reverse=reverse, limit=limit)
            assert expected == actual, type(s).__name__

    @rule(db=DBS, prefix=PREFIXES)
    def count(self, db: str, prefix: bytes) -> None:
        expected = sum(1 for k in self.model[db] if k.startswith(prefix))
        for s in self.stores:
            assert expected == s.count(db, prefix=prefix), type(s).__name__

    def teardown(self) -> None:
        for s in self.stores:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=50, deadline=None)
