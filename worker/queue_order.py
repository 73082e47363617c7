"""Keep a generation worker reading the queues of the models it has loaded first.

The Redis transport's ``queue_order_strategy="priority"`` (shared/celery_app.py) makes
the consumer's one BRPOP name its queues in the order it consumes them, for each priority
level in turn; Redis pops from the first non-empty key. So among jobs of equal priority a
worker takes those of its loaded models first, and a higher-priority job for a model it
must load still comes before them.

The order is the consumer's list of queues, which lives in the worker's parent process,
while the models live in the pool child. The child changes the order through Celery's
own remote control, addressed to its worker alone: ``cancel_consumer`` then
``add_consumer`` moves a queue to the end of the list (kombu appends a queue it starts
consuming), so re-adding, in order, every queue from the first one out of place gives the
loaded-first order. Both commands run in order on the consumer's event loop, between two
reads; a task already fetched from a queue being moved is still run (acknowledged late,
as always). With ``--concurrency 1`` (how workers are deployed) the order is exactly the
process's; with more pool children the order follows the child that changed last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery

from shared.model_registry import queue_for_model

logger = logging.getLogger(__name__)


def loaded_first(queues: Sequence[str], hot: set[str]) -> list[str]:
    """``queues`` with the ``hot`` ones first, each group in its current order."""
    return [q for q in queues if q in hot] + [q for q in queues if q not in hot]


class HotQueuesFirst:
    """Reorders worker ``nodename``'s consumer queues as its loaded models change (the
    queues start in ``served`` order: the models a process loads at start come first)."""

    def __init__(self, app: Celery, nodename: str, served: Sequence[str]):
        self.app = app
        self.nodename = nodename
        self.order = [queue_for_model(model) for model in served]

    def follow(self, loaded: Sequence[str]) -> None:
        wanted = loaded_first(self.order, {queue_for_model(model) for model in loaded})
        moved = next((i for i, (a, b) in enumerate(zip(self.order, wanted, strict=True))
                      if a != b), None)
        if moved is None:
            return
        destination = [self.nodename]
        for queue in wanted[moved:]:
            self.app.control.cancel_consumer(queue, destination=destination, reply=False)
            self.app.control.add_consumer(queue, exchange=queue, routing_key=queue,
                                          destination=destination, reply=False)
        self.order = wanted
        logger.info("consuming %s first", ", ".join(wanted))
