"""The static check of orchestration functions (``duraray check``): non-deterministic and
blocking calls found through the imports of the function's module, nothing run, no Ray.

The sample orchestrations below mark each line the check must report with a trailing
``# expect: <call>`` comment; the tests compare the findings with those marks.
"""

from __future__ import annotations

import datetime
import datetime as dt
import os
import random
import re
import secrets
import socket
import subprocess
import time
import urllib.request
import uuid
from datetime import date
from datetime import datetime as DateTime
from pathlib import Path
from random import randint as roll
from time import monotonic
from time import time as wall

from duraray.orchestrations import determinism
from duraray.runtime.static_check import (
    BLOCKING,
    Finding,
    check_function,
    check_orchestrations,
)

try:
    import requests
except ImportError:  # the check reads the import; the module need not be installed
    requests = None


def clocks(ctx, _):
    a = time.time()  # expect: time.time()
    b = time.monotonic_ns()  # expect: time.monotonic_ns()
    c = wall()  # expect: time.time()
    d = monotonic()  # expect: time.monotonic()
    e = datetime.datetime.now()  # expect: datetime.now()
    f = dt.datetime.utcnow()  # expect: datetime.utcnow()
    g = DateTime.today()  # expect: datetime.today()
    h = date.today()  # expect: date.today()
    yield ctx.call_activity("noop")
    return [a, b, c, d, e, f, g, h]


def randomness(ctx, _):
    values = [
        random.random(),  # expect: random.random()
        roll(1, 6),  # expect: random.randint()
        uuid.uuid4(),  # expect: uuid.uuid4()
        uuid.uuid1(),  # expect: uuid.uuid1()
        os.urandom(8),  # expect: os.urandom()
        secrets.token_hex(8),  # expect: secrets.token_hex()
        random.Random(7).random(),  # a seeded generator of its own: deterministic
        uuid.uuid5(uuid.NAMESPACE_URL, "x"),  # deterministic
    ]
    yield ctx.call_activity("noop")
    return values


def blocking(ctx, url):
    time.sleep(1)  # expect: time.sleep()
    requests.get(url)  # expect: requests.get()
    urllib.request.urlopen(url)  # expect: urllib.request.urlopen()
    socket.create_connection(("example.com", 80))  # expect: socket.create_connection()
    subprocess.run(["true"])  # expect: subprocess.run()
    with open(url) as fh:  # expect: open()
        fh.read()
    yield ctx.call_activity("noop")


def local_imports_and_helpers(ctx, _):
    import time as clock
    from uuid import uuid4 as new_id

    def helper():
        return clock.perf_counter(), new_id()  # expect: uuid.uuid4()

    yield ctx.call_activity("noop", input=clock.monotonic())  # expect: time.monotonic()
    return helper()


def deterministic(ctx, time, open=None):
    # `time` and `open` are parameters here, not the module and the builtin.
    now = ctx.current_utc_datetime
    key = ctx.new_uuid()
    time.time()
    open("x")
    rng = random.Random(ctx.instance_id)
    yield ctx.call_activity("noop", input=[now, str(key), rng.random()])


SAMPLES = {
    "clocks": clocks,
    "randomness": randomness,
    "blocking": blocking,
    "local_imports_and_helpers": local_imports_and_helpers,
    "deterministic": deterministic,
}


def expected_marks() -> list[tuple[int, str]]:
    """(line, call) of every ``# expect:`` mark in this file's samples."""
    text = Path(__file__).read_text().splitlines()
    marks = []
    for number, line in enumerate(text, start=1):
        mark = re.search(r"  # expect: ([\w.]+\(\))$", line)
        if mark:
            marks.append((number, mark.group(1)))
    return marks


def test_every_marked_call_is_found_and_nothing_else():
    """Each marked line is reported with its call, through every import form; the rest is not."""
    findings = check_orchestrations(SAMPLES)
    assert expected_marks() == [(f.line, f.call) for f in findings]
    assert {__file__} == {f.file for f in findings}


def test_findings_say_what_to_do_instead():
    """A clock points at ctx.current_utc_datetime, an id at ctx.new_uuid(), a sleep at a timer."""
    advice = {f.call: f.advice for f in check_orchestrations(SAMPLES)}
    assert "use ctx.current_utc_datetime" == advice["datetime.now()"]
    assert "use ctx.new_uuid()" == advice["uuid.uuid4()"]
    assert "do it in an activity" == advice["random.randint()"]
    assert "use ctx.create_timer()" == advice["time.sleep()"]
    assert "do it in an activity" == advice["subprocess.run()"]


def test_kinds():
    """Clocks and random sources are non-deterministic; sleeps and I/O are blocking."""
    kinds = {f.call: f.kind for f in check_orchestrations(SAMPLES)}
    assert "non-deterministic" == kinds["time.time()"]
    assert "blocking" == kinds["time.sleep()"]
    assert "blocking" == kinds["open()"]


def test_the_line_format():
    """A finding prints as file:line: orchestration 'name': call ... ; advice."""
    finding = Finding("shop.py", 12, "checkout", "non-deterministic", "time.time()", "use X")
    assert "shop.py:12: orchestration 'checkout': time.time() is not deterministic; use X" == str(
        finding
    )
    blocking_one = Finding("shop.py", 3, "checkout", "blocking", "time.sleep()", "use Y")
    assert "shop.py:3: orchestration 'checkout': time.sleep() blocks the partition; use Y" == str(
        blocking_one
    )
    assert {
        "file": "shop.py",
        "line": 12,
        "orchestration": "checkout",
        "kind": "non-deterministic",
        "call": "time.time()",
        "advice": "use X",
    } == finding.to_json()


def test_the_registered_name_is_reported():
    """Findings name the orchestration by the name it is registered under."""
    findings = check_function("checkout-v2", clocks)
    assert {"checkout-v2"} == {f.orchestration for f in findings}


def test_a_function_without_source_is_reported_unchecked():
    """A function whose source cannot be read is listed as not checked, not silently passed."""
    namespace: dict[str, object] = {}
    exec("def made(ctx):\n    return time.time()\n", namespace)
    (finding,) = check_function("made", namespace["made"])  # type: ignore[arg-type]
    assert "unchecked" == finding.kind
    assert "<string>" == finding.file
    assert "not checked: its source is not available" in str(finding)


def test_the_check_and_the_warnings_share_one_list():
    """Every call the run-time warnings watch is one the static check finds, and vice versa."""
    assert set(determinism.NON_DETERMINISTIC) >= {
        "time.time",
        "datetime.datetime.now",
        "random.randint",
        "uuid.uuid4",
        "os.urandom",
        "secrets.token_hex",
    }
    assert not set(determinism.NON_DETERMINISTIC) & set(BLOCKING)
