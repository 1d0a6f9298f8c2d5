/*
 * flexfactor--0.1.0--0.2.0.sql -- ALTER EXTENSION flexfactor UPDATE from the
 * released 0.1.0 to 0.2.0 (docs/upgrading.md).
 *
 * Brings a 0.1.0 database to exactly what CREATE EXTENSION flexfactor makes in
 * 0.2.0 (test/t/070_upgrade.pl compares the two with pg_dump), keeping every
 * row: two new tables (captures, webhook_refusal_counts), two more states of
 * a webhook event, every table and identity sequence registered with
 * pg_extension_config_dump (0.1.0 registered none, so pg_dump lost their
 * rows), the complete request bodies of ff_decline()/ff_payment() (new
 * arguments, all with defaults), the decline trigger function in C with the
 * writer's rights (same name and signature: a merchant's trigger keeps
 * calling it) and ff_decline()/ff_enqueue_decline() in C (the trigger builds
 * and queues its bodies with them), the triggers of flexfactor.orders in C,
 * ff_capture(), the refusal counters, ff_export_batch(retry_now), queue
 * positions that lead with the installation's era (so that a dump restored
 * into another cluster keeps its queue), result files applied in chunks and
 * refused ones remembered (refused_result_files), and the functions and
 * views that changed.  Functions whose arguments changed are dropped and
 * created again; EXECUTE granted on them to the merchant's roles is reported
 * below, to be granted again.
 *
 * Frozen once released: a later change goes in the next release's script.
 */
\echo Use "ALTER EXTENSION flexfactor UPDATE TO '0.2.0'" to load this file. \quit

/* ---------------------------------------------------------------- tables */

-- Captures of CAPTUREREQUIRED orders sent with ff_capture(), one row per
-- capture FlexFactor confirmed; what was captured is what can be refunded.
CREATE TABLE flexfactor.captures (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_ref          bigint NOT NULL REFERENCES flexfactor.orders (id),
    amount_cents       bigint NOT NULL,
    idempotency_key    uuid NOT NULL,          -- sent with the capture
    response           jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT captures_amount_check CHECK (amount_cents > 0),
    CONSTRAINT captures_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX captures_order_idx ON flexfactor.captures (order_ref);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.captures', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.captures', 'id'), '');

-- Every request the listener refused, counted by reason and minute.
CREATE TABLE flexfactor.webhook_refusal_counts (
    minute       timestamptz NOT NULL,
    reason       text NOT NULL,
    http_status  integer,                  -- NULL: the connection was closed unanswered
    refusals     bigint NOT NULL,
    PRIMARY KEY (minute, reason),
    CONSTRAINT webhook_refusal_counts_check CHECK (refusals > 0 AND http_status BETWEEN 400 AND 599)
);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_refusal_counts', '');

-- Two more outcomes of a webhook event: not_applicable (names no order) and
-- rejected (authentic but never applicable); every 0.1.0 state stays valid.
ALTER TABLE flexfactor.webhook_events DROP CONSTRAINT webhook_events_apply_state_check;
ALTER TABLE flexfactor.webhook_events ADD CONSTRAINT webhook_events_apply_state_check CHECK (apply_state IN (
        'pending',          -- stored, not applied yet
        'applied',          -- order updated
        'duplicate',        -- repeat of an applied event: changed nothing
        'waiting_order',    -- order not known yet; applied when it appears
        'ignored',          -- no state change for this event type
        'not_applicable',   -- names no order (payout.*, no OrderId): acknowledged, kept
        'rejected'));       -- authentic but can never be applied (a value out of range): acknowledged, kept

-- Every table is state: pg_dump keeps its rows, and its identity sequence's
-- position (0.1.0 registered none).
SELECT pg_catalog.pg_extension_config_dump('flexfactor.orders', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.orders', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.refunds', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.refunds', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.batches', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.batches', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.declines', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.declines', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.transmit_queue', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.transmit_queue', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.batch_lines', '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.webhook_events', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_rejections', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.webhook_rejections', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.order_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.order_events', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('flexfactor.result_files', '');

-- Queue positions lead with the installation's era (sql/install/01_tables.sql):
-- the rows queued so far are this cluster's, and take its era.  Columns are
-- added without a default and filled, so that the table is what CREATE
-- EXTENSION makes (a column added with a default keeps it as a "missing
-- value", which pg_upgrade's dump would show).
DO $era$
BEGIN
    EXECUTE format('CREATE FUNCTION flexfactor._queue_era() RETURNS bigint'
                   ' LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN %s::bigint',
                   floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
END $era$;
ALTER TABLE flexfactor.declines ADD COLUMN enqueue_era bigint;
UPDATE flexfactor.declines SET enqueue_era = flexfactor._queue_era();
ALTER TABLE flexfactor.declines ALTER COLUMN enqueue_era SET DEFAULT flexfactor._queue_era(),
                                ALTER COLUMN enqueue_era SET NOT NULL;
DROP INDEX flexfactor.declines_queue_order_idx;
CREATE INDEX declines_queue_order_idx ON flexfactor.declines (enqueue_era, enqueue_xid, id);
ALTER TABLE flexfactor.batches ADD COLUMN era bigint;
UPDATE flexfactor.batches SET era = flexfactor._queue_era() WHERE kind = 'evaluate';
ALTER TABLE flexfactor.batches DROP CONSTRAINT batches_range_check,
    ADD CONSTRAINT batches_range_check CHECK ((kind = 'evaluate') = (num_nonnulls(era, first_xid, first_id, last_xid, last_id) = 5));
DROP INDEX flexfactor.batches_queue_position_idx;
CREATE INDEX batches_queue_position_idx ON flexfactor.batches (era, last_xid, last_id)
    WHERE kind = 'evaluate';

-- Pending transmit copies in claim order, a transmit batch's rows in order
-- (sql/install/01_tables.sql).
CREATE INDEX transmit_queue_claim_idx ON flexfactor.transmit_queue (id)
    WHERE state = 'pending';
CREATE INDEX transmit_queue_batch_idx ON flexfactor.transmit_queue (batch_id, id)
    WHERE batch_id IS NOT NULL;

-- Result and error files refused by the worker, remembered across restarts.
CREATE TABLE flexfactor.refused_result_files (
    file_name    text PRIMARY KEY,
    byte_count   bigint NOT NULL,
    modified_at  timestamptz NOT NULL,
    sqlstate     text NOT NULL,
    reason       text NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.refused_result_files', '');

/* ------------------------------------------------------------- functions */

-- Functions whose arguments changed cannot be replaced in place.  EXECUTE
-- granted on them by the DBA is lost with them: say to whom, and how to
-- grant it again (granting it here would make it part of the extension's
-- initial privileges, which pg_dump does not dump).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT p.oid::regprocedure AS old_fn, p.proname, a.grantee::regrole AS grantee
          FROM pg_catalog.pg_proc p
         CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid IN ('flexfactor.ff_decline(text,bigint,text,text,text,text,text,timestamptz,text,boolean,timestamptz)'::regprocedure,
                         'flexfactor.ff_payment(text,bigint,text,text,text,timestamptz,text,text,boolean)'::regprocedure,
                         'flexfactor.ff_status_from_order(jsonb)'::regprocedure)
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        RAISE WARNING 'EXECUTE on % granted to % is dropped with the function', r.old_fn, r.grantee
            USING DETAIL = format('flexfactor 0.2.0 replaces %s with a version that takes more arguments.', r.old_fn),
                  HINT = format('After the update: GRANT EXECUTE ON FUNCTION flexfactor.%I TO %s;', r.proname, r.grantee);
    END LOOP;
END $$;

DROP FUNCTION flexfactor.ff_decline(text, bigint, text, text, text, text, text, timestamptz, text, boolean, timestamptz);
DROP FUNCTION flexfactor.ff_payment(text, bigint, text, text, text, timestamptz, text, text, boolean);
DROP FUNCTION flexfactor.ff_status_from_order(jsonb);
-- replaced by _check_body(payload, kind, caller)
DROP FUNCTION flexfactor._check_evaluate_body(jsonb, text);

CREATE OR REPLACE FUNCTION flexfactor.ff_webhook_refusals(
    OUT reason text,
    OUT http_status integer,
    OUT refused bigint,
    OUT not_flushed bigint)
RETURNS SETOF record LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'ff_webhook_refusals';

COMMENT ON FUNCTION flexfactor.ff_webhook_refusals() IS
    'Requests refused by the webhook listener since the server started, by reason, and how many of them are not in webhook_refusal_counts yet.';

CREATE OR REPLACE FUNCTION flexfactor.ff_next_status(current text, incoming text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN incoming IS NULL OR incoming = current
         OR flexfactor.ff_status_rank(incoming) IS NULL THEN current
    WHEN incoming = 'REFUNDED' THEN
        CASE WHEN current IN ('APPROVED', 'DECLINED') OR flexfactor.ff_status_rank(current) < 10
             THEN 'REFUNDED' ELSE current END
    WHEN current = 'DECLINED' AND incoming IN ('APPROVED', 'CAPTUREREQUIRED') THEN incoming
    WHEN flexfactor.ff_status_rank(current) >= 10 THEN current
    WHEN flexfactor.ff_status_rank(incoming) > flexfactor.ff_status_rank(current) THEN incoming
    ELSE current
END;

CREATE OR REPLACE FUNCTION flexfactor.ff_status_from_order(answer jsonb, at timestamptz DEFAULT now(),
                                                sent_expiry timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name    text := upper(CASE WHEN jsonb_typeof(answer->'statusName') = 'string'
                               THEN answer->>'statusName' END);
    expiry  timestamptz := sent_expiry;
    stamp   text := CASE WHEN jsonb_typeof(answer->'expiryDate') = 'string' THEN answer->>'expiryDate' END;
BEGIN
    IF name IS NULL OR name NOT IN ('COMPLETED', 'CANCELLED', 'RETURNED', 'CAPTUREREQUIRED',
                                    'PROCESSING', 'ONHOLD', 'DRAFT') THEN
        name := CASE CASE WHEN jsonb_typeof(answer->'status') = 'number' THEN answer->>'status' END
                    WHEN '0' THEN 'DRAFT' WHEN '2' THEN 'CANCELLED' WHEN '4' THEN 'PROCESSING'
                    WHEN '5' THEN 'CAPTUREREQUIRED' WHEN '6' THEN 'RETURNED' WHEN '7' THEN 'COMPLETED' END;
    END IF;
    IF name = 'CANCELLED' THEN
        IF stamp ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}' THEN
            BEGIN
                -- a date without an offset is UTC, as the service's own dates are
                expiry := CASE WHEN stamp ~ '(Z|[+-]\d{2}(:?\d{2})?)$' THEN stamp ELSE stamp || 'Z' END;
            EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
                NULL;   -- unreadable: keep what we sent
            END;
        END IF;
        RETURN CASE WHEN expiry <= at THEN 'EXPIRED' ELSE 'CANCELLED' END;
    END IF;
    RETURN CASE name
        WHEN 'COMPLETED' THEN 'APPROVED'
        WHEN 'RETURNED' THEN 'REFUNDED'
        WHEN 'CAPTUREREQUIRED' THEN 'CAPTUREREQUIRED'
        WHEN 'PROCESSING' THEN 'PROCESSING'
        WHEN 'ONHOLD' THEN 'PROCESSING'
        WHEN 'DRAFT' THEN 'SUBMITTED'
    END;
END $$;

CREATE OR REPLACE FUNCTION flexfactor._check_body(payload jsonb, kind text, caller text)
RETURNS void AS 'MODULE_PATHNAME', 'ff_check_body_sql' LANGUAGE C STABLE STRICT;

CREATE OR REPLACE FUNCTION flexfactor._scrub(remote text)
RETURNS text AS 'MODULE_PATHNAME', 'ff_scrub_sql' LANGUAGE C STABLE STRICT;

CREATE OR REPLACE FUNCTION flexfactor._scrub_json(remote jsonb)
RETURNS jsonb LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN flexfactor._scrub(remote::text)::jsonb;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN to_jsonb(flexfactor._scrub(remote::text));
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_decline(
    order_id text,
    amount_cents bigint,
    currency text,
    card_token text,
    transaction_id text,
    decline_code text DEFAULT NULL,
    email text DEFAULT NULL,
    expiry timestamptz DEFAULT NULL,
    subscription_id text DEFAULT NULL,
    is_recurring boolean DEFAULT true,
    declined_at timestamptz DEFAULT NULL,
    response_code_source text DEFAULT NULL,
    avs_result_code text DEFAULT NULL,
    cvv_result_code text DEFAULT NULL,
    cavv_result_code text DEFAULT NULL,
    decline_message text DEFAULT NULL,
    first_name text DEFAULT NULL,
    last_name text DEFAULT NULL,
    address_line1 text DEFAULT NULL,
    address_line2 text DEFAULT NULL,
    city text DEFAULT NULL,
    state text DEFAULT NULL,
    zip_code text DEFAULT NULL,
    country_code text DEFAULT NULL,
    country text DEFAULT NULL,
    phone text DEFAULT NULL,
    subscription_interval text DEFAULT NULL,
    holder_name text DEFAULT NULL,
    card_brand text DEFAULT NULL,
    card_bin text DEFAULT NULL,
    card_last4 text DEFAULT NULL,
    expiration_month integer DEFAULT NULL,
    expiration_year integer DEFAULT NULL)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_decline' LANGUAGE C STABLE;

CREATE OR REPLACE FUNCTION flexfactor.ff_payment(
    order_id text,
    amount_cents bigint,
    currency text,
    transaction_id text,
    email text DEFAULT NULL,
    paid_at timestamptz DEFAULT NULL,
    card_bin text DEFAULT NULL,
    card_last4 text DEFAULT NULL,
    is_mit boolean DEFAULT true,
    is_recurring boolean DEFAULT true,
    subscription_id text DEFAULT NULL,
    subscription_interval text DEFAULT NULL,
    response_code text DEFAULT NULL,
    response_code_source text DEFAULT NULL,
    avs_result_code text DEFAULT NULL,
    cvv_result_code text DEFAULT NULL,
    cavv_result_code text DEFAULT NULL,
    phone text DEFAULT NULL,
    holder_name text DEFAULT NULL,
    card_type text DEFAULT NULL,
    card_brand text DEFAULT NULL,
    card_country text DEFAULT NULL,
    expiration_month integer DEFAULT NULL,
    expiration_year integer DEFAULT NULL,
    first_name text DEFAULT NULL,
    last_name text DEFAULT NULL,
    address_line1 text DEFAULT NULL,
    city text DEFAULT NULL,
    state text DEFAULT NULL,
    zip_code text DEFAULT NULL,
    country_code text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE
RETURN jsonb_strip_nulls(jsonb_build_object(
    'orderId', order_id,
    'isMIT', is_mit,
    'isDeclined', false,
    'isRecurring', CASE WHEN is_mit THEN is_recurring END,
    'transaction', jsonb_build_object(
        'id', transaction_id,
        'amount', amount_cents,
        'currency', upper(currency),
        'timestampUtc', to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'timezoneUtcOffset', 0,
        'responseCode', coalesce(nullif(response_code, ''), 'NA'),
        'responseCodeSource', coalesce(nullif(response_code_source, ''), 'NA'),
        'responseStatus', 'APPROVED',
        'avsResultCode', coalesce(nullif(avs_result_code, ''), 'NA'),
        'cvvResultCode', coalesce(nullif(cvv_result_code, ''), 'NA'),
        'cavvResultCode', coalesce(nullif(cavv_result_code, ''), 'NA')),
    'payer', jsonb_build_object('email', email, 'phone', phone),
    'billingInformation', CASE WHEN coalesce(first_name, last_name, address_line1, city, country_code) IS NOT NULL
        THEN jsonb_build_object('firstName', first_name, 'lastName', last_name,
                                'addressLine1', address_line1, 'city', city, 'state', state,
                                'zipCode', zip_code, 'countryCode', upper(country_code),
                                'country', upper(country_code)) END,
    'paymentMethod', jsonb_build_object(
        'holderName', holder_name, 'cardType', upper(card_type), 'cardBrand', upper(card_brand),
        'cardCountry', upper(card_country), 'expirationMonth', expiration_month,
        'expirationYear', expiration_year, 'cardBinNumber', card_bin, 'cardLast4Digits', card_last4),
    'subscription', CASE WHEN is_mit THEN jsonb_build_object(
        'subscriptionId', subscription_id, 'interval', subscription_interval,
        'price', amount_cents, 'currency', upper(currency)) END));

CREATE OR REPLACE FUNCTION flexfactor._api_call_answer(method text, path text, body jsonb,
                                            answer_statuses integer[],
                                            OUT http_status integer, OUT answer jsonb)
RETURNS record AS 'MODULE_PATHNAME', 'ff_api_call_answer_sql' LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION flexfactor._refusal_detail(http_status integer, answer jsonb)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- remote text, scrubbed as every remote message (card numbers, secrets,
-- bearer tokens; flexfactor._scrub), then cut: a secret cut first could
-- leave its beginning
RETURN left(flexfactor._scrub(format('HTTP %s, responseCode %s: %s', http_status,
              coalesce(nullif(answer->>'responseCode', ''), answer #>> '{errors,0,item2}', 'none'),
              coalesce(nullif(answer->>'responseMessage', ''), answer #>> '{errors,0,item1}', answer->>'title',
                       'no message'))), 600);

CREATE OR REPLACE FUNCTION flexfactor.ff_evaluate(payload jsonb)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_evaluate' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION flexfactor.ff_order(order_session_key text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key     uuid := flexfactor._uuid_arg($1, 'order_session_key');
    answer  jsonb;
BEGIN
    answer := flexfactor._api_call('GET', 'orders/' || key, NULL);
    UPDATE flexfactor.orders o
       SET status = flexfactor.ff_next_status(o.status,
                        flexfactor.ff_status_from_order(answer, now(), o.expiry_date_utc)),
           last_response = answer
     WHERE o.order_session_key = key;
    RETURN answer;
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_refund(order_session_key text, amount_cents bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key       uuid := flexfactor._uuid_arg($1, 'order_session_key');
    o         flexfactor.orders := flexfactor._order_for_update(key);
    -- what was captured, for an order captured with ff_capture(); else all of it
    captured  bigint := coalesce((SELECT sum(c.amount_cents) FROM flexfactor.captures c
                                   WHERE c.order_ref = o.id), o.amount_cents);
    remaining bigint := captured - o.refunded_cents;
    amount    bigint := coalesce($2, remaining);
    idem      uuid;
    reply     record;
    answer    jsonb;
    said      text;
BEGIN
    IF o.status NOT IN ('APPROVED', 'REFUNDED') THEN
        RAISE EXCEPTION 'cannot refund order %: its status is %', key, o.status
            USING ERRCODE = 'FF020',
                  DETAIL = 'Only APPROVED orders (or partly refunded ones) can be refunded.',
                  HINT = 'Use ff_cancel() for a pending order; ff_order() refreshes the status.';
    END IF;
    IF remaining <= 0 THEN
        RAISE EXCEPTION 'nothing is left to refund on order %', key
            USING ERRCODE = 'FF021',
                  DETAIL = format('The order is %s cents and all of it is already refunded.', captured);
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION 'refund amount must be positive, not % cents', amount
            USING ERRCODE = 'FF021',
                  DETAIL = format('%s cents are left to refund on order %s.', remaining, key),
                  HINT = 'Pass the amount in cents, or NULL to refund what is left.';
    END IF;
    IF amount > remaining THEN
        RAISE EXCEPTION 'refund of % cents is more than order % allows', amount, key
            USING ERRCODE = 'FF021',
                  DETAIL = format('The order is %s cents, %s cents are already refunded, %s cents are left.',
                                  captured, o.refunded_cents, remaining),
                  HINT = 'Refund at most what is left; NULL refunds all of it.';
    END IF;

    -- the local identity of this refund (refunds.idempotency_key); not sent
    idem := flexfactor.ff_attempt_key('refund', key::text, o.refunded_cents::text, amount::text);
    SELECT * INTO reply
      FROM flexfactor._api_call_answer('POST', 'orders/' || key || '/refund',
               jsonb_build_object('amountToRefund', flexfactor.ff_cents_to_dollars(amount)::numeric,
                                  'isPartialRefund', amount < remaining),
               '{400,402,409,422}');
    answer := reply.answer;
    said := upper(coalesce(answer->>'responseMessage', ''));

    IF reply.http_status NOT BETWEEN 200 AND 299
       OR lower(coalesce(answer->>'success', '')) <> 'true'
       OR upper(coalesce(answer->>'status', '')) NOT IN ('SUCCESS', 'APPROVED')
       OR nullif(answer->>'responseCode', '') IS NOT NULL THEN
        RAISE EXCEPTION 'FlexFactor refused the refund of order %', key
            USING ERRCODE = 'FF012',
                  DETAIL = flexfactor._refusal_detail(reply.http_status, answer),
                  HINT = 'Nothing was booked; ff_order() shows what FlexFactor holds for the order.';
    END IF;
    IF said ~ 'DECLINED' THEN
        -- the sandbox's 2024 answer to a refund that did happen
        RAISE EXCEPTION 'FlexFactor''s answer to the refund of order % is ambiguous', key
            USING ERRCODE = 'FF012',
                  DETAIL = format('%s (success true with responseMessage DECLINED).',
                                  flexfactor._refusal_detail(reply.http_status, answer)),
                  HINT = 'Nothing was booked.  Check with ff_order() whether FlexFactor refunded the order '
                         '(statusName RETURNED); its order.refunded webhook books the refund.';
    END IF;

    -- a repeated refund FlexFactor de-duplicated answers with the refund it
    -- already made: booked once (by an earlier call or its webhook)
    IF answer->>'transactionId' IS NOT NULL
       AND EXISTS (SELECT 1 FROM flexfactor.refunds r WHERE r.transaction_id = answer->>'transactionId') THEN
        RAISE NOTICE 'FlexFactor answered with refund % of order %, which is booked already', answer->>'transactionId', key;
        UPDATE flexfactor.orders SET last_response = answer WHERE id = o.id;
        RETURN answer;
    END IF;
    INSERT INTO flexfactor.refunds (order_ref, amount_cents, idempotency_key, transaction_id, response)
    VALUES (o.id, amount, idem, answer->>'transactionId', answer);
    UPDATE flexfactor.orders
       SET refunded_cents = refunded_cents + amount,
           status = flexfactor.ff_next_status(status, 'REFUNDED'),
           last_response = answer
     WHERE id = o.id;
    RETURN answer;
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_capture(order_session_key text, amount_cents bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key     uuid := flexfactor._uuid_arg($1, 'order_session_key');
    o       flexfactor.orders := flexfactor._order_for_update(key);
    amount  bigint := coalesce($2, o.amount_cents);
    idem    uuid;
    reply   record;
    answer  jsonb;
BEGIN
    IF o.status <> 'CAPTUREREQUIRED' THEN
        RAISE EXCEPTION 'cannot capture order %: its status is %', key, o.status
            USING ERRCODE = 'FF020',
                  DETAIL = 'Only CAPTUREREQUIRED orders (authorised, sent with transactionType AUTHORIZATION) can be captured.',
                  HINT = 'ff_order() refreshes the status; an order not captured in time is voided by FlexFactor.';
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION 'capture amount must be positive, not % cents', amount
            USING ERRCODE = 'FF021',
                  DETAIL = format('Order %s is authorised for %s cents.', key, o.amount_cents),
                  HINT = 'Pass the amount in cents, or NULL to capture all of it.';
    END IF;
    IF amount > o.amount_cents THEN
        RAISE EXCEPTION 'capture of % cents is more than order % allows', amount, key
            USING ERRCODE = 'FF021',
                  DETAIL = format('The order is authorised for %s cents.', o.amount_cents),
                  HINT = 'Capture at most the authorised amount; NULL captures all of it.';
    END IF;

    idem := flexfactor.ff_attempt_key('capture', key::text, amount::text);
    SELECT * INTO reply
      FROM flexfactor._api_call_answer('POST', 'capture',
               jsonb_build_object('idempotencyKey', idem, 'orderId', key, 'amount', amount,
                                  'currency', o.currency),
               '{400,402,409,422}');
    answer := reply.answer;
    IF reply.http_status NOT BETWEEN 200 AND 299
       OR lower(coalesce(answer->>'success', 'true')) = 'false'
       OR upper(coalesce(answer->>'captureStatus', answer->>'status', '')) <> 'SUCCESS'
       OR upper(coalesce(answer->>'status', 'SUCCESS')) <> 'SUCCESS' THEN
        RAISE EXCEPTION 'FlexFactor refused the capture of order %', key
            USING ERRCODE = 'FF012',
                  DETAIL = flexfactor._refusal_detail(reply.http_status, answer),
                  HINT = 'Nothing was recorded; ff_order() shows what FlexFactor holds for the order '
                         '(an order not captured within the capture window is voided).';
    END IF;

    INSERT INTO flexfactor.captures (order_ref, amount_cents, idempotency_key, response)
    VALUES (o.id, amount, idem, answer);
    UPDATE flexfactor.orders
       SET status = flexfactor.ff_next_status(status, 'APPROVED'),
           last_response = answer
     WHERE id = o.id;
    RETURN answer;
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_transmit(payload jsonb)
RETURNS bigint LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    queued bigint;
BEGIN
    IF jsonb_typeof(payload) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'ff_transmit() expects a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Build the body with flexfactor.ff_payment(...).';
    END IF;
    PERFORM flexfactor._check_body(payload, 'transmit', 'ff_transmit');
    INSERT INTO flexfactor.transmit_queue (payload) VALUES (payload) RETURNING id INTO queued;
    PERFORM flexfactor._wake_worker_at_commit();
    RETURN queued;
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_enqueue_decline(payload jsonb)
RETURNS bigint AS 'MODULE_PATHNAME', 'ff_enqueue_decline' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

DROP FUNCTION flexfactor._new_batch(text, text, integer, xid8, bigint, xid8, bigint);
CREATE FUNCTION flexfactor._new_batch(kind text, mid text, line_count integer,
                                      era bigint DEFAULT NULL,
                                      first_xid xid8 DEFAULT NULL, first_id bigint DEFAULT NULL,
                                      last_xid xid8 DEFAULT NULL, last_id bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    batch bigint := nextval(pg_get_serial_sequence('flexfactor.batches', 'id'));
BEGIN
    INSERT INTO flexfactor.batches (id, kind, mid, file_name, line_count, era, first_xid, first_id, last_xid, last_id)
    OVERRIDING SYSTEM VALUE
    VALUES (batch, kind, mid,
            format('%s_%s_%s_%s.jsonl', kind, mid,
                   to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"'), batch),
            line_count, era, first_xid, first_id, last_xid, last_id);
    RETURN batch;
END $$;

CREATE OR REPLACE FUNCTION flexfactor._create_evaluate_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mid       text := flexfactor._batch_mid();
    here      bigint := flexfactor._queue_era();
    done_era  bigint;
    done_xid  xid8;
    done_id   bigint;
    next_era  bigint;
    horizon   xid8;
    n         integer;
    f_xid     xid8;
    f_id      bigint;
    l_xid     xid8;
    l_id      bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('flexfactor.declines')::bigint) THEN
        RETURN NULL;
    END IF;
    -- a fresh snapshot after the lock: batches fixed by an exporter that just committed
    SELECT b.era, b.last_xid, b.last_id INTO done_era, done_xid, done_id
      FROM flexfactor.batches b WHERE b.kind = 'evaluate'
     ORDER BY b.era DESC, b.last_xid DESC, b.last_id DESC LIMIT 1;
    IF NOT FOUND THEN
        done_era := 0;
        done_xid := '0'::xid8;
        done_id := 0;
    END IF;
    SELECT d.enqueue_era INTO next_era FROM flexfactor.declines d
     WHERE (d.enqueue_era, d.enqueue_xid, d.id) > (done_era, done_xid, done_id)
     ORDER BY d.enqueue_era, d.enqueue_xid, d.id LIMIT 1;
    IF greatest(done_era, next_era) > here THEN
        RAISE EXCEPTION 'queued declines come from a later installation of flexfactor than this one'
            USING ERRCODE = 'FF013',
                  DETAIL = format('This installation''s era is %s; flexfactor.%s holds era %s.', here,
                                  CASE WHEN done_era > here THEN 'batches' ELSE 'declines' END,
                                  greatest(done_era, next_era)),
                  HINT = 'Restore a dump into a database where CREATE EXTENSION flexfactor runs as part of the restore '
                         '(a full dump into an empty database), on a server whose clock is right.';
    END IF;
    IF next_era IS NULL THEN
        RETURN NULL;
    END IF;
    IF next_era <> done_era THEN
        done_xid := '0'::xid8;
        done_id := 0;
    END IF;
    horizon := CASE WHEN next_era = here THEN pg_snapshot_xmin(pg_current_snapshot())
                    ELSE '18446744073709551615'::xid8 END;

    WITH next AS MATERIALIZED (
        SELECT d.enqueue_xid, d.id FROM flexfactor.declines d
         WHERE d.enqueue_era = next_era AND (d.enqueue_xid, d.id) > (done_xid, done_id)
           AND d.enqueue_xid < horizon
         ORDER BY d.enqueue_xid, d.id
         LIMIT max_rows)
    SELECT (SELECT count(*) FROM next), f.enqueue_xid, f.id, l.enqueue_xid, l.id
      INTO n, f_xid, f_id, l_xid, l_id
      FROM (SELECT * FROM next ORDER BY enqueue_xid, id LIMIT 1) f,
           (SELECT * FROM next ORDER BY enqueue_xid DESC, id DESC LIMIT 1) l;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    RETURN flexfactor._new_batch('evaluate', mid, n, next_era, f_xid, f_id, l_xid, l_id);
END $$;

CREATE OR REPLACE FUNCTION flexfactor._create_transmit_batch(max_rows integer, after_id bigint DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_sort = off AS $$
DECLARE
    mid    text := flexfactor._batch_mid();
    ids    bigint[];
    batch  bigint;
BEGIN
    -- two exporters never take the same row
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM flexfactor.transmit_queue
             WHERE state = 'pending' AND id > after_id
             ORDER BY id
             LIMIT max_rows
               FOR UPDATE SKIP LOCKED) AS claimed;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;

    batch := flexfactor._new_batch('transmit', mid, cardinality(ids));
    UPDATE flexfactor.transmit_queue SET state = 'batched', batch_id = batch WHERE id = ANY (ids);
    RETURN batch;
END $$;

CREATE OR REPLACE FUNCTION flexfactor.batch_file_lines(batch_id bigint)
RETURNS TABLE (sequence_number integer, decline_id bigint, transmit_queue_id bigint, line text)
LANGUAGE sql STABLE
-- a standard SQL body: names and operators are bound here, whatever the
-- caller's search_path, and the planner inlines it into the calling query
BEGIN ATOMIC
    -- the payload's own text, then the three fields (it has none of them)
    SELECT d.n::integer, d.id, NULL::bigint,
           CASE WHEN d.payload = '{}' THEN '{' ELSE left(d.payload::text, -1) || ', ' END
           || '"sequenceNumber": ' || d.n || ', "mid": ' || to_json(b.mid)::text
           || ', "idempotencyKey": "' || d.idempotency_key::text || '"}'
      FROM flexfactor.batches b
     CROSS JOIN LATERAL (
           -- walk the queue index from the first row: a btree stops a row
           -- comparison's scan on its leading column only, so the upper
           -- bound alone would read on to the end of that transaction's rows
           SELECT r.id, r.payload, r.idempotency_key,
                  row_number() OVER (ORDER BY r.enqueue_xid, r.id) AS n
             FROM (SELECT q.id, q.payload, q.idempotency_key, q.enqueue_xid
                     FROM flexfactor.declines q
                    WHERE q.enqueue_era = b.era
                      AND (q.enqueue_xid, q.id) >= (b.first_xid, b.first_id)
                      AND (q.enqueue_xid, q.id) <= (b.last_xid, b.last_id)
                    ORDER BY q.enqueue_xid, q.id
                    LIMIT b.line_count) r) d
     WHERE b.id = batch_file_lines.batch_id AND b.kind = 'evaluate'
    UNION ALL
    SELECT t.n::integer, NULL::bigint, t.id,
           (t.payload || jsonb_build_object(
                'sequenceNumber', t.n, 'mid', b.mid,
                'idempotencyKey', coalesce(t.payload->>'idempotencyKey',
                                           md5('flexfactor-transmit:' || b.mid || ':' || t.id)::uuid::text)))::text
      FROM flexfactor.batches b
     CROSS JOIN LATERAL (
           SELECT q.id, q.payload, row_number() OVER (ORDER BY q.id) AS n
             FROM flexfactor.transmit_queue q WHERE q.batch_id = b.id) t
     WHERE b.id = batch_file_lines.batch_id AND b.kind = 'transmit'
     ORDER BY 1;
END;

CREATE FUNCTION flexfactor._batch_line_orders(batch_id bigint, first_line integer, last_line integer)
RETURNS TABLE (sequence_number integer, decline_id bigint, transmit_queue_id bigint, order_id text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    -- the range walked as batch_file_lines does, from line first_line on
    SELECT (greatest(first_line, 1) + d.k - 1)::integer, d.id, NULL::bigint, d.payload->>'orderId'
      FROM flexfactor.batches b
     CROSS JOIN LATERAL (
           SELECT r.id, r.payload, row_number() OVER (ORDER BY r.enqueue_xid, r.id) AS k
             FROM (SELECT q.id, q.payload, q.enqueue_xid
                     FROM flexfactor.declines q
                    WHERE q.enqueue_era = b.era
                      AND (q.enqueue_xid, q.id) >= (b.first_xid, b.first_id)
                      AND (q.enqueue_xid, q.id) <= (b.last_xid, b.last_id)
                    ORDER BY q.enqueue_xid, q.id
                   OFFSET greatest(first_line, 1) - 1
                    LIMIT greatest(least(last_line, b.line_count) - greatest(first_line, 1) + 1, 0)) r) d
     WHERE b.id = _batch_line_orders.batch_id AND b.kind = 'evaluate'
    UNION ALL
    SELECT t.n::integer, NULL::bigint, t.id, t.payload->>'orderId'
      FROM flexfactor.batches b
     CROSS JOIN LATERAL (
           SELECT q.id, q.payload, row_number() OVER (ORDER BY q.id) AS n
             FROM flexfactor.transmit_queue q WHERE q.batch_id = b.id) t
     WHERE b.id = _batch_line_orders.batch_id AND b.kind = 'transmit'
       AND t.n BETWEEN first_line AND last_line;
END;

CREATE OR REPLACE FUNCTION flexfactor._declines_frozen()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.id, NEW.order_id, NEW.transaction_id, NEW.idempotency_key, NEW.payload, NEW.enqueue_xid, NEW.enqueue_era)
           IS DISTINCT FROM
           (OLD.id, OLD.order_id, OLD.transaction_id, OLD.idempotency_key, OLD.payload, OLD.enqueue_xid, OLD.enqueue_era) THEN
            RAISE EXCEPTION 'a queued decline cannot be changed'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Decline %s (order %s) is a line of a batch file, as it was queued.', OLD.id, OLD.order_id),
                      HINT = 'Queue a new attempt with its own transaction.id instead.';
        END IF;
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM flexfactor.batches b
                WHERE b.kind = 'evaluate' AND b.state IN ('ready', 'uploaded') AND b.era = OLD.enqueue_era
                  AND (OLD.enqueue_xid, OLD.id) BETWEEN (b.first_xid, b.first_id) AND (b.last_xid, b.last_id)) THEN
        RAISE EXCEPTION 'decline % is in a batch file not answered yet', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Order %s is a line of a batch that is still to be uploaded or answered.', OLD.order_id),
                  HINT = 'Wait for the result file (see flexfactor.batch_status).';
    END IF;
    RETURN OLD;
END $$;

-- Same name and signature, now in C and with the writer's rights (no longer
-- SECURITY DEFINER): a merchant's trigger created with 0.1.0 calls it from now
-- on, with the same arguments (0.2.0 takes more; see docs/upgrading.md).
CREATE OR REPLACE FUNCTION flexfactor.ff_decline_trigger()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_decline_trigger' LANGUAGE C;

-- A trigger created with 0.1.0 would run this function with its 0.1.0
-- arguments, which cannot name what 0.2.0 requires of every queued decline:
-- every declined payment written through it would then fail.  Rather than
-- let the merchant's billing writes fail after the update, the update is
-- refused while such a trigger exists: drop it, update and create it again
-- with the new arguments, in one transaction (docs/upgrading.md).  A decline
-- written meanwhile waits for that transaction (DROP TRIGGER locks the table).
DO $$
DECLARE
    found text;
BEGIN
    SELECT string_agg(format('%I on %s', t.tgname, t.tgrelid::regclass), ', ' ORDER BY t.tgrelid::regclass::text, t.tgname)
      INTO found
      FROM pg_catalog.pg_trigger t
     WHERE t.tgfoid = 'flexfactor.ff_decline_trigger()'::regprocedure;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'flexfactor 0.2.0 cannot be installed over decline triggers created with 0.1.0'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Triggers: %s.  0.2.0 queues only complete declines (the payer''s email, the billing name and address, the subscription id and interval), which 0.1.0''s trigger arguments cannot name: every decline written through them would fail with FF023.', found),
                  HINT = 'In one transaction: DROP TRIGGER each of them, ALTER EXTENSION flexfactor UPDATE, CREATE TRIGGER each again with the new arguments (field=column, field=''constant'' or enrich=function); see docs/upgrading.md.';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION flexfactor._invoke_callback(fn regprocedure, o flexfactor.orders)
RETURNS void AS 'MODULE_PATHNAME', 'ff_invoke_callback' LANGUAGE C STRICT;

CREATE OR REPLACE FUNCTION flexfactor._run_callback(event_id bigint, o flexfactor.orders)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting text := nullif(current_setting('flexfactor.on_order_status', true), '');
    fn      regprocedure;
    outcome text := 'done';
    problem text;
BEGIN
    IF setting IS NULL THEN
        RETURN 'none';
    END IF;
    fn := to_regprocedure(setting || '(flexfactor.orders)');
    IF fn IS NULL THEN
        outcome := 'failed';
        problem := format('function %s(flexfactor.orders) does not exist', setting);
    ELSE
        BEGIN
            PERFORM flexfactor._invoke_callback(fn, o);
        EXCEPTION WHEN OTHERS THEN
            outcome := 'failed';
            problem := SQLERRM;
        END;
    END IF;
    UPDATE flexfactor.order_events
       SET callback_state = CASE WHEN outcome = 'failed' AND callback_attempts + 1 >= 10
                                 THEN 'gave_up' ELSE outcome END,
           callback_attempts = callback_attempts + 1,
           callback_error = problem,
           next_callback_at = CASE WHEN outcome = 'failed'
                                   THEN now() + make_interval(secs => least(5 * power(2, callback_attempts), 3600)) END
     WHERE id = event_id;
    IF outcome = 'failed' THEN
        RAISE WARNING 'flexfactor.on_order_status callback failed for order %: %', o.order_id, problem;
    END IF;
    RETURN outcome;
END $$;

-- The triggers of flexfactor.orders, same names and signatures, now in C
-- (order_events.c): every order written pays for them.
CREATE OR REPLACE FUNCTION flexfactor._orders_touch()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_touch' LANGUAGE C;
CREATE OR REPLACE FUNCTION flexfactor._orders_status_changed()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_status_changed' LANGUAGE C;
CREATE OR REPLACE FUNCTION flexfactor._orders_key_known()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_key_known' LANGUAGE C;

-- The AFTER INSERT triggers act only on orders created by the inserting
-- transaction (created_at = now()): rows reloaded by a pg_dump restore are
-- not reported, called back or applied again.
DROP TRIGGER orders_10_status_set ON flexfactor.orders;
CREATE TRIGGER orders_10_status_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.status <> 'PENDING' AND NEW.created_at = now())
    EXECUTE FUNCTION flexfactor._orders_status_changed();

DROP TRIGGER orders_20_key_set ON flexfactor.orders;
CREATE TRIGGER orders_20_key_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.order_session_key IS NOT NULL AND NEW.created_at = now())   -- see orders_10_status_set
    EXECUTE FUNCTION flexfactor._orders_key_known();

CREATE OR REPLACE FUNCTION flexfactor._record_webhook_event(
    p_event text, p_order_key text, p_external_order_id text, p_confirmation_id text,
    p_event_time text, p_event_data jsonb, p_is_resent boolean, p_nonce text, p_body text,
    p_received_via text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key      uuid;
    stored   bigint;
    at       timestamptz;
BEGIN
    -- an event that names no order (payout.created, payout.updated, ...) is
    -- kept and acknowledged, never refused: FlexFactor would retry it for good
    IF p_order_key IS NULL THEN
        BEGIN
            at := p_event_time::timestamptz;
        EXCEPTION WHEN OTHERS THEN
            at := NULL;
        END;
        INSERT INTO flexfactor.webhook_events AS w
               (event, external_order_id, confirmation_id, event_time, event_data, is_resent, nonce,
                body, received_via, apply_state, applied_at, apply_error)
        VALUES (lower(p_event), p_external_order_id, p_confirmation_id,
                at, p_event_data, p_is_resent, p_nonce, p_body, p_received_via, 'not_applicable', now(),
                format('%s names no order (no OrderId): recorded, not applied', lower(p_event)))
        ON CONFLICT (nonce) WHERE nonce IS NOT NULL DO NOTHING
        RETURNING w.id INTO stored;
        IF stored IS NULL THEN
            RAISE EXCEPTION 'webhook delivery refused: its nonce was already used'
                USING ERRCODE = 'FF042',
                      DETAIL = 'A delivery with the same x-fc-nonce was accepted before; this one is a replay.';
        END IF;
        RETURN 'not_applicable';
    END IF;
    IF p_order_key !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'webhook delivery refused: OrderId is not a GUID'
            USING ERRCODE = 'FF043';
    END IF;
    key := p_order_key::uuid;
    BEGIN
        at := p_event_time::timestamptz;
    EXCEPTION WHEN OTHERS THEN
        at := NULL;
    END;
    INSERT INTO flexfactor.webhook_events AS w
           (event, order_session_key, external_order_id, confirmation_id, event_time,
            event_data, is_resent, nonce, body, received_via)
    VALUES (lower(p_event), key, p_external_order_id, p_confirmation_id, at,
            p_event_data, p_is_resent, p_nonce, p_body, p_received_via)
    ON CONFLICT (nonce) WHERE nonce IS NOT NULL DO NOTHING
    RETURNING w.id INTO stored;
    IF stored IS NULL THEN
        RAISE EXCEPTION 'webhook delivery refused: its nonce was already used'
            USING ERRCODE = 'FF042',
                  DETAIL = 'A delivery with the same x-fc-nonce was accepted before; this one is a replay.';
    END IF;

    -- a repeat of an event already stored (a resend, a duplicate delivery) changes nothing
    IF EXISTS (SELECT 1 FROM flexfactor.webhook_events w
                WHERE w.id <> stored AND w.order_session_key = key AND w.event = lower(p_event)
                  AND w.confirmation_id IS NOT DISTINCT FROM p_confirmation_id
                  AND w.apply_state <> 'duplicate') THEN
        UPDATE flexfactor.webhook_events SET apply_state = 'duplicate', applied_at = now()
         WHERE id = stored;
        RETURN 'duplicate';
    END IF;
    RETURN flexfactor._apply_webhook_event(stored);
END $$;

CREATE OR REPLACE FUNCTION flexfactor._record_rejected_webhook_event(
    p_nonce text, p_body text, p_received_via text, p_reason text)
RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stored bigint;
BEGIN
    INSERT INTO flexfactor.webhook_events AS w
           (event, nonce, body, received_via, apply_state, applied_at, apply_error)
    VALUES (coalesce(lower(substring(p_body FROM '(?i)"event"\s*:\s*"([a-z0-9._]{1,64})"')), 'unknown'),
            p_nonce, p_body, p_received_via, 'rejected', now(), left(p_reason, 500))
    ON CONFLICT (nonce) WHERE nonce IS NOT NULL DO NOTHING
    RETURNING w.id INTO stored;
    IF stored IS NULL THEN
        RAISE EXCEPTION 'webhook delivery refused: its nonce was already used'
            USING ERRCODE = 'FF042',
                  DETAIL = 'A delivery with the same x-fc-nonce was accepted before; this one is a replay.';
    END IF;
END $$;

CREATE FUNCTION flexfactor._refuse_result_file(p_file_name text, p_byte_count bigint, p_mtime bigint,
                                               p_sqlstate text, p_reason text)
RETURNS void LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    INSERT INTO flexfactor.refused_result_files AS r (file_name, byte_count, modified_at, sqlstate, reason)
    VALUES (p_file_name, p_byte_count, to_timestamp(p_mtime), p_sqlstate, left(p_reason, 1000))
    ON CONFLICT (file_name) DO UPDATE
       SET byte_count = EXCLUDED.byte_count, modified_at = EXCLUDED.modified_at,
           sqlstate = EXCLUDED.sqlstate, reason = EXCLUDED.reason, refused_at = now();
END;

CREATE FUNCTION flexfactor._answered_batch(answer_name text)
RETURNS flexfactor.batches LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b        flexfactor.batches;
    is_error boolean := answer_name ~ '\.error\.json$';
BEGIN
    IF EXISTS (SELECT 1 FROM flexfactor.result_files WHERE file_name = answer_name) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO b FROM flexfactor.batches
     WHERE file_name = regexp_replace(answer_name, '\.(result\.jsonl|error\.json)$', '.jsonl') FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% file % answers no known batch', CASE WHEN is_error THEN 'error' ELSE 'result' END, answer_name
            USING ERRCODE = 'FF009',
                  HINT = 'Only files named <batch file name without .jsonl>.result.jsonl (or .error.json) are applied.';
    END IF;
    IF is_error AND b.state = 'answered' THEN
        RAISE EXCEPTION 'error file % arrived after batch % was answered', answer_name, b.id
            USING ERRCODE = 'FF009',
                  DETAIL = format('The batch was answered by a result file at %s.', b.result_at),
                  HINT = 'Nothing was changed; ask FlexFactor about the file.';
    END IF;
    RETURN b;
END $$;

CREATE FUNCTION flexfactor._apply_result_lines(p_batch_id bigint, result_name text, lines text[], first_line integer)
RETURNS integer LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b       flexfactor.batches;
    bad     integer;
    stored  integer;
BEGIN
    SELECT * INTO STRICT b FROM flexfactor.batches WHERE id = p_batch_id;
    BEGIN
        WITH a AS MATERIALIZED (
                 SELECT CASE WHEN j->>'sequenceNumber' ~ '^[0-9]{1,4}$'
                             THEN (j->>'sequenceNumber')::integer END AS seq,
                        j ? 'orderId' AS has_order_id, j->>'orderId' AS order_id,
                        j->>'orderSessionKey' AS order_session_key, j->>'status' AS status,
                        j->'errors' AS errors, j->>'transmitId' AS transmit_id
                   -- OFFSET 0: parsed once, not once for each field
                   FROM (SELECT l::jsonb AS j FROM unnest(lines) AS l OFFSET 0) p),
             -- the batch lines these answer (a file lists them in order, so
             -- a chunk answers a short run of them)
             r AS (SELECT min(seq) AS lo, max(seq) AS hi FROM a),
             ins AS (
                 INSERT INTO flexfactor.batch_lines AS bl
                        (batch_id, sequence_number, decline_id, transmit_queue_id, order_session_key, status, errors)
                 SELECT b.id, f.sequence_number, f.decline_id, f.transmit_queue_id,
                        CASE WHEN a.order_session_key ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                             THEN a.order_session_key::uuid END,
                        upper(a.status),
                        CASE WHEN jsonb_typeof(a.errors) = 'array' AND jsonb_array_length(a.errors) = 0
                             THEN a.errors ELSE flexfactor._scrub_json(a.errors) END
                   FROM a CROSS JOIN r
                   JOIN LATERAL flexfactor._batch_line_orders(b.id, r.lo, r.hi) f ON f.sequence_number = a.seq
                  WHERE NOT (a.has_order_id AND a.order_id IS DISTINCT FROM f.order_id)
                 ON CONFLICT DO NOTHING
                 RETURNING bl.sequence_number, bl.transmit_queue_id),
             tr AS (
                 UPDATE flexfactor.transmit_queue t SET transmit_id = a.transmit_id
                   FROM ins JOIN a ON a.seq = ins.sequence_number
                  WHERE t.id = ins.transmit_queue_id)
        SELECT count(*) INTO stored FROM ins;
    EXCEPTION WHEN data_exception THEN
        FOR i IN 1 .. cardinality(lines) LOOP
            BEGIN
                PERFORM lines[i]::jsonb;
            EXCEPTION WHEN data_exception THEN
                bad := i;
                EXIT;
            END;
        END LOOP;
        IF bad IS NULL THEN
            RAISE;
        END IF;
        RAISE EXCEPTION 'result file % is not JSON Lines', result_name
            USING ERRCODE = 'FF009',
                  DETAIL = format('Line %s is not JSON.', first_line + bad - 1),
                  HINT = 'Nothing was applied; ask FlexFactor about the file.';
    END;
    IF stored <> cardinality(lines) THEN
        RAISE EXCEPTION 'result file % does not match batch %', result_name, b.id
            USING ERRCODE = 'FF009',
                  DETAIL = format('Lines %s to %s hold a sequenceNumber that is not a line of the batch (1 to %s) or repeats one, or an orderId that differs from the batch line it answers.',
                                  first_line, first_line + cardinality(lines) - 1, b.line_count),
                  HINT = 'Nothing was applied; ask FlexFactor about the file.';
    END IF;
    RETURN stored;
END $$;

CREATE FUNCTION flexfactor._finish_result_file(p_batch_id bigint, result_name text, line_count integer,
                                               content_sha256 text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      flexfactor.batches;
    stored integer;
BEGIN
    SELECT * INTO STRICT b FROM flexfactor.batches WHERE id = p_batch_id;
    SELECT count(*) INTO stored FROM flexfactor.batch_lines bl WHERE bl.batch_id = b.id;
    IF line_count <> b.line_count OR stored <> b.line_count THEN
        RAISE EXCEPTION 'result file % does not match batch %', result_name, b.id
            USING ERRCODE = 'FF009',
                  DETAIL = format('The batch has %s lines; the file has %s.', b.line_count, line_count),
                  HINT = 'Nothing was applied; ask FlexFactor about the file.';
    END IF;

    IF b.kind = 'evaluate' THEN
        INSERT INTO flexfactor.orders AS o
               (order_id, order_session_key, transaction_id, idempotency_key, source, is_mit,
                amount_cents, currency, expiry_date_utc, status)
        SELECT d.order_id, bl.order_session_key, d.transaction_id, d.idempotency_key, 'batch', true,
               (d.payload #>> '{transaction,amount}')::bigint, upper(d.payload #>> '{transaction,currency}'),
               (d.payload->>'expiryDateUtc')::timestamptz,
               flexfactor.ff_next_status('PENDING', bl.status)
          FROM flexfactor.batch_lines bl JOIN flexfactor.declines d ON d.id = bl.decline_id
         WHERE bl.batch_id = b.id AND bl.status <> 'REJECTED'
        ON CONFLICT (order_id) DO UPDATE
           SET order_session_key = coalesce(EXCLUDED.order_session_key, o.order_session_key),
               -- an order's amount, currency and transaction never change once sent
               transaction_id = coalesce(o.transaction_id, EXCLUDED.transaction_id),
               idempotency_key = EXCLUDED.idempotency_key,
               source = 'batch',
               status = flexfactor.ff_next_status(o.status, EXCLUDED.status);
        UPDATE flexfactor.declines d
           SET set_aside_reason = format('FlexFactor rejected line %s of %s: %s', bl.sequence_number,
                                         b.file_name, coalesce(bl.errors::text, 'no reason given'))
          FROM flexfactor.batch_lines bl
         WHERE bl.batch_id = b.id AND bl.decline_id = d.id AND bl.status = 'REJECTED';
    END IF;

    UPDATE flexfactor.batches SET state = 'answered', result_at = now() WHERE id = b.id;
    INSERT INTO flexfactor.result_files (file_name, kind, batch_id, sha256, line_count)
    VALUES (result_name, 'result', b.id, content_sha256, line_count);
    DELETE FROM flexfactor.refused_result_files WHERE file_name = result_name;
    RETURN format('applied %s lines to batch %s', line_count, b.id);
END $$;

CREATE OR REPLACE FUNCTION flexfactor._apply_result_file(result_name text, content text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      flexfactor.batches := flexfactor._answered_batch(result_name);
    lines  text[];
BEGIN
    IF b.id IS NULL THEN
        RETURN 'already applied';
    END IF;
    SELECT coalesce(array_agg(l ORDER BY n), '{}') INTO lines
      FROM regexp_split_to_table(content, E'\n') WITH ORDINALITY AS t(l, n)
     WHERE l <> '';
    -- a file with another number of lines is refused by _finish_result_file
    IF cardinality(lines) = b.line_count THEN
        PERFORM flexfactor._apply_result_lines(b.id, result_name, lines, 1);
    END IF;
    RETURN flexfactor._finish_result_file(b.id, result_name, cardinality(lines),
                                          encode(sha256(convert_to(content, 'UTF8')), 'hex'));
END $$;

CREATE OR REPLACE FUNCTION flexfactor._apply_error_file(error_name text, content text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      flexfactor.batches := flexfactor._answered_batch(error_name);
    reason text;
BEGIN
    IF b.id IS NULL THEN
        RETURN 'already applied';
    END IF;
    BEGIN
        reason := flexfactor._scrub(left(coalesce(content::jsonb->>'error', content), 500));
    EXCEPTION WHEN invalid_text_representation THEN
        reason := flexfactor._scrub(left(content, 500));
    END;
    UPDATE flexfactor.batches SET state = 'rejected', result_at = now(),
           last_error = 'rejected whole by FlexFactor: ' || reason
     WHERE id = b.id;
    UPDATE flexfactor.declines SET set_aside_reason = format('batch file %s rejected whole: %s', b.file_name, reason)
     WHERE id IN (SELECT f.decline_id FROM flexfactor.batch_file_lines(b.id) f);
    UPDATE flexfactor.transmit_queue SET state = 'set_aside',
           last_error = format('batch file %s rejected whole: %s', b.file_name, reason)
     WHERE batch_id = b.id AND state IN ('batched', 'delivered');
    INSERT INTO flexfactor.result_files (file_name, kind, batch_id, sha256, line_count)
    VALUES (error_name, 'error', b.id, encode(sha256(convert_to(content, 'UTF8')), 'hex'), 0);
    DELETE FROM flexfactor.refused_result_files WHERE file_name = error_name;
    RETURN format('batch %s rejected: %s', b.id, reason);
END $$;

CREATE OR REPLACE FUNCTION flexfactor.ff_requeue_batch(batch_id bigint)
RETURNS integer LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b        flexfactor.batches;
    again    bigint;
    requeued integer;
BEGIN
    SELECT * INTO b FROM flexfactor.batches WHERE id = $1 FOR UPDATE;
    IF NOT FOUND OR b.state <> 'rejected' OR b.requeued_as IS NOT NULL THEN
        RAISE EXCEPTION 'batch % was not rejected by FlexFactor, or is queued again already', $1
            USING ERRCODE = 'FF020',
                  HINT = 'Only the rows of a batch in state ''rejected'' can be queued again, once.';
    END IF;
    IF b.kind = 'evaluate' THEN
        UPDATE flexfactor.declines d SET set_aside_reason = NULL
         WHERE d.id IN (SELECT f.decline_id FROM flexfactor.batch_file_lines(b.id) f);
        GET DIAGNOSTICS requeued = ROW_COUNT;
        IF requeued = 0 THEN
            RAISE EXCEPTION 'batch % has no rows left to queue again', $1
                USING ERRCODE = 'FF020',
                      DETAIL = 'Its declines were deleted from flexfactor.declines.';
        END IF;
        again := flexfactor._new_batch('evaluate', b.mid, requeued,
                                       b.era, b.first_xid, b.first_id, b.last_xid, b.last_id);
    ELSE
        UPDATE flexfactor.transmit_queue t
           SET state = 'pending', batch_id = NULL, last_error = NULL, delivered_at = NULL
         WHERE t.batch_id = $1 AND t.state = 'set_aside';
        GET DIAGNOSTICS requeued = ROW_COUNT;
    END IF;
    UPDATE flexfactor.batches SET requeued_as = again WHERE id = b.id;
    RETURN requeued;
END $$;

-- New: after fixing a setting, everything that waits for a retry after a
-- failure is due at once: batch files (tried in this export), queued
-- transmits and failed billing callbacks (the worker's next steps).  An
-- overload, so that ff_export_batch() keeps its grants and pg_cron jobs.
CREATE FUNCTION flexfactor.ff_export_batch(retry_now boolean)
RETURNS integer AS 'MODULE_PATHNAME', 'ff_export_batch_retry' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/* ----------------------------------------------------------------- views */

-- Queue positions with the era (sql/install/07_dba_views.sql).
CREATE OR REPLACE VIEW flexfactor.queue_status AS
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

CREATE OR REPLACE VIEW flexfactor.decline_status AS
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

-- New columns in the middle (declined, recovery by value, amount submitted):
-- dropped and created again.
DROP VIEW flexfactor.recovery_stats;
CREATE VIEW flexfactor.recovery_stats AS
SELECT date_trunc('day', created_at)::date AS day,
       currency,
       count(*) AS submitted,
       count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')) AS approved,
       count(*) FILTER (WHERE status IN ('DECLINED', 'REJECTED')) AS declined,
       count(*) FILTER (WHERE status = 'EXPIRED') AS expired,
       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
       count(*) FILTER (WHERE status = 'REFUNDED') AS refunded,
       count(*) FILTER (WHERE flexfactor.ff_status_rank(status) < 10) AS pending,
       round(100.0 * count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED'))
             / nullif(count(*) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10), 0), 1)
           AS recovery_rate_pct,
       round(100.0 * coalesce(sum(amount_cents - refunded_cents) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')), 0)
             / nullif(sum(amount_cents) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10), 0), 1)
           AS recovery_value_pct,
       coalesce(sum(amount_cents), 0) AS submitted_cents,
       coalesce(sum(amount_cents - refunded_cents) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')), 0)
           AS recovered_cents
  FROM flexfactor.orders
 GROUP BY 1, 2;

COMMENT ON VIEW flexfactor.recovery_stats IS
    'Per day and currency: orders submitted, approved (rescued), declined (refused by FlexFactor: DECLINED or a REJECTED line), expired (rescue window closed), cancelled, refunded, still pending; recovery by count (approved / decided) and by value (recovered / amount decided), amount submitted and recovered net of refunds';

/* ------------------------------------------------------------ privileges */

-- nothing granted to PUBLIC, the new objects included
REVOKE ALL ON ALL TABLES IN SCHEMA flexfactor FROM PUBLIC;   -- views included
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flexfactor FROM PUBLIC;
