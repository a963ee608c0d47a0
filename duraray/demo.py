"""The sample app behind ``duraray demo``: a chain, a fan-out, an approval, a crash.

Also usable as ``duraray start --app duraray.demo:app``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import duraray as dr

app = dr.App("demo")

#: The id of the approval the demo leaves waiting, so the next run can resume it.
PENDING_APPROVAL_ID = "demo-approval-left-waiting"


@app.activity
def say_hello(ctx: dr.ActivityContext, city: str) -> str:
    """Greet a city."""
    return f"Hello, {city}!"


@app.activity
def square(ctx: dr.ActivityContext, n: int) -> int:
    """Square a number."""
    return n * n


@app.activity
def slow_step(ctx: dr.ActivityContext, step: int) -> int:
    """A step that takes a moment, so a crash can happen in the middle of the chain."""
    time.sleep(0.2)
    return step


@app.orchestration
def hello_cities(ctx: dr.OrchestrationContext, cities: list[str]) -> Any:
    """Call say_hello for each city, one after the other."""
    greetings = []
    for city in cities:
        greetings.append((yield ctx.call_activity(say_hello, input=city)))
    return greetings


@app.orchestration
def sum_of_squares(ctx: dr.OrchestrationContext, n: int) -> Any:
    """Fan out n square() activities and add the results."""
    results = yield dr.when_all([ctx.call_activity(square, input=i) for i in range(n)])
    return sum(results)


@app.orchestration
def approval(ctx: dr.OrchestrationContext, request: dict[str, Any]) -> Any:
    """Wait for an 'approve' event, or give up after a day."""
    ctx.set_custom_status("waiting for approval")
    event = ctx.wait_for_external_event("approve")
    timeout = ctx.create_timer(timedelta(days=1))
    winner = yield dr.when_any([event, timeout])
    if winner is event:
        timeout.cancel()
        ctx.set_custom_status(None)
        return {"request": request["item"], "approved_by": event.get_result()}
    return {"request": request["item"], "approved_by": None}


@app.orchestration
def crash_survivor(ctx: dr.OrchestrationContext, steps: int) -> Any:
    """A chain of slow steps; the demo kills its partition in the middle."""
    done = []
    for step in range(steps):
        done.append((yield ctx.call_activity(slow_step, input=step)))
    return done
