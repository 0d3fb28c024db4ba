"""Reading back the tables edge-rt prints (``edgert_core.cli.tables``): a header line, a rule, a
line per row, up to the first empty line or the end of the output."""

from __future__ import annotations

MIN_GAP = 3
"""Columns are at least this many spaces apart (padding, divider, padding); words inside a cell
one space apart."""


def parse_table(output: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the table whose header line starts with ``first_header``, as ``{header: cell}``
    dicts (cells stripped; an empty cell is ``""``). Fails when there is no such table or when a
    line does not fit the table's columns."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split()[:1] == [first_header]), None)
    assert start is not None, f"no table headed {first_header!r} in:\n{output}"
    rule = lines[start + 1]
    assert rule and set(rule) == {"─"}, f"no rule under the header: {rule!r}"
    body: list[str] = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        body.append(line)
    block = [lines[start], *body]
    width = max(len(line) for line in block)
    padded = [line.ljust(width) for line in block]
    blank = [all(line[c] == " " for line in padded) for c in range(width)]
    spans: list[list[int]] = []
    c = 0
    while c < width:
        if blank[c]:
            c += 1
            continue
        end = c
        while end < width and not blank[end]:
            end += 1
        if spans and c - spans[-1][1] < MIN_GAP:
            spans[-1][1] = end  # a space inside a cell: the same column
        else:
            spans.append([c, end])
        c = end
    headers = [padded[0][a:b].strip() for a, b in spans]
    assert headers[0] == first_header and all(headers), headers
    return [{h: line[a:b].strip() for h, (a, b) in zip(headers, spans, strict=True)} for line in padded[1:]]

