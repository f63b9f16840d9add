import pytest

from gateway.config.units import format_bytes, parse_bytes, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        (1024, 1024),
        ("100", 100),
        ("2 kib", 2048),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4 parsecs", "GiB", "-1", "", True, -5])
def test_parse_bytes_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_bytes(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"), [("30s", 30), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25), (5, 5.0), ("2d", 172800)]
)
def test_parse_duration(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["10 minutes", "m", "5x", "1h junk", -1])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_format_bytes() -> None:
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(100) == "100 B"
