"""Keep a generation worker reading the queues of the models it has loaded first.

The Redis transport's ``queue_order_strategy="priority"`` (shared/celery_app.py) makes
the consumer's one BRPOP name its queues in the order it consumes them, for each priority
level in turn; Redis pops from the first non-empty key. So among jobs of equal priority a
worker takes those of its loaded models first, and a higher-priority job for a model it
must load still comes before them.

The order is the consumer's list of queues, which lives in the worker's parent process,
while the models live in the pool child. The child asks for a new order with a remote
control command of its own, ``consume_in_order``, addressed to its worker alone. The
command does in one callback on the consumer's event loop what Celery's
``cancel_consumer`` + ``add_consumer`` do: kombu appends a queue it starts consuming, so
cancelling and re-adding, in order, every queue from the first one out of place gives the
wanted order. (Sent as separate ``cancel_consumer``/``add_consumer`` commands they may
run in any order: the event loop keeps its pending callbacks in a set.) A task already
fetched from a queue being moved is still run, acknowledged late as always. With
``--concurrency 1`` (how workers are deployed) the order is exactly the process's; with
more pool children it follows the child whose models changed last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.worker.control import control_command

from shared.model_registry import queue_for_model

logger = logging.getLogger(__name__)

CONSUME_IN_ORDER = "consume_in_order"


def loaded_first(queues: Sequence[str], hot: set[str]) -> list[str]:
    """``queues`` with the ``hot`` ones first, each group in its current order."""
    return [q for q in queues if q in hot] + [q for q in queues if q not in hot]


def queues_to_move(current: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The queues to cancel and re-add, in order, to turn ``current`` into ``wanted`` (the
    same queues): every one from the first position where the two differ."""
    first = next((i for i, (a, b) in enumerate(zip(current, wanted, strict=False)) if a != b),
                 None)
    return [] if first is None else list(wanted[first:])


@control_command(args=[("queues", list)], signature="<queue> [<queue> ...]")
def consume_in_order(state: Any, queues: list[str], **_: object) -> dict[str, str]:
    """Consume the worker's queues in the order ``queues`` names them (remote control)."""
    consumer = state.consumer

    def reorder() -> None:
        current = [queue.name for queue in consumer.task_consumer.queues]
        wanted = [q for q in queues if q in current] + [q for q in current if q not in queues]
        for queue in queues_to_move(current, wanted):
            consumer.cancel_task_queue(queue)
            consumer.add_task_queue(queue)

    consumer.call_soon(reorder)
    return {"ok": f"consuming {', '.join(queues)} first"}


class HotQueuesFirst:
    """Reorders worker ``nodename``'s consumer queues as its loaded models change (the
    queues start in ``served`` order: the models a process loads at start come first)."""

    def __init__(self, app: Celery, nodename: str, served: Sequence[str]):
        self.app = app
        self.nodename = nodename
        self.order = [queue_for_model(model) for model in served]

    def follow(self, loaded: Sequence[str]) -> None:
        wanted = loaded_first(self.order, {queue_for_model(model) for model in loaded})
        if wanted == self.order:
            return
        self.app.control.broadcast(CONSUME_IN_ORDER, arguments={"queues": wanted},
                                   destination=[self.nodename], reply=False)
        self.order = wanted
        logger.info("consuming %s first", ", ".join(wanted))
