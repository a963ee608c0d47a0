"""Replay executor: clocks, random sources and id generators called by orchestration code
on its first run are reported as a NonDeterminismWarning, once per call site, at the user's
line; replays, other threads and library code are not reported, and no value changes."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import os
import random
import secrets
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from time import monotonic as early_bound_monotonic
from typing import Any

import pytest
import structlog

from duraray import NonDeterminismWarning
from duraray.orchestrations import determinism
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions


def original(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function as a module that imported it by name before the wrappers saw it."""
    return getattr(fn, "__wrapped__", fn)


# What `from uuid import uuid4` & co. at the top of a module bind when they run before
# duraray installs its wrappers (only the profile hook sees their calls).
early_uuid4 = original(uuid.uuid4)
early_randint = original(random.randint)
early_random = original(random.random)
early_urandom = original(os.urandom)
early_token_hex = original(secrets.token_hex)
early_choice = original(secrets.choice)

WATCHED = ExecutorOptions(determinism_warnings=True, determinism_hook=True)
NO_HOOK = ExecutorOptions(determinism_warnings=True, determinism_hook=False)


@pytest.fixture(autouse=True)
def fresh_call_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no call site reported (the registry is per process)."""
    monkeypatch.setattr(determinism, "_reported", set())


class Caught:
    """The NonDeterminismWarnings recorded so far (a list view over the recorder)."""

    def __init__(self, records: list[warnings.WarningMessage]) -> None:
        self._records = records

    def _ours(self) -> list[warnings.WarningMessage]:
        return [r for r in self._records if issubclass(r.category, NonDeterminismWarning)]

    def __len__(self) -> int:
        return len(self._ours())

    def __iter__(self) -> Iterator[warnings.WarningMessage]:
        return iter(self._ours())

    def __getitem__(self, index: int) -> warnings.WarningMessage:
        return self._ours()[index]

    def __eq__(self, other: object) -> bool:
        return self._ours() == other

    def clear(self) -> None:
        self._records.clear()


@pytest.fixture
def caught() -> Iterator[Caught]:
    """Every NonDeterminismWarning emitted in the test, whatever the filters say."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield Caught(records)


def line_of(fn: Callable[..., Any], text: str) -> int:
    """The line number of the first line of ``fn`` that contains ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def run_once(kit, fn, options=WATCHED, *, events=()):
    """A live run of ``fn`` (no replay check) through its first episode and ``events``."""
    return kit.run(fn, kit.start(), *events, options=options, check_replay=False)


def clock_in_a_loop(ctx, _):
    stamps = []
    for _ in range(3):
        stamps.append(time.time())
        yield ctx.call_activity("noop")
    return len(stamps)


def test_a_call_site_is_reported_once_at_the_users_line(kit, caught):
    """A clock called three times from one line, by two instances, warns once, pointing at that line."""
    for instance in ("a", "b"):
        kit.run(
            clock_in_a_loop,
            kit.start(),
            *(kit.episode(i + 1, kit.done(i)) for i in range(3)),
            options=WATCHED,
            instance_id=instance,
        )
    assert 1 == len(caught)
    warning = caught[0]
    assert __file__ == warning.filename
    assert line_of(clock_in_a_loop, "time.time()") == warning.lineno
    message = str(warning.message)
    assert "orchestration 'orch' calls time.time() at test_executor_determinism.py:" in message
    assert "use ctx.current_utc_datetime" in message


CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("time.time()", lambda: time.time(), "ctx.current_utc_datetime"),
    ("time.time_ns()", lambda: time.time_ns(), "ctx.current_utc_datetime"),
    ("time.monotonic()", lambda: time.monotonic(), "ctx.current_utc_datetime"),
    ("time.monotonic_ns()", lambda: time.monotonic_ns(), "ctx.current_utc_datetime"),
    ("datetime.now()", lambda: datetime.now(UTC), "ctx.current_utc_datetime"),
    ("datetime.now()", lambda: dt.datetime.now(), "ctx.current_utc_datetime"),
    ("datetime.utcnow()", lambda: datetime.utcnow(), "ctx.current_utc_datetime"),
    ("datetime.today()", lambda: datetime.today(), "ctx.current_utc_datetime"),
    ("date.today()", lambda: date.today(), "ctx.current_utc_datetime"),
    ("time.monotonic()", lambda: early_bound_monotonic(), "ctx.current_utc_datetime"),
    ("uuid.uuid4()", lambda: early_uuid4(), "ctx.new_uuid()"),
    ("random.randint()", lambda: early_randint(1, 6), "in an activity"),
    ("random.random()", lambda: early_random(), "in an activity"),
    ("os.urandom()", lambda: early_urandom(4), "in an activity"),
    ("secrets.token_hex()", lambda: early_token_hex(4), "in an activity"),
    ("secrets.choice()", lambda: early_choice("abc"), "in an activity"),
    ("random.random()", lambda: random.random(), "in an activity"),
    ("random.randint()", lambda: random.randint(1, 6), "in an activity"),
    ("random.choice()", lambda: random.choice("abc"), "in an activity"),
    ("random.shuffle()", lambda: random.shuffle([1, 2, 3]), "in an activity"),
    ("uuid.uuid1()", lambda: uuid.uuid1(), "ctx.new_uuid()"),
    ("uuid.uuid4()", lambda: uuid.uuid4(), "ctx.new_uuid()"),
    ("os.urandom()", lambda: os.urandom(4), "in an activity"),
    ("secrets.token_hex()", lambda: secrets.token_hex(4), "in an activity"),
    ("secrets.randbelow()", lambda: secrets.randbelow(10), "in an activity"),
]


@pytest.mark.parametrize(("label", "call", "advice"), CALLS, ids=[c[0] for c in CALLS])
def test_every_watched_call_is_reported(kit, caught, label, call, advice):
    """Each clock, random source and id generator warns, naming itself and the replay-safe alternative."""

    def orch(ctx, _):
        call()
        yield ctx.call_activity("noop")

    run_once(kit, orch)
    assert [label] == [str(w.message).split(" calls ")[1].split(" at ")[0] for w in caught]
    assert advice in str(caught[0].message)
    assert __file__ == caught[0].filename


def test_a_plain_function_orchestrator_is_watched_too(kit, caught):
    """An orchestrator that is not a generator runs in the first episode and is watched."""

    def plain(ctx, _):
        return str(uuid.uuid4())

    run = run_once(kit, plain)
    assert 36 == len(run.output())
    assert [line_of(plain, "uuid4")] == [w.lineno for w in caught]


def test_replay_does_not_warn(kit, caught):
    """Replaying a history through code that calls a clock warns only when the code first ran."""

    def stamped(ctx, _):
        started = time.time()
        yield ctx.call_activity("noop")
        return started > 0

    history = run_once(kit, stamped).history
    assert 1 == len(caught)
    determinism._reported.clear()
    executor, _ = kit.replay(stamped, history, kit.episode(1, kit.done(0)), options=WATCHED)
    assert h.OrchestrationStatus.COMPLETED == executor.completion.status
    assert 1 == len(caught)


def test_values_are_the_real_functions_values(kit, caught):
    """A watched call returns what the unwatched function returns (same seeded generator, same values)."""

    def seeded(ctx, _):
        random.seed(7)
        values = [random.random(), random.randint(1, 1000), random.choice("abcdefgh")]
        yield ctx.call_activity("noop")
        return values

    random_state = random.getstate()
    try:
        run = run_once(kit, seeded, events=[kit.episode(1, kit.done(0))])
    finally:
        random.setstate(random_state)
    reference = random.Random(7)
    expected = [reference.random(), reference.randint(1, 1000), reference.choice("abcdefgh")]
    assert expected == run.output()
    assert 3 == len(caught)


def test_library_calls_are_not_reported(kit, caught):
    """Clocks read by duraray, the standard library's logging and structlog inside the code do not warn."""
    stdlib_logger = logging.getLogger("duraray.tests.determinism")
    stamp = structlog.processors.TimeStamper(fmt="iso")

    def logs(ctx, _):
        safe = ctx.create_replay_safe_logger(stdlib_logger)
        safe.warning("starting %s", ctx.instance_id)  # LogRecord reads time.time()
        stamp(None, "info", {})  # datetime.now() from structlog's own line
        key = ctx.new_uuid()
        now = ctx.current_utc_datetime
        yield ctx.call_activity("noop")
        return [str(key), now.isoformat()]

    run_once(kit, logs, events=[kit.episode(1, kit.done(0))])
    assert [] == caught


INSTALLED_HANDLER = """
import logging
import time


class StampingHandler(logging.Handler):
    def emit(self, record):
        self.stamp = time.time_ns()  # like Ray's handler, when Ray is imported
"""

INSTALLED_APP = """
import time


def installed_orch(ctx, _):
    started = time.time()
    yield ctx.call_activity("noop")
    return started
"""


def _install(tmp_path, monkeypatch, name: str, source: str) -> Any:
    """Import ``source`` as module ``name`` from a site-packages folder."""
    folder = tmp_path / "lib" / "site-packages"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return __import__(name)


def test_installed_libraries_are_not_reported(kit, caught, tmp_path, monkeypatch):
    """A log handler installed under site-packages reading the clock inside the code does not warn."""
    handler_module = _install(tmp_path, monkeypatch, "stamping_handler", INSTALLED_HANDLER)
    logger = logging.getLogger("duraray.tests.determinism.installed")
    handler = handler_module.StampingHandler()
    logger.addHandler(handler)
    try:

        def logs(ctx, _):
            logger.warning("inside the orchestrator")
            yield ctx.call_activity("noop")

        run_once(kit, logs)
    finally:
        logger.removeHandler(handler)
    assert handler.stamp > 0
    assert [] == caught


def test_an_installed_orchestration_is_still_watched(kit, caught, tmp_path, monkeypatch):
    """The file that defines an orchestration is the user's even when installed under site-packages."""
    app_module = _install(tmp_path, monkeypatch, "installed_app_sample", INSTALLED_APP)
    run_once(kit, app_module.installed_orch)
    assert [(app_module.__file__, 6)] == [(w.filename, w.lineno) for w in caught]


def test_a_seeded_generator_of_its_own_is_not_reported(kit, caught):
    """random.Random(seed) is deterministic: its methods share code with random.randint but do not warn."""

    def seeded(ctx, _):
        rng = random.Random(ctx.instance_id)
        values = [rng.randint(1, 6), rng.random(), rng.choice("abc")]
        yield ctx.call_activity("noop")
        return values

    run_once(kit, seeded)
    assert [] == caught


def test_other_threads_are_not_watched(kit, caught):
    """A clock read on another thread while the orchestrator runs does not warn."""
    seen: list[float] = []

    def reads_elsewhere(ctx, _):
        worker = threading.Thread(target=lambda: seen.append(time.time()))
        worker.start()
        worker.join()
        yield ctx.call_activity("noop")

    run_once(kit, reads_elsewhere)
    assert 1 == len(seen)
    assert [] == caught


def test_code_outside_the_orchestrator_is_not_watched(kit, caught):
    """Between episodes the executor's thread is not marked: a clock read there does not warn."""
    run = run_once(kit, clock_in_a_loop)
    caught.clear()
    time.time()
    datetime.now(UTC)
    assert [] == caught
    assert determinism._watch.orchestration is None
    assert None is sys.getprofile()
    assert run.executor.is_waiting


def test_off_by_default_in_the_executor(kit, caught):
    """An executor built without the option reports nothing."""
    run_once(kit, clock_in_a_loop, ExecutorOptions())
    assert [] == caught


def test_without_the_hook_only_module_functions_are_reported(kit, caught):
    """With the hook off (the Ray default), time.time() still warns and datetime.now() does not."""

    def both(ctx, _):
        datetime.now(UTC)
        time.time()
        yield ctx.call_activity("noop")

    run_once(kit, both, NO_HOOK)
    assert [line_of(both, "time.time()")] == [w.lineno for w in caught]


def test_a_profiler_already_on_the_thread_is_kept(kit, caught):
    """A thread with a profiler keeps it: the module functions are still reported, datetime is not."""
    events: list[str] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        events.append(event)

    def both(ctx, _):
        datetime.now(UTC)
        time.time()
        yield ctx.call_activity("noop")

    sys.setprofile(profiler)
    try:
        run_once(kit, both)
        still = sys.getprofile()
    finally:
        sys.setprofile(None)
    assert profiler is still
    assert events
    assert [line_of(both, "time.time()")] == [w.lineno for w in caught]


def test_an_error_filter_fails_the_orchestration(kit):
    """Under -W error::duraray.NonDeterminismWarning the call raises and the instance fails."""

    def stamped(ctx, _):
        time.time()
        yield ctx.call_activity("noop")

    with warnings.catch_warnings():
        warnings.simplefilter("error", NonDeterminismWarning)
        run = run_once(kit, stamped)
    assert h.OrchestrationStatus.FAILED == run.status
    assert run.failure.error_type.endswith("NonDeterminismWarning")
    assert "time.time()" in run.failure.message


def test_install_is_idempotent():
    """Installing twice wraps each function once, and the wrapper keeps the function's name."""
    determinism.install()
    wrapped = time.time
    determinism.install()
    assert wrapped is time.time
    assert "time" == time.time.__name__
    assert callable(time.time.__wrapped__)  # type: ignore[attr-defined]
    assert not hasattr(time.time.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]
