from gateway.engine.worker.deltas import DeltaBatcher


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_piece_is_sent_at_once_then_coalesced_per_interval() -> None:
    sent: list[str] = []
    clock = Clock()
    batcher = DeltaBatcher(lambda text, _: sent.append(text), 0.015, clock)
    batcher.add("a")
    assert sent == ["a"]
    clock.now = 0.005
    batcher.add("b")
    clock.now = 0.010
    batcher.add("c")
    assert sent == ["a"]
    clock.now = 0.016
    batcher.add("d")
    assert sent == ["a", "bcd"]
    clock.now = 0.020
    batcher.add("e")
    batcher.flush()
    batcher.flush()
    assert sent == ["a", "bcd", "e"]


def test_zero_interval_sends_every_piece_and_skips_empty_ones() -> None:
    sent: list[str] = []
    batcher = DeltaBatcher(lambda text, _: sent.append(text), 0.0, Clock())
    for piece in ["x", "", "y"]:
        batcher.add(piece)
    batcher.flush()
    assert sent == ["x", "y"]


def test_log_probabilities_travel_with_their_text() -> None:
    sent: list[tuple[str, object]] = []
    clock = Clock()
    batcher = DeltaBatcher(lambda text, entries: sent.append((text, entries)), 1.0, clock)
    batcher.add("a", [{"token": "a"}])
    batcher.add("", [{"token": "<held>"}])  # text held back by a stop matcher still has its entry
    batcher.add("b", [{"token": "b"}])
    batcher.flush()
    assert sent == [("a", [{"token": "a"}]), ("b", [{"token": "<held>"}, {"token": "b"}])]
