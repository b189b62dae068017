"""Metrics in CloudWatch Embedded Metric Format, through Powertools Metrics.

The hot path only increments in-memory counters (`Telemetry.count`, `Telemetry.observe`); a flush
(every few seconds in the stream consumer, once per invocation in Lambda) turns them into one EMF
document. The metric names below are the contract with `template.yaml`'s alarms and dashboard: a
test reads both and fails when an alarm watches a metric the code does not emit.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from enum import StrEnum

from aws_lambda_powertools import Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "OhipRelay"


class Metric(StrEnum):
    # stream consumer
    EVENTS_RECEIVED = "EventsReceived"
    EVENTS_PUBLISHED = "EventsPublished"
    DUPLICATES_SKIPPED = "DuplicatesSkipped"
    PUBLISH_ERRORS = "PublishErrors"
    PUBLISH_RETRIES = "PublishRetries"
    PUBLISH_LATENCY = "PublishLatency"
    STREAM_LAG = "StreamLag"
    RECONNECTS = "Reconnects"
    CHECKPOINT_OFFSET = "CheckpointOffset"
    STREAM_CONNECTED = "StreamConnected"
    CLAIM_CHECKS = "ClaimChecks"
    OFFSET_REGRESSIONS = "OffsetRegressions"  # OHIP's offsets went backwards: streaming stopped
    LOOKALIKE_MATCHES = "LookalikeMatches"  # a suppression under a content key shared by several events
    AUTH_REFUSALS = "AuthRefusals"  # the OHIP token endpoint refused the credentials (HTTP 400/401/403)
    # the stream fleet (RELAY_FLEET=true), per task, no chain or task dimension (docs/fleet-design.md, 7)
    CHAINS_RUNNING = "ChainsRunning"  # chain sessions the task holds (Maximum: the most loaded task)
    CHAINS_CONNECTED = "ChainsConnected"
    CHAINS_DOWN = "ChainsDown"  # held but not connected
    MAX_STREAM_LAG = "MaxStreamLag"  # seconds, the task's worst chain
    # the poll fallback in fleet mode, per tick
    CHAINS_UNHEALTHY = "ChainsUnhealthy"  # enabled chains judged unhealthy
    CHAINS_WITHOUT_HOLDER = "ChainsWithoutHolder"  # enabled chains no live worker lists
    CHAINS_FALLBACK_ACTIVE = "ChainsFallbackActive"
    # poll fallback
    STREAM_HEALTHY = "StreamHealthy"  # 1 healthy, 0 unhealthy, as the fallback judged it
    FALLBACK_ACTIVE = "FallbackActive"  # 1 while the fallback drains the Poll API
    POLL_EVENTS_FETCHED = "PollEventsFetched"
    POLL_EVENTS_PUBLISHED = "PollEventsPublished"
    POLL_ERRORS = "PollErrors"
    POLL_SPILLED = "PollEventsSpilled"  # fetched but not yet on the queue: parked for the next tick
    MALFORMED_EVENTS = "MalformedEvents"  # parked under malformed/ in the bucket (both channels)
    # both channels
    DUPLICATES_SUPPRESSED = "DuplicatesSuppressed"  # the seen-set kept an event off the queue
    # enricher (service "enricher")
    ENRICHED = "EventsEnriched"  # published with the resource's current state
    ENRICH_PASSTHROUGH = "EventsPassedThrough"  # no route for the module/event: published unenriched
    ENRICH_NOT_FOUND = "ResourcesNotFound"  # the REST API answered 404: published with resource null
    ENRICH_ERRORS = "EnrichErrors"  # records failed back to SQS (redelivery, then the DLQ)
    ENRICH_RETRIES = "EnrichRetries"  # REST calls repeated after a 401, 429, 5xx or a timeout


_UNITS: dict[Metric, MetricUnit] = {
    Metric.PUBLISH_LATENCY: MetricUnit.Milliseconds,
    Metric.STREAM_LAG: MetricUnit.Seconds,
    Metric.CHAINS_RUNNING: MetricUnit.Count,
    Metric.CHAINS_CONNECTED: MetricUnit.Count,
    Metric.CHAINS_DOWN: MetricUnit.Count,
    Metric.CHECKPOINT_OFFSET: MetricUnit.NoUnit,
    Metric.STREAM_CONNECTED: MetricUnit.NoUnit,
    Metric.STREAM_HEALTHY: MetricUnit.NoUnit,
    Metric.FALLBACK_ACTIVE: MetricUnit.NoUnit,
    Metric.MAX_STREAM_LAG: MetricUnit.Seconds,
}


class Telemetry:
    """Counters and gauges aggregated in memory, written as EMF on `flush()`. Thread-safe."""

    def __init__(
        self,
        service: str,
        *,
        namespace: str = NAMESPACE,
        metrics: Metrics | None = None,
        emit: bool = True,
    ) -> None:
        """`emit=False`: `flush()` only resets the counters (a terminal run; see
        `config.MetricsOutput`)."""
        self._metrics = metrics or Metrics(namespace=namespace, service=service)
        self._emit = emit
        self._namespace = namespace
        self._service = service
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[Metric, str], float] = defaultdict(float)
        self._gauges: dict[Metric, float] = {}
        self._samples: defaultdict[Metric, list[float]] = defaultdict(list)

    def count(self, metric: Metric, value: float = 1.0, *, close_code: str = "") -> None:
        with self._lock:
            self._counts[(metric, close_code)] += value

    def gauge(self, metric: Metric, value: float) -> None:
        with self._lock:
            self._gauges[metric] = value

    def observe(self, metric: Metric, value: float) -> None:
        """A sample of a distribution (latency); the flush writes the largest since the last flush."""
        with self._lock:
            self._samples[metric].append(value)

    def totals(self) -> dict[str, float]:
        """Counters since the last flush, for logs and tests."""
        with self._lock:
            return {f"{m.value}{'.' + c if c else ''}": v for (m, c), v in self._counts.items()}

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, defaultdict(float)
            gauges, self._gauges = self._gauges, {}
            samples, self._samples = self._samples, defaultdict(list)
        if not (counts or gauges or samples) or not self._emit:
            return
        totals: defaultdict[Metric, float] = defaultdict(float)
        for (metric, _code), value in counts.items():
            totals[metric] += value
        for metric, value in totals.items():
            self._metrics.add_metric(name=metric.value, unit=MetricUnit.Count, value=value)
        for metric, value in gauges.items():
            unit = _UNITS.get(metric, MetricUnit.NoUnit)
            self._metrics.add_metric(name=metric.value, unit=unit, value=value)
        for metric, values in samples.items():
            unit = _UNITS.get(metric, MetricUnit.NoUnit)
            self._metrics.add_metric(name=metric.value, unit=unit, value=max(values))
        self._metrics.flush_metrics()
        # The same counts by close code, one small document each (dimensions service + CloseCode),
        # so that the main document stays dimension-free apart from the service.
        for (metric, code), value in counts.items():
            if not code:
                continue
            with single_metric(
                name=metric.value,
                unit=MetricUnit.Count,
                value=value,
                namespace=self._namespace,
                default_dimensions={"service": self._service},
            ) as one:
                one.add_dimension(name="CloseCode", value=code)
