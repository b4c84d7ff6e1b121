from connectors.ledger import AckLedger, Delivery


def deliveries(
    ledger: AckLedger, mids: list[int], generation: int = 1, qos: int = 1
) -> list[Delivery]:
    made = [Delivery(mid, qos, generation, 0) for mid in mids]
    for delivery in made:
        ledger.add(delivery)
    return made


def test_acks_go_out_in_arrival_order_only() -> None:
    ledger = AckLedger()
    a, b, c = deliveries(ledger, [1, 2, 3])
    assert ledger.complete(c, 1) == []  # written first, but 1 and 2 are still pending
    assert ledger.complete(a, 1) == [a]
    assert ledger.complete(b, 1) == [b, c]
    assert len(ledger) == 0


def test_qos0_deliveries_hold_their_place_but_are_never_acked() -> None:
    ledger = AckLedger()
    (zero,) = deliveries(ledger, [0], qos=0)
    (one,) = deliveries(ledger, [7])
    assert ledger.complete(one, 1) == []
    assert ledger.complete(zero, 1) == [one]


def test_a_delivery_of_an_earlier_connection_is_never_acked_on_a_later_one() -> None:
    ledger = AckLedger()
    (old,) = deliveries(ledger, [5], generation=1)
    assert ledger.forget_older_than(2) == 1
    (new,) = deliveries(ledger, [5], generation=2)  # the broker resends it with the same id
    assert ledger.complete(old, 2) == []  # written late: no ack, it cannot hold up the new one
    assert ledger.complete(new, 2) == [new]


def test_completion_after_reconnect_does_not_ack_with_a_stale_id() -> None:
    ledger = AckLedger()
    (old,) = deliveries(ledger, [9], generation=1)
    assert ledger.complete(old, current_generation=2) == []
