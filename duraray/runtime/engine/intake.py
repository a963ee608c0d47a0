"""What a partition takes in between batches, as typed items.

The shell (a Ray actor, the in-process runtime, a test driver) hands the core client
requests, messages from peers, their acknowledgements, requests to resend, and activity
results, from any thread. Each is queued as one of these records and applied, in arrival
order, by the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from duraray.runtime.engine.records import ActivityResult, ClientRequest, Message


@dataclass(frozen=True, slots=True)
class Request:
    """A client request."""

    request: ClientRequest


@dataclass(frozen=True, slots=True)
class Messages:
    """Messages from partition ``source`` (any order; applied by sequence)."""

    source: int
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class Ack:
    """Partition ``destination`` applied our messages up to ``upto``."""

    destination: int
    upto: int


@dataclass(frozen=True, slots=True)
class Resend:
    """Send every unacknowledged message to ``destination`` again."""

    destination: int


@dataclass(frozen=True, slots=True)
class Results:
    """Results returned by activity workers."""

    results: list[ActivityResult]


IntakeItem = Request | Messages | Ack | Resend | Results
