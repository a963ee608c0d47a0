"""A fuzz of the HTTP API, in process: thousands of odd requests, not one 5xx.

Hypothesis draws batches of requests over every route (all methods, odd ids: unicode,
percent-encodings valid and not, very long segments; query parameters such as
``createdTimeFrom=1960-01-01``, ``top=-1``, ``top=10**30``, ``runtimeStatus=garbage``;
bodies: random JSON, deeply nested JSON, huge integers, invalid UTF-8, wrong content
types; headers: Origin, Host, Authorization, continuation tokens). Each batch is sent
concurrently through ``httpx.ASGITransport`` (which also re-raises any exception the app
lets escape) to one of three apps over the same in-process
hub: ``create_app`` as tests use it, the app ``build_server`` makes on 127.0.0.1, and one
with a token. Every answer must be below 500 (except the 500 Durable Functions answers on
purpose, ``returnInternalServerErrorOnFailure=true`` on a failed instance); afterwards the
server must still answer ``/healthz`` and run an orchestration to completion.

``DURARAY_HTTP_FUZZ_REQUESTS`` sets the number of requests (default 10,000: 30-55 s on two
busy cores); the draw is the same every run unless ``DURARAY_HTTP_FUZZ_RANDOM=1``. A 5xx
fails the test with the request and the server-side traceback (logged by the API's
catch-all, captured here).
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anyio.from_thread
import httpx
import pytest
import structlog.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import duraray as dr
from duraray.runtime.http import build_server, create_app
from duraray.runtime.http.auth import TOKEN_ENV

#: How many requests the fuzz sends (about 10,000 fit in well under a minute on 2 cores).
REQUESTS = int(os.environ.get("DURARAY_HTTP_FUZZ_REQUESTS", "10000"))
#: Requests per hypothesis example (sent concurrently).
BATCH = 20
TIMEOUT = 30.0
TOKEN = "fuzz-token"

app = dr.App("http-fuzz")


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def boom(ctx: dr.OrchestrationContext, value=None):
    raise RuntimeError("boom")


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: Any) -> None:
        self.set_state(amount)


# -- the strategies ----------------------------------------------------------------------------

KNOWN_IDS = ["fz-run", "fz-done", "fz-failed", "fz-suspended"]
ORCHESTRATIONS = ["echo", "wait_go", "boom", "no_such_orchestration"]

odd_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "é",
            "日本語",
            "😀",
            "\u202e",
            "\x00",
            "\x7f",
            "a b",
            "@",
            "a@b",
            "%",
            "{eventName}",
            "null",
            "-1",
        ]
    ),
    st.integers(1, 20_000).map(lambda n: "x" * n),
)


def _raw_segment(text: str) -> str:
    """``text`` unquoted, but for what no URL may carry raw (controls) or would end the path."""
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or c in "\x7f/?#" else c for c in text)


#: A path segment as it goes into the URL: quoted, raw (httpx encodes what it must), or
#: with hand-made percent sequences, valid and not (%FF is not UTF-8, %zz not hex).
segment = st.one_of(
    st.sampled_from(KNOWN_IDS + ORCHESTRATIONS + ["Counter", "counter"]),
    odd_text.map(lambda s: quote(s, safe="")),
    odd_text.map(_raw_segment),
    st.lists(
        st.sampled_from(
            ["%FF", "%zz", "%", "%2F", "%00", "%C3%28", "%E2%82", "%25", "a", "%ED%A0%80"]
        ),
        min_size=1,
        max_size=6,
    ).map("".join),
)


METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE"]

PARAM_NAMES = [
    "instance_id",
    "instanceId",
    "showHistory",
    "showInput",
    "returnInternalServerErrorOnFailure",
    "reason",
    "recursive",
    "restartWithNewInstanceId",
    "runtimeStatus",
    "createdTimeFrom",
    "createdTimeTo",
    "instanceIdPrefix",
    "top",
    "name",
    "keyPrefix",
    "includeState",
    "op",
    "tag",
    "newestFirst",
    "all",
]
TIMES = [
    "1960-01-01",
    "1969-12-31T23:59:59",
    "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999",
    "2024-02-30",
    "2024-01-01T25:00",
    "2026-01-01T00:00:00+05:30",
    "yesterday",
]
NUMBERS = ["-1", "0", "1", "2", "1000", "1001", str(10**30), "1e3", "nan", "0x10", " 5"]
FLAGS = ["true", "false", "TRUE", "1", "0", "maybe"]

#: Values for parameters of each kind, then anything.
param_value = st.one_of(
    st.sampled_from(
        [
            "",
            *TIMES,
            *NUMBERS,
            *FLAGS,
            "Running,Completed",
            "garbage",
            "Pending,,",
            "running",
            "CONTINUED_AS_NEW",
            "add",
            "fz-run",
            "fz",
            "echo",
            "k:v",
            ":v",
            "Counter",
        ]
    ),
    odd_text,
)


def _params(names: list[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Query parameters, mostly the route's own (``names``), some of any route, some odd."""
    name = st.one_of(
        st.sampled_from(names or PARAM_NAMES),
        st.sampled_from(names or PARAM_NAMES),
        st.sampled_from(PARAM_NAMES),
        odd_text,
    )
    return st.lists(st.tuples(name, param_value), max_size=5)


def _route(
    method: str,
    template: str,
    count: int,
    names: list[str] | None = None,
) -> st.SearchStrategy[tuple[str, str, list[tuple[str, str]]]]:
    return st.tuples(
        st.just(method),
        st.lists(segment, min_size=count, max_size=count).map(
            lambda parts: template.format(*parts)
        ),
        _params(names or []),
    )


_LIST = ["runtimeStatus", "createdTimeFrom", "createdTimeTo", "instanceIdPrefix", "top"]

#: (method, path, query) over every route, with the method and parameters it takes.
routed = st.one_of(
    _route("POST", "/api/orchestrations/{}", 1, ["instance_id", "instanceId"]),
    _route("GET", "/api/instances", 0, [*_LIST, "showInput"]),
    _route("DELETE", "/api/instances", 0, ["createdTimeFrom", "createdTimeTo", "runtimeStatus"]),
    _route("GET", "/api/instance-counts", 0, [*_LIST, "name", "tag", "newestFirst"]),
    _route("POST", "/api/instances/terminate", 0, [*_LIST, "name", "tag", "all", "reason"]),
    _route("POST", "/api/instances/purge", 0, [*_LIST, "name", "tag", "all"]),
    _route(
        "GET",
        "/api/instances/{}",
        1,
        ["showHistory", "showInput", "returnInternalServerErrorOnFailure"],
    ),
    _route("DELETE", "/api/instances/{}", 1),
    _route("POST", "/api/instances/{}/raiseEvent/{}", 2),
    _route("POST", "/api/instances/raiseEvents", 0),
    _route("POST", "/api/instances/{}/terminate", 1, ["reason", "recursive"]),
    _route("POST", "/api/instances/{}/suspend", 1, ["reason"]),
    _route("POST", "/api/instances/{}/resume", 1, ["reason"]),
    _route("POST", "/api/instances/{}/rewind", 1, ["reason"]),
    _route("POST", "/api/instances/{}/restart", 1, ["restartWithNewInstanceId"]),
    _route("GET", "/api/entities", 0, ["name", "keyPrefix", "top", "includeState"]),
    _route("POST", "/api/entities/{}/{}", 2, ["op", "op"]),
    _route("GET", "/api/entities/{}/{}", 2),
    st.tuples(
        st.just("GET"),
        st.sampled_from(
            ["/api/partitions", "/metrics", "/healthz", "/", "/static/app.js", "/static/../x"]
        ),
        _params([]),
    ),
)
#: Mostly routed requests; some with another method, some to paths no route has.
method_and_path = st.one_of(
    routed,
    routed,
    routed,
    st.tuples(st.sampled_from(METHODS), routed).map(lambda pair: (pair[0], *pair[1][1:])),
    st.tuples(
        st.sampled_from(METHODS),
        st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/x/" + "/".join(parts)),
        _params([]),
    ),
)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**63 - 2, max_value=2**70),
        st.integers(min_value=-(2**70), max_value=-(2**63) + 2),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth  # unterminated


#: Bodies shaped like raiseEvents' list of events, with odd values in every field.
event_lists = st.lists(
    st.fixed_dictionaries(
        {"instanceId": st.one_of(st.text(max_size=30), json_values), "name": st.text(max_size=30)},
        optional={"data": json_values},
    ),
    max_size=4,
)

bodies = st.one_of(
    st.none(),
    st.just(b""),
    st.just(b"   "),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_lists.map(lambda v: json.dumps(v).encode()),
    st.builds(_deep, st.integers(1, 200_000), st.sampled_from(["list", "dict", "open"])),
    st.integers(1, 6000).map(lambda n: b"9" * n),
    st.integers(1, 400).map(lambda n: ("1" + "0" * n).encode()),
    st.sampled_from(
        [
            b"NaN",
            b"[Infinity]",
            b"-0",
            b"1e400",
            b"1e-400",
            b'"\\ud800"',
            b'"\\u0000"',
            b'{"a":1,"a":2}',
            b"\xff\xfe\x00",
            b'"\xc3\x28"',
            b"\xef\xbb\xbf{}",
            b"null",
            b"{",
            b'"' + b"x" * 2_000_000 + b'"',
        ]
    ),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
)

content_types = st.one_of(
    st.just("application/json"),
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/vnd.x+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/json; charset",
            ";;;",
            "",
            "application/",
            "/json",
        ]
    ),
)

header_extras = st.one_of(
    st.just({}),
    st.just({}),
    st.dictionaries(
        st.sampled_from(
            [
                "x-ms-continuation-token",
                "Origin",
                "Host",
                "Authorization",
                "Content-Length",
                "X-Junk",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    "!!",
                    "AAAA",
                    "Zm9v",
                    "SQAAAAAAAAAAAGE=",
                    "null",
                    "http://testserver",
                    "http://127.0.0.1:8000",
                    "http://evil.example",
                    "evil.example:8000",
                    "127.0.0.1:8000",
                    "localhost",
                    "[::1]:8000",
                    "a b",
                    "[::1",
                    "Bearer fuzz-token",
                    "bearer fuzz-token",
                    "Basic x",
                    "-1",
                    "0",
                    "abc",
                    "99999999999999999999",
                ]
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        ),
        max_size=2,
    ),
)

requests = st.fixed_dictionaries(
    {
        "app": st.sampled_from(["plain", "loopback", "token"]),
        "route": method_and_path,
        "body": bodies,
        "content_type": content_types,
        "headers": header_extras,
    }
)


# -- sending -----------------------------------------------------------------------------------


class Fuzzer:
    """Sends batches of drawn requests to the three apps; records every 5xx."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, apps: dict[str, Any]) -> None:
        self.portal = portal
        self.clients = {
            name: portal.call(
                lambda a=a, base=base: _async_client(a, base)  # type: ignore[misc]
            )
            for name, (a, base) in apps.items()
        }
        self.sent = 0
        self.unsendable = 0
        self.by_status: dict[int, int] = {}
        self.failures: list[str] = []

    def send_batch(self, batch: list[dict[str, Any]]) -> None:
        self.portal.call(self._send_all, batch)

    async def _send_all(self, batch: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self._send(r) for r in batch))

    async def _send(self, r: dict[str, Any]) -> None:
        headers = dict(r["headers"])
        if r["app"] == "token" and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {TOKEN}"
        if r["content_type"] is not None:
            headers["Content-Type"] = r["content_type"]
        if r["body"] is not None:
            headers.pop("Content-Length", None)  # httpx sets the true length
        described = (
            f"{r['route'][0]} {_clip(r['route'][1])} params={_clip(repr(r['route'][2]))} "
            f"headers={_clip(repr(headers))} body={_short(r['body'])} app={r['app']}"
        )
        client = self.clients[r["app"]]
        try:
            request = client.build_request(
                r["route"][0],
                r["route"][1],
                params=r["route"][2],
                content=r["body"],
                headers=headers,
            )
        except (httpx.InvalidURL, UnicodeEncodeError, ValueError, TypeError):
            self.unsendable += 1  # not a request httpx can send: nothing reached the server
            return
        self.sent += 1
        try:
            response = await client.send(request)
        except Exception:  # the app let an exception escape (after the response started)
            self.failures.append(f"{described}\n{traceback.format_exc()}")
            return
        self.by_status[response.status_code] = self.by_status.get(response.status_code, 0) + 1
        if response.status_code >= 500 and not _deliberate_500(response):
            self.failures.append(f"{described}\n-> {response.status_code} {response.text[:500]}")

    def close(self) -> None:
        for client in self.clients.values():
            self.portal.call(client.aclose)


def _as_uvicorn(asgi_app: Any) -> Any:
    """``asgi_app`` with an ``int`` server port, as uvicorn gives (httpx passes None for 80)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server")
        if server is not None and server[1] is None:
            scope = {**scope, "server": (server[0], 80)}
        await asgi_app(scope, receive, send)

    return wrapped


def _async_client(asgi_app: Any, base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_as_uvicorn(asgi_app), raise_app_exceptions=True),
        base_url=base_url,
        timeout=TIMEOUT,
    )


def _deliberate_500(response: httpx.Response) -> bool:
    # GET /api/instances/{id}?returnInternalServerErrorOnFailure=true on a failed instance.
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("runtimeStatus") in ("Failed", "Terminated")


def _clip(text: str) -> str:
    return text if len(text) <= 300 else f"{text[:300]}...({len(text)} chars)"


def _short(body: bytes | None) -> str:
    if body is None:
        return "None"
    return repr(body[:80]) + (f"...({len(body)} bytes)" if len(body) > 80 else "")


@pytest.fixture
def fuzz_apps(monkeypatch) -> Iterator[tuple[dr.Client, dict[str, Any]]]:
    """An in-process hub with a few instances in each state, and the three apps over it."""
    from duraray.testing import ManualClock, run_in_process

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        client.schedule_new_orchestration(wait_go, instance_id="fz-run")
        client.schedule_new_orchestration(wait_go, instance_id="fz-suspended")
        client.schedule_new_orchestration(echo, input=1, instance_id="fz-done")
        client.schedule_new_orchestration(boom, instance_id="fz-failed")
        client.wait_for_orchestration_start("fz-suspended", timeout=TIMEOUT)
        client.suspend_orchestration("fz-suspended")
        for done in ("fz-done", "fz-failed"):
            client.wait_for_orchestration_completion(done, timeout=TIMEOUT)
        client.signal_entity(dr.EntityId("Counter", "k"), "add", 1)
        loopback = build_server(client, host="127.0.0.1", port=0, allowed_hosts=["hub.lan"])
        apps = {
            "plain": (create_app(client), "http://testserver"),
            "loopback": (loopback.config.app, "http://127.0.0.1:8000"),
            "token": (create_app(client, token=TOKEN), "http://testserver"),
        }
        yield client, apps


@pytest.mark.slow
@pytest.mark.timeout(max(180, REQUESTS // 50))  # 10,000 requests: ~30-55 s on two cores
def test_fuzzed_requests_never_answer_5xx(fuzz_apps):
    """REQUESTS fuzzed requests: no 5xx, and the server is healthy afterwards."""
    client, apps = fuzz_apps
    examples = max(1, REQUESTS // BATCH)
    with anyio.from_thread.start_blocking_portal() as portal:
        fuzzer = Fuzzer(portal, apps)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=not os.environ.get("DURARAY_HTTP_FUZZ_RANDOM"),
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(requests, min_size=BATCH, max_size=BATCH))
        def fuzz(batch: list[dict[str, Any]]) -> None:
            fuzzer.send_batch(batch)

        try:
            with structlog.testing.capture_logs() as logs:
                fuzz()
            tracebacks = {
                "".join(traceback.format_exception(entry["exc_info"]))
                for entry in logs
                if entry.get("exc_info") is not None
            }
            print(
                f"\nfuzz: {fuzzer.sent} requests sent ({fuzzer.unsendable} drawn but not "
                f"sendable), answers by status: {sorted(fuzzer.by_status.items())}"
            )
            unique = {f.splitlines()[-1]: f for f in fuzzer.failures}
            assert not fuzzer.failures, (
                f"{len(fuzzer.failures)} of {fuzzer.sent} requests answered 5xx "
                f"({len(unique)} distinct):\n\n"
                + "\n\n".join(unique.values())
                + "\n\nserver-side tracebacks:\n\n"
                + "\n\n".join(sorted(tracebacks))
            )
            assert fuzzer.sent >= 0.9 * REQUESTS

            # Still healthy: the probe answers and a normal start runs to completion.
            plain = fuzzer.clients["plain"]
            health = portal.call(plain.get, "/healthz")
            started = portal.call(
                lambda: plain.post(
                    "/api/orchestrations/echo",
                    json={"after": "fuzz"},
                    params={"instanceId": "fz-ok"},
                )
            )
            state = client.wait_for_orchestration_completion("fz-ok", timeout=TIMEOUT)
            status = portal.call(plain.get, "/api/instances/fz-ok")
            expected = (200, 202, dr.OrchestrationStatus.COMPLETED, 200, {"after": "fuzz"})
            assert expected == (
                health.status_code,
                started.status_code,
                state.runtime_status,
                status.status_code,
                status.json()["output"],
            )
            # No request made a batch raise: no partition was rebuilt, nothing parked.
            for part in client.partition_stats():
                assert 0 == part["counters"].get("rebuilds", 0), part
                assert 0 == part.get("parked", 0), part
        finally:
            fuzzer.close()
