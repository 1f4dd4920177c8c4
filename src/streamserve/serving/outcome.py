"""What scoring a batch produced: exactly one result or one error per input record."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamserve.codecs.base import InputRecord
from streamserve.errors import RejectedInput
from streamserve.serving.slot import ModelIdentity

INTERNAL_ERROR = "internal_error"  # the kind of a record failed by a defect no step foresaw


@dataclass(frozen=True, slots=True)
class ScoredGroup:
    """Records of one key scored together by one model; ``rows`` index the batch."""

    key: str
    model: ModelIdentity
    rows: npt.NDArray[np.intp]
    values: np.ndarray
    scoring_s_per_record: float


@dataclass(frozen=True, slots=True)
class RecordError:
    """An input record that produced no result, and why."""

    row: int
    kind: str
    reason: str
    key: str | None = None
    model: ModelIdentity | None = None


@dataclass
class BatchOutcome:
    """What scoring a batch produced: scored groups and record errors, together exactly one
    outcome per record of ``records`` (rows index them)."""

    records: Sequence[InputRecord]
    groups: list[ScoredGroup] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    # per-model statistics of this outcome, recorded once it is accepted: a scoring attempt
    # abandoned past its deadline must not count what it scored
    stats_updates: list[Callable[[], None]] = field(default_factory=list)

    def record_stats(self) -> None:
        """Records the per-model statistics of this outcome (once)."""
        updates, self.stats_updates = self.stats_updates, []
        for update in updates:
            update()

    def fail_rows(
        self,
        rows: npt.NDArray[np.intp],
        error: RejectedInput,
        key: str,
        model: ModelIdentity | None,
    ) -> None:
        """Records ``error`` for each of ``rows``, naming the key and the model if known."""
        reason = str(error)
        self.errors.extend(
            RecordError(row, error.kind, reason, key, model) for row in rows.tolist()
        )

    def drop_rows(self, rows: npt.NDArray[np.intp]) -> None:
        """Forgets every outcome of ``rows`` (their scoring failed midway: they fail again)."""
        dropped = set(rows.tolist())
        self.errors = [error for error in self.errors if error.row not in dropped]
        self.groups = [group for group in self.groups if dropped.isdisjoint(group.rows.tolist())]

    @property
    def result_count(self) -> int:
        return sum(len(group.rows) for group in self.groups)

    @property
    def error_count(self) -> int:
        return len(self.errors)

    def results(self) -> Iterator[tuple[int, ScoredGroup, object]]:
        """``(row, group, value)`` for every scored record."""
        for group in self.groups:
            for row, value in zip(group.rows.tolist(), group.values.tolist(), strict=True):
                yield row, group, value

    def only(self, row: int) -> BatchOutcome:
        """The outcome of record ``row`` alone, as a batch of that one record."""
        alone = BatchOutcome([self.records[row]])
        for group in self.groups:
            at = np.flatnonzero(group.rows == row)
            if len(at):
                alone.groups.append(
                    dataclasses.replace(
                        group, rows=np.zeros(1, dtype=np.intp), values=group.values[at]
                    )
                )
        alone.errors = [dataclasses.replace(e, row=0) for e in self.errors if e.row == row]
        return alone

    @classmethod
    def concatenate(
        cls, records: Sequence[InputRecord], outcomes: Sequence[BatchOutcome]
    ) -> BatchOutcome:
        """One outcome of ``records`` from the outcomes of consecutive parts of it."""
        joined = cls(records)
        offset = 0
        for part in outcomes:
            joined.groups.extend(
                dataclasses.replace(group, rows=group.rows + offset) for group in part.groups
            )
            joined.errors.extend(
                dataclasses.replace(error, row=error.row + offset) for error in part.errors
            )
            offset += len(part.records)
        return joined
