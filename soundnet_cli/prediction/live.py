"""`soundnet predict --follow`: rows written as they happen, each one whole and flushed.

Writers: CSV/TSV (a header, then one line per row, the same cells as ``tables.delimited``),
JSON Lines (one object per row), a plain-text live table, and Audacity labels (one label file
written beside its final name and renamed into place at the end). :func:`follow` runs the loop;
Ctrl-C ends the input there, flushes the rows that the audio so far determines and reports the
interruption to the caller (which exits 130). A row is never half-written: an interrupt that
arrives while rows are computed or written waits until they are out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from soundnet_cli.atomic import atomic_file
from soundnet_cli.errors import SoundnetError
from soundnet_cli.media.live import LiveAudio, deferred_interrupt, output_name, utc_stamp
from soundnet_cli.prediction.follow import RowStream
from soundnet_cli.prediction.tables import Row, audacity_labels, delimited, json_lines

log = logging.getLogger(__name__)

FOLLOW_FORMATS = ("table", "csv", "tsv", "jsonl", "audacity")


class RowWriter:
    """Writes rows to a text stream, flushing after every batch of whole rows."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def start(self) -> None:
        pass

    def lines(self, rows: Sequence[Row]) -> str:
        raise NotImplementedError

    def write(self, rows: Sequence[Row]) -> None:
        if rows:
            self.stream.write(self.lines(rows))
            self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class DelimitedWriter(RowWriter):
    def __init__(self, stream: IO[str], delimiter: str = ",") -> None:
        super().__init__(stream)
        self.delimiter = delimiter

    def start(self) -> None:
        self.stream.write(delimited([], self.delimiter))
        self.stream.flush()

    def lines(self, rows: Sequence[Row]) -> str:
        return delimited(rows, self.delimiter).split("\n", 1)[1]


class JsonLinesWriter(RowWriter):
    def lines(self, rows: Sequence[Row]) -> str:
        return json_lines(rows)


class TableWriter(RowWriter):
    """A live table: a header line, then one aligned line per row as it happens."""

    HEADER = f"{'start (s)':>10} {'end (s)':>10}  {'head':<12} {'rank':>4}  {'p':>6}  label\n"

    def start(self) -> None:
        self.stream.write(self.HEADER)
        self.stream.flush()

    def lines(self, rows: Sequence[Row]) -> str:
        return "".join(
            f"{r.start:>10.2f} {r.end:>10.2f}  {r.head:<12} {r.rank:>4}  {r.probability:>6.3f}  "
            f"{r.label.split(',')[0]}\n"
            for r in rows
        )


class AudacityWriter(RowWriter):
    """Labels collected in a temporary file beside ``target``, renamed into place on close."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._context = atomic_file(target)
        self._file = self._context.__enter__()
        self.stream = None  # type: ignore[assignment]

    def write(self, rows: Sequence[Row]) -> None:
        if rows:
            self._file.write(audacity_labels(rows).encode("utf-8"))

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        log.info("wrote %s", self.target)


def label_name(name: str) -> str:
    """A label file name for a live input: ``stdin.txt``, ``mic-NAME.txt``, the URL's host
    and path with other characters replaced."""
    return f"{output_name(name)}.txt"


def make_writer(fmt: str, stream: IO[str], out: Path | None, name: str) -> RowWriter:
    if fmt == "audacity":
        assert out is not None
        return AudacityWriter(out / label_name(name))
    if fmt in ("csv", "tsv"):
        return DelimitedWriter(stream, "\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return JsonLinesWriter(stream)
    if fmt == "table":
        return TableWriter(stream)
    raise SoundnetError(f"--follow writes table, csv, tsv, jsonl or audacity, not {fmt}")


def follow(audio: LiveAudio, rows: RowStream, writer: RowWriter) -> bool:
    """Read ``audio`` until it ends or Ctrl-C, writing rows as they happen; then the rows of
    the end. True when interrupted."""
    interrupted = False
    writer.start()
    try:
        try:
            for block in audio.blocks():
                with deferred_interrupt():
                    writer.write(rows.push(block))
        except KeyboardInterrupt:
            interrupted = True
            audio.close()
            with deferred_interrupt():  # the audio so far ends there, as a file cut there would
                tail = audio.drain()
                if len(tail) and rows.predictor.received:
                    writer.write(rows.push(tail))
            log.warning(
                "[%s] %s: interrupted at %.1f s of audio; writing the rows it determines",
                utc_stamp(),
                audio.source.name,
                rows.predictor.received / rows.predictor.rate,
            )
        finally:
            audio.close()
        if rows.predictor.received or not interrupted:
            with deferred_interrupt():
                writer.write(rows.finish())
    except BaseException:
        if isinstance(writer, AudacityWriter):
            writer._context.__exit__(SoundnetError, SoundnetError("aborted"), None)
        raise
    writer.close()
    return interrupted


def collect(audio: LiveAudio, rows: RowStream) -> tuple[list[Row], bool]:
    """Read ``audio`` to its end (or Ctrl-C) and return every row (for outputs written once the
    input is complete) and whether it was interrupted."""
    out: list[Row] = []
    interrupted = False
    try:
        for block in audio.blocks():
            with deferred_interrupt():
                out.extend(rows.push(block))
    except KeyboardInterrupt:
        interrupted = True
        audio.close()
        with deferred_interrupt():
            tail = audio.drain()
            if len(tail) and rows.predictor.received:
                out.extend(rows.push(tail))
    finally:
        audio.close()
    if rows.predictor.received or not interrupted:
        out.extend(rows.finish())
    return out, interrupted


def describe_latency(model: Any, chunk_seconds: float) -> None:
    """Log (debug: `soundnet -v`) the latency bound of the rows to come."""
    from soundnet_cli.prediction.follow import latency_seconds

    log.debug(
        "rows of %s follow their audio by at most %.1f s (receptive field + one %g-s chunk)",
        model.head_layer,
        latency_seconds(model, chunk_seconds),
        chunk_seconds,
    )
