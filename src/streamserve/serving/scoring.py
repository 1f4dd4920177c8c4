"""Scoring one key's records with the model its batch holds.

Maps the records' fields to the model's inputs (by name; a positional model through the key's
positional order), fails alone each record that lacks a feature or carries one the model has
no place for, scores the others in one call (one by one if that call fails, so only the failing
records fail), checks the outputs as validation did, and quarantines a model that keeps failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt

from streamserve.codecs.base import DecodedBatch
from streamserve.errors import (
    MissingFeaturesError,
    RejectedInput,
    ScoringError,
    ScoringTimeoutError,
)
from streamserve.formats.base import FloatMatrix, InputSpec, Model
from streamserve.serving.budget import LiveModels
from streamserve.serving.deadline import CallWatch
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.features import (
    FeatureMapping,
    map_features,
    missing_features_error,
    positional_order,
)
from streamserve.serving.outcome import BatchOutcome, ScoredGroup
from streamserve.serving.output import PublishableOutput, publishable
from streamserve.serving.slot import ModelSlot, Rejection, ServedModel
from streamserve.settings import ServingSettings

QUARANTINE_MIN_BATCHES = 3  # failing batches in a row, beside the records, before a quarantine


@dataclass(frozen=True, slots=True)
class ModelCall:
    """A model scoring a key's records, as a deadline sees it when the call overruns."""

    slot: ModelSlot
    served: ServedModel
    records: int

    def describe(self) -> str:
        return f"model {self.served.identity.name!r} of key {self.slot.key!r}"

    def call_stuck(self) -> None:
        self.served.call_stuck()

    def call_returned(self) -> None:
        self.served.call_returned()


def _reset_failures(served: ServedModel) -> None:
    served.consecutive_failures = served.failing_batches = 0


class ModelScoring:
    """Scores the rows of one key with the model leased for the batch; one result or one error
    for every row. Thread-safe: the runtime and the API score through it at once."""

    def __init__(
        self,
        settings: ServingSettings,
        live_models: LiveModels,
        events: EventLog,
        count: Callable[..., None],
        watch: CallWatch,
    ) -> None:
        self._settings = settings
        self._live_models = live_models
        self._events = events
        self._count = count
        self._watch = watch

    def score(
        self,
        served: ServedModel,
        slot: ModelSlot,
        rows: npt.NDArray[np.intp],
        columns: tuple[tuple[str, ...], FloatMatrix],
        batch: DecodedBatch,
        outcome: BatchOutcome,
        complete: bool,
        observe: bool,
    ) -> None:
        """Feeds the key's rows to ``served``: records that lack a feature (or carry one a
        positional model cannot place) fail alone, the others are scored."""
        key = slot.key
        names, values = columns
        try:
            spec = self._input_spec(served, slot, names, batch, observe)
            mapping = map_features(names, spec)
        except MissingFeaturesError as err:
            self._fail(outcome, rows, err, key, served)
            return
        if mapping.missing:
            self._fail(outcome, rows, missing_features_error(mapping.missing), key, served)
            return
        features = mapping.gather(values)
        incomplete = None if complete else np.isnan(features).any(axis=1)
        if incomplete is not None and incomplete.any():
            model_names = spec.names or tuple(names[i] for i in mapping.columns)
            self._fail_incomplete(
                outcome, rows[incomplete], features[incomplete], model_names, key, served
            )
            rows, values, features = rows[~incomplete], values[~incomplete], features[~incomplete]
        if served.inputs.names is None:  # fields beyond the positional order: no place
            kept = self._fail_extra_fields(outcome, rows, values, (names, mapping), served, key)
            rows, features = rows[kept], features[kept]
        if len(rows):
            self._score_rows(rows, features, slot, served, outcome, observe)

    def _input_spec(
        self,
        served: ServedModel,
        slot: ModelSlot,
        names: tuple[str, ...],
        batch: DecodedBatch,
        observe: bool,
    ) -> InputSpec:
        """The model's inputs as names: a positional model takes the key's fixed field order
        (fixed from its stream records the first time one serves it; shown in ``/keys``).
        Batches that are not the key's stream records (V2 requests) never fix it."""
        field_orders, positional = batch.field_orders, batch.positional
        spec = served.inputs
        if spec.names is not None:
            return spec
        if positional and len(names) == spec.width:
            return InputSpec(spec.width, names)  # already in the model's order
        order = slot.positional_order
        if order is None:
            orders = field_orders.get(slot.key)
            candidate = names if orders is None else positional_order(orders, spec, slot.key)
            if len(candidate) != spec.width:
                raise MissingFeaturesError(
                    f"model {served.identity.name!r} takes {spec.width} positional features, "
                    f"the records carry {len(candidate)} ({', '.join(candidate) or 'none'})"
                )
            order = slot.fix_positional_order(candidate) if observe else candidate
        if len(order) != spec.width:
            raise MissingFeaturesError(
                f"model {served.identity.name!r} takes {spec.width} positional features, the "
                f"records of key {slot.key!r} carry {len(order)} ({', '.join(order)})"
            )
        return InputSpec(spec.width, order)

    def _fail_extra_fields(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        values: FloatMatrix,
        columns: tuple[tuple[str, ...], FeatureMapping],
        served: ServedModel,
        key: str,
    ) -> npt.NDArray[np.bool_]:
        """Fails the records carrying fields outside a positional model's order (where would
        they go?); returns which of ``rows`` are kept."""
        names, mapping = columns
        used = mapping.used_columns()
        order = tuple(names[index] for index in mapping.columns.tolist())
        extra = [index for index in range(len(names)) if index not in used]
        if not extra:
            return np.ones(len(rows), dtype=bool)
        carries = ~np.isnan(values[:, extra])
        odd = carries.any(axis=1)
        for position in np.flatnonzero(odd).tolist():
            fields = [names[extra[i]] for i in np.flatnonzero(carries[position]).tolist()]
            error = MissingFeaturesError(
                f"record carries field(s) {', '.join(fields)} that the positional model "
                f"{served.identity.name!r} has no place for (its key's fields: "
                f"{', '.join(order)})"
            )
            self._fail(outcome, rows[position : position + 1], error, key, served)
        return np.asarray(~odd)

    def _score_rows(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        slot: ModelSlot,
        served: ServedModel,
        outcome: BatchOutcome,
        observe: bool,
    ) -> None:
        key = slot.key
        if served.calls_stuck > 0:
            error = ScoringTimeoutError(
                f"model {served.identity.name!r} of key {key!r} has a call running past the "
                f"scoring deadline ({self._settings.scoring_deadline_s:g} s); it is not called "
                "again until that call returns"
            )
            self._fail(outcome, rows, error, key, served)
            return
        started = time.perf_counter()
        model_failures = 0  # records the model raised on (not values it gave for one record)
        self._watch.enter(ModelCall(slot, served, len(rows)))
        try:
            with served.instance() as model:
                try:
                    checked = self._checked(model.score_batch(features), len(rows), served)
                # SystemExit too: a model library that calls sys.exit() fails records, not the
                # process (KeyboardInterrupt still stops it)
                except (Exception, SystemExit):  # noqa: BLE001 - isolate the failing records
                    rows, scored, model_failures = self._score_one_by_one(
                        rows, features, key, served, model, outcome
                    )
                else:
                    rows, scored = self._fail_unpublishable(rows, checked, key, served, outcome)
        except ScoringError as err:  # the evicted instance could not be made again
            self._fail(outcome, rows, err, key, served)
            rows, model_failures = rows[:0], len(rows)
        finally:
            self._watch.leave()
        self._live_models.touch(served)
        elapsed = time.perf_counter() - started
        # the failure streak, like the statistics, counts only once the outcome is accepted:
        # a batch scored again after another model overran the deadline counts once
        if len(rows):
            outcome.stats_updates.append(partial(_reset_failures, served))
            outcome.stats_updates.append(partial(served.stats.record_batch, len(rows), elapsed))
            outcome.groups.append(
                ScoredGroup(key, served.identity, rows, scored, elapsed / len(rows))
            )
        elif model_failures and observe:  # a V2 client can never quarantine a model
            reason = outcome.errors[-1].reason
            outcome.stats_updates.append(
                partial(self._count_failures, slot, served, model_failures, reason)
            )

    def _count_failures(
        self, slot: ModelSlot, served: ServedModel, failures: int, last_reason: str
    ) -> None:
        """Quarantines a model that raised on every record of several batches in a row: its
        backend broke, say. Records that fail now and then, between scored ones, never do."""
        served.consecutive_failures += failures
        served.failing_batches += 1
        if (
            served.consecutive_failures >= self._settings.quarantine_after_failures
            and served.failing_batches >= QUARANTINE_MIN_BATCHES
        ):
            reason = (
                f"quarantined after {served.consecutive_failures} records in a row failed to "
                f"score; the last: {last_reason}"
            )
            self.quarantine(slot, served, reason, "quarantined")

    def _checked(self, output: object, rows: int, served: ServedModel) -> PublishableOutput:
        """The output if it is publishable and of the model's value type; raises otherwise."""
        checked = publishable(output, rows)
        if checked.value_type != served.value_type:
            raise ScoringError(
                f"model returned {checked.value_type} values; it publishes {served.value_type}"
            )
        return checked

    def _fail_unpublishable(
        self,
        rows: npt.NDArray[np.intp],
        checked: PublishableOutput,
        key: str,
        served: ServedModel,
        outcome: BatchOutcome,
    ) -> tuple[npt.NDArray[np.intp], np.ndarray]:
        if not checked.failed:
            return rows, checked.values
        for position, reason in checked.failed.items():
            error = ScoringError(f"model {served.identity.name!r}: {reason}")
            self._fail(outcome, rows[position : position + 1], error, key, served)
        kept = np.ones(len(rows), dtype=bool)
        kept[list(checked.failed)] = False
        return rows[kept], checked.values[kept]

    def _score_one_by_one(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        key: str,
        served: ServedModel,
        model: Model,
        outcome: BatchOutcome,
    ) -> tuple[npt.NDArray[np.intp], np.ndarray, int]:
        """Scores each record alone: (rows scored, their values, records the model raised on)."""
        kept: list[int] = []
        values: list[np.ndarray] = []
        raised = 0
        for position, row in enumerate(rows.tolist()):
            try:
                checked = self._checked(
                    model.score_batch(features[position : position + 1]), 1, served
                )
            except (Exception, SystemExit) as err:  # noqa: BLE001 - sys.exit() in a model too
                reason = f"model {served.identity.name!r} failed to score the record: {err}"
                self._fail(outcome, np.array([row]), ScoringError(reason), key, served)
                raised += 1
                continue
            if checked.failed:  # a value this record led to, not a model that fails
                reason = f"model {served.identity.name!r}: {checked.failed[0]}"
                self._fail(outcome, np.array([row]), ScoringError(reason), key, served)
                continue
            kept.append(row)
            values.append(checked.values)
        scored = np.concatenate(values) if values else np.empty(0)
        return np.asarray(kept, dtype=np.intp), scored, raised

    def _fail(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        error: RejectedInput,
        key: str,
        served: ServedModel,
    ) -> None:
        outcome.stats_updates.append(partial(served.stats.record_errors, len(rows)))
        outcome.fail_rows(rows, error, key, served.identity)

    def _fail_incomplete(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        names: tuple[str, ...],
        key: str,
        served: ServedModel,
    ) -> None:
        for row, missing in zip(rows.tolist(), np.isnan(features), strict=True):
            absent = tuple(name for name, gone in zip(names, missing, strict=True) if gone)
            self._fail(outcome, np.array([row]), missing_features_error(absent), key, served)

    def quarantine(self, slot: ModelSlot, served: ServedModel, reason: str, kind: str) -> None:
        """Takes a model that keeps failing (or hangs) out of service; its previous model
        serves again."""
        identity = served.identity
        rejection = Rejection(slot.key, identity.name, identity.version, kind, reason)
        taken, restored = slot.quarantine(served, rejection)
        if not taken:
            return  # another thread changed the key's model first
        self._count(model_quarantines=1)
        if restored is not None:
            reason += f"; {restored.identity.name!r} serves again"
        self._events.put(
            ModelEvent(
                ModelEventKind.QUARANTINED,
                slot.key,
                identity.name,
                identity.version,
                reason=reason,
                error_kind=kind,
            )
        )
