"""Loads and validates models off the scoring path, then stages them in their slot.

Every failure, of any kind, becomes a rejection with its reason: a bad model never replaces a
good one. Validation: the model declares usable inputs, its inputs fit the columns the key's
records carry (when records were seen), and it scores a probe batch (recent real rows of the
key, else zeros) into one output per row.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from streamserve.descriptor import ModelDescriptor
from streamserve.errors import ModelLoadError, ModelValidationError, RejectedInput
from streamserve.formats.artifact import (
    Artifact,
    InlineArtifact,
    PathArtifact,
    path_digest,
    resolve_location,
)
from streamserve.formats.base import FloatMatrix, InputSpec, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.budget import LiveModels
from streamserve.serving.deadline import CallOverran, TimedCalls
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.features import map_features
from streamserve.serving.named_inputs import with_feature_names
from streamserve.serving.output import VALUE_TYPE_OPTION, ValueType, check_probe
from streamserve.serving.slot import ModelIdentity, ModelSlot, Rejection, ServedModel
from streamserve.serving.stats import ModelServingInfo

PROBE_ROWS = 2
CLOSE_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadJob:
    """One model to load. ``in_key_order``: it starts only once every earlier such job of its
    key is finished (see :class:`ModelLoader`)."""

    descriptor: ModelDescriptor
    sequence: int
    origin: str
    submitted_at: float = dataclasses.field(default_factory=time.monotonic)
    in_key_order: bool = False


class SlotDirectory(Protocol):
    """Where the loader finds and creates slots and reports what became of each load."""

    def find_slot(self, key: str) -> ModelSlot | None: ...

    def stage(self, key: str, served: ServedModel) -> bool: ...

    def reject(self, rejection: Rejection) -> None: ...

    def load_done(self, key: str, sequence: int) -> None: ...


class ModelLoader:
    """Loads and validates submitted models on its own threads, then stages or rejects each.

    A key's slot is created only when one of its models stages: rejected models and
    tombstones for keys nobody serves leave nothing behind but a bounded rejection record.

    Loads run on ``threads`` threads at once, in submission order. Jobs submitted
    ``in_key_order`` (every model from a models stream, at a restart and while running) wait
    for the earlier ones of their key: models of different keys load side by side, those of one
    key one after another, so each key ends with the model, value type and rejections that
    loading them one by one gives, and a replica holds what its restart holds. A hung load holds
    back its key's next model until ``load_timeout_s``. Other jobs may load beside an earlier
    one of their key and finish first: the later model stages, and the earlier is superseded.

    The threads are daemons, and :meth:`close` waits for a load in progress only a while: a
    load that hangs (a location on a dead network mount, a library stuck in native code) cannot
    be interrupted, and must not keep the process from stopping.
    """

    def __init__(
        self,
        registry: FactoryRegistry,
        events: EventLog,
        slots: SlotDirectory,
        *,
        model_roots: Sequence[Path] = (),
        threads: int = 1,
        live: LiveModels | None = None,
        load_timeout_s: float = 300.0,
        probe_timeout_s: float = 10.0,
    ) -> None:
        self._registry = registry
        self._load_timeout_s = load_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._calls = TimedCalls("model-load")
        self._live = live or LiveModels()
        self._events = events
        self._slots = slots
        self._model_roots = tuple(model_roots)
        self._jobs: queue.SimpleQueue[LoadJob | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"model-loader-{number}", daemon=True)
            for number in range(threads)
        ]
        for worker in self._workers:
            worker.start()
        self._pending = 0
        self._closed = False
        self._idle = threading.Condition()
        # keys with an in-order job loading -> their in-order jobs waiting for it, oldest first
        self._in_order: dict[str, deque[LoadJob]] = {}

    def submit(self, job: LoadJob) -> None:
        with self._idle:
            if self._closed:
                return
            self._pending += 1
            if job.in_key_order:
                waiting = self._in_order.get(job.descriptor.data_type)
                if waiting is not None:
                    waiting.append(job)  # started by _finish once the one before it is done
                    return
                self._in_order[job.descriptor.data_type] = deque()
        self._jobs.put(job)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Waits until every submitted model is staged or rejected; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    @property
    def pending(self) -> int:
        return self._pending

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Drops the loads not started, and waits up to ``timeout_s`` for those in progress."""
        with self._idle:
            self._closed = True
            dropped = [job for waiting in self._in_order.values() for job in waiting]
            for waiting in self._in_order.values():
                waiting.clear()
        for job in dropped:
            self._finish(job)
        for _ in self._workers:
            self._jobs.put(None)
        self._calls.close()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck = [worker.name for worker in self._workers if worker.is_alive()]
        if stuck:
            log.warning(
                "%d model loads still running after %.0f s (%s); leaving them behind",
                len(stuck),
                timeout_s,
                ", ".join(stuck),
            )

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._closed:  # dropped: the core is closing
                self._finish(job)
                continue
            self._run(job)

    def _finish(self, job: LoadJob) -> None:
        key = job.descriptor.data_type
        self._slots.load_done(key, job.sequence)
        following = None
        with self._idle:
            self._pending -= 1
            if job.in_key_order:
                waiting = self._in_order.get(key)
                if waiting:
                    following = waiting.popleft()
                else:
                    self._in_order.pop(key, None)
            if following is not None and not self._closed:
                # queued under the lock: close() queues its stop markers after it, so a
                # worker takes it (a closed loader's workers finish it unloaded)
                self._jobs.put(following)
                following = None
            self._idle.notify_all()
        if following is not None:  # closed meanwhile: dropped like those close() found
            self._finish(following)

    def _run(self, job: LoadJob) -> None:
        try:
            self._load_and_stage(job)
        # a loader thread must outlive any load (plug-in code calling sys.exit() included);
        # _load_and_stage rejects
        except (Exception, SystemExit):
            log.exception("loading model %r failed unexpectedly", job.descriptor.name)
        finally:
            self._finish(job)

    def _load_and_stage(self, job: LoadJob) -> None:
        descriptor = job.descriptor
        key = descriptor.data_type
        started = time.perf_counter()
        try:
            artifact = self._artifact(descriptor)
            descriptor = _with_location_digest(descriptor, artifact)
            model = self._load(descriptor, artifact)
            try:
                value_type = validate(
                    model, self._slots.find_slot(key), descriptor, self._probe(model, descriptor)
                )
            except BaseException as err:
                if not isinstance(err.__cause__, CallOverran):  # else closed once it returns
                    model.close()
                raise
        except Exception as err:  # noqa: BLE001 - plug-in factories may raise anything
            self._reject(key, job, err)
            return
        # An inline model without a version is labelled by its digest: hashed once, here.
        version = descriptor.version_label
        served = ServedModel(
            identity=_identity(descriptor, version, job.sequence),
            model=model,
            stats=ModelServingInfo(
                descriptor.name, descriptor.description, version, descriptor.model_type_label
            ),
            load_duration_s=time.perf_counter() - started,
            submitted_at=job.submitted_at,
            value_type=value_type,
            declared_type=VALUE_TYPE_OPTION in descriptor.options,
            reload=self._reloader(descriptor),
            on_release=self._live.forget,
        )
        try:
            staged = self._slots.stage(key, served)
        except RejectedInput as err:  # another value type than a model staged meanwhile
            served.close()
            self._reject(key, job, err)
            return
        if not staged:
            served.close()
        self._events.put(
            ModelEvent(
                ModelEventKind.STAGED if staged else ModelEventKind.SUPERSEDED,
                key,
                descriptor.name,
                version,
                load_duration_s=served.load_duration_s,
                origin=job.origin,
            )
        )

    def _reloader(self, descriptor: ModelDescriptor) -> Callable[[], Model]:
        """Makes the model again from the same bytes (a location is re-read and its digest
        checked: a changed file fails rather than serving another model under this name)."""

        def reload() -> Model:
            return self._load(descriptor, self._artifact(descriptor))

        return reload

    def _load(self, descriptor: ModelDescriptor, artifact: Artifact) -> Model:
        factory = self._registry.factory_for(descriptor.model_type)
        request = LoadRequest(
            name=descriptor.name,
            artifact=artifact,
            options=descriptor.options,
            output=descriptor.output,
            context=self._registry.context,
        )
        try:
            model = self._calls.call(
                lambda: factory.load(request),
                self._load_timeout_s,
                f"loading model {descriptor.name!r}",
            )
        except RejectedInput:
            raise
        except CallOverran as err:
            self._calls.abandon(err.call, _close_when_returned)
            raise ModelLoadError(
                f"the {factory.format_name} factory did not load model {descriptor.name!r} "
                f"within {self._load_timeout_s:g} s (serving.load_timeout_s); the load is left "
                "running and its model closed if it ever returns"
            ) from err
        except SystemExit as err:  # a library calling sys.exit() rejects this model, not all
            raise ModelLoadError(
                f"{factory.format_name} factory raised SystemExit({err.code!r})"
            ) from err
        except Exception as err:
            raise ModelLoadError(f"{factory.format_name} factory failed: {err}") from err
        if not isinstance(model, Model) or not isinstance(model.inputs, InputSpec):
            raise ModelLoadError(
                f"{factory.format_name} factory returned {type(model).__name__}, "
                "not a Model with an InputSpec"
            )
        return with_feature_names(model, descriptor.options, descriptor.name)

    def _probe(self, model: Model, descriptor: ModelDescriptor) -> Callable[[FloatMatrix], object]:
        """Scores a probe batch with the probe time limit: a model that overruns it is left
        running, rejected, and closed once its call returns."""

        def probe(rows: FloatMatrix) -> object:
            try:
                return self._calls.call(
                    lambda: model.score_batch(rows),
                    self._probe_timeout_s,
                    f"probing model {descriptor.name!r}",
                )
            except CallOverran as err:
                self._calls.abandon(err.call, lambda _result, _error: model.close())
                raise ModelValidationError(
                    f"model {descriptor.name!r} did not score a probe batch of {len(rows)} rows "
                    f"within {self._probe_timeout_s:g} s (serving.probe_timeout_s)"
                ) from err

        return probe

    @property
    def overrunning_calls(self) -> int:
        """Loads and probes still running past their time limit."""
        return len(self._calls.overrunning)

    def _artifact(self, descriptor: ModelDescriptor) -> Artifact:
        if descriptor.data is not None:
            return InlineArtifact(descriptor.data)
        path = resolve_location(descriptor.location or "", self._model_roots)
        if descriptor.sha256:
            actual = path_digest(path)
            if actual != descriptor.sha256:
                raise ModelLoadError(
                    f"location {path} does not match its sha256: declared "
                    f"{descriptor.sha256[:12]}…, actual {actual[:12]}…"
                )
        return PathArtifact(path)

    def _reject(self, key: str, job: LoadJob, err: Exception) -> None:
        descriptor = job.descriptor
        kind = err.kind if isinstance(err, RejectedInput) else ModelLoadError.kind
        reason = str(err) or type(err).__name__
        version = descriptor.version_label
        self._slots.reject(Rejection(key, descriptor.name, version, kind, reason))
        self._events.put(
            ModelEvent(
                ModelEventKind.REJECTED,
                key,
                descriptor.name,
                version,
                reason=reason,
                error_kind=kind,
                origin=job.origin,
            )
        )


def _with_location_digest(descriptor: ModelDescriptor, artifact: Artifact) -> ModelDescriptor:
    """A location model without a declared digest gets the digest of what it points at."""
    if isinstance(artifact, PathArtifact) and not descriptor.sha256:
        return dataclasses.replace(descriptor, sha256=path_digest(artifact.path))
    return descriptor


def _identity(descriptor: ModelDescriptor, version: str, sequence: int) -> ModelIdentity:
    return ModelIdentity(
        name=descriptor.name,
        version=version,
        description=descriptor.description,
        model_type=descriptor.model_type_label,
        sequence=sequence,
    )


def _close_when_returned(result: object, _error: BaseException | None) -> None:
    """The late result of an abandoned load: a model nobody will serve."""
    if isinstance(result, Model):
        result.close()


def validate(
    model: Model,
    slot: ModelSlot | None,
    descriptor: ModelDescriptor,
    score_probe: Callable[[FloatMatrix], object] | None = None,
) -> ValueType:
    """Raises :class:`ModelValidationError` if ``model`` cannot serve its key's records.

    The checks are serving's own: the inputs map onto the columns the key's records carry (a
    positional model onto the key's fixed field order), and a probe batch (recent real rows of
    the key, else zeros) scores into output that serving and encoding accept, of its declared
    value type if any. Returns the model's value type (the key's is checked when it stages).
    ``score_probe`` scores the probe batch (with a time limit); by default the model itself.
    """
    name = descriptor.name
    spec = model.inputs
    if spec.width <= 0:
        raise ModelValidationError(f"model {name!r} declares {spec.width} inputs")
    schema = None if slot is None else slot.observed_schema()
    probe = np.zeros((PROBE_ROWS, spec.width))
    if schema is not None:
        order = slot.positional_order if slot is not None else None
        if spec.names is None and order is not None:
            if len(order) != spec.width:
                raise ModelValidationError(
                    f"model {name!r} takes {spec.width} positional features; the records of "
                    f"its key carry {len(order)} ({', '.join(order)})"
                )
            spec = InputSpec(spec.width, order)
        try:
            mapping = map_features(schema.feature_names, spec)
        except RejectedInput as err:
            raise ModelValidationError(
                f"model {name!r} does not fit the records of its key: {err}"
            ) from err
        if mapping.missing:
            raise ModelValidationError(
                f"model {name!r} needs features the records of its key do not carry: "
                f"{', '.join(mapping.missing)} (records carry {', '.join(schema.feature_names)})"
            )
        if len(schema.sample):
            probe = schema.sample[:, mapping.columns]
    try:
        output = (score_probe or model.score_batch)(probe)
    except ModelValidationError:
        raise
    except (Exception, SystemExit) as err:  # sys.exit() in a model library rejects the model
        raise ModelValidationError(
            f"model {name!r} raised scoring a probe batch of {len(probe)} rows: {err}"
        ) from err
    return check_probe(
        output, len(probe), name=name, declared=descriptor.options.get(VALUE_TYPE_OPTION)
    )
