"""Usage records from files: JSON, JSON Lines and CSV, read as a stream.

A month of usage for many instances is millions of records, so the readers never hold a whole
file: each yields one :class:`~koogallery.events.RawRecord` at a time, and a record that cannot
be read still comes out (with its error) so that it can be dead-lettered, not lost.

    for raw in read_records(Path("usage.jsonl")):
        ...
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Literal

from koogallery.events import Origin, RawRecord

__all__ = ["FileFormat", "detect_format", "read_records"]

FileFormat = Literal["json", "jsonl", "csv"]

_CHUNK = 1 << 16
_WRAPPER = re.compile(r'\{\s*"usage_records"\s*:\s*\[')
_decoder = json.JSONDecoder(parse_float=Decimal)


def detect_format(name: str) -> FileFormat:
    """Guess the format from the file name; JSON Lines is the default for ``-`` (stdin)."""
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".json"):
        return "json"
    return "jsonl"


def read_records(
    source: Path | IO[str], file_format: FileFormat | None = None
) -> Iterator[RawRecord]:
    """Yield every record of ``source`` (a path, or an open text stream such as stdin)."""
    name = str(source) if isinstance(source, Path) else getattr(source, "name", "-")
    file_format = file_format or detect_format(name)
    if isinstance(source, Path):
        with source.open("r", encoding="utf-8", newline="") as stream:
            yield from _READERS[file_format](stream, name)
    else:
        yield from _READERS[file_format](source, name)


def _origin(name: str, index: int) -> Origin:
    return Origin(trigger="FILE", source=name, index=index)


def _from_jsonl(stream: IO[str], name: str) -> Iterator[RawRecord]:
    index = 0
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        yield _decoded(text, _origin(name, index), position=number)
        index += 1


def _decoded(text: str, origin: Origin, *, position: int | None) -> RawRecord:
    try:
        data = _decoder.decode(text)
    except json.JSONDecodeError as error:
        return RawRecord(origin, position, None, f"not valid JSON: {error.msg}", text)
    if not isinstance(data, dict):
        kind = type(data).__name__
        return RawRecord(origin, position, None, f"is a {kind}, expected an object", text)
    return RawRecord(origin, position, data, None, text)


def _from_csv(stream: IO[str], name: str) -> Iterator[RawRecord]:
    reader = csv.DictReader(stream)
    for index, row in enumerate(reader):
        data: dict[str, object] = {
            key.strip(): value for key, value in row.items() if key and value not in (None, "")
        }
        raw = io.StringIO()
        csv.writer(raw).writerow(row.values())
        text = raw.getvalue().rstrip("\r\n")
        extra: object = row.get(None)
        if extra:
            error = "row has more columns than the header"
            yield RawRecord(_origin(name, index), reader.line_num, None, error, text)
            continue
        yield RawRecord(_origin(name, index), reader.line_num, data, None, text)


def _from_json(stream: IO[str], name: str) -> Iterator[RawRecord]:
    """Stream the elements of a top-level array (bare or as ``{"usage_records": [...]}``)."""
    buffer = stream.read(_CHUNK)
    start = len(buffer) - len(buffer.lstrip())
    wrapper = _WRAPPER.match(buffer, start)
    if buffer[start : start + 1] == "[":
        position = start + 1
    elif wrapper is not None:
        position = wrapper.end()
    else:
        text = buffer + stream.read()
        yield _decoded(text.strip(), _origin(name, 0), position=None)
        return

    index = 0
    while True:
        buffer, position = _skip(buffer, position, stream, ",")
        if position >= len(buffer):
            yield RawRecord(_origin(name, index), index, None, "the array is not closed", "")
            return
        if buffer[position] == "]":
            return

        element, end, buffer = _next_element(buffer, position, stream)
        if element is None:
            text = buffer[position : position + 200]
            yield RawRecord(_origin(name, index), index, None, "not valid JSON", text)
            return
        data, text = element
        if isinstance(data, dict):
            yield RawRecord(_origin(name, index), index, data, None, text)
        else:
            kind = type(data).__name__
            yield RawRecord(
                _origin(name, index), index, None, f"is a {kind}, expected an object", text
            )
        index += 1
        buffer, position = buffer[end:], 0


_READERS = {"json": _from_json, "jsonl": _from_jsonl, "csv": _from_csv}


def _skip(buffer: str, position: int, stream: IO[str], separators: str) -> tuple[str, int]:
    """Move past white space and separators, reading more of the stream when needed."""
    while True:
        while position < len(buffer) and (
            buffer[position].isspace() or buffer[position] in separators
        ):
            position += 1
        if position < len(buffer):
            return buffer, position
        more = stream.read(_CHUNK)
        if not more:
            return buffer, position
        buffer, position = more, 0


def _next_element(
    buffer: str, position: int, stream: IO[str]
) -> tuple[tuple[object, str] | None, int, str]:
    """Decode one array element, growing the buffer until the element is complete."""
    while True:
        try:
            data, end = _decoder.raw_decode(buffer, position)
        except json.JSONDecodeError:
            more = stream.read(_CHUNK)
            if not more:
                return None, position, buffer
            buffer = buffer[position:] + more
            position = 0
            continue
        if end == len(buffer):
            more = stream.read(_CHUNK)
            if more:
                buffer = buffer[position:] + more
                position = 0
                continue
        return (data, buffer[position:end]), end, buffer
