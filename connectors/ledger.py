"""Which MQTT deliveries may be acknowledged: pure bookkeeping, no I/O.

A QoS 1 delivery is acknowledged (PUBACK) only once Kafka has acknowledged its record, and in
the order the deliveries arrived on their connection (MQTT requires PUBACKs in order). A
delivery from an earlier connection of the same client is never acknowledged on a later one:
the broker resends it with the same packet id, and that id may since have been reused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class Delivery:
    mid: int
    qos: int
    generation: int
    received_ns: int
    done: bool = False


@dataclass
class AckLedger:
    """In-flight deliveries of one MQTT connection, oldest first."""

    pending: deque[Delivery] = field(default_factory=deque)

    def add(self, delivery: Delivery) -> None:
        self.pending.append(delivery)

    def __len__(self) -> int:
        return len(self.pending)

    def complete(self, delivery: Delivery, current_generation: int) -> list[Delivery]:
        """Mark ``delivery`` written; return the deliveries to acknowledge now, in order."""
        delivery.done = True
        ready: list[Delivery] = []
        while self.pending and self.pending[0].done:
            head = self.pending.popleft()
            if head.qos > 0 and head.generation == current_generation:
                ready.append(head)
        return ready

    def forget_older_than(self, generation: int) -> int:
        """Drop the not-yet-written deliveries of earlier connections from the ack order.

        They are still written to Kafka (the broker redelivers them too: a duplicate, never a
        loss), but must not hold back the acknowledgements of the new connection.
        """
        kept = deque(d for d in self.pending if d.generation >= generation)
        dropped = len(self.pending) - len(kept)
        self.pending = kept
        return dropped
