-- OMS schema, version 2: attempts vs OMS's own waits, and reconciliation per batch.

-- Waits that are OMS's own (Thunderhead paused, token refused, Reference Data down,
-- reconciliation) are counted apart from attempts: they never exhaust a document.
ALTER TABLE documents ADD COLUMN waits integer NOT NULL DEFAULT 0;

-- A batch whose submission outcome is unknown is RECONCILING: one find-by-reference
-- round per batch decides for all its documents (adopt the job, or send again).
ALTER TABLE thunderhead_batches
    ADD COLUMN reconcile_rounds  integer NOT NULL DEFAULT 0,
    ADD COLUMN unknown_since     timestamptz,   -- when its send was over, answer unknown
    ADD COLUMN unanswered_since  timestamptz,   -- Thunderhead not answering the find since
    ADD COLUMN next_reconcile_at timestamptz,
    ADD COLUMN reconcile_owner   text,
    ADD COLUMN reconcile_until   timestamptz,
    ADD COLUMN last_error        text;

UPDATE thunderhead_batches
SET status = 'RECONCILING', next_reconcile_at = now(), unknown_since = now(), finished_at = NULL
WHERE status = 'UNKNOWN' AND job_id IS NULL;

CREATE INDEX thunderhead_batches_to_reconcile ON thunderhead_batches (next_reconcile_at)
    WHERE status = 'RECONCILING';
