"""Memory budgets as people type them: binary K/M/G, decimal KB/MB/GB, plain bytes."""

from __future__ import annotations

import pytest

from edgert_core import BudgetError, MemoryBudget, format_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256M", 256 * 1024**2),
        ("256m", 256 * 1024**2),
        ("1G", 1024**3),
        ("512MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("64KiB", 64 * 1024),
        ("64K", 64 * 1024),
        ("64KB", 64_000),
        ("1.5GB", 1_500_000_000),
        ("1.5G", 3 * 1024**3 // 2),
        ("0.5MiB", 512 * 1024),
        (".5M", 512 * 1024),
        ("200MB", 200_000_000),
        ("1T", 1024**4),
        ("1048576", 1_048_576),
        ("1048576B", 1_048_576),
        (" 64 M ", 64 * 1024**2),
        (4096, 4096),
    ],
)
def test_parse(text: str | int, expected: int) -> None:
    assert MemoryBudget.parse(text).bytes == expected


@pytest.mark.parametrize(
    "text", ["", "lots", "12XB", "M", "1.2.3G", "-5M", "1e9", "256 M B", "0x100", "5 GiBs"]
)
def test_garbage_is_one_clear_sentence(text: str) -> None:
    with pytest.raises(BudgetError) as err:
        MemoryBudget.parse(text)
    message = str(err.value)
    assert repr(text) in message
    assert "256M" in message and "1.5GB" in message  # says what to write instead
    assert "\n" not in message


@pytest.mark.parametrize("value", ["0", "0M", "0.0001", 0, -1])
def test_not_positive(value: str | int) -> None:
    with pytest.raises(BudgetError, match="must be positive"):
        MemoryBudget.parse(value)


def test_budgets_compare_and_print() -> None:
    assert MemoryBudget.parse("1G") > MemoryBudget.parse("1000MB")
    assert MemoryBudget.parse("1GiB") == MemoryBudget.parse("1G")
    assert str(MemoryBudget.parse("64M")) == "64.0 MiB"


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (64 * 1024**2, "64.0 MiB"), (3 * 1024**3 // 2, "1.5 GiB"), (5 * 1024**4, "5120.0 GiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
