"""A human-in-the-loop approval flow, driven entirely through the HTTP API.

    python examples/approval_http/approval.py [--data-dir DIR] [--serve]

The ``purchase_approval`` orchestration notifies an approver, then waits for an
``approval`` event or a 24-hour deadline (a durable timer: a restart of the hub in between
changes nothing), and places the order if approved. The script starts the hub and the HTTP
API (uvicorn on 127.0.0.1 and a free port, with a bearer token), then plays the humans
with httpx, the way any other program or ``curl`` would:

1. ``POST /api/orchestrations/purchase_approval`` starts a request (202 + management URLs);
2. ``GET statusQueryGetUri`` is polled until the custom status says it awaits approval;
3. ``POST sendEventPostUri`` (``.../raiseEvent/approval``) delivers the decision;
4. ``GET statusQueryGetUri`` answers 202 while running and 200 with the output when done.

One request is approved, one rejected. With ``--serve`` the script instead keeps the API
up and prints ``curl`` commands, so that you can be the human.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import zlib
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import httpx

import duraray as dr
from duraray.runtime.http import build_server

app = dr.App("approvals", partitions=2)

#: Seconds the script's "humans" wait for the flow to reach a state before giving up.
TIMEOUT = 30.0


@app.activity
def notify_approver(ctx: dr.ActivityContext, request: dict[str, Any]) -> str:
    """Tell the approver that a request awaits them (here: a line on stdout)."""
    message = f"[mail to {request['approver']}] {request['requester']} asks for {request['item']}"
    print(message, flush=True)
    return message


@app.activity
def place_order(ctx: dr.ActivityContext, request: dict[str, Any]) -> str:
    """Place the order; returns its number."""
    return f"PO-{zlib.crc32(ctx.instance_id.encode()) % 100_000:05d}"


@app.orchestration
def purchase_approval(
    ctx: dr.OrchestrationContext, request: dict[str, Any]
) -> Generator[dr.Task[Any], Any, dict[str, Any]]:
    """Ask for approval; order if approved, stop if rejected or if nobody answers in a day."""
    yield ctx.call_activity(notify_approver, input=request)
    ctx.set_custom_status({"stage": "awaiting approval", "approver": request["approver"]})
    decision = ctx.wait_for_external_event("approval")
    deadline = ctx.create_timer(timedelta(hours=24))
    winner = yield dr.when_any([decision, deadline])
    if winner is deadline:
        ctx.set_custom_status({"stage": "expired"})
        return {"status": "expired", "item": request["item"]}
    deadline.cancel()
    answer = decision.get_result() or {}
    if not answer.get("approved"):
        ctx.set_custom_status({"stage": "rejected"})
        return {
            "status": "rejected",
            "item": request["item"],
            "by": answer.get("by"),
            "comment": answer.get("comment"),
        }
    ctx.set_custom_status({"stage": "ordering"})
    order = yield ctx.call_activity(place_order, input=request)
    ctx.set_custom_status({"stage": "done"})
    return {"status": "approved", "item": request["item"], "by": answer.get("by"), "order": order}


# -- the HTTP server ------------------------------------------------------------------------


class ApiServer:
    """The HTTP API of ``client`` on uvicorn in a background thread (127.0.0.1, a free port)."""

    def __init__(self, client: dr.Client, token: str) -> None:
        self.server = build_server(
            client, host="127.0.0.1", port=0, token=token, log_level="warning"
        )
        self.thread = threading.Thread(target=self.server.run, name="http-api", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP API did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)


# -- the humans -----------------------------------------------------------------------------


def poll_status(http: httpx.Client, url: str, done: Any) -> httpx.Response:
    """GET the status URL until ``done(response)``; a bounded wait."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        response = http.get(url)
        if response.status_code not in (200, 202):
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text}")
        if done(response):
            return response
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not get there within {TIMEOUT} s: {response.text}")
        time.sleep(0.05)


def request_and_decide(
    http: httpx.Client, request: dict[str, Any], decision: dict[str, Any]
) -> dict[str, Any]:
    """One purchase request from start to finish, over HTTP only."""
    started = http.post("/api/orchestrations/purchase_approval", json=request)
    if started.status_code != 202:
        raise RuntimeError(f"start: {started.status_code} {started.text}")
    urls = started.json()
    print(f"{request['requester']}: requested {request['item']} -> instance {urls['id']}")

    waiting = poll_status(
        http,
        urls["statusQueryGetUri"],
        lambda r: (r.json()["customStatus"] or {}).get("stage") == "awaiting approval",
    )
    print(
        f"  status {waiting.status_code}: {waiting.json()['runtimeStatus']}, "
        f"custom status {waiting.json()['customStatus']}"
    )

    raised = http.post(urls["sendEventPostUri"].replace("{eventName}", "approval"), json=decision)
    if raised.status_code != 202:
        raise RuntimeError(f"raiseEvent: {raised.status_code} {raised.text}")
    verdict = "approves" if decision["approved"] else "rejects"
    print(f"{decision['by']}: {verdict} ({decision.get('comment', '')})")

    final = poll_status(http, urls["statusQueryGetUri"], lambda r: r.status_code == 200)
    body = final.json()
    print(f"  status {final.status_code}: {body['runtimeStatus']}, output {body['output']}")
    return {
        "instance_id": urls["id"],
        "runtime_status": body["runtimeStatus"],
        "output": body["output"],
    }


def play(base_url: str, token: str) -> list[dict[str, Any]]:
    """The two requests of the demo: one approved, one rejected."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT) as http:
        return [
            request_and_decide(
                http,
                {"item": "GPU server", "requester": "alice", "approver": "bob"},
                {"approved": True, "by": "bob", "comment": "for the training cluster"},
            ),
            request_and_decide(
                http,
                {"item": "espresso machine", "requester": "carol", "approver": "bob"},
                {"approved": False, "by": "bob", "comment": "not this quarter"},
            ),
        ]


def print_curl(base_url: str, token: str) -> None:
    auth = f"-H 'Authorization: Bearer {token}'"
    json_body = "-H 'Content-Type: application/json'"
    print(
        f"""HTTP API at {base_url} (Ctrl-C to stop). Try:

  curl -s {auth} -X POST {base_url}/api/orchestrations/purchase_approval \\
       {json_body} -d '{{"item": "laptop", "requester": "you", "approver": "you"}}'
  curl -s {auth} {base_url}/api/instances/<id>
  curl -s {auth} -X POST {base_url}/api/instances/<id>/raiseEvent/approval \\
       {json_body} -d '{{"approved": true, "by": "you"}}'
""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=".duraray", help="the hub's data dir")
    parser.add_argument("--serve", action="store_true", help="keep the API up for a real human")
    parser.add_argument("--report", help="also write the outcomes as JSON to this file")
    args = parser.parse_args(argv)

    token = secrets.token_urlsafe(16)
    with app.run(data_dir=args.data_dir) as client, ApiServer(client, token) as base_url:
        if args.serve:
            print_curl(base_url, token)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                return 0
        outcomes = play(base_url, token)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(outcomes, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
