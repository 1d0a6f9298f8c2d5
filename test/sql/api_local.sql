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

-- body helpers: complete by the real service's rules (flexfactor-api.md 12a)
\set person 'email => ''jane@example.com'', first_name => ''Jane'', last_name => ''Roe'', address_line1 => ''1 Main St'', city => ''Springfield'', state => ''IL'', zip_code => ''62701'', country_code => ''us'''
SELECT jsonb_pretty(flexfactor.ff_decline('INV-7', 4999, 'usd', 'tok-123', 'gw-7781',
           decline_code => '51', :person, avs_result_code => 'Y', response_code_source => 'nmi',
           expiry => '2026-12-08 10:00:00+00', subscription_id => 'sub-9', subscription_interval => 'monthly',
           declined_at => '2026-11-24 09:30:00+00'));
-- without an email or an address the objects are still sent, and refused below
SELECT flexfactor.ff_decline('INV-8', 1999, 'EUR', 'tok', 'tx') -> 'payer' AS payer_without_email;
SELECT jsonb_pretty(flexfactor.ff_payment('INV-9', 2500, 'usd', 'gw-1', email => 'jane@example.com',
           paid_at => '2026-11-24 09:30:00+00', subscription_id => 'sub-9', subscription_interval => 'monthly',
           holder_name => 'Jane Roe', card_type => 'credit', card_brand => 'visa', card_country => 'us',
           expiration_month => 3, expiration_year => 2030, card_bin => '411111', card_last4 => '1111'));

-- local refusals: nothing is sent for a body FlexFactor would reject, and
-- the error names every field it lacks
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SELECT flexfactor.ff_evaluate('[1,2]');
SELECT flexfactor.ff_evaluate('{"transaction":{"id":"t","amount":100,"currency":"USD"}}');
SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('INV-8', 1999, 'EUR', 'tok', 'tx'));
\set complete 'flexfactor.ff_decline(''A'', 500, ''USD'', ''tok'', ''t'', :person, subscription_id => ''s'', subscription_interval => ''monthly'', declined_at => ''2026-11-24 09:30+00'', expiry => ''2026-12-08 00:00+00'')'
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{transaction,amount}', '19.99'));
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{transaction,amount}', '-5'));
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{transaction,currency}', '"dollars"'));
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{expiryDateUtc}', '""'));
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{billingInformation,countryCode}', '"USA"'));
SELECT flexfactor.ff_evaluate(:complete || '{"idempotencyKey":"nope"}');
-- dates the service cannot parse (a day the month does not have), by every
-- path (a leap day parses: below)
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{expiryDateUtc}', '"2027-02-29T00:00:00Z"'));
SELECT flexfactor.ff_enqueue_decline(jsonb_set(:complete, '{transaction,timestampUtc}', '"2026-04-31T09:30:00Z"'));
SELECT flexfactor.ff_transmit(jsonb_set(flexfactor.ff_payment('P-1', 2500, 'usd', 'gw-1', email => 'jane@example.com',
           paid_at => '2026-11-24 09:30:00+00', is_mit => false), '{transaction,timestampUtc}', '"2026-11-31T09:30:00Z"'));
-- isDeclined: a batch line has nobody to fill it in ("The IsDeclined field
-- is required." [OBS]); an /evaluate body or batch line is a declined charge;
-- booleans are JSON booleans
SELECT flexfactor.ff_enqueue_decline(:complete - 'isDeclined');
SELECT flexfactor.ff_enqueue_decline(:complete || '{"isDeclined": false}');
SELECT flexfactor.ff_evaluate(:complete || '{"isDeclined": false}');
SELECT flexfactor.ff_evaluate(:complete || '{"isDeclined": "true"}');
SELECT flexfactor.ff_enqueue_decline(jsonb_set(:complete, '{paymentMethod,token}', '"true"'));

-- each field the real service requires, removed in turn from a complete
-- body: refused with FF023 naming exactly that field, by every path
-- (an accepted body is rolled back: these checks store nothing)
CREATE FUNCTION pg_temp.refusal(call text, body jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT flexfactor.%s($1)', call) USING body;
    RAISE SQLSTATE 'FFTOK';
EXCEPTION
    WHEN SQLSTATE 'FFTOK' THEN RETURN 'accepted';
    WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT path,
       pg_temp.refusal('ff_evaluate', body #- p) ~ ('^FF023: .*(missing|invalid) ([a-zA-Z.]+, )*' || path || '($|[,;( ])') AS evaluate,
       pg_temp.refusal('ff_enqueue_decline', body #- p) ~ ('^FF023: .*(missing|invalid) ([a-zA-Z.]+, )*' || path || '($|[,;( ])') AS batch_line
  FROM (SELECT :complete AS body) b,
       unnest(ARRAY['orderId', 'isMIT', 'isRecurring', 'expiryDateUtc', 'transaction.id', 'transaction.amount',
                    'transaction.currency', 'transaction.timestampUtc', 'transaction.responseCode',
                    'transaction.responseCodeSource', 'transaction.avsResultCode', 'transaction.cvvResultCode',
                    'transaction.cavvResultCode', 'payer.email', 'billingInformation.firstName',
                    'billingInformation.lastName', 'billingInformation.addressLine1', 'billingInformation.city',
                    'billingInformation.country', 'billingInformation.countryCode', 'paymentMethod.cardNumber',
                    'subscription.subscriptionId', 'subscription.interval']) AS path,
       string_to_array(path, '.') AS p;
-- a sync-MIT account sends MIT declines without expiryDateUtc; a batch line never goes without one
SET flexfactor.mit_mode = 'sync';
SELECT pg_temp.refusal('ff_evaluate', :complete - 'expiryDateUtc') LIKE 'FF001%' AS sync_mit_sent_without_expiry,
       pg_temp.refusal('ff_enqueue_decline', :complete - 'expiryDateUtc') LIKE 'FF023%missing expiryDateUtc%' AS batch_line_refused;
RESET flexfactor.mit_mode;
\set payment 'flexfactor.ff_payment(''P-9'', 2500, ''usd'', ''gw-1'', email => ''jane@example.com'', paid_at => ''2026-11-24 09:30:00+00'', subscription_id => ''sub-9'', subscription_interval => ''monthly'', holder_name => ''Jane Roe'', card_type => ''credit'', card_brand => ''visa'', card_country => ''us'', expiration_month => 3, expiration_year => 2030, card_bin => ''411111'', card_last4 => ''1111'')'
SELECT path,
       pg_temp.refusal('ff_transmit', body #- p) ~ ('^FF023: .*missing ([a-zA-Z.]+, )*' || path || '($|[,;( ])') AS transmit
  FROM (SELECT :payment AS body) b,
       unnest(ARRAY['orderId', 'isMIT', 'isDeclined', 'isRecurring', 'transaction.id', 'transaction.amount',
                    'transaction.currency', 'transaction.timestampUtc', 'transaction.responseCode',
                    'transaction.responseCodeSource', 'transaction.avsResultCode', 'transaction.cvvResultCode',
                    'transaction.cavvResultCode', 'payer.email', 'paymentMethod', 'paymentMethod.holderName',
                    'paymentMethod.cardType', 'paymentMethod.cardBrand', 'paymentMethod.cardCountry',
                    'paymentMethod.expirationMonth', 'paymentMethod.expirationYear',
                    'paymentMethod.cardBinNumber', 'paymentMethod.cardLast4Digits',
                    'subscription.subscriptionId', 'subscription.interval']) AS path,
       string_to_array(path, '.') AS p;
-- a leap day is a day
SELECT 'accepted' AS leap_day
  FROM flexfactor._check_body(jsonb_set(:complete, '{transaction,timestampUtc}', '"2024-02-29T09:30:00Z"'),
                              'batch', 'ff_enqueue_decline');
-- a customer-initiated copy needs no subscription; card details are all or none
SELECT pg_temp.refusal('ff_transmit', flexfactor.ff_payment('P-10', 2500, 'usd', 'gw-2', email => 'jane@example.com',
           paid_at => '2026-11-24 09:30:00+00', is_mit => false)) AS cit_copy_without_card_details;
RESET flexfactor.mid;
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
SET LOCAL flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SELECT flexfactor.ff_transmit(:payment) > 0 AS queued;
ROLLBACK;
SELECT count(*) AS after_rollback FROM flexfactor.transmit_queue;

-- API calls need the merchant id: clear error, no request
SELECT flexfactor.ff_evaluate(:complete);
-- (tests talk to loopback only: a closed local port refuses the connection)
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SET flexfactor.api_url = 'http://127.0.0.1:9/v1/';
\set VERBOSITY sqlstate
SELECT flexfactor.ff_evaluate(jsonb_set(:complete, '{orderId}', '"N-1"'));
SELECT flexfactor.ff_tokenize('{"payment_method":{}}');
\set VERBOSITY default
SELECT count(*) AS orders_after_failed_call FROM flexfactor.orders WHERE order_id = 'N-1';
RESET flexfactor.api_url;
RESET flexfactor.mid;
DELETE FROM flexfactor.orders;

-- card numbers (PCI): refused in any field, in any separator format, by
-- every path that queues, stores or sends a body; nothing stored
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SELECT label, pg_temp.refusal(call, body) AS outcome
  FROM (VALUES
    ('plain token field', 'ff_evaluate', jsonb_set(:complete, '{paymentMethod,cardNumber}', '"4111111111111111"')),
    ('spaces', 'ff_enqueue_decline', jsonb_set(:complete, '{paymentMethod,cardNumber}', '"4111 1111 1111 1111"')),
    ('dashes, another key', 'ff_evaluate', :complete || '{"customerNote": "card 5555-5555-5555-4444 please"}'::jsonb),
    ('dots', 'ff_transmit', jsonb_set(:payment, '{payer,phone}', '"4111.1111.1111.1111"')),
    ('trailing newline', 'ff_transmit', jsonb_set(:payment, '{transaction,id}', to_jsonb(E'4111111111111111\n'::text))),
    ('amex, nested', 'ff_enqueue_decline', :complete || '{"additionalFields": [{"key": "x", "value": "3782 822463 10005"}]}'::jsonb),
    ('as a JSON number', 'ff_evaluate', :complete || '{"orderItems": [{"sku": 6011111111111117}]}'::jsonb),
    ('as a key', 'ff_transmit', :payment || '{"4111111111111111": 1}'::jsonb),
    ('a JSON number with a fraction', 'ff_enqueue_decline', :complete || '{"orderItems": [{"sku": 4111111111111111.0}]}'::jsonb),
    ('with its expiry', 'ff_evaluate', :complete || '{"customerNote": "4111 1111 1111 1111 12/28"}'::jsonb),
    ('commas', 'ff_transmit', jsonb_set(:payment, '{payer,phone}', '"4111,1111,1111,1111"')),
    ('16 digits, not Luhn', 'ff_evaluate', jsonb_set(:complete, '{orderId}', '"4111111111111112"')),
    ('the merchant id GUID', 'ff_evaluate', :complete || '{"mid": "00000000-0000-4000-8000-000000000001"}'::jsonb),
    ('a token GUID of decimal digits', 'ff_evaluate', jsonb_set(:complete, '{paymentMethod,cardNumber}', '"41111115-1111-4111-a111-111111111111"'))
  ) AS t(label, call, body);
SELECT count(*) AS stored FROM flexfactor.declines WHERE payload::text ~ '4111|5555|3782|6011';
SELECT count(*) AS queued FROM flexfactor.transmit_queue WHERE payload::text ~ '4111|5555';
RESET flexfactor.mid;

-- remote text is scrubbed before it is shown or stored: card numbers in any
-- format, the configured secrets, bearer tokens and JWTs, invalid bytes
SELECT flexfactor._scrub('card 4111 1111 1111 1111 and 4111-1111-1111-1111, secret regress-secret-do-not-show, '
                         || 'key regress-tokenization-key, Authorization: Bearer abc.def-123 and '
                         || 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl, order 1234, 2026-11-24');
SELECT flexfactor._scrub(E'card 4111 - 1111 - 1111 - 1111, 4111,1111,1111,1111 and 4111\u00a01111\u00a01111\u00a01111; '
                         || 'order 1234, 2026-11-24 09:30:00, 1,234.56') AS other_separators;
SELECT flexfactor._scrub(convert_from('\x6f6bc3a9'::bytea, 'UTF8') || ' ' || chr(1)) AS valid_text_kept;
