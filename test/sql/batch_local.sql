-- Batch export, the parts that need no network: queueing declines (function
-- and trigger), refusals, and fixing batches with their bytes and SHA-256.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
-- what every batch line needs besides the charge (flexfactor-api.md 12a)
\set person 'email => ''jane@example.com'', first_name => ''Jane'', last_name => ''Roe'', address_line1 => ''1 Main St'', city => ''Springfield'', state => ''IL'', zip_code => ''62701'', country_code => ''US'''
\set rest 'subscription_id => ''sub-1'', subscription_interval => ''monthly'', declined_at => ''2026-11-24 09:30+00'', expiry => ''2026-12-08 00:00+00'''

-- ff_enqueue_decline: queued once per attempt
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-1', 4999, 'usd', 'tok-1', 'tx-1', :person, :rest)) AS first;
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-1', 4999, 'usd', 'tok-1', 'tx-1', :person, :rest)) AS same_attempt;
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-1', 4999, 'usd', 'tok-1', 'tx-2', :person, :rest)) AS next_attempt;
SELECT order_id, transaction_id, state,
       idempotency_key = flexfactor.ff_attempt_key('evaluate', current_setting('flexfactor.mid'), order_id, transaction_id) AS key_is_the_api_key
  FROM flexfactor.decline_status ORDER BY id;

-- refusals, naming what is wrong; nothing queued
SELECT flexfactor.ff_enqueue_decline('{"transaction":{"id":"t","amount":100,"currency":"USD"}}');
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-2', 0, 'USD', 'tok', 'tx', :person, :rest));
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-2', 1999, 'USD', 'tok', 'tx', :person, :rest) || '{"paymentMethod":{"cardNumber":"4111111111111111","token":false}}');
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-2', 1999, 'USD', 'tok', 'tx', :person, :rest) || '{"isMIT":false}');
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-2', 1999, 'USD', 'tok', 'tx', email => 'jane@example.com', :rest));
SELECT count(*) AS queued FROM flexfactor.declines;

-- the trigger on a billing schema of the merchant's own shape: the payer and
-- the address live with the customer, the AVS/CVV codes with the gateway's
-- response; an enrich function of the DBA's brings them in
CREATE SCHEMA billing;
CREATE TABLE billing.customers (
    id            int PRIMARY KEY,
    email         text NOT NULL,
    given_name    text NOT NULL,
    family_name   text NOT NULL,
    street        text NOT NULL,
    town          text NOT NULL,
    region        text,
    postcode      text,
    country       char(2) NOT NULL
);
INSERT INTO billing.customers VALUES
    (1, 'ann@example.com', 'Ann', 'Lee', '2 Elm St', 'Austin', 'TX', '73301', 'US'),
    (2, 'bo@example.de', 'Bo', 'Berg', 'Hauptstr. 5', 'Berlin', NULL, '10115', 'DE');
CREATE TABLE billing.payments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no    text NOT NULL,
    customer_id   int,
    subscription  text,
    amount        numeric(12,2) NOT NULL,
    currency      text NOT NULL DEFAULT 'USD',
    card_token    text,
    status        text NOT NULL,
    is_recurring  boolean NOT NULL,
    decline_code  text,
    customer_email text,
    sense_key     text,
    "Rescue Until" timestamptz,
    created_at    timestamptz NOT NULL DEFAULT '2026-11-24 09:30+00'
);
CREATE TABLE billing.gateway_responses (
    payment_id    bigint PRIMARY KEY,
    avs           text,
    cvv           text
);
CREATE FUNCTION billing.flexfactor_details(p billing.payments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'payer', jsonb_build_object('email', c.email),
        'billingInformation', jsonb_build_object(
            'firstName', c.given_name, 'lastName', c.family_name, 'addressLine1', c.street,
            'city', c.town, 'state', c.region, 'zipCode', c.postcode,
            'countryCode', c.country, 'country', c.country),
        'transaction', jsonb_build_object('avsResultCode', g.avs, 'cvvResultCode', g.cvv))
      FROM billing.customers c
      LEFT JOIN billing.gateway_responses g ON g.payment_id = p.id
     WHERE c.id = p.customer_id
$$;
INSERT INTO billing.gateway_responses VALUES (1, 'Y', 'M');
CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token',
        'transaction_id=id', 'decline_code=decline_code', 'email=customer_email',
        'subscription_id=subscription', 'subscription_interval=''monthly''',
        'response_code_source=''stripe''', 'declined_at=created_at',
        'sense_key=sense_key', 'expiry=Rescue Until', 'expiry_days=14',
        'enrich=billing.flexfactor_details',
        'declined_if=status:declined', 'recurring_if=is_recurring');
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring, decline_code, customer_email, sense_key, "Rescue Until")
VALUES ('B-100', 1, 'sub-a', 49.99, 'tok-a', 'declined', true,  '51', 'a@example.com', 'sk-1', '2026-12-08 00:00+00'),
       ('B-101', 2, 'sub-b', 19.99, 'tok-b', 'paid',     true,  NULL, NULL, NULL, NULL),
       ('B-102', 1, 'sub-a', 29.99, 'tok-c', 'declined', false, '05', 'c@example.com', NULL, NULL);
BEGIN;
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring) VALUES ('B-103', 1, 'sub-a', 9.99, 'tok-d', 'declined', true);
ROLLBACK;
-- a paid charge that is later declined is queued by the UPDATE
UPDATE billing.payments SET status = 'declined', decline_code = '05' WHERE invoice_no = 'B-101';
-- an UPDATE that leaves a decline a decline queues nothing more
UPDATE billing.payments SET customer_email = 'x@example.com' WHERE invoice_no = 'B-100';
SELECT order_id, transaction_id, payload->'transaction'->>'amount' AS cents,
       payload->'transaction'->>'responseCode' AS code, payload->>'senseKey' AS sense_key,
       CASE WHEN order_id = 'B-100' THEN payload->>'expiryDateUtc'
            WHEN (payload->>'expiryDateUtc')::timestamptz BETWEEN now() + interval '14 days' - interval '1 minute'
                                                           AND now() + interval '14 days' THEN 'now + expiry_days' END AS expiry,
       payload->'payer'->>'email' AS email, payload->'paymentMethod' AS card
  FROM flexfactor.declines WHERE order_id LIKE 'B-%' ORDER BY id;
-- the mapped columns, the constants and the enrich function's answer: a complete line
SELECT jsonb_pretty(payload) FROM flexfactor.declines WHERE order_id = 'B-100';
SELECT payload->'billingInformation' AS from_enrich, payload->'transaction'->>'avsResultCode' AS avs,
       payload->'transaction'->>'responseCodeSource' AS source, payload->'subscription' AS subscription
  FROM flexfactor.declines WHERE order_id = 'B-101';

-- a decline that cannot be completed fails its INSERT, naming what is
-- missing; nothing is queued
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('B-110', 99, 'sub-z', 9.99, 'tok-z', 'declined', true);
-- rows that are not declined recurring charges cost no lookup and queue nothing
INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring)
SELECT 'C-' || i, 99, 5, 't', CASE WHEN i % 2 = 0 THEN 'paid' ELSE 'declined' END, i % 2 = 0
  FROM generate_series(1, 100) i;
SELECT count(*) AS queued_from_billing FROM flexfactor.declines WHERE order_id ~ '^[BC]-';
-- the trigger and its enrich function run with the writer's rights: a role
-- that may write payments needs nothing in schema flexfactor, and needs
-- SELECT on what the enrich function reads only when it writes a decline
CREATE ROLE ff_billing_writer;
GRANT USAGE ON SCHEMA billing TO ff_billing_writer;
GRANT INSERT ON billing.payments TO ff_billing_writer;
SET ROLE ff_billing_writer;
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('W-1', 1, 'sub-a', 9.99, 'tok-w', 'paid', true);
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('W-2', 1, 'sub-a', 9.99, 'tok-w', 'declined', true);
RESET ROLE;
GRANT SELECT ON billing.customers, billing.gateway_responses TO ff_billing_writer;
SET ROLE ff_billing_writer;
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('W-3', 1, 'sub-a', 9.99, 'tok-w', 'declined', true);
RESET ROLE;
SELECT order_id, payload #>> '{payer,email}' AS email FROM flexfactor.declines WHERE order_id LIKE 'W-%' ORDER BY id;
-- an enrich function may add details, never change what identifies the charge
CREATE FUNCTION billing.bad_details(p billing.payments) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"orderId": "someone-else", "payer": {"email": "x@example.com"}}'::jsonb $$;
CREATE FUNCTION billing.bad_amount(p billing.payments) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"transaction": {"amount": 1}}'::jsonb $$;
CREATE TABLE billing.payments2 (LIKE billing.payments INCLUDING DEFAULTS);
CREATE FUNCTION billing.bad_details(p billing.payments2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"orderId": "someone-else", "payer": {"email": "x@example.com"}}'::jsonb $$;
CREATE FUNCTION billing.bad_amount(p billing.payments2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"transaction": {"amount": 1}}'::jsonb $$;
CREATE TRIGGER bad_details AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.bad_details');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-1', 5, 't', 'declined', true);
DROP TRIGGER bad_details ON billing.payments2;
CREATE TRIGGER bad_amount AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.bad_amount');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-1', 5, 't', 'declined', true);
DROP TRIGGER bad_amount ON billing.payments2;
CREATE TRIGGER no_such_enrich AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.flexfactor_details');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-1', 5, 't', 'declined', true);
DROP TRIGGER no_such_enrich ON billing.payments2;
CREATE TRIGGER text_recurring AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'recurring_if=status');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-1', 5, 't', 'declined', true);
DROP TRIGGER text_recurring ON billing.payments2;
SELECT count(*) AS queued_by_bad_triggers FROM flexfactor.declines WHERE order_id = 'D-1';

-- an enrich function's answer that is not an object of objects is refused;
-- a NULL or a JSON null adds nothing
CREATE FUNCTION billing.array_details(p billing.payments2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '[{"payer": {}}]'::jsonb $$;
CREATE FUNCTION billing.string_transaction(p billing.payments2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"transaction": "51"}'::jsonb $$;
CREATE FUNCTION billing.json_null(p billing.payments2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT 'null'::jsonb $$;
CREATE TRIGGER array_details AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.array_details');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-2', 5, 't', 'declined', true);
DROP TRIGGER array_details ON billing.payments2;
CREATE TRIGGER string_transaction AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.string_transaction');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-2', 5, 't', 'declined', true);
DROP TRIGGER string_transaction ON billing.payments2;
CREATE TRIGGER json_null AFTER INSERT ON billing.payments2 FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
    'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token', 'enrich=billing.json_null');
INSERT INTO billing.payments2 (id, invoice_no, amount, card_token, status, is_recurring) VALUES (1, 'D-2', 5, 't', 'declined', true);
DROP TRIGGER json_null ON billing.payments2;
SELECT count(*) AS queued_by_bad_answers FROM flexfactor.declines WHERE order_id = 'D-2';

-- every field mapped, from columns of other types than text: the body is
-- ff_decline()'s for the same values (one builder, decline_body.c), plus the
-- senseKey; integers, numerics, a timestamp without time zone and a time as
-- text are read as casts from text read them
CREATE TABLE billing.charges (
    ref varchar(20) NOT NULL, cents integer NOT NULL, cur char(3) NOT NULL, token text, gw_id bigint,
    code text, msg text, source text, avs text, cvv text, cavv text,
    email text, phone text, first text, last text, line1 text, line2 text, city text, region text,
    zip text, cc text, country text, sub text, every text,
    until timestamp, failed_at text,
    holder text, brand text, bin text, last4 text, exp_month smallint, exp_year numeric,
    sense text, state varchar(10) NOT NULL, recurring boolean NOT NULL);
CREATE TRIGGER charges_to_flexfactor AFTER INSERT OR UPDATE ON billing.charges FOR EACH ROW
    EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=ref', 'amount=cents', 'currency=cur', 'token=token', 'transaction_id=gw_id',
        'decline_code=code', 'decline_message=msg', 'response_code_source=source',
        'avs_result_code=avs', 'cvv_result_code=cvv', 'cavv_result_code=cavv',
        'email=email', 'phone=phone', 'first_name=first', 'last_name=last',
        'address_line1=line1', 'address_line2=line2', 'city=city', 'state=region', 'zip_code=zip',
        'country_code=cc', 'country=country', 'subscription_id=sub', 'subscription_interval=every',
        'expiry=until', 'declined_at=failed_at', 'holder_name=holder', 'card_brand=brand',
        'card_bin=bin', 'card_last4=last4', 'expiration_month=exp_month', 'expiration_year=exp_year',
        'sense_key=sense', 'declined_if=state:declined', 'recurring_if=recurring');
INSERT INTO billing.charges VALUES
    ('CH-1', 1999, 'usd', 'tok-ch', 77, '05', 'Do not honor', 'nmi', 'Y', 'M', '2',
     'ch@example.com', '+1 555 0100', 'Cy', 'Hall', '3 Oak Rd', 'Apt 4', 'Denver', 'CO',
     '80202', 'us', NULL, 'sub-c', 'yearly', '2026-12-24 00:00', '2026-11-24 10:00:00+00',
     'Cy Hall', 'visa', '424242', '4242', 3, 2030, 'sk-c', 'declined', true);
SELECT payload = flexfactor.ff_decline('CH-1', 1999, 'usd', 'tok-ch', '77', decline_code => '05',
           decline_message => 'Do not honor', response_code_source => 'nmi', avs_result_code => 'Y',
           cvv_result_code => 'M', cavv_result_code => '2', email => 'ch@example.com',
           phone => '+1 555 0100', first_name => 'Cy', last_name => 'Hall', address_line1 => '3 Oak Rd',
           address_line2 => 'Apt 4', city => 'Denver', state => 'CO', zip_code => '80202',
           country_code => 'us', subscription_id => 'sub-c', subscription_interval => 'yearly',
           expiry => '2026-12-24 00:00', declined_at => '2026-11-24 10:00:00+00', holder_name => 'Cy Hall',
           card_brand => 'visa', card_bin => '424242', card_last4 => '4242', expiration_month => 3,
           expiration_year => 2030) || '{"senseKey": "sk-c"}' AS same_as_ff_decline,
       payload->'transaction'->>'currency' AS currency, payload->'billingInformation'->>'country' AS country,
       payload->'paymentMethod'->>'cardBrand' AS brand, payload->>'expiryDateUtc' AS expiry
  FROM flexfactor.declines WHERE order_id = 'CH-1';
-- the same attempt written again (paid, then declined again): queued once
UPDATE billing.charges SET state = 'paid' WHERE ref = 'CH-1';
UPDATE billing.charges SET state = 'declined' WHERE ref = 'CH-1';
SELECT count(*) AS queued_once FROM flexfactor.declines WHERE order_id = 'CH-1';
-- a value that a cast from text refuses fails the statement as the cast would
INSERT INTO billing.charges (ref, cents, cur, token, gw_id, failed_at, state, recurring)
VALUES ('CH-2', 500, 'USD', 'tok', 78, 'yesterday-ish', 'declined', true);
-- a card number in a mapped column is refused, nothing queued (FF024)
\set VERBOSITY sqlstate
INSERT INTO billing.charges
SELECT 'CH-3', cents, cur, '4111 1111 1111 1111', 79, code, msg, source, avs, cvv, cavv, email, phone,
       first, last, line1, line2, city, region, zip, cc, country, sub, every, until, failed_at,
       holder, brand, bin, last4, exp_month, exp_year, sense, state, recurring
  FROM billing.charges WHERE ref = 'CH-1';
\set VERBOSITY default
SELECT count(*) AS queued_with_card_number FROM flexfactor.declines WHERE order_id IN ('CH-2', 'CH-3');
DROP TABLE billing.charges;

-- a wrong mapping fails, naming the column; names are never spliced into SQL
CREATE TRIGGER payments_bad_column AFTER INSERT ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_number',
        'amount=amount', 'currency=currency', 'token=card_token');
INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring) VALUES ('B-104', 5, 't', 'paid', false);
DROP TRIGGER payments_bad_column ON billing.payments;
CREATE TRIGGER payments_injection AFTER INSERT ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no''; DROP TABLE billing.payments; --', 'amount=amount', 'currency=currency', 'token=card_token');
INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring) VALUES ('B-105', 5, 't', 'paid', false);
DROP TRIGGER payments_injection ON billing.payments;
CREATE TRIGGER payments_bad_arg AFTER INSERT ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger('orderid=invoice_no');
INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring) VALUES ('B-106', 5, 't', 'paid', false);
DROP TRIGGER payments_bad_arg ON billing.payments;
SELECT count(*) AS payments_table_still_there FROM billing.payments;

-- queue order leads with the installation's era: a row restored from a dump
-- (an earlier era, with the transaction id of the cluster it was queued in,
-- here far ahead of this one's) comes before the rows queued here, needs no
-- wait for running transactions, and never shares a batch with them
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload, enqueue_era, enqueue_xid)
SELECT 'E-1', 'tx', gen_random_uuid(), payload || '{"orderId": "E-1"}', flexfactor._queue_era() - 1, '40000000000'
  FROM flexfactor.declines WHERE order_id = 'INV-1' LIMIT 1;
SELECT count(*) > 0 AS rows_queued_here_pending FROM flexfactor.decline_status
 WHERE state = 'pending' AND order_id <> 'E-1';
SELECT flexfactor._create_evaluate_batch(2000) AS restored_batch \gset
SELECT b.era < flexfactor._queue_era() AS earlier_era, b.line_count,
       string_agg(l.line::jsonb->>'orderId', ', ' ORDER BY l.sequence_number) AS lines
  FROM flexfactor.batches b CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) l
 WHERE b.id = :restored_batch GROUP BY b.id;
SELECT order_id, state, batch_id = :restored_batch AS in_that_batch FROM flexfactor.decline_status
 WHERE order_id = 'E-1';

-- fixing batches: at most max_rows lines each, numbered 1..N, in queue order
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
SELECT 'N-' || i, 'tx', gen_random_uuid(), flexfactor.ff_decline('N-' || i, 1500, 'USD', 'tok', 'tx')
  FROM generate_series(1, 4500) i;
SELECT flexfactor._create_evaluate_batch(2000) IS NOT NULL AS b1,
       flexfactor._create_evaluate_batch(2000) IS NOT NULL AS b2,
       flexfactor._create_evaluate_batch(2000) IS NOT NULL AS b3,
       flexfactor._create_evaluate_batch(2000) IS NULL AS nothing_left;
SELECT b.line_count, b.state, b.file_name ~ '^evaluate_00000000-0000-4000-8000-000000000001_\d{8}T\d{6}Z_\d+\.jsonl$' AS name_ok,
       count(*) AS lines, min(l.sequence_number) AS first_seq, max(l.sequence_number) AS last_seq,
       b.sha256 IS NULL AS sha_at_first_upload,
       bool_and((l.line::jsonb->>'sequenceNumber')::int = l.sequence_number) AS line_numbers_ok,
       bool_and(l.line::jsonb->>'mid' = current_setting('flexfactor.mid')) AS mid_ok,
       bool_and(l.line::jsonb->>'idempotencyKey' = d.idempotency_key::text) AS keys_ok,
       bool_and(l.line::jsonb - '{sequenceNumber,mid,idempotencyKey}'::text[] = d.payload) AS payload_ok,
       bool_and(s.batch_id = b.id AND s.state = 'batched') AS status_ok,
       array_agg(d.id ORDER BY l.sequence_number) = array_agg(d.id ORDER BY d.enqueue_xid, d.id) AS queue_order_ok
  FROM flexfactor.batches b
 CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) l
  JOIN flexfactor.declines d ON d.id = l.decline_id
  JOIN flexfactor.decline_status s ON s.id = d.id
 GROUP BY b.id ORDER BY b.id;
-- the same bytes every time: the lines are derived from rows that never change
CREATE TEMP TABLE first_bytes AS
SELECT b.id, sha256(convert_to(string_agg(l.line || E'\n', '' ORDER BY l.sequence_number), 'UTF8')) AS sha
  FROM flexfactor.batches b CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) l GROUP BY b.id;
UPDATE flexfactor.declines SET payload = payload || '{"x": 1}' WHERE order_id = 'N-7';
DELETE FROM flexfactor.declines WHERE order_id = 'N-7';
SELECT count(*) AS same_bytes FROM first_bytes f
  JOIN (SELECT b.id, sha256(convert_to(string_agg(l.line || E'\n', '' ORDER BY l.sequence_number), 'UTF8')) AS sha
          FROM flexfactor.batches b CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) l GROUP BY b.id) g
    ON g.id = f.id AND g.sha = f.sha;
-- every queued decline is in exactly one batch line
SELECT count(*) AS declines, count(l.decline_id) AS in_a_batch, count(DISTINCT l.decline_id) AS distinct_in_batches
  FROM flexfactor.declines d
  LEFT JOIN (SELECT f.* FROM flexfactor.batches b CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) f) l
    ON l.decline_id = d.id;
SELECT queue, state, rows FROM flexfactor.queue_status ORDER BY queue, state;

-- a decline waits for its transaction to commit, and so does every decline
-- queued after that transaction began: it could still commit a row in front
BEGIN;
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('L-1', 1500, 'USD', 'tok', 'tx', :person, :rest)) > 0 AS queued;
SELECT flexfactor._create_evaluate_batch(2000) IS NULL AS waits_for_commit;
COMMIT;
SELECT flexfactor._create_evaluate_batch(2000) IS NOT NULL AS batched_after_commit;
SELECT order_id, state FROM flexfactor.decline_status WHERE order_id LIKE 'L-%' ORDER BY id;

-- a queue from a later installation than this one is refused, not skipped
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload, enqueue_era)
SELECT 'E-9', 'tx', gen_random_uuid(), payload || '{"orderId": "E-9"}', flexfactor._queue_era() + 1
  FROM flexfactor.declines WHERE order_id = 'E-1';
\set VERBOSITY terse
SELECT flexfactor._create_evaluate_batch(10);
\set VERBOSITY default
DELETE FROM flexfactor.declines WHERE order_id = 'E-9';

-- transmit copies can leave in transmit_ batches (flexfactor.transmit_via = 'sftp')
SELECT flexfactor.ff_transmit(flexfactor.ff_payment('P-' || i, 2500, 'USD', 'ptx-' || i, email => 'jane@example.com',
           paid_at => '2026-11-24 09:30+00', subscription_id => 'sub-1', subscription_interval => 'monthly')) > 0 AS queued
  FROM generate_series(1, 3) i;
SELECT flexfactor._create_transmit_batch(2) IS NOT NULL AS t1,
       flexfactor._create_transmit_batch(2) IS NOT NULL AS t2,
       flexfactor._create_transmit_batch(2) IS NULL AS nothing_left;
SELECT b.kind, b.line_count, b.file_name ~ '^transmit_00000000-0000-4000-8000-000000000001_\d{8}T\d{6}Z_\d+\.jsonl$' AS name_ok,
       bool_and(l.line::jsonb->>'idempotencyKey'
                = md5('flexfactor-transmit:' || current_setting('flexfactor.mid') || ':' || t.id)::uuid::text) AS same_key_as_api_path,
       bool_and(t.state = 'batched' AND t.batch_id = b.id) AS rows_batched,
       string_agg(l.sequence_number::text, ',' ORDER BY l.sequence_number) AS sequence_numbers
  FROM flexfactor.batches b
 CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) l
  JOIN flexfactor.transmit_queue t ON t.id = l.transmit_queue_id
 WHERE b.kind = 'transmit'
 GROUP BY b.id ORDER BY b.id;

-- a result file's lines are checked against the rows of the batch file, in
-- its order, whole or a run of lines at a time
SELECT count(*) AS batches, count(*) FILTER (WHERE whole AND part) AS same_rows_and_order
  FROM (SELECT b.id,
               (SELECT array_agg(ROW(f.sequence_number, f.decline_id, f.transmit_queue_id, f.line::jsonb->>'orderId')::text
                                 ORDER BY f.sequence_number) FROM flexfactor.batch_file_lines(b.id) f)
               = (SELECT array_agg(o::text ORDER BY o.sequence_number)
                    FROM flexfactor._batch_line_orders(b.id, 1, b.line_count) o) AS whole,
               (SELECT array_agg(ROW(f.sequence_number, f.decline_id, f.transmit_queue_id, f.line::jsonb->>'orderId')::text
                                 ORDER BY f.sequence_number) FROM flexfactor.batch_file_lines(b.id) f
                 WHERE f.sequence_number BETWEEN 2 AND 3)
               IS NOT DISTINCT FROM (SELECT array_agg(o::text ORDER BY o.sequence_number)
                    FROM flexfactor._batch_line_orders(b.id, 2, 3) o) AS part
          FROM flexfactor.batches b) c;

-- the three fields a batch line adds are never taken from the payload:
-- ff_enqueue_decline() keeps the given key in its column and drops them,
-- a direct insert that carries them is refused
SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('K-1', 1500, 'USD', 'tok', 'tx', :person, :rest)
       || '{"mid": "another", "sequenceNumber": 7, "idempotencyKey": "8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90"}') > 0 AS queued;
SELECT payload ?| '{mid,sequenceNumber,idempotencyKey}' AS payload_has_them, idempotency_key
  FROM flexfactor.declines WHERE order_id = 'K-1';
SELECT flexfactor._create_evaluate_batch(10) AS kbatch \gset
SELECT (regexp_count(l.line, '"mid"'), regexp_count(l.line, '"sequenceNumber"'), regexp_count(l.line, '"idempotencyKey"')) AS each_once,
       l.line::jsonb->>'mid' = current_setting('flexfactor.mid') AS batch_mid,
       l.line::jsonb->>'idempotencyKey' AS key
  FROM flexfactor.batch_file_lines(:kbatch) l;
\set VERBOSITY terse
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
VALUES ('K-2', 'tx', gen_random_uuid(), '{"orderId": "K-2", "mid": "x"}');
\set VERBOSITY default

-- the declines a statement decides are queued when it ends, in the order it
-- decided them (also past 1,000 at a time), in its own subtransaction: a
-- rolled-back one queues nothing, even when its error came between the
-- decision and the statement's end
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
SELECT 'SB-' || i, 1 + i % 2, 'sub-s', 5, 'tok-s', 'declined', true FROM generate_series(1, 2500) i;
SELECT count(*) AS queued, bool_and(d.id > d.prev_id AND p.id > d.prev_payment) AS in_payment_order
  FROM (SELECT id, order_id, lag(id) OVER w AS prev_id, lag(transaction_id::bigint) OVER w AS prev_payment
          FROM flexfactor.declines WHERE order_id LIKE 'SB-%' WINDOW w AS (ORDER BY id)) d
  JOIN billing.payments p ON p.invoice_no = d.order_id;
CREATE FUNCTION billing.refuse_rb2() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.invoice_no = 'RB-2' THEN
        RAISE EXCEPTION 'refused after the decline trigger';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER payments_zz_refuse AFTER INSERT ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION billing.refuse_rb2();
DO $$
BEGIN
    BEGIN
        INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
        VALUES ('RB-1', 1, 'sub-r', 5, 'tok-r', 'declined', true), ('RB-2', 1, 'sub-r', 5, 'tok-r', 'declined', true);
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'caught: %', SQLERRM;
    END;
    INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
    VALUES ('RB-3', 1, 'sub-r', 5, 'tok-r', 'declined', true);
END $$;
DROP TRIGGER payments_zz_refuse ON billing.payments;
SELECT order_id AS queued_after_rollback FROM flexfactor.declines WHERE order_id LIKE 'RB-%' ORDER BY id;
-- a decline waiting for its statement's end is never inserted inside a
-- subtransaction begun after it (another trigger's block with EXCEPTION):
-- that one's rollback would take it along and the billing row would commit
-- with nothing queued.  There, ff_enqueue_decline() and a nested
-- statement's own declines are queued; the enclosing statement's wait for
-- its end.
CREATE TABLE billing.audit (invoice_no text PRIMARY KEY);
CREATE TABLE billing.extra (body jsonb);
INSERT INTO billing.extra SELECT flexfactor.ff_decline('x', 100, 'USD', 'tok-e', 'tx-e', :person, :rest);
CREATE FUNCTION billing.zz_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        IF NEW.invoice_no LIKE 'NS-E%' THEN
            PERFORM flexfactor.ff_enqueue_decline(jsonb_set(body, '{orderId}', to_jsonb('X' || NEW.invoice_no)))
               FROM billing.extra;
        ELSE
            INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
            VALUES ('X' || NEW.invoice_no, 1, 'sub-n', 1, 'tok-n', 'declined', true);
        END IF;
        INSERT INTO billing.audit VALUES (NEW.invoice_no);
    EXCEPTION WHEN unique_violation THEN
        RAISE NOTICE 'not audited again: %', NEW.invoice_no;
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER payments_zz_audit AFTER INSERT ON billing.payments
    FOR EACH ROW WHEN (NEW.invoice_no LIKE 'NS-%') EXECUTE FUNCTION billing.zz_audit();
INSERT INTO billing.audit VALUES ('NS-E2'), ('NS-N2');
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('NS-E1', 1, 'sub-n', 5, 'tok-n', 'declined', true), ('NS-E2', 1, 'sub-n', 5, 'tok-n', 'declined', true);
INSERT INTO billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES ('NS-N1', 1, 'sub-n', 5, 'tok-n', 'declined', true), ('NS-N2', 1, 'sub-n', 5, 'tok-n', 'declined', true);
DROP TRIGGER payments_zz_audit ON billing.payments;
SELECT p.invoice_no AS billed, d.order_id AS queued
  FROM billing.payments p LEFT JOIN flexfactor.declines d ON d.order_id = p.invoice_no
 WHERE p.invoice_no LIKE 'NS-%' OR p.invoice_no LIKE 'XNS-%' ORDER BY p.invoice_no;
SELECT order_id AS queued_by_the_blocks FROM flexfactor.declines WHERE order_id LIKE 'XNS-%' ORDER BY id;
DROP TABLE billing.audit, billing.extra;
DROP FUNCTION billing.zz_audit();
-- fired elsewhere than at a statement's end (a deferred constraint trigger
-- at commit, COPY), a decline is queued at once
CREATE TABLE billing.late_payments (LIKE billing.payments INCLUDING DEFAULTS);
CREATE FUNCTION billing.flexfactor_details(p billing.late_payments) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT billing.flexfactor_details(ROW(p.*)::billing.payments) $$;
CREATE CONSTRAINT TRIGGER late_to_flexfactor AFTER INSERT ON billing.late_payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token',
        'transaction_id=id', 'subscription_id=subscription', 'subscription_interval=''monthly''',
        'expiry_days=14', 'enrich=billing.flexfactor_details',
        'declined_if=status:declined', 'recurring_if=is_recurring');
BEGIN;
INSERT INTO billing.late_payments (id, invoice_no, customer_id, subscription, amount, card_token, status, is_recurring)
VALUES (1, 'DF-1', 1, 'sub-df', 5, 'tok-l', 'declined', true);
SELECT count(*) AS queued_before_commit FROM flexfactor.declines WHERE order_id = 'DF-1';
COMMIT;
COPY billing.payments (invoice_no, customer_id, subscription, amount, card_token, status, is_recurring) FROM stdin;
CP-1	2	sub-y	7.50	tok-y	declined	t
CP-2	2	sub-y	7.50	tok-y	paid	t
\.
SELECT order_id AS queued_at_once FROM flexfactor.declines WHERE order_id IN ('DF-1', 'CP-1', 'CP-2') ORDER BY id;
DROP FUNCTION billing.flexfactor_details(billing.late_payments);
DROP TABLE billing.late_payments;
-- (out of the way of the tests that follow)
DELETE FROM flexfactor.declines WHERE order_id ~ '^(SB|RB|DF|CP|NS|XNS)-';

-- without a MID no batch can be named
RESET flexfactor.mid;
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
VALUES ('M-1', 'tx', gen_random_uuid(), flexfactor.ff_decline('M-1', 1500, 'USD', 'tok', 'tx'));
SELECT flexfactor._create_evaluate_batch(10);

DROP SCHEMA billing CASCADE;
DROP ROLE ff_billing_writer;
