"""`duraray check MODULE:APP`: findings printed one a line (or as JSON), exit 1 when any."""

from __future__ import annotations

import inspect
import json
import os
import time

from click.testing import CliRunner

import duraray as dr
from duraray.runtime.cli import _app as cli

dirty_app = dr.App("cli-check-dirty")
clean_app = dr.App("cli-check-clean")


@dirty_app.orchestration
def stamped(ctx: dr.OrchestrationContext, _: None):
    started = time.time()
    yield ctx.call_activity("noop")
    time.sleep(1)
    return started


@clean_app.orchestration
def replay_safe(ctx: dr.OrchestrationContext, _: None):
    started = ctx.current_utc_datetime
    yield ctx.call_activity("noop")
    return started.isoformat()


def line_of(text: str) -> int:
    lines, first = inspect.getsourcelines(stamped)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_findings_are_printed_and_exit_1():
    """Each finding is one line naming file, line, orchestration, call and advice; exit code 1."""
    result = CliRunner().invoke(cli.main, ["check", f"{__name__}:dirty_app"])
    assert 1 == result.exit_code, result.output
    lines = result.stdout.splitlines()
    expected_suffixes = [
        f":{line_of('time.time()')}: orchestration 'stamped': time.time() is not deterministic; "
        "use ctx.current_utc_datetime",
        f":{line_of('time.sleep')}: orchestration 'stamped': time.sleep() blocks the "
        "partition; use ctx.create_timer()",
    ]
    relative = os.path.relpath(__file__)
    shown = __file__ if relative.startswith(os.pardir) else relative
    expected = [shown + suffix for suffix in expected_suffixes]
    assert expected == lines
    assert "2 problem(s) in 1 orchestration(s)" in result.stderr


def test_clean_code_exits_0():
    """An app whose orchestrations use only the context passes with exit code 0."""
    result = CliRunner().invoke(cli.main, ["check", f"{__name__}:clean_app"])
    assert 0 == result.exit_code, result.output
    assert "" == result.stdout
    assert "no problems found in 1 orchestration(s)" in result.stderr


def test_json_output():
    """--json prints the findings as one JSON document."""
    result = CliRunner().invoke(cli.main, ["check", f"{__name__}:dirty_app", "--json"])
    assert 1 == result.exit_code, result.output
    document = json.loads(result.stdout)
    assert 2 == document["problems"]
    assert 1 == document["orchestrations"]
    expected = [
        ("non-deterministic", "time.time()", line_of("time.time()")),
        ("blocking", "time.sleep()", line_of("time.sleep")),
    ]
    assert expected == [(f["kind"], f["call"], f["line"]) for f in document["findings"]]
    assert {__file__} == {f["file"] for f in document["findings"]}


def test_app_may_be_given_with_the_group_option():
    """`duraray --app MODULE:APP check` checks that app."""
    result = CliRunner().invoke(cli.main, ["--app", f"{__name__}:clean_app", "check"])
    assert 0 == result.exit_code, result.output


def test_without_an_app_is_a_usage_error():
    """No MODULE:APP at all is a usage error (exit 2)."""
    result = CliRunner().invoke(cli.main, ["check"])
    assert 2 == result.exit_code
    assert "duraray check MODULE:APP" in result.output


def test_an_unimportable_module_is_a_usage_error():
    """A module that cannot be imported is a usage error (exit 2) naming it."""
    result = CliRunner().invoke(cli.main, ["check", "no_such_module_here:app"])
    assert 2 == result.exit_code
    assert "no_such_module_here" in result.output
