"""Which requests the HTTP API refuses before doing anything: cross-site requests (403),
bodies that are not declared JSON (415), bearer tokens in any scheme casing, and
continuation tokens the server did not issue (400)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import duraray as dr
from duraray.runtime.http import build_server, create_app
from duraray.runtime.http.auth import TOKEN_ENV, split_host

#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 10.0
#: The header a request with a JSON body declares.
JSON = {"Content-Type": "application/json"}
#: What a browser on a foreign page sends with a "simple" cross-site POST.
EVIL = {"Origin": "http://evil.example", "Content-Type": "text/plain"}

app = dr.App("http-request-rules")


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)


@pytest.fixture
def loopback(client, make_http, monkeypatch):
    """``make(base_url, **build_server options)``: the API as ``serve`` builds it on 127.0.0.1."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    def make(base_url: str = "http://127.0.0.1:8000", **options):
        server = build_server(client, host="127.0.0.1", port=0, **options)
        return make_http(server.config.app, base_url=base_url)

    return make


def _status(client, instance_id: str) -> dr.OrchestrationStatus:
    state = client.get_orchestration_state(instance_id)
    assert state is not None
    return state.runtime_status


# -- cross-site requests ---------------------------------------------------------------------


def test_a_foreign_page_cannot_terminate_an_instance_on_a_loopback_hub(client, loopback):
    """The issue's request (text/plain, foreign Origin and Host) is refused; nothing happens."""
    client.schedule_new_orchestration(wait_go, instance_id="victim")
    client.wait_for_orchestration_start("victim", timeout=TIMEOUT)
    http = loopback()
    response = http.post(
        "/api/instances/victim/terminate",
        content=b"pwned",
        headers={**EVIL, "Host": "evil.example:8000"},
    )
    expected = (403, dr.OrchestrationStatus.RUNNING)
    assert expected == (response.status_code, _status(client, "victim"))
    assert "refused" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/orchestrations/echo"),
        ("POST", "/api/instances/victim/terminate"),
        ("POST", "/api/instances/victim/raiseEvent/go"),
        ("POST", "/api/instances/raiseEvents"),
        ("DELETE", "/api/instances/victim"),
        ("DELETE", "/api/instances?createdTimeFrom=2000-01-01"),
        ("POST", "/api/instances/terminate?all=true"),
        ("POST", "/api/instances/purge?all=true"),
        ("POST", "/api/entities/counter/k?op=add"),
        ("GET", "/api/instances/victim"),
        ("GET", "/api/instances"),
        ("GET", "/healthz"),
    ],
)
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
def test_a_foreign_origin_is_refused_on_every_route(client, http, method, path, origin):
    """Any Origin but the server's own (also 'null' and another local port) answers 403 JSON."""
    client.schedule_new_orchestration(wait_go, instance_id="victim")
    response = http.request(
        method, path, content=b"1", headers={"Origin": origin, "Content-Type": "text/plain"}
    )
    expected = 403
    assert expected == response.status_code
    assert response.headers["content-type"] == "application/json"
    assert "Origin" in response.json()["error"]
    expected_status = dr.OrchestrationStatus.RUNNING
    client.wait_for_orchestration_start("victim", timeout=TIMEOUT)
    assert expected_status == _status(client, "victim")


def test_requests_without_origin_or_from_the_same_origin_work(http, client):
    """curl (no Origin) and the dashboard (its own origin) are served as before."""
    plain = http.post("/api/orchestrations/echo", json=1, params={"instance_id": "curl"})
    same = http.post(
        "/api/orchestrations/echo",
        json=2,
        params={"instance_id": "page"},
        headers={"Origin": "http://testserver"},
    )
    listed = http.get("/api/instances", headers={"Origin": "http://TESTSERVER:80"})
    expected = (202, 202, 200)
    assert expected == (plain.status_code, same.status_code, listed.status_code)


def test_without_bind_information_the_host_is_not_checked(http):
    """create_app without bind_host (in process, mounted elsewhere) accepts any Host."""
    response = http.get("/api/instances", headers={"Host": "anything.example"})
    expected = 200
    assert expected == response.status_code


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.9.9.9"]
)
def test_a_loopback_hub_answers_loopback_names(loopback, host):
    """Host names of the loopback interface are accepted on a loopback bind."""
    response = loopback().get("/api/instances", headers={"Host": host})
    expected = 200
    assert expected == response.status_code


@pytest.mark.parametrize(
    "host", ["evil.example:8000", "evil.example", "0.0.0.0:8000", "127.0.0.1.evil.example"]
)
def test_a_loopback_hub_refuses_other_host_names(loopback, host):
    """DNS rebinding: a page of another name re-pointed at 127.0.0.1 reads nothing (403)."""
    http = loopback()
    responses = [
        http.get("/api/instances", headers={"Host": host}),
        http.get("/api/partitions", headers={"Host": host}),
        http.get("/", headers={"Host": host}),
    ]
    expected = [403, 403, 403]
    assert expected == [r.status_code for r in responses]
    assert "allowed_hosts" in responses[0].json()["error"]


def test_allowed_hosts_extend_the_loopback_names(loopback):
    """allowed_hosts names (any port, or the port given) are accepted too."""
    http = loopback(allowed_hosts=["myhost.lan", "other.lan:9000"])
    codes = [
        http.get("/api/instances", headers={"Host": host}).status_code
        for host in ("myhost.lan:8000", "MyHost.lan", "other.lan:9000", "other.lan:9001")
    ]
    expected = [200, 200, 200, 403]
    assert expected == codes


def test_a_star_in_allowed_hosts_turns_the_host_check_off(loopback):
    """allowed_hosts=["*"] accepts any Host; the Origin check stays."""
    http = loopback(allowed_hosts=["*"])
    codes = [
        http.get("/api/instances", headers={"Host": "anything.example"}).status_code,
        http.get(
            "/api/instances", headers={"Host": "a.example", "Origin": "http://b.example"}
        ).status_code,
    ]
    expected = [200, 403]
    assert expected == codes


def test_a_same_origin_page_on_an_allowed_host_works(loopback):
    """The dashboard opened at an allowed name is same-origin with itself."""
    http = loopback(base_url="http://myhost.lan:8000", allowed_hosts=["myhost.lan"])
    response = http.post(
        "/api/orchestrations/echo", json=1, headers={"Origin": "http://myhost.lan:8000"}
    )
    expected = 202
    assert expected == response.status_code


def test_a_base_url_names_an_accepted_origin_and_host(client, make_http, monkeypatch):
    """Behind a TLS proxy: the base_url's origin and host are the server's own."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = build_server(client, host="127.0.0.1", port=0, base_url="https://hub.example.com")
    http = make_http(server.config.app, base_url="http://hub.example.com")
    ok = http.post(
        "/api/orchestrations/echo", json=1, headers={"Origin": "https://hub.example.com"}
    )
    foreign = http.post(
        "/api/orchestrations/echo", json=1, headers={"Origin": "https://evil.example"}
    )
    expected = (202, 403)
    assert expected == (ok.status_code, foreign.status_code)


def test_off_loopback_the_host_is_free_but_the_origin_is_checked(client, make_http, monkeypatch):
    """On 0.0.0.0 (token required) any Host is served; a foreign Origin is still 403."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = build_server(client, host="0.0.0.0", port=0, token="s3cret")
    http = make_http(server.config.app, base_url="http://10.1.2.3:8000")
    auth = {"Authorization": "Bearer s3cret"}
    codes = [
        http.get("/api/instances", headers=auth).status_code,
        http.get("/api/instances", headers={**auth, "Host": "hub.corp"}).status_code,
        http.get("/api/instances", headers={**auth, "Origin": "http://evil.example"}).status_code,
    ]
    expected = [200, 200, 403]
    assert expected == codes


def test_a_malformed_host_with_an_origin_is_400(http):
    """A Host header that is not a host cannot be compared with the Origin: 400."""
    response = http.get("/api/instances", headers={"Host": "a b", "Origin": "http://a b"})
    expected = 400
    assert expected == response.status_code


def test_allowed_hosts_are_checked_when_the_app_is_built(client):
    """A bare string or a URL in allowed_hosts is a mistake, reported at once."""
    with pytest.raises(TypeError, match="not one string"):
        create_app(client, allowed_hosts="myhost.lan")
    with pytest.raises(ValueError, match="without a scheme"):
        create_app(client, allowed_hosts=["http://myhost.lan"])


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("LocalHost:8000", ("localhost", 8000)),
        ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("myhost.lan", ("myhost.lan", None)),
        ("myhost.lan:", ("myhost.lan", None)),
    ],
)
def test_split_host(text, parsed):
    """Host headers and allowed names split into (name, port)."""
    assert parsed == split_host(text)


@pytest.mark.parametrize("text", ["", "a b", "h:0", "h:99999", "h:x", "[::1", "http://h", "u@h"])
def test_split_host_refuses_what_is_not_a_host(text):
    """Empty names, spaces, bad ports, URLs and user info are not hosts."""
    with pytest.raises(ValueError):
        split_host(text)


# -- content types ---------------------------------------------------------------------------

BODY_ROUTES = [
    ("/api/orchestrations/echo", b"1"),
    ("/api/instances/ct/raiseEvent/go", b"1"),
    ("/api/instances/raiseEvents", b'[{"instanceId": "ct", "name": "go"}]'),
    ("/api/instances/ct/terminate", b'"why"'),
    ("/api/instances/ct/suspend", b'"why"'),
    ("/api/instances/ct/resume", b'"why"'),
    ("/api/instances/ct/rewind", b'"why"'),
    ("/api/instances/ct/restart", b"{}"),
    ("/api/entities/counter/k?op=add", b"1"),
]


@pytest.mark.parametrize(("path", "body"), BODY_ROUTES)
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "text/json",
        "json",
    ],
)
def test_a_body_not_declared_json_is_415(client, http, path, body, content_type):
    """Every route that reads a body refuses one that is not declared JSON; nothing happens."""
    client.schedule_new_orchestration(wait_go, instance_id="ct")
    client.wait_for_orchestration_start("ct", timeout=TIMEOUT)
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = http.post(path, content=body, headers=headers)
    expected = 415
    assert expected == response.status_code
    assert "application/json" in response.json()["error"]
    expected_status = dr.OrchestrationStatus.RUNNING
    assert expected_status == _status(client, "ct")
    listed = client.get_all_instances()
    assert ["ct"] == [s.instance_id for s in listed]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
        "application/vnd.duraray+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
def test_json_content_types_are_accepted(client, http, content_type):
    """application/json (with a UTF-8 charset or none) and application/*+json are JSON."""
    response = http.post(
        "/api/orchestrations/echo",
        content=b'{"a": 1}',
        params={"instance_id": "typed"},
        headers={"Content-Type": content_type},
    )
    expected = (202, {"a": 1})
    state = client.wait_for_orchestration_completion("typed", timeout=TIMEOUT)
    assert expected == (response.status_code, state.output)


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
def test_a_body_less_post_needs_no_content_type(client, http, headers):
    """No body (or Content-Length: 0) needs no JSON content type."""
    response = http.post(
        "/api/orchestrations/echo", params={"instance_id": "empty"}, headers=headers
    )
    expected = (202, None)
    state = client.wait_for_orchestration_completion("empty", timeout=TIMEOUT)
    assert expected == (response.status_code, state.output)


def test_a_declared_json_body_that_does_not_parse_is_400(http):
    """Declared JSON but malformed, nested too deeply or past float range (1e400) is 400."""
    bad = http.post("/api/orchestrations/echo", content=b"{oops", headers=JSON)
    deep = http.post("/api/orchestrations/echo", content=b"[" * 100_000, headers=JSON)
    huge = http.post("/api/orchestrations/echo", content=b"[1, -1e400]", headers=JSON)
    expected = (400, 400, 400)
    assert expected == (bad.status_code, deep.status_code, huge.status_code)
    assert "out of range" in huge.json()["error"]


# -- bearer tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("BeArEr   s3cret", 200),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
        ("Bearer s3cretX", 401),
        ("Bearer", 401),
        ("s3cret", 401),
    ],
)
def test_the_bearer_scheme_is_case_insensitive(client, make_http, authorization, status):
    """RFC 7235: the auth scheme matches in any casing; the token itself exactly."""
    http = make_http(create_app(client, token="s3cret"))
    response = http.get("/api/instances", headers={"Authorization": authorization})
    assert status == response.status_code


# -- continuation tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/entities", "/api/instances"])
@pytest.mark.parametrize("token", ["!!", "????", "AAAA", "Zm9v", "garbage", "x" * 5000])
def test_a_garbage_continuation_token_is_400(client, http, path, token):
    """A token the server did not issue is a 400 naming it, never page 1."""
    client.signal_entity(dr.EntityId("Counter", "k"), "add", 1)
    client.schedule_new_orchestration(echo, input=1)
    response = http.get(path, headers={"x-ms-continuation-token": token})
    expected = 400
    assert expected == response.status_code
    assert "continuation token" in response.json()["error"]


def test_a_token_of_the_other_list_is_400(client, http, poll):
    """An instances token is not an entities token (and the other way round)."""
    for n in range(3):
        client.schedule_new_orchestration(echo, input=n)
        client.signal_entity(dr.EntityId("Counter", f"k{n}"), "add", 1)
    poll(lambda: len(client.get_all_entities()), lambda n: n == 3)
    instances = http.get("/api/instances", params={"top": "1"})
    entities = http.get("/api/entities", params={"top": "1"})
    header = "x-ms-continuation-token"
    crossed = [
        http.get("/api/entities", headers={header: instances.headers[header]}).status_code,
        http.get("/api/instances", headers={header: entities.headers[header]}).status_code,
    ]
    expected = [400, 400]
    assert expected == crossed


def test_the_python_client_refuses_a_garbage_token(client):
    """query_entities and query_instances raise ValueError for tokens they did not issue."""
    with pytest.raises(ValueError, match="continuation token"):
        client.query_entities(continuation_token="Zm9v")
    with pytest.raises(ValueError, match="continuation token"):
        client.query_instances(continuation_token="AAAAAAAAAAAAAAAA")


# -- unexpected errors -----------------------------------------------------------------------


def test_an_unexpected_error_is_a_500_json_answer_and_the_server_goes_on(client, monkeypatch):
    """A bug in a handler answers 500 {"error"} over a real socket; the next request works."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = build_server(client, host="127.0.0.1", port=0, log_level="critical")
    api = server.config.app.state.api
    real = api.client

    class Broken:
        def __getattr__(self, name):
            return getattr(real, name)

        async def partition_stats(self):
            raise RuntimeError("a bug " + "x" * 5000)

    monkeypatch.setattr(api, "client", Broken())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:
            broken = http.get("/api/partitions")
            after = [http.get("/api/partitions"), http.get("/healthz")]
        expected = (500, [500, 200])
        assert expected == (broken.status_code, [r.status_code for r in after])
        assert broken.json()["error"].startswith("internal error: RuntimeError: a bug")
        assert len(broken.json()["error"]) < 600
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
