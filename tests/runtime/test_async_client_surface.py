"""AsyncClient's methods are written out (type checkers see them): one per public Client
method, each with the same parameters and return type."""

from __future__ import annotations

import inspect

import pytest

from duraray.runtime.client.aio import ASYNC_METHODS, AsyncClient
from duraray.runtime.client.sync import Client

#: Client methods that are not coroutines on AsyncClient, and why.
NOT_MIRRORED = {
    "attach": "a classmethod of its own on AsyncClient",
    "map": "an async generator of its own on AsyncClient",
    "close": "a coroutine of its own on AsyncClient",
}


def _public(cls: type) -> set[str]:
    return {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and callable(v)}


def test_every_public_client_method_has_an_async_twin() -> None:
    missing = _public(Client) - set(ASYNC_METHODS) - set(NOT_MIRRORED)
    assert set() == missing
    assert set() == set(ASYNC_METHODS) - _public(AsyncClient)


@pytest.mark.parametrize("name", ASYNC_METHODS)
def test_the_twin_has_the_same_signature(name: str) -> None:
    sync = inspect.signature(getattr(Client, name))
    twin = getattr(AsyncClient, name)
    assert inspect.iscoroutinefunction(twin)
    assert sync == inspect.signature(twin)
