"""Prometheus metrics, created once at import with few, fixed labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INTAKE_REQUESTS = Counter(
    "oms_intake_requests_total",
    "Intake API requests by route and HTTP status.",
    ["route", "status"],
)
INTAKE_LATENCY = Histogram(
    "oms_intake_request_seconds",
    "Intake API request latency by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DOCUMENTS_ACCEPTED = Counter(
    "oms_documents_accepted_total", "Document requests stored by intake.", ["priority"]
)
DOCUMENTS_REJECTED = Counter(
    "oms_documents_rejected_total",
    "Document requests refused by intake, by problem type.",
    ["problem"],
)
COMMIT_BATCH_SIZE = Histogram(
    "oms_intake_commit_batch_size",
    "Requests stored per intake transaction (group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
COMMIT_SECONDS = Histogram(
    "oms_intake_commit_seconds",
    "Duration of one intake transaction.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
COMMIT_FAILURES = Counter(
    "oms_intake_commit_failures_total", "Intake transactions that failed.", ["reason"]
)
QUEUE_DEPTH = Gauge("oms_queue_depth", "Events waiting in an in-memory queue.", ["queue"])
QUEUE_CAPACITY = Gauge("oms_queue_capacity", "Capacity of an in-memory queue.", ["queue"])
QUEUE_DROPPED = Counter(
    "oms_queue_dropped_total",
    "Events a full queue could not take (the sweeper re-feeds their documents).",
    ["queue"],
)
REFDATA_CALLS = Counter(
    "oms_refdata_calls_total",
    "Reference Data API calls by resource and outcome.",
    ["resource", "outcome"],
)
REFDATA_STALE_SERVED = Counter(
    "oms_refdata_stale_served_total", "Reference Data answers served stale because the API failed."
)
POOL_SIZE = Gauge("oms_pool_actors", "Actors in a pool.", ["pool"])
ACTORS_BUSY = Gauge("oms_pool_actors_busy", "Actors handling a message now.", ["pool"])
POOL_PAUSED = Gauge("oms_pool_paused", "1 while a pool is paused.", ["pool"])
ACTOR_RESTARTS = Counter(
    "oms_actor_restarts_total", "Actors replaced after their handler raised.", ["pool"]
)
LOG_LINES_SUPPRESSED = Counter(
    "oms_log_lines_suppressed_total",
    "Log lines not written because the same kind of line repeated too often, by logger.",
    ["logger"],
)
COMPONENT_DEATHS = Counter(
    "oms_component_deaths_total",
    "Long-running components that ended while OMS ran (restarted or stopping OMS).",
    ["component"],
)
MESSAGES_SET_ASIDE = Counter(
    "oms_messages_set_aside_total",
    "Messages that failed too often and were left to the sweeper.",
    ["pool"],
)
BATCH_DOCUMENTS = Histogram(
    "oms_thunderhead_batch_documents",
    "Documents per Thunderhead batch submitted.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
PROCESSING_OUTCOMES = Counter(
    "oms_processing_documents_total",
    "Documents leaving processing, by outcome "
    "(submitted, retry, wait, failed, reconciling, skipped).",
    ["outcome"],
)
RECONCILIATIONS = Counter(
    "oms_reconciliation_rounds_total",
    "Reconciliation rounds of batches whose submission outcome was unknown, by decision "
    "(adopted, sent_again, pending, unanswered, failed).",
    ["decision"],
)
BATCH_SPLITS = Counter(
    "oms_thunderhead_batch_splits_total",
    "Batches sent again in halves, by cause (too_large: 413; rejected: refused whole).",
    ["cause"],
)
STAGE_SECONDS = Histogram(
    "oms_stage_seconds",
    "Time from a document's creation to reaching a status.",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
RETRY_SCHEDULE_SIZE = Gauge(
    "oms_retry_schedule_size", "Documents waiting in memory for their next attempt.", ["pool"]
)
POLL_SCHEDULE_SIZE = Gauge("oms_poll_schedule_jobs", "Thunderhead jobs in the poll schedule.")
DOCUMENTS_FINISHED = Counter(
    "oms_documents_finished_total", "Documents that reached a final status.", ["status"]
)
SWEEPER_RECOVERIES = Counter(
    "oms_sweeper_recoveries_total", "Work the sweeper re-fed, by kind.", ["kind"]
)
OUTBOX_BACKLOG = Gauge(
    "oms_outbox_backlog", "Outbox events not yet published to Kafka (dead rows excluded)."
)
OUTBOX_OLDEST_AGE = Gauge(
    "oms_outbox_oldest_unpublished_seconds", "Age of the oldest outbox event not yet published."
)
OUTBOX_DEAD = Gauge("oms_outbox_dead", "Outbox events that failed too often (the error table).")
OUTBOX_PUBLISHED = Counter(
    "oms_outbox_published_total", "Outbox events published to Kafka, by topic.", ["topic"]
)
KAFKA_PUBLISH_ERRORS = Counter(
    "oms_kafka_publish_errors_total",
    "Failed Kafka sends, by kind (unavailable, too_large, topic_refused, rejected).",
    ["kind"],
)
RELAY_LEADER = Gauge(
    "oms_outbox_relay_leader", "1 while this process is the one active outbox relay."
)
