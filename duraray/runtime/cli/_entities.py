"""The entity commands: ``signal`` an operation, show one ``entity`` or list them."""

from __future__ import annotations

from typing import Any

import click

from duraray.entities.ids import EntityId
from duraray.runtime.cli._common import CliError, _Command, _hub_options
from duraray.runtime.cli._connect import _client
from duraray.runtime.cli._format import (
    ENTITY_ID,
    EXIT_NOT_FOUND,
    JSON_VALUE,
    _block,
    _compact,
    _done,
    _emit_json,
    _entity_json,
    _htime,
    _json_mode,
    _table,
)


@click.command(cls=_Command)
@click.argument("entity_id", type=ENTITY_ID)
@click.argument("operation")
@click.option("--input", "input_", type=JSON_VALUE, default=None, help="Input as JSON (or @file).")
@_hub_options
@click.pass_context
def signal(ctx: click.Context, entity_id: EntityId, operation: str, input_: Any) -> None:
    """Signal OPERATION on entity ENTITY_ID (written @name@key)."""
    _client(ctx).signal_entity(entity_id, operation, input_)
    _done(
        ctx,
        f"signalled {operation!r} on entity {entity_id}",
        {"entity_id": str(entity_id), "operation": operation, "signalled": True},
    )


@click.command(cls=_Command)
@click.argument("entity_id", type=ENTITY_ID, required=False)
@click.option("--list", "list_all", is_flag=True, help="List entities instead.")
@click.option("--name", default=None, help="With --list: only entities of this name.")
@_hub_options
@click.pass_context
def entity(
    ctx: click.Context, entity_id: EntityId | None, list_all: bool, name: str | None
) -> None:
    """Show an entity's state, lock and backlog, or --list entities.

    ENTITY_ID is written @name@key.
    """
    if (entity_id is None) == (not list_all):
        raise click.UsageError("give an entity id (@name@key) or --list", ctx)
    if name is not None and not list_all:
        raise click.UsageError("--name needs --list", ctx)
    if name is not None and (not name or "@" in name):
        raise click.BadParameter(f"entity name {name!r} must be non-empty, without '@'", ctx)
    client = _client(ctx)
    if entity_id is not None:
        meta = client.get_entity(entity_id)
        if meta is None:
            raise CliError(f"no entity with id {entity_id}", EXIT_NOT_FOUND)
        if _json_mode(ctx):
            _emit_json(_entity_json(meta))
            return
        click.echo(
            _block(
                [
                    ("entity id", str(meta.id)),
                    ("last modified", _htime(meta.last_modified)),
                    ("locked by", meta.locked_by or "-"),
                    ("backlog", str(meta.backlog_queue_size)),
                    ("state", _compact(meta.state)),
                ]
            )
        )
        return
    entities = client.get_all_entities(name=name)
    if _json_mode(ctx):
        _emit_json([_entity_json(m) for m in entities])
        return
    if not entities:
        click.echo("no entities match")
        return
    rows = [
        [
            str(m.id),
            _htime(m.last_modified),
            m.locked_by or "-",
            str(m.backlog_queue_size),
            _compact(m.state, 60),
        ]
        for m in entities
    ]
    click.echo(_table(["ENTITY ID", "LAST MODIFIED", "LOCKED BY", "BACKLOG", "STATE"], rows))


COMMANDS = (signal, entity)
