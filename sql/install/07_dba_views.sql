-- sql/install/07_dba_views.sql: views and commands for the DBA (queued declines and their state, export now).
/* ------------------------------------------------------- views for the DBA */

CREATE VIEW flexfactor.queue_status AS
SELECT q.queue, q.state, q.rows, q.oldest, now() - q.oldest AS oldest_age, q.last_error, q.next_attempt_at
  FROM (SELECT 'declines'::text AS queue, d.state, count(*) AS rows, min(d.enqueued_at) AS oldest,
               max(d.set_aside_reason) AS last_error, NULL::timestamptz AS next_attempt_at
          FROM (SELECT CASE WHEN q.set_aside_reason IS NOT NULL THEN 'set_aside'
                            WHEN c.last_id IS NULL
                                 OR (q.enqueue_era, q.enqueue_xid, q.id) > (c.era, c.last_xid, c.last_id) THEN 'pending'
                            ELSE 'batched' END AS state,
                       q.enqueued_at, q.set_aside_reason
                  FROM flexfactor.declines q
                  LEFT JOIN (SELECT b.era, b.last_xid, b.last_id FROM flexfactor.batches b WHERE b.kind = 'evaluate'
                              ORDER BY b.era DESC, b.last_xid DESC, b.last_id DESC LIMIT 1) c ON true) d
         GROUP BY d.state
        UNION ALL
        SELECT 'batches', state, count(*), min(created_at),
               (array_agg(last_error ORDER BY id DESC) FILTER (WHERE last_error IS NOT NULL))[1],
               min(next_attempt_at) FILTER (WHERE state = 'ready')
          FROM flexfactor.batches GROUP BY state
        UNION ALL
        SELECT 'transmit', state, count(*), min(enqueued_at),
               (array_agg(last_error ORDER BY id DESC) FILTER (WHERE last_error IS NOT NULL))[1],
               min(next_attempt_at) FILTER (WHERE state = 'pending')
          FROM flexfactor.transmit_queue GROUP BY state) AS q;
COMMENT ON VIEW flexfactor.queue_status IS
    'Rows per queue and state, the oldest one, the last error and the next attempt';

-- Each queued decline with its state: pending (not in a batch yet), batched
-- (with its batch: the newest one over its row, after a requeue) or set_aside.
CREATE VIEW flexfactor.decline_status AS
SELECT d.id, d.order_id, d.transaction_id, d.idempotency_key, d.payload,
       CASE WHEN d.set_aside_reason IS NOT NULL THEN 'set_aside'
            WHEN b.id IS NULL THEN 'pending'
            ELSE 'batched' END AS state,
       b.id AS batch_id, d.set_aside_reason, d.enqueued_at, b.created_at AS batched_at
  FROM flexfactor.declines d
  LEFT JOIN LATERAL (
       SELECT b.id, b.created_at FROM flexfactor.batches b
        WHERE b.kind = 'evaluate' AND b.era = d.enqueue_era
          AND (b.last_xid, b.last_id) >= (d.enqueue_xid, d.id)
          AND (b.first_xid, b.first_id) <= (d.enqueue_xid, d.id)
        ORDER BY b.last_xid, b.last_id, b.id DESC
        LIMIT 1) b ON true;
COMMENT ON VIEW flexfactor.decline_status IS
    'Each queued decline: pending, batched (with its batch) or set_aside (with the reason)';

CREATE VIEW flexfactor.batch_status AS
SELECT b.id, b.kind, b.file_name, b.state, b.line_count, b.byte_count, b.sha256, b.attempts,
       b.last_error, b.created_at, b.uploaded_at, b.result_at,
       CASE WHEN b.state = 'ready' THEN b.next_attempt_at END AS next_attempt_at,
       count(l.status) FILTER (WHERE l.status IS NOT NULL) AS lines_answered,
       count(*) FILTER (WHERE l.status = 'REJECTED') AS lines_rejected
  FROM flexfactor.batches b
  LEFT JOIN flexfactor.batch_lines l ON l.batch_id = b.id
 GROUP BY b.id;
COMMENT ON VIEW flexfactor.batch_status IS
    'Each batch file: state, size, SHA-256, attempts, last error, answered and rejected lines';

-- Exports now (for pg_cron or by hand): asks the worker for an export pass
-- (fix pending declines into batches, upload every due batch, each in its own
-- transaction) and waits for it; returns the number of files uploaded.  The
-- pass's first failure is recorded on its batch and re-raised as a WARNING;
-- batch files still waiting for a later attempt are named, with its time, in
-- a NOTICE.  Declines the caller has not committed yet are left for a later
-- pass.
CREATE FUNCTION flexfactor.ff_export_batch()
RETURNS integer AS 'MODULE_PATHNAME', 'ff_export_batch' LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- The same; with retry_now => true, after fixing a setting, everything that
-- waits for a retry after a failure is due at once: batch files (tried in
-- this export), queued transmits and failed billing callbacks (the worker's
-- next steps).  An overload, so that ff_export_batch() keeps its grants and
-- pg_cron jobs.
CREATE FUNCTION flexfactor.ff_export_batch(retry_now boolean)
RETURNS integer AS 'MODULE_PATHNAME', 'ff_export_batch_retry' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;


