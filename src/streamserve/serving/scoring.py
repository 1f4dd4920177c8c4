"""Scoring one key's records with the model its batch holds.

Maps the records' fields to the model's inputs (by name; a positional model through the key's
positional order), fails alone each record that lacks a feature or carries one the model has
no place for, scores the others in one call (one by one if that call fails, so only the failing
records fail), checks the outputs as validation did, and quarantines a model that keeps failing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

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
from streamserve.serving.output import PublishableOutput, ValueType, publishable
from streamserve.serving.slot import ModelSlot, Rejection, ServedModel
from streamserve.settings import ServingSettings

QUARANTINE_MIN_BATCHES = 3  # failing batches in a row, beside the records, before a quarantine
MAX_PLANS = 4096  # feed plans kept: distinct (columns, model inputs) pairs, not keys
# field names held by each cache below, all its entries together: records of junk (new field
# names in every batch) must not grow them by more than a few megabytes
MAX_CACHED_NAMES = 16_384


class ModelCall(NamedTuple):
    """A model scoring a key's records, as a deadline sees it when the call overruns (a named
    tuple: one is made per key and batch, at a third of a frozen dataclass's cost)."""

    slot: ModelSlot
    served: ServedModel
    records: int

    def describe(self) -> str:
        return f"model {self.served.identity.name!r} of key {self.slot.key!r}"

    def call_stuck(self) -> None:
        self.served.call_stuck()

    def call_returned(self) -> None:
        self.served.call_returned()


def _record_scored(served: ServedModel, records: int, elapsed_s: float) -> None:
    """A scored group's statistics; it ends the model's failure streak."""
    served.consecutive_failures = served.failing_batches = 0
    served.stats.record_batch(records, elapsed_s)


def _plain_numbers(output: object, rows: int, served: ServedModel) -> np.ndarray | None:
    """``output`` if it is what most models return, finite numbers one per row (1-D floats,
    of a model that publishes numbers): what :func:`publishable` would pass unchanged, checked
    in a fraction of its time (a group of one record is the common group with thousands of
    keys). ``None``: anything else, for :func:`publishable` to judge."""
    if (
        type(output) is not np.ndarray
        or output.ndim != 1
        or output.dtype.kind != "f"
        or len(output) != rows
        or served.value_type is not ValueType.NUMBER
    ):
        return None
    finite = math.isfinite(output[0]) if rows == 1 else bool(np.isfinite(output).all())
    return output if finite else None


@dataclass(frozen=True, slots=True)
class FeedPlan:
    """How a model takes a batch's columns: which column feeds each input (``mapping``), the
    inputs as names (``spec``), the columns a positional model has no place for (``extra``),
    and whether the columns are its inputs as they stand (``direct``: no gather)."""

    mapping: FeatureMapping
    spec: InputSpec
    extra: tuple[int, ...]
    direct: bool

    @classmethod
    def of(cls, names: tuple[str, ...], spec: InputSpec, *, positional: bool) -> FeedPlan:
        mapping = map_features(names, spec)
        extra: tuple[int, ...] = ()
        if positional and not mapping.missing:
            used = mapping.used_columns()
            extra = tuple(index for index in range(len(names)) if index not in used)
        direct = (
            not mapping.missing
            and not mapping.alternatives
            and len(names) == len(mapping.columns)
            and bool((mapping.columns == np.arange(len(names))).all())
        )
        return cls(mapping, spec, extra, direct)


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
        # (batch columns, model width, model input names or positional order, positional batch)
        self._plans: dict[tuple[object, ...], FeedPlan] = {}
        self._plans_held = 0  # names in the keys of self._plans
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._names_held = 0  # names in self._names, bounded: records of junk bring new ones

    def canonical_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """One shared tuple for each distinct list of field names: the keys' observed columns
        and positional orders then hold (and hash, scoring) that one object, not each a copy
        from the batch that first served it (800 bytes a key, and cold in the CPU caches)."""
        found = self._names.get(names)
        if found is None:
            if self._names_held + len(names) > MAX_CACHED_NAMES:
                self._names.clear()
                self._names_held = 0
            if len(names) > MAX_CACHED_NAMES:
                return names
            found = self._names[names] = names
            self._names_held += len(names)
        return found

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
            plan = self._plan(served, slot, names, batch, observe)
        except MissingFeaturesError as err:
            self._fail(outcome, rows, err, key, served)
            return
        mapping = plan.mapping
        if mapping.missing:
            self._fail(outcome, rows, missing_features_error(mapping.missing), key, served)
            return
        features = values if plan.direct else mapping.gather(values)
        incomplete = None if complete else np.isnan(features).any(axis=1)
        if incomplete is not None and incomplete.any():
            model_names = plan.spec.names or tuple(names[i] for i in mapping.columns)
            self._fail_incomplete(
                outcome, rows[incomplete], features[incomplete], model_names, key, served
            )
            rows, values, features = rows[~incomplete], values[~incomplete], features[~incomplete]
        if plan.extra:  # fields beyond a positional model's order: no place for them
            kept = self._fail_extra_fields(outcome, rows, values, names, plan, served, key)
            rows, features = rows[kept], features[kept]
        if len(rows):
            self._score_rows(rows, features, slot, served, outcome, observe)

    def _plan(
        self,
        served: ServedModel,
        slot: ModelSlot,
        names: tuple[str, ...],
        batch: DecodedBatch,
        observe: bool,
    ) -> FeedPlan:
        """How ``served`` takes the batch's columns ``names``, kept for the next groups and
        batches of the same columns and inputs (thousands of keys make thousands of groups).
        A plan that depends on the batch (a positional order not fixed yet) is not kept."""
        spec = served.inputs
        fixed = spec.names if spec.names is not None else slot.positional_order
        cached = fixed is not None or (batch.positional and len(names) == spec.width)
        plan_key = (names, spec.width, fixed, batch.positional)
        if cached:
            plan = self._plans.get(plan_key)
            if plan is not None:
                return plan
        effective = self._input_spec(served, slot, names, batch, observe)
        plan = FeedPlan.of(names, effective, positional=spec.names is None)
        size = len(names) + len(fixed or ())
        if cached and size <= MAX_CACHED_NAMES:
            if len(self._plans) >= MAX_PLANS or self._plans_held + size > MAX_CACHED_NAMES:
                self._plans.clear()
                self._plans_held = 0
            self._plans[plan_key] = plan
            self._plans_held += size
        return plan

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
            candidate = self.canonical_names(candidate)
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
        names: tuple[str, ...],
        plan: FeedPlan,
        served: ServedModel,
        key: str,
    ) -> npt.NDArray[np.bool_]:
        """Fails the records carrying fields outside a positional model's order (where would
        they go?); returns which of ``rows`` are kept."""
        extra = list(plan.extra)
        order = tuple(names[index] for index in plan.mapping.columns.tolist())
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
        model_failures = 0  # records the model raised on (not values it gave for one record)
        try:
            # live: the core had an evicted model made again before (serving/reloads.py)
            model = served.leased_instance()
        except ScoringError as err:  # the evicted instance could not be made again
            self._fail(outcome, rows, err, key, served)
            rows, model_failures = rows[:0], len(rows)
        else:
            started = time.perf_counter()
            self._watch.enter(ModelCall(slot, served, len(rows)))
            try:
                output = model.score_batch(features)
                plain = _plain_numbers(output, len(rows), served)
                if plain is None:
                    rows, scored = self._fail_unpublishable(
                        rows, self._checked(output, len(rows), served), key, served, outcome
                    )
                else:
                    scored = plain
            # SystemExit too: a model library that calls sys.exit() fails records, not the
            # process (KeyboardInterrupt still stops it)
            except (Exception, SystemExit):  # noqa: BLE001 - isolate the failing records
                rows, scored, model_failures = self._score_one_by_one(
                    rows, features, key, served, model, outcome
                )
            finally:
                self._watch.leave()
            elapsed = time.perf_counter() - started
        self._live_models.touch(served)
        # the failure streak, like the statistics, counts only once the outcome is accepted:
        # a batch scored again after another model overran the deadline counts once
        if len(rows):
            outcome.stats_updates.append(partial(_record_scored, served, len(rows), elapsed))
            outcome.groups.append(
                ScoredGroup(key, served.identity, rows, scored, elapsed / len(rows))
            )
        elif model_failures and observe:  # a V2 client can never quarantine a model
            reason = outcome.errors[-1].reason
            outcome.stats_updates.append(
                partial(self._count_failures, slot, served, model_failures, reason)
            )

    def fail_unavailable(
        self,
        slot: ModelSlot,
        served: ServedModel,
        rows: npt.NDArray[np.intp],
        error: ScoringError,
        outcome: BatchOutcome,
        observe: bool,
    ) -> None:
        """Fails the key's records whose model could not be made again (in time) after its
        eviction. A reload that failed counts as failures of the model (one that can never be
        made again is quarantined like one that raises); one that is only slow does not: it goes
        on, and the model serves once it returns."""
        self._fail(outcome, rows, error, slot.key, served)
        if observe and not isinstance(error, ScoringTimeoutError):
            outcome.stats_updates.append(
                partial(self._count_failures, slot, served, len(rows), str(error))
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
