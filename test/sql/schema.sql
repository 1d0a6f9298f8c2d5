-- Schema: CREATE EXTENSION builds it, constraints guard the states,
-- DROP EXTENSION removes every object.
\set VERBOSITY terse

CREATE EXTENSION flexfactor;
SELECT extversion FROM pg_extension WHERE extname = 'flexfactor';
SELECT flexfactor.ff_version() = (SELECT extversion FROM pg_extension WHERE extname = 'flexfactor') AS library_matches_script;

SELECT c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'flexfactor' AND c.relkind IN ('r', 'v', 'S')
 ORDER BY c.relname;

SELECT indexrelid::regclass AS queue_index
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'flexfactor' AND i.indpred IS NOT NULL
 ORDER BY 1::text;

-- valid rows go in
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-1', '8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90', 'batch', 4999, 'USD');
-- invalid states, amounts and currencies are refused
UPDATE flexfactor.orders SET status = 'MAYBE' WHERE order_id = 'INV-1';
UPDATE flexfactor.orders SET amount_cents = 0 WHERE order_id = 'INV-1';
UPDATE flexfactor.orders SET currency = 'usd' WHERE order_id = 'INV-1';
UPDATE flexfactor.orders SET refunded_cents = 5000 WHERE order_id = 'INV-1';
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-1', gen_random_uuid(), 'api', 100, 'USD');
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-2', gen_random_uuid(), 'sftp', 100, 'USD');
SELECT order_id, status, source, amount_cents FROM flexfactor.orders;

-- queues: one decline per attempt; a queued decline never changes (it is a
-- line of a batch file as queued), only a set-aside reason can be added
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
VALUES ('INV-1', 'tx-1', gen_random_uuid(), '{}');
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
VALUES ('INV-1', 'tx-1', gen_random_uuid(), '{}');
UPDATE flexfactor.declines SET payload = '{"orderId": "INV-9"}';
UPDATE flexfactor.declines SET order_id = 'INV-9';
UPDATE flexfactor.declines SET set_aside_reason = 'set aside by hand';
SELECT order_id, state, batch_id, set_aside_reason FROM flexfactor.decline_status;
UPDATE flexfactor.declines SET set_aside_reason = NULL;
SELECT order_id, state, batch_id FROM flexfactor.decline_status;
INSERT INTO flexfactor.batches (kind, mid, file_name, line_count, first_xid, first_id, last_xid, last_id)
VALUES ('evaluate', 'm', 'evaluate_x.jsonl', 2001, '1', 1, '1', 1);
INSERT INTO flexfactor.batches (kind, mid, file_name, line_count) VALUES ('report', 'm', 'report_x.jsonl', 1);
INSERT INTO flexfactor.batches (kind, mid, file_name, line_count) VALUES ('evaluate', 'm', 'evaluate_x.jsonl', 1);
INSERT INTO flexfactor.batches (kind, mid, file_name, line_count, sha256) VALUES ('transmit', 'm', 'transmit_x.jsonl', 1, 'abc');
INSERT INTO flexfactor.transmit_queue (payload, state) VALUES ('{}', 'delivered');
INSERT INTO flexfactor.webhook_events (event, body, received_via) VALUES ('order.completed', '{}', 'carrier-pigeon');
INSERT INTO flexfactor.webhook_rejections (http_status, reason) VALUES (200, 'fine');

-- the worker status function answers
SELECT role, state IS NOT NULL AS has_state FROM flexfactor.ff_worker_status() ORDER BY role;

-- DROP EXTENSION leaves nothing behind
DROP EXTENSION flexfactor;
SELECT count(*) AS schemas_left FROM pg_namespace WHERE nspname = 'flexfactor';
SELECT count(*) AS functions_left FROM pg_proc WHERE proname LIKE 'ff\_%';
-- and it can be created again
CREATE EXTENSION flexfactor;
SELECT count(*) AS orders_after_recreate FROM flexfactor.orders;
