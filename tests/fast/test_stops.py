from gateway.engine.worker.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


def test_no_stops_passes_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_one_piece() -> None:
    assert run(["END"], ["hello END world"]) == ("hello ", True)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello E") == ("hello ", False)  # "E" held back
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D and more") == ("", True)


def test_held_back_prefix_released_when_not_a_stop() -> None:
    assert run(["END"], ["hello E", "ND"]) == ("hello ", True)
    assert run(["END"], ["hello E", "LSE"]) == ("hello ELSE", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["b", "a"], ["xxab"]) == ("xx", True)


def test_flush_returns_pending_prefix() -> None:
    assert run(["</s>"], ["text </"]) == ("text </", False)


def test_matched_names_the_earliest_stop_and_the_first_listed_on_a_tie() -> None:
    matcher = StopMatcher(["cd", "b", "bc"])
    assert matcher.feed("abcd") == ("a", True)
    assert matcher.matched == "b"
    assert StopMatcher(["x"]).matched is None
