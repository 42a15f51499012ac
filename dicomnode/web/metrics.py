"""``/metrics``: Prometheus figures computed from the database at each scrape.

Being computed from the rows that every process writes, the figures are right across receiver
processes, workers on other hosts and restarts. Label values come from fixed lists (states as
stored, configured destination names, stage names, refusal reasons by DIMSE status), never UIDs
or free text. Histograms are added to as jobs finish; a restarted console rebuilds them from
the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from dicomnode.config import Settings
from dicomnode.db.models import (
    AssociationCount,
    AssociationEvent,
    DiscardedClass,
    Instance,
    Job,
    OutboxItem,
    ReceiveError,
    Series,
)
from dicomnode.db.session import SessionFactory
from dicomnode.jobs.leases import live_nodes as alive
from dicomnode.web.data import free_disk_bytes

STAGES = ("load", "segment", "measure", "predict", "encode")
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
LATENCY_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
REFUSAL_REASONS = {0xA700: "out_of_resources", 0xA900: "dataset_mismatch",
                   0x0110: "processing_failure"}
ASSOCIATION_RESULTS = ("accepted", "rejected", "aborted")
_LOOKBACK = timedelta(minutes=10)  # rows finishing out of order still get counted once


def refusal_reason(status: int) -> str:
    if status in REFUSAL_REASONS:
        return REFUSAL_REASONS[status]
    return "cannot_understand" if 0xC000 <= status <= 0xCFFF else "other"


class _Histogram:
    """Cumulative buckets, a sum and a count for one label value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*[str(b) for b in self.bounds], "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class DatabaseCollector(Collector):
    """Every ``dicomnode_*`` metric, read from the database when Prometheus scrapes."""

    def __init__(self, sessions: SessionFactory, settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self._lock = threading.Lock()
        self._stage = {s: _Histogram(STAGE_BUCKETS) for s in STAGES}
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._jobs_seen: set[int] = set()
        self._latency_seen: set[int] = set()
        self._jobs_since: datetime | None = None
        self._sent_since: datetime | None = None

    def _destination(self, name: str) -> str:
        return name if name in {d.name for d in self.settings.destinations} else "other"

    def _update_histograms(self, session: Any) -> None:
        query = select(Job.id, Job.timings_s, Job.finished_at).where(Job.state == "done")
        if self._jobs_since is not None:
            query = query.where(Job.finished_at >= self._jobs_since - _LOOKBACK)
        for job_id, timings, finished in session.execute(query):
            if job_id in self._jobs_seen:
                continue
            self._jobs_seen.add(job_id)
            for stage in STAGES:
                value = (timings or {}).get(stage)
                if isinstance(value, int | float):
                    self._stage[stage].observe(float(value))
            if finished is not None and (self._jobs_since is None or finished > self._jobs_since):
                self._jobs_since = finished
        # Latency: the last instance acknowledged to the last output delivered, once every
        # output of the job is sent.
        candidates = select(OutboxItem.job_id).where(OutboxItem.state == "sent")
        if self._sent_since is not None:
            candidates = candidates.where(OutboxItem.sent_at >= self._sent_since - _LOOKBACK)
        rows = session.execute(
            select(OutboxItem.job_id, func.count(),
                   func.sum(case((OutboxItem.state == "sent", 1), else_=0)),
                   func.max(OutboxItem.sent_at), Series.last_received_at)
            .join(Job, Job.id == OutboxItem.job_id).join(Series, Series.id == Job.series_id)
            .where(OutboxItem.job_id.in_(candidates.distinct()))
            .group_by(OutboxItem.job_id, Series.last_received_at)).all()
        for job_id, n, sent, last_sent, last_received in rows:
            if job_id in self._latency_seen or last_sent is None:
                continue
            if self._sent_since is None or last_sent > self._sent_since:
                self._sent_since = last_sent
            if sent == n:
                self._latency_seen.add(job_id)
                self._latency.observe(max(0.0, (last_sent - last_received).total_seconds()))

    def collect(self) -> Iterator[Metric]:
        with self._lock, self.sessions() as session:
            received = (session.scalar(select(func.count(Instance.id))) or 0) + (
                session.scalar(select(func.sum(DiscardedClass.count))) or 0)
            refused = session.execute(select(ReceiveError.status, func.count())
                                      .group_by(ReceiveError.status)).all()
            associations = [*session.execute(select(AssociationEvent.outcome, func.count())
                                             .group_by(AssociationEvent.outcome)),
                            *session.execute(  # counted, not recorded one by one
                                select(AssociationCount.result, func.sum(AssociationCount.count))
                                .group_by(AssociationCount.result))]
            series = session.execute(select(Series.state, func.count())
                                     .group_by(Series.state)).all()
            jobs = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            outbox = session.execute(
                select(OutboxItem.destination, OutboxItem.state, func.count(),
                       func.sum(OutboxItem.attempts))
                .group_by(OutboxItem.destination, OutboxItem.state)).all()
            self._update_histograms(session)
            stage = {s: h.buckets() for s, h in self._stage.items()}
            stage_sums = {s: h.total for s, h in self._stage.items()}
            latency, latency_sum = self._latency.buckets(), self._latency.total
        yield CounterMetricFamily("dicomnode_instances_received",
                                  "Instances acknowledged (stored CT and counted other classes)",
                                  value=received)
        by_reason: dict[str, int] = {r: 0 for r in (*REFUSAL_REASONS.values(),
                                                    "cannot_understand", "other")}
        for status, n in refused:
            by_reason[refusal_reason(status)] += n
        m = CounterMetricFamily("dicomnode_instances_refused", "Instances refused, by reason",
                                labels=["reason"])
        for reason, n in by_reason.items():
            m.add_metric([reason], n)
        yield m
        by_result = dict.fromkeys(ASSOCIATION_RESULTS, 0)
        for outcome, n in associations:
            key = outcome if outcome in by_result else "rejected"
            by_result[key] += n
        m = CounterMetricFamily("dicomnode_associations",
                                "Associations: accepted, and refused by access control or limits",
                                labels=["result"])
        for result, n in by_result.items():
            m.add_metric([result], n)
        yield m
        yield self._by_state("dicomnode_series", "Series by their current state", series)
        yield self._by_state("dicomnode_jobs", "Jobs by their current state", jobs)
        yield GaugeMetricFamily("dicomnode_queue_depth", "Jobs waiting for the worker",
                                value=dict(jobs).get("queued", 0))
        yield from self._outbox(outbox)
        h = HistogramMetricFamily("dicomnode_stage_seconds", "Seconds per pipeline stage",
                                  labels=["stage"])
        for s in STAGES:
            h.add_metric([s], stage[s], stage_sums[s])
        yield h
        h = HistogramMetricFamily("dicomnode_result_latency_seconds",
                                  "Last instance acknowledged to all outputs delivered")
        h.add_metric([], latency, latency_sum)
        yield h
        yield GaugeMetricFamily("dicomnode_free_disk_bytes", "Free bytes on the storage disk",
                                value=free_disk_bytes(self.settings))
        workers = alive(self.sessions, "worker", self.settings.web.worker_stale_s)
        yield GaugeMetricFamily("dicomnode_worker_up", "1 when a worker sent a recent heartbeat",
                                value=1 if workers else 0)

    @staticmethod
    def _by_state(name: str, doc: str, rows: Any) -> Metric:
        m = CounterMetricFamily(name, doc, labels=["state"])
        for state, n in sorted(rows):
            m.add_metric([str(state)], n)
        return m

    def _outbox(self, rows: Any) -> Iterator[Metric]:
        sent: dict[str, int] = {}
        failed: dict[str, int] = {}
        retried: dict[str, int] = {}
        pending: dict[str, int] = {}
        for d in self.settings.destinations:
            for table in (sent, failed, retried, pending):
                table[d.name] = 0
        for dest, state, n, attempts in rows:
            name = self._destination(dest)
            for table in (sent, failed, retried, pending):
                table.setdefault(name, 0)
            if state == "sent":
                sent[name] += n
            elif state == "failed":
                failed[name] += n
            elif state == "pending":
                pending[name] += n
            # Every attempt that did not end the item was a transient failure.
            retried[name] += max(0, int(attempts or 0) - (n if state != "pending" else 0))
        m = CounterMetricFamily("dicomnode_deliveries", "Delivery attempts by outcome",
                                labels=["destination", "outcome"])
        for name in sent:
            m.add_metric([name, "sent"], sent[name])
            m.add_metric([name, "failed"], failed[name])
            m.add_metric([name, "retried"], retried[name])
        yield m
        g = GaugeMetricFamily("dicomnode_outbox_pending", "Outputs waiting to be delivered",
                              labels=["destination"])
        for name, n in pending.items():
            g.add_metric([name], n)
        yield g
