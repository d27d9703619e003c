"""The Flower engine's message exchange, against a stand-in Grid: replies matched to the
message they answer, whichever node id they carry, in the order the messages were sent; and a
wait with no timeout that ends when the simulation stops."""

import threading
import time
from types import SimpleNamespace

import pytest

from trustvision.errors import FederationError
from trustvision.federated.engines.flower import exchange


class StandInGrid:
    """Pushes get ids m0, m1, ... (None for one that could not be pushed); `answers` maps a
    message id to the node id its reply carries."""

    def __init__(self, answers: dict[str, int], unpushed: int | None = None) -> None:
        self.answers, self.unpushed = answers, unpushed

    def push_messages(self, messages):
        return [None if i == self.unpushed else f"m{i}" for i in range(len(messages))]

    def pull_messages(self, pending):
        ready = [m for m in sorted(pending, reverse=True) if m in self.answers]  # out of order
        return [reply(m, self.answers.pop(m)) for m in ready]


def reply(answered: str, node: int) -> SimpleNamespace:
    metadata = SimpleNamespace(reply_to_message_id=answered, src_node_id=node)
    return SimpleNamespace(metadata=metadata)


def test_each_message_gets_the_reply_that_answers_it():
    # m1's answer is the SuperLink's error for a dead node: it carries node id 1, not m1's
    grid = StandInGrid({"m0": 10, "m1": 1, "m3": 13}, unpushed=2)
    replies = exchange(grid, ["a", "b", "c", "d", "e"], timeout=0.05, poll=0.01)
    answered = [None if r is None else r.metadata.reply_to_message_id for r in replies]
    assert answered == ["m0", "m1", None, "m3", None]  # m4 never answered: None, after timeout


def test_a_wait_without_timeout_ends_when_the_simulation_stops():
    """Ctrl-C ends Flower's simulation, but Python waits at exit for the ServerApp's thread,
    which, with no `flower.timeout`, would wait for replies for ever."""
    stopped = threading.Event()
    threading.Timer(0.2, stopped.set).start()
    started = time.monotonic()
    with pytest.raises(FederationError, match="stopped"):
        exchange(StandInGrid({}), ["a"], timeout=None, poll=30, stopped=stopped)
    assert time.monotonic() - started < 5  # woken by the event, not at the end of a 30 s poll
