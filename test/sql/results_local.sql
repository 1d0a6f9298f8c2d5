-- Results come home, without network: webhook verification (the public test
-- vector), ingestion (applied, duplicate, replayed, waiting for its order),
-- forward-only states, NOTIFY and the billing callback, result and error
-- files, and the recovery statistics.
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION pgcrypto;
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';

-- the public test vector of flexfactor-api.md section 7.4 (key in test/regress.conf)
\set vbody '{"Event":"order.completed","TimeStamp":"2023-03-20T17:16:40.898703Z","EventData":null,"ExternalOrderId":"a9735210-1349-49bf-bfde-b737dd07872a","OrderId":"ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429","ConfirmationId":"22ACD1D9","IsTestMode":true,"IsResent":false}'
CREATE TEMP TABLE vector AS SELECT jsonb_build_object(
    'Host', 'fctestwebhook.free.beeceptor.com',
    'X-FC-Nonce', '5f1c2de28a76457c9cb79d1740f2260a',
    'x-fc-date', 'Mon, 20 Mar 2023 17:16:40 GMT',
    'x-fc-content-sha512', 'pLs0Op5VWqQM3ZIumqC2NP6MDqcnwFN1znp/oCuw9LcYd8PtvLC8ProyPg8ZDadsRc36NskT3QGKn/PkNqwWfg==',
    'x-fc-authorization', 'HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512&Signature=+HXN8ZewgINLk+uC/UI92HSWmLK7gZOECPxOGEM91ATyfyzScMF/+osEK5B0UjO7OFqahDvesSo8jmUWMZtQnA==',
    'x-fc-signature', 'SbzcEwAKsViWqrB8+suZMjOdadswbUjLHtIKjDQJYle31xbB8Vr0pVTDaNP28/y+NDynpyFyKKnXmWZy8uJVig==') AS h;
SELECT flexfactor.ff_webhook_check(h, :'vbody', '2023-03-20 17:16:40+00') AS vector FROM vector;
SELECT flexfactor.ff_webhook_check(h, :'vbody', '2023-03-20 17:20:00+00') AS within_skew FROM vector;
SELECT flexfactor.ff_webhook_check(h, :'vbody', now()) AS three_years_later FROM vector;
SELECT flexfactor.ff_webhook_check(h, replace(:'vbody', '22ACD1D9', '22ACD1DA'), '2023-03-20 17:16:40+00') AS tampered_body FROM vector;
SELECT flexfactor.ff_webhook_check(h || '{"Host":"evil.example.com"}', :'vbody', '2023-03-20 17:16:40+00') AS other_host FROM vector;
SELECT flexfactor.ff_webhook_check(h - 'x-fc-signature', :'vbody', '2023-03-20 17:16:40+00') AS no_signature FROM vector;
SELECT flexfactor.ff_webhook_check(h || jsonb_build_object('x-fc-signature', replace(h->>'x-fc-signature', 'S', 'T')), :'vbody', '2023-03-20 17:16:40+00') AS wrong_signature FROM vector;
SELECT flexfactor.ff_webhook_check(h || '{"x-fc-authorization":"Basic dXNlcjpwYXNz"}', :'vbody', '2023-03-20 17:16:40+00') AS wrong_scheme FROM vector;
SELECT flexfactor.ff_ingest_webhook(h, :'vbody') FROM vector;

-- deliveries signed now, as FlexFactor would send them
CREATE FUNCTION pg_temp.signed(body text, nonce text, at timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE sql AS $$
    WITH k AS (SELECT decode('XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw==', 'base64') AS key,
                      to_char(at AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"') AS date,
                      replace(encode(digest(convert_to(body, 'UTF8'), 'sha512'), 'base64'), E'\n', '') AS hash)
    SELECT jsonb_build_object(
        'host', 'billing.example.com', 'x-fc-nonce', nonce, 'x-fc-date', date,
        'x-fc-content-sha512', hash,
        'x-fc-authorization', 'HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512&Signature='
            || replace(encode(hmac(convert_to('POST' || E'\n' || nonce || ';' || date || ';billing.example.com;' || hash, 'UTF8'), key, 'sha512'), 'base64'), E'\n', ''),
        'x-fc-signature', replace(encode(hmac(convert_to(body, 'UTF8'), key, 'sha512'), 'base64'), E'\n', ''))
      FROM k $$;
CREATE FUNCTION pg_temp.event(event text, order_key text, confirmation text DEFAULT 'C0FFEE', resent boolean DEFAULT false, data jsonb DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT json_build_object('Event', event, 'TimeStamp', '2026-11-24T10:00:00Z', 'EventData', data,
                             'ExternalOrderId', 'INV-1', 'OrderId', order_key, 'ConfirmationId', confirmation,
                             'IsTestMode', true, 'IsResent', resent)::text $$;

-- the billing schema learns about every status change
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (invoice_no text PRIMARY KEY, state text NOT NULL DEFAULT 'past_due');
INSERT INTO billing.invoices VALUES ('INV-1'), ('INV-2'), ('INV-3');
CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF o.order_id = 'INV-3' THEN
        RAISE EXCEPTION 'billing is down for INV-3';
    END IF;
    UPDATE billing.invoices SET state = CASE o.status WHEN 'APPROVED' THEN 'paid'
        WHEN 'EXPIRED' THEN 'written_off' WHEN 'REFUNDED' THEN 'refunded' ELSE state END
     WHERE invoice_no = o.order_id;
END $$;
SET flexfactor.on_order_status = 'billing.on_flexfactor';

INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
VALUES ('INV-1', '11111111-1111-4111-8111-111111111111', gen_random_uuid(), 'api', 4999, 'USD', 'SUBMITTED'),
       ('INV-3', '33333333-3333-4333-8333-333333333333', gen_random_uuid(), 'api', 2999, 'USD', 'SUBMITTED');

-- completed: approved, invoice paid, one notification
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-1'), b)
  FROM pg_temp.event('order.completed', '11111111-1111-4111-8111-111111111111') AS b;
-- the same event again (a resend, new nonce): a duplicate, nothing changes
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-2'), b)
  FROM pg_temp.event('order.completed', '11111111-1111-4111-8111-111111111111', resent => true) AS b;
-- a replayed delivery (same nonce) is refused
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-1'), b)
  FROM pg_temp.event('order.completed', '11111111-1111-4111-8111-111111111111') AS b;
-- a late expiry never overwrites APPROVED
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-3'), b)
  FROM pg_temp.event('order.expired', '11111111-1111-4111-8111-111111111111', 'C0FFEF') AS b;
-- a refund moves it to REFUNDED and counts the money once
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-4'), b)
  FROM pg_temp.event('order.refunded', '11111111-1111-4111-8111-111111111111', 'R1',
                     data => '{"amount": 10.00, "refundTransactionId": "rt-1"}') AS b;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-5'), b)
  FROM pg_temp.event('order.refunded', '11111111-1111-4111-8111-111111111111', 'R1', resent => true,
                     data => '{"amount": 10.00, "refundTransactionId": "rt-1"}') AS b;
-- a chargeback is recorded without a status change; unknown events are kept, ignored
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-6'), b)
  FROM pg_temp.event('payment.chargeback.received', '11111111-1111-4111-8111-111111111111', 'CB1',
                     data => '{"amount": 4999, "reasonCode": "10.4"}') AS b;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-7'), b)
  FROM pg_temp.event('challenge.presented', '11111111-1111-4111-8111-111111111111') AS b;
SELECT order_id, status, refunded_cents, confirmation_id, chargeback_at IS NOT NULL AS chargeback
  FROM flexfactor.orders WHERE order_id = 'INV-1';
SELECT * FROM billing.invoices ORDER BY 1;

-- an event for an order not known yet waits, and is applied when it appears
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-8'), b)
  FROM pg_temp.event('order.completed', '22222222-2222-4222-8222-222222222222') AS b;
INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
VALUES ('INV-2', '22222222-2222-4222-8222-222222222222', gen_random_uuid(), 'batch', 1999, 'USD', 'SUBMITTED');
SELECT order_id, status FROM flexfactor.orders WHERE order_id = 'INV-2';
SELECT event, apply_state FROM flexfactor.webhook_events ORDER BY id;
-- the order's history, in order: what NOTIFY flexfactor_order announced
SELECT o.order_id, e.old_status, e.new_status
  FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
 WHERE o.order_id IN ('INV-1', 'INV-2') ORDER BY e.id;

-- a failing callback does not lose the event: recorded for retry
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-9'), b)
  FROM pg_temp.event('order.completed', '33333333-3333-4333-8333-333333333333') AS b;
SELECT o.order_id, o.status, e.callback_state, e.callback_error
  FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
 WHERE o.order_id = 'INV-3';
-- once billing works again, the retry succeeds
CREATE OR REPLACE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE billing.invoices SET state = 'paid' WHERE invoice_no = o.order_id AND o.status = 'APPROVED';
END $$;
UPDATE flexfactor.order_events SET next_callback_at = now() WHERE callback_state = 'failed';
SELECT flexfactor._retry_callbacks() AS retried;
SELECT e.callback_state, e.callback_attempts, i.state AS invoice
  FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
  JOIN billing.invoices i ON i.invoice_no = o.order_id WHERE o.order_id = 'INV-3';
-- the callback runs as its owner, never as the process that applies the
-- change (here a superuser): an owner who rewrites it to grant itself more
-- gains nothing
CREATE ROLE ff_callback_owner;
GRANT USAGE ON SCHEMA flexfactor TO ff_callback_owner;
CREATE TABLE billing.callback_runs (order_id text, run_as text, outcome text);
GRANT INSERT ON billing.callback_runs TO ff_callback_owner;
GRANT USAGE ON SCHEMA billing TO ff_callback_owner;
CREATE FUNCTION billing.owned_callback(o flexfactor.orders) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        ALTER ROLE ff_callback_owner SUPERUSER;
        INSERT INTO billing.callback_runs VALUES (o.order_id, current_user, 'escalated');
    EXCEPTION WHEN insufficient_privilege THEN
        INSERT INTO billing.callback_runs VALUES (o.order_id, current_user, 'refused: ' || SQLSTATE);
    END;
END $$;
ALTER FUNCTION billing.owned_callback(flexfactor.orders) OWNER TO ff_callback_owner;
SET flexfactor.on_order_status = 'billing.owned_callback';
INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
VALUES ('INV-4', '44444444-4444-4444-8444-444444444444', gen_random_uuid(), 'api', 2999, 'USD', 'SUBMITTED');
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-cb'), b)
  FROM pg_temp.event('order.completed', '44444444-4444-4444-8444-444444444444') AS b;
SELECT e.new_status, e.callback_state
  FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
 WHERE o.order_id = 'INV-4' ORDER BY e.id;
SELECT * FROM billing.callback_runs;
SELECT rolsuper AS callback_owner_became_superuser FROM pg_roles WHERE rolname = 'ff_callback_owner';
DROP FUNCTION billing.owned_callback(flexfactor.orders);
DROP TABLE billing.callback_runs;
RESET flexfactor.on_order_status;

-- malformed deliveries are refused with their SQLSTATE, nothing stored
\set VERBOSITY sqlstate
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed('not json', 'n-10'), 'not json');
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed('{"OrderId":"11111111-1111-4111-8111-111111111111"}', 'n-11'), '{"OrderId":"11111111-1111-4111-8111-111111111111"}');
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-14'), b)
  FROM pg_temp.event('order.completed', 'INV-1') AS b;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-12', now() - interval '1 hour'), b)
  FROM pg_temp.event('order.completed', '11111111-1111-4111-8111-111111111111') AS b;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-13'), b || ' ')
  FROM pg_temp.event('order.completed', '11111111-1111-4111-8111-111111111111') AS b;
\set VERBOSITY default
SELECT count(*) AS stored_events FROM flexfactor.webhook_events;

-- events that name no order (payout.*, OrderId null, absent or empty) are
-- acknowledged and kept as not applicable, never refused (FlexFactor would
-- retry a refusal for good); their nonce is still used once
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-20'), b)
  FROM pg_temp.event('payout.created', NULL, 'P1', data => '{"payoutId": "po-1", "amount": 1250.50, "status": "pending"}') AS b;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-21'), b)
  FROM (SELECT '{"Event":"payout.updated","TimeStamp":"2026-11-24T11:00:00Z","EventData":{"payoutId":"po-1","status":"completed"},"ConfirmationId":"P2","IsTestMode":true,"IsResent":false}'::text AS b) AS t;
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-22'), b)
  FROM pg_temp.event('order.completed', '') AS b;
\set VERBOSITY sqlstate
SELECT flexfactor.ff_ingest_webhook(pg_temp.signed(b, 'n-20'), b)
  FROM pg_temp.event('payout.created', NULL, 'P1') AS b;
\set VERBOSITY default
SELECT event, order_session_key, event_time, event_data->>'status' AS payout_status, apply_state, apply_error,
       applied_at IS NOT NULL AS settled
  FROM flexfactor.webhook_events WHERE nonce IN ('n-20', 'n-21', 'n-22') ORDER BY id;
SELECT order_id, status FROM flexfactor.orders WHERE order_id = 'INV-1';

-- result files: applied once, orders created, rejected lines set aside
DELETE FROM flexfactor.declines WHERE id IN (SELECT id FROM flexfactor.decline_status WHERE state = 'pending');    -- left by earlier suites
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
SELECT 'R-' || i, 'tx', gen_random_uuid(), flexfactor.ff_decline('R-' || i, 1500 + i, 'USD', 'tok', 'tx')
  FROM generate_series(1, 3) i;
SELECT flexfactor._create_evaluate_batch(10) AS batch \gset
SELECT regexp_replace(file_name, '\.jsonl$', '.result.jsonl') AS result_file FROM flexfactor.batches WHERE id = :batch \gset
-- FlexFactor's answer, line for line: R-1 approved, R-2 submitted, R-3 rejected
SELECT string_agg(json_build_object(
           'sequenceNumber', l.sequence_number, 'orderId', l.line::jsonb->>'orderId',
           'orderSessionKey', CASE l.line::jsonb->>'orderId' WHEN 'R-3' THEN NULL
                              ELSE 'aaaaaaaa-0000-4000-8000-00000000000' || l.sequence_number END,
           'status', CASE l.line::jsonb->>'orderId' WHEN 'R-1' THEN 'APPROVED' WHEN 'R-2' THEN 'SUBMITTED' ELSE 'REJECTED' END,
           'success', l.line::jsonb->>'orderId' <> 'R-3',
           'errors', CASE WHEN l.line::jsonb->>'orderId' = 'R-3'
                          THEN '[{"item1":"card not whitelisted","item2":"400","item3":"400","item4":true}]'::json
                          ELSE '[]'::json END)::text || E'\n', '' ORDER BY l.sequence_number) AS result_body
  FROM flexfactor.batch_file_lines(:batch) l \gset
-- a file that does not line up with the batch is refused whole
\set VERBOSITY sqlstate
SELECT flexfactor._apply_result_file(:'result_file', replace(:'result_body', '"R-1"', '"R-9"'));
SELECT flexfactor._apply_result_file(:'result_file', split_part(:'result_body', E'\n', 1));
\set VERBOSITY default
SELECT count(*) AS nothing_applied FROM flexfactor.batch_lines WHERE batch_id = :batch AND status IS NOT NULL;
SELECT flexfactor._apply_result_file(:'result_file', :'result_body');
SELECT flexfactor._apply_result_file(:'result_file', 'whatever') AS again;
SELECT order_id, source, status, order_session_key, amount_cents FROM flexfactor.orders WHERE order_id LIKE 'R-%' ORDER BY 1;
SELECT order_id, state, regexp_replace(set_aside_reason, '_\d{8}T\d{6}Z_', '_<stamp>_') AS set_aside_reason
  FROM flexfactor.decline_status WHERE order_id LIKE 'R-%' ORDER BY 1;
SELECT state FROM flexfactor.batches WHERE id = :batch;

-- an error file: the batch is rejected whole, its rows set aside; requeue brings them back
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
SELECT 'X-' || i, 'tx', gen_random_uuid(), flexfactor.ff_decline('X-' || i, 1500, 'USD', 'tok', 'tx')
  FROM generate_series(1, 2) i;
SELECT flexfactor._create_evaluate_batch(10) AS xbatch \gset
SELECT regexp_replace(file_name, '\.jsonl$', '.error.json') AS error_file FROM flexfactor.batches WHERE id = :xbatch \gset
SELECT flexfactor._apply_error_file(:'error_file', '{"error": "more than 2000 lines", "lineCount": 2437}');
SELECT state, last_error FROM flexfactor.batches WHERE id = :xbatch;
SELECT order_id, state, regexp_replace(set_aside_reason, '_\d{8}T\d{6}Z_', '_<stamp>_') AS set_aside_reason
  FROM flexfactor.decline_status WHERE order_id LIKE 'X-%' ORDER BY 1;
SELECT flexfactor.ff_requeue_batch(:xbatch) AS requeued;
SELECT order_id, state, batch_id > :xbatch AS in_a_new_batch FROM flexfactor.decline_status WHERE order_id LIKE 'X-%' ORDER BY 1;
SELECT b.line_count, b.state, b.file_name <> x.file_name AS new_file,
       (SELECT string_agg(l.line, E'\n' ORDER BY l.sequence_number) FROM flexfactor.batch_file_lines(b.id) l)
     = (SELECT string_agg(l.line, E'\n' ORDER BY l.sequence_number) FROM flexfactor.batch_file_lines(x.id) l) AS same_lines
  FROM flexfactor.batches x JOIN flexfactor.batches b ON b.id = x.requeued_as WHERE x.id = :xbatch;
SELECT flexfactor.ff_requeue_batch(:xbatch) AS twice;
SELECT flexfactor.ff_requeue_batch(:batch);

-- recovery statistics
SELECT currency, submitted, approved, declined, expired, cancelled, refunded, pending, recovery_rate_pct,
       recovery_value_pct, submitted_cents, recovered_cents
  FROM flexfactor.recovery_stats;

RESET flexfactor.mid;
DROP SCHEMA billing CASCADE;
REVOKE USAGE ON SCHEMA flexfactor FROM ff_callback_owner;
DROP ROLE ff_callback_owner;
DROP EXTENSION pgcrypto;
