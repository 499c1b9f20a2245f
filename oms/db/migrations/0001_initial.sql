-- OMS schema, version 1: the whole request state machine of ARCHITECTURE §3.

CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,              -- the public part of "oms_<key_id>_<secret>"
    secret_sha256 bytea NOT NULL,                -- keys are random, so a plain digest suffices
    source_system text NOT NULL,
    role          text NOT NULL CHECK (role IN ('source', 'admin')),
    is_demo       boolean NOT NULL DEFAULT false,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id                 uuid PRIMARY KEY,         -- UUIDv7: time-ordered, so inserts stay local
    source_system      text NOT NULL,
    client_reference   text NOT NULL,
    status             text NOT NULL CHECK (status IN (
                           'RECEIVED', 'PROCESSING', 'SUBMITTED', 'COMPLETED', 'FAILED', 'CANCELLED')),
    priority           smallint NOT NULL,        -- 0 urgent, 1 normal, 2 bulk: sorts urgent first
    document_type      text NOT NULL,
    channel            text NOT NULL,
    language           text NOT NULL,
    brand              text NOT NULL,
    recipient          jsonb NOT NULL,
    data               jsonb NOT NULL,
    enrichment         jsonb,                    -- template id/version, batchConfigResId, brand
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz,              -- set while waiting for a retry
    lease_owner        text,                     -- which OMS process works on it now
    lease_expires_at   timestamptz,
    batch_id           uuid,
    thunderhead_job_id text,
    result             jsonb,                    -- output reference, envelopes
    last_error         jsonb,                    -- {reason, detail, messages[]}
    trace_id           text NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT documents_client_reference_key UNIQUE (source_system, client_reference)
);

-- Listing: a source system's documents, newest first, keyset-paginated.
CREATE INDEX documents_by_source ON documents (source_system, created_at DESC, id DESC);
-- Admin search across all source systems.
CREATE INDEX documents_by_created ON documents (created_at DESC, id DESC);
-- Work in flight: what the sweeper and the scheduled mode scan.
CREATE INDEX documents_active ON documents (status, priority, next_attempt_at)
    WHERE status IN ('RECEIVED', 'PROCESSING', 'SUBMITTED');
CREATE INDEX documents_by_batch ON documents (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE document_timeline (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,                   -- intake, processing, monitoring, sweeper, admin:<who>
    from_status text,
    to_status   text NOT NULL,
    detail      jsonb
);
CREATE INDEX document_timeline_by_document ON document_timeline (document_id, id);

CREATE TABLE thunderhead_batches (
    id                  uuid PRIMARY KEY,
    batch_config_res_id text NOT NULL,
    job_id              text,                    -- null until Thunderhead accepted it
    status              text NOT NULL,           -- SUBMITTING, PENDING, RUNNING, COMPLETED, FAILED
    document_count      integer NOT NULL,
    submitted_at        timestamptz,
    next_poll_at        timestamptz,
    polls               integer NOT NULL DEFAULT 0,
    finished_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX thunderhead_batches_to_poll ON thunderhead_batches (next_poll_at)
    WHERE finished_at IS NULL;

-- The transactional outbox. A row is written in the transaction of the change it
-- announces; the relay publishes it to Kafka. Dead rows are the error table.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,        -- CloudEvents ce_id
    topic           text NOT NULL,
    message_key     text NOT NULL,               -- the document id: per-document order
    event_type      text NOT NULL,
    subject         text NOT NULL,
    payload         jsonb NOT NULL,
    trace_id        text,
    created_at      timestamptz NOT NULL,
    published_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    dead_at         timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL;

-- Idempotency-Key records (IETF httpapi draft): scoped to a source system,
-- expire after intake.idempotency_ttl_s; an expired key may be used again.
CREATE TABLE idempotency_keys (
    source_system   text NOT NULL,
    idempotency_key text NOT NULL,
    request_sha256  bytea NOT NULL,
    response_status smallint NOT NULL,
    response_body   bytea NOT NULL,
    document_id     uuid,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (source_system, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
