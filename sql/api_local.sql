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
SELECT flexfactor.ff_status_from_order(a) AS ours, a
  FROM (VALUES ('{"statusName":"COMPLETED"}'::jsonb), ('{"statusName":"Cancelled","isExpired":true}'),
               ('{"statusName":"CANCELLED","isExpired":false}'), ('{"statusName":"RETURNED"}'),
               ('{"statusName":"DRAFT"}'), ('{"status":7}')) AS t(a);

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
SELECT order_id, status, refunded_cents FROM flexfactor.orders ORDER BY order_id;

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
