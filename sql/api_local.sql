-- The API's local logic, no network: exact money conversion, forward-only
-- order states, deterministic idempotency keys, payload checks, body helpers.
\set VERBOSITY default
\set SHOW_CONTEXT never

-- cents to dollars, exactly (the /refund body takes dollars)
SELECT c, flexfactor.ff_cents_to_dollars(c)
  FROM unnest(ARRAY[1, 10, 99, 100, 999, 1999, 123456789, 9223372036854775807]::bigint[]) AS c;
SELECT flexfactor.ff_cents_to_dollars(123456789)::numeric * 100 = 123456789 AS round_trips;

-- forward-only states
SELECT cur, inc, flexfactor.ff_next_status(cur, inc) AS next
  FROM (VALUES ('PENDING', 'SUBMITTED'), ('SUBMITTED', 'APPROVED'), ('APPROVED', 'EXPIRED'),
               ('APPROVED', 'SUBMITTED'), ('APPROVED', 'REFUNDED'), ('REFUNDED', 'APPROVED'),
               ('EXPIRED', 'APPROVED'), ('SUBMITTED', 'REFUNDED'), ('CAPTUREREQUIRED', 'PROCESSING'),
               ('PROCESSING', 'CANCELLED'), ('SUBMITTED', 'SOMETHING_NEW'), ('PENDING', NULL)) AS t(cur, inc);
-- sync MIT: a DECLINED order may still be rescued (APPROVED, CAPTUREREQUIRED,
-- and a refund proves it); no other final state moves, and none moves back
SELECT cur, inc, flexfactor.ff_next_status(cur, inc) AS next
  FROM (VALUES ('DECLINED', 'APPROVED'), ('DECLINED', 'CAPTUREREQUIRED'), ('DECLINED', 'REFUNDED'),
               ('DECLINED', 'CANCELLED'), ('DECLINED', 'EXPIRED'), ('DECLINED', 'SUBMITTED'),
               ('APPROVED', 'DECLINED'), ('CANCELLED', 'APPROVED'), ('EXPIRED', 'REFUNDED'),
               ('REJECTED', 'APPROVED'), ('REFUNDED', 'EXPIRED'), ('REFUNDED', 'DECLINED'),
               ('CAPTUREREQUIRED', 'APPROVED'), ('CAPTUREREQUIRED', 'CANCELLED'),
               ('DECLINED', 'SOMETHING_NEW')) AS t(cur, inc);
-- GET /orders/{id}: no Expired member, so Cancelled with its expiryDate
-- passed is EXPIRED; the integer status when statusName is missing
SELECT flexfactor.ff_status_from_order(a, '2026-11-29 12:00:00+00', sent) AS ours, a, sent
  FROM (VALUES ('{"statusName":"COMPLETED"}'::jsonb, NULL::timestamptz),
               ('{"statusName":"Cancelled","expiryDate":"2026-11-28T12:00:00Z"}', NULL),
               ('{"statusName":"CANCELLED","expiryDate":"2026-11-30T12:00:00Z"}', NULL),
               ('{"statusName":"CANCELLED","expiryDate":"2026-11-29T11:59:59"}', NULL),
               ('{"statusName":"CANCELLED","expiryDate":"2026-11-29T13:00:00+02:00"}', NULL),
               ('{"statusName":"CANCELLED","expiryDate":null}', '2026-11-28 00:00:00+00'),
               ('{"statusName":"CANCELLED","expiryDate":"2026-11-31T00:00:00Z"}', '2026-11-28 00:00:00+00'),
               ('{"statusName":"CANCELLED"}', '2026-12-05 00:00:00+00'),
               ('{"statusName":"CANCELLED","isExpired":true}', NULL),
               ('{"status":2,"expiryDate":"2026-11-01T00:00:00Z"}', NULL),
               ('{"status":2}', NULL),
               ('{"statusName":"RETURNED"}', NULL), ('{"statusName":"DRAFT"}', NULL),
               ('{"statusName":"Capturerequired","status":5}', NULL), ('{"status":7}', NULL),
               ('{"status":1}', NULL), ('{"status":"7"}', NULL), ('{"statusName":"PROBLEM","status":3}', NULL))
       AS t(a, sent);

-- idempotency keys: same attempt, same key; another attempt, another key
SELECT flexfactor.ff_attempt_key('evaluate', 'mid', 'INV-1', 'tx-1')
     = flexfactor.ff_attempt_key('evaluate', 'mid', 'INV-1', 'tx-1') AS same_attempt_same_key,
       flexfactor.ff_attempt_key('evaluate', 'mid', 'INV-1', 'tx-1')
    <> flexfactor.ff_attempt_key('evaluate', 'mid', 'INV-1', 'tx-2') AS new_attempt_new_key,
       flexfactor.ff_attempt_key('evaluate', 'mid', 'INV-1', 'tx-1')
    <> flexfactor.ff_attempt_key('refund', 'mid', 'INV-1', 'tx-1') AS kinds_differ,
       substr(flexfactor.ff_attempt_key('cancel', 'x')::text, 15, 1) AS uuid_version;

-- body helpers
SELECT jsonb_pretty(flexfactor.ff_decline('INV-7', 4999, 'usd', 'tok-123', 'gw-7781',
           decline_code => '51', email => 'jane@example.com',
           expiry => '2026-12-08 10:00:00+00', subscription_id => 'sub-9',
           declined_at => '2026-11-24 09:30:00+00'));
SELECT flexfactor.ff_decline('INV-8', 1999, 'EUR', 'tok', 'tx') ? 'payer' AS has_payer_without_email;
SELECT jsonb_pretty(flexfactor.ff_payment('INV-9', 2500, 'usd', 'gw-1', card_bin => '411111', card_last4 => '1111'));

-- local refusals: nothing is sent for a body FlexFactor would reject
SELECT flexfactor.ff_evaluate('[1,2]');
SELECT flexfactor.ff_evaluate('{"transaction":{"id":"t","amount":100,"currency":"USD"}}');
SELECT flexfactor.ff_evaluate('{"orderId":"A"}');
SELECT flexfactor.ff_evaluate('{"orderId":"A","transaction":{"id":"t","amount":19.99,"currency":"USD"}}');
SELECT flexfactor.ff_evaluate('{"orderId":"A","transaction":{"id":"t","amount":-5,"currency":"USD"}}');
SELECT flexfactor.ff_evaluate('{"orderId":"A","transaction":{"id":"t","amount":500,"currency":"dollars"}}');
SELECT flexfactor.ff_evaluate('{"orderId":"A","idempotencyKey":"nope","transaction":{"id":"t","amount":500,"currency":"USD"}}');
SELECT flexfactor.ff_order('not-a-guid');
SELECT flexfactor.ff_refund('8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90');
SELECT flexfactor.ff_cancel('8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90');
SELECT flexfactor.ff_transmit('"x"');
SELECT flexfactor.ff_transmit('{"orderId":"A","paymentMethod":{"cardNumber":"4111111111111111"}}');
SELECT flexfactor.ff_tokenize('{"credit_card":{}}');
-- nothing was stored by the refusals
SELECT count(*) AS orders, (SELECT count(*) FROM flexfactor.transmit_queue) AS transmits
  FROM flexfactor.orders;

-- refusals that need an order in a given state, still without any request
INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
VALUES ('R-1', '11111111-1111-4111-8111-111111111111', gen_random_uuid(), 'api', 5000, 'USD', 'SUBMITTED'),
       ('R-2', '22222222-2222-4222-8222-222222222222', gen_random_uuid(), 'api', 5000, 'USD', 'APPROVED');
SELECT flexfactor.ff_refund('11111111-1111-4111-8111-111111111111', 100);
SELECT flexfactor.ff_refund('22222222-2222-4222-8222-222222222222', 5001);
SELECT flexfactor.ff_refund('22222222-2222-4222-8222-222222222222', 0);
SELECT flexfactor.ff_cancel('22222222-2222-4222-8222-222222222222');
-- captures: CAPTUREREQUIRED orders only, up to the authorised amount
INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
VALUES ('R-3', '33333333-3333-4333-8333-333333333333', gen_random_uuid(), 'api', 4999, 'USD', 'CAPTUREREQUIRED');
SELECT flexfactor.ff_capture('8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90');
SELECT flexfactor.ff_capture('not-a-guid');
SELECT flexfactor.ff_capture('22222222-2222-4222-8222-222222222222');
SELECT flexfactor.ff_capture('33333333-3333-4333-8333-333333333333', 5000);
SELECT flexfactor.ff_capture('33333333-3333-4333-8333-333333333333', 0);
SELECT order_id, status, refunded_cents FROM flexfactor.orders ORDER BY order_id;
SELECT count(*) AS captures, (SELECT count(*) FROM flexfactor.refunds) AS refunds FROM flexfactor.captures;

-- what a refused refund or capture says: the recorded 2001 refusal, and a
-- refusal whose code is only in its error tuples
SELECT flexfactor._refusal_detail(200, '{"responseCode": "2001",
  "responseMessage": "Amount to refund (1.00) is greater than maximum refund amount in (0.00))",
  "transactionId": null, "success": false, "result": null, "status": "FAILED", "statusCode": null,
  "errors": [{"item1": "Amount to refund (1.00) is greater than maximum refund amount in (0.00))",
              "item2": "2001", "item3": "2001", "item4": true}], "customProperties": {}}');
SELECT flexfactor._refusal_detail(400, '{"success": false, "status": "FAILED", "captureStatus": "FAILED",
  "errors": [{"item1": "Order is not awaiting capture, card 4111111111111111", "item2": "2002"}]}');

-- a queued transmit commits without any network; rolled back, it is gone
BEGIN;
SELECT flexfactor.ff_transmit(flexfactor.ff_payment('P-1', 2500, 'usd', 'ptx-1')) > 0 AS queued;
ROLLBACK;
SELECT count(*) AS after_rollback FROM flexfactor.transmit_queue;

-- API calls need credentials: clear error, no request
SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('N-1', 1500, 'USD', 'tok', 'tx'));
-- (tests talk to loopback only: a closed local port refuses the connection)
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SET flexfactor.api_url = 'http://127.0.0.1:9/v1/';
\set VERBOSITY sqlstate
SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('N-1', 1500, 'USD', 'tok', 'tx'));
SELECT flexfactor.ff_tokenize('{"payment_method":{}}');
\set VERBOSITY default
SELECT count(*) AS orders_after_failed_call FROM flexfactor.orders WHERE order_id = 'N-1';
RESET flexfactor.api_url;
RESET flexfactor.mid;
DELETE FROM flexfactor.orders;
