/*
 * flexfactor.sql -- the single source of the extension's install script
 * (copied to flexfactor--<version>.sql at build time).
 *
 * Owns the schema flexfactor: the order book, the outbound queues (declines
 * for SFTP batches, transmit copies), the batches and their lines, received
 * webhook events and rejected deliveries.  Nothing here is granted to PUBLIC;
 * README shows the GRANTs a billing role needs.
 */
\echo Use "CREATE EXTENSION flexfactor" to load this file. \quit

-- Created here, not through the control file, so that the schema is a member
-- of the extension and DROP EXTENSION removes it.
CREATE SCHEMA flexfactor;
REVOKE ALL ON SCHEMA flexfactor FROM PUBLIC;

/* ---------------------------------------------------------------- orders */

-- The order states; see ff_next_status() for the forward-only rule.  Domains
-- rather than table CHECKs: their expressions are compiled once per session,
-- where a table CHECK is re-read for every statement that writes the row.
CREATE DOMAIN flexfactor.order_status AS text
    CONSTRAINT order_status_check CHECK (VALUE IN (
        'PENDING',          -- recorded, request not answered yet
        'SUBMITTED',        -- accepted for asynchronous processing
        'PROCESSING',
        'CHALLENGE',
        'CAPTUREREQUIRED',
        'APPROVED',         -- rescued (order.completed)
        'DECLINED',
        'EXPIRED',          -- not rescued before expiryDateUtc (order.expired)
        'CANCELLED',
        'REFUNDED',
        'REJECTED'));       -- refused by FlexFactor's validation
CREATE DOMAIN flexfactor.currency_code AS text
    CONSTRAINT currency_code_check CHECK (VALUE ~ '^[A-Z]{3}$');
CREATE DOMAIN flexfactor.positive_cents AS bigint
    CONSTRAINT positive_cents_check CHECK (VALUE > 0);

-- One row per merchant order that FlexFactor was asked to rescue, whether
-- through /evaluate (source 'api') or an SFTP batch (source 'batch').
CREATE TABLE flexfactor.orders (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id           text NOT NULL,          -- merchant orderId (ExternalOrderId in webhooks)
    order_session_key  uuid,                   -- FlexFactor order id (OrderId in webhooks)
    transaction_id     text,                   -- processor id of the charge attempt last sent
    idempotency_key    uuid NOT NULL,          -- of the current attempt, stored before sending;
                                               -- derived from the attempt, so unique with it
    source             text NOT NULL,
    is_mit             boolean NOT NULL DEFAULT true,
    amount_cents       flexfactor.positive_cents NOT NULL,
    currency           flexfactor.currency_code NOT NULL,
    refunded_cents     bigint NOT NULL DEFAULT 0,
    status             flexfactor.order_status NOT NULL DEFAULT 'PENDING',
    confirmation_id    text,
    expiry_date_utc    timestamptz,
    chargeback_at      timestamptz,
    last_response      jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    status_changed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_order_id_key UNIQUE (order_id),
    CONSTRAINT orders_order_session_key_key UNIQUE (order_session_key),
    CONSTRAINT orders_check CHECK (order_id <> '' AND source IN ('api', 'batch')
                                   AND refunded_cents BETWEEN 0 AND amount_cents)
);

-- Refunds sent with ff_refund(), one row per accepted refund.
CREATE TABLE flexfactor.refunds (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_ref          bigint NOT NULL REFERENCES flexfactor.orders (id),
    amount_cents       bigint NOT NULL,
    idempotency_key    uuid NOT NULL,
    transaction_id     text,                   -- FlexFactor's refund transaction
    response           jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_amount_check CHECK (amount_cents > 0),
    CONSTRAINT refunds_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX refunds_order_idx ON flexfactor.refunds (order_ref);

/* --------------------------------------------------------------- batches */

-- One SFTP batch file.  Its name and bytes are fixed when it is created, so
-- a retried upload writes the same file.
CREATE TABLE flexfactor.batches (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL,
    file_name        text NOT NULL,
    line_count       integer NOT NULL,
    byte_count       bigint,
    sha256           text,
    state            text NOT NULL DEFAULT 'ready',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    uploaded_at      timestamptz,
    result_at        timestamptz,
    CONSTRAINT batches_file_name_key UNIQUE (file_name),
    CONSTRAINT batches_kind_check CHECK (kind IN ('evaluate', 'transmit')),
    CONSTRAINT batches_line_count_check CHECK (line_count BETWEEN 1 AND 2000),
    CONSTRAINT batches_sha256_check CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT batches_attempts_check CHECK (attempts >= 0),
    CONSTRAINT batches_state_check CHECK (state IN (
        'ready',            -- fixed, waiting for (another) upload
        'uploaded',         -- renamed into the inbound folder
        'answered',         -- result file applied
        'rejected'))        -- FlexFactor rejected the whole file
);
CREATE INDEX batches_upload_queue_idx ON flexfactor.batches (next_attempt_at)
    WHERE state = 'ready';

/* ---------------------------------------------------------------- queues */

-- Declined merchant-initiated charges waiting to leave in an evaluate batch.
CREATE TABLE flexfactor.declines (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id          text NOT NULL,
    transaction_id    text NOT NULL,          -- the processor's id of this charge attempt
    idempotency_key   uuid NOT NULL,
    payload           jsonb NOT NULL,         -- the /evaluate body; never a raw card number
    state             text NOT NULL DEFAULT 'pending',
    batch_id          bigint REFERENCES flexfactor.batches (id),
    set_aside_reason  text,
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    batched_at        timestamptz,
    CONSTRAINT declines_attempt_key UNIQUE (order_id, transaction_id),
    CONSTRAINT declines_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT declines_state_check CHECK (state IN ('pending', 'batched', 'set_aside')),
    CONSTRAINT declines_batch_check CHECK ((state = 'batched') = (batch_id IS NOT NULL)),
    CONSTRAINT declines_set_aside_check CHECK ((state = 'set_aside') = (set_aside_reason IS NOT NULL))
);
CREATE INDEX declines_pending_idx ON flexfactor.declines (id) WHERE state = 'pending';
CREATE INDEX declines_batch_idx ON flexfactor.declines (batch_id) WHERE batch_id IS NOT NULL;

-- Copies of processed payments for /transmit, sent by the worker after commit.
CREATE TABLE flexfactor.transmit_queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    transmit_id      text,                    -- FlexFactor's answer
    batch_id         bigint REFERENCES flexfactor.batches (id),
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT transmit_queue_state_check CHECK (state IN ('pending', 'batched', 'delivered', 'set_aside')),
    CONSTRAINT transmit_queue_batch_check CHECK ((state = 'batched') <= (batch_id IS NOT NULL)),
    CONSTRAINT transmit_queue_attempts_check CHECK (attempts >= 0),
    CONSTRAINT transmit_queue_delivered_check CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX transmit_queue_pending_idx ON flexfactor.transmit_queue (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX transmit_queue_delivered_idx ON flexfactor.transmit_queue (delivered_at)
    WHERE state = 'delivered';

/* ----------------------------------------------------------- batch lines */

-- One line of a batch file, in file order; the exact bytes that are uploaded,
-- and what FlexFactor's result file said about it.
CREATE TABLE flexfactor.batch_lines (
    batch_id           bigint NOT NULL REFERENCES flexfactor.batches (id) ON DELETE CASCADE,
    sequence_number    integer NOT NULL,
    decline_id         bigint REFERENCES flexfactor.declines (id),
    transmit_queue_id  bigint REFERENCES flexfactor.transmit_queue (id),
    line               text NOT NULL,
    order_session_key  uuid,
    status             text,
    errors             jsonb,
    PRIMARY KEY (batch_id, sequence_number),
    CONSTRAINT batch_lines_sequence_check CHECK (sequence_number BETWEEN 1 AND 2000),
    CONSTRAINT batch_lines_one_source_check CHECK (num_nonnulls(decline_id, transmit_queue_id) = 1)
);
CREATE UNIQUE INDEX batch_lines_decline_idx ON flexfactor.batch_lines (decline_id)
    WHERE decline_id IS NOT NULL;

/* -------------------------------------------------------------- webhooks */

-- Every accepted webhook delivery, stored before it is acknowledged.
CREATE TABLE flexfactor.webhook_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event              text NOT NULL,
    order_session_key  uuid,
    external_order_id  text,
    confirmation_id    text,
    event_time         timestamptz,
    event_data         jsonb,
    is_resent          boolean NOT NULL DEFAULT false,
    nonce              text,
    body               text NOT NULL,
    received_via       text NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    apply_state        text NOT NULL DEFAULT 'pending',
    applied_at         timestamptz,
    apply_error        text,
    CONSTRAINT webhook_events_received_via_check CHECK (received_via IN ('listener', 'sql')),
    CONSTRAINT webhook_events_apply_state_check CHECK (apply_state IN (
        'pending',          -- stored, not applied yet
        'applied',          -- order updated
        'duplicate',        -- repeat of an applied event: changed nothing
        'waiting_order',    -- order not known yet; applied when it appears
        'ignored'))         -- no state change for this event type
);
CREATE INDEX webhook_events_order_idx ON flexfactor.webhook_events (order_session_key);
CREATE INDEX webhook_events_pending_idx ON flexfactor.webhook_events (id)
    WHERE apply_state IN ('pending', 'waiting_order');
CREATE UNIQUE INDEX webhook_events_nonce_idx ON flexfactor.webhook_events (nonce)
    WHERE nonce IS NOT NULL;

-- Deliveries refused by the listener (bad signature, stale date, ...): the
-- reason only, never the key or the signature.
CREATE TABLE flexfactor.webhook_rejections (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    remote_addr  text,
    http_status  integer NOT NULL,
    reason       text NOT NULL,
    CONSTRAINT webhook_rejections_status_check CHECK (http_status BETWEEN 400 AND 599)
);
CREATE INDEX webhook_rejections_received_idx ON flexfactor.webhook_rejections (received_at);

/* ------------------------------------------------------------- functions */

CREATE FUNCTION flexfactor.ff_worker_status(
    OUT role text,
    OUT pid integer,
    OUT database text,
    OUT state text,
    OUT state_since timestamptz,
    OUT started_at timestamptz,
    OUT last_pass_at timestamptz,
    OUT passes bigint,
    OUT config_reloads bigint,
    OUT launches bigint,
    OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ff_worker_status'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION flexfactor.ff_worker_status() IS
    'State of the flexfactor launcher and worker: pid, what each is doing, passes, last error';

CREATE FUNCTION flexfactor.ff_version()
RETURNS text
AS 'MODULE_PATHNAME', 'ff_version'
LANGUAGE C STRICT IMMUTABLE;


/* ------------------------------------------------------- order states */

-- Order states only move forward: PENDING < SUBMITTED < PROCESSING/CHALLENGE
-- < CAPTUREREQUIRED < a final state (APPROVED, DECLINED, EXPIRED, CANCELLED,
-- REJECTED); APPROVED may still become REFUNDED.  Unknown states rank NULL
-- and never replace a known one.
CREATE FUNCTION flexfactor.ff_status_rank(status text)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE status
    WHEN 'PENDING' THEN 0
    WHEN 'SUBMITTED' THEN 1
    WHEN 'PROCESSING' THEN 2
    WHEN 'CHALLENGE' THEN 2
    WHEN 'CAPTUREREQUIRED' THEN 3
    WHEN 'APPROVED' THEN 10
    WHEN 'DECLINED' THEN 10
    WHEN 'EXPIRED' THEN 10
    WHEN 'CANCELLED' THEN 10
    WHEN 'REJECTED' THEN 10
    WHEN 'REFUNDED' THEN 20
END;

-- The state an order is in after `incoming` is reported while it is in `current`.
CREATE FUNCTION flexfactor.ff_next_status(current text, incoming text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN incoming IS NULL OR incoming = current THEN current
    WHEN incoming = 'REFUNDED' THEN
        CASE WHEN current = 'APPROVED' THEN 'REFUNDED' ELSE current END
    WHEN flexfactor.ff_status_rank(current) >= 10 THEN current
    WHEN flexfactor.ff_status_rank(incoming) > flexfactor.ff_status_rank(current) THEN incoming
    ELSE current
END;

-- Our order state for a GET /orders/{id} answer (statusName, any case).
CREATE FUNCTION flexfactor.ff_status_from_order(answer jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE upper(coalesce(answer->>'statusName', ''))
    WHEN 'COMPLETED' THEN 'APPROVED'
    WHEN 'CANCELLED' THEN
        CASE WHEN lower(coalesce(answer->>'isExpired', '')) = 'true' THEN 'EXPIRED' ELSE 'CANCELLED' END
    WHEN 'RETURNED' THEN 'REFUNDED'
    WHEN 'CAPTUREREQUIRED' THEN 'CAPTUREREQUIRED'
    WHEN 'PROCESSING' THEN 'PROCESSING'
    WHEN 'ONHOLD' THEN 'PROCESSING'
    WHEN 'DRAFT' THEN 'SUBMITTED'
END;

CREATE FUNCTION flexfactor._orders_touch()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.status_changed_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON flexfactor.orders
    FOR EACH ROW EXECUTE FUNCTION flexfactor._orders_touch();

/* ------------------------------------------------------- helpers */

-- Exact cents to dollars for /refund: 1 -> '0.01', 123456789 -> '1234567.89'.
CREATE FUNCTION flexfactor.ff_cents_to_dollars(amount_cents bigint)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN amount_cents < 0 THEN '-' ELSE '' END
    || (abs(amount_cents) / 100)::text || '.' || lpad((abs(amount_cents) % 100)::text, 2, '0');

-- The idempotency key of one business attempt: a UUID derived from what
-- identifies the attempt, so a retry after a failed, rolled-back call sends
-- the same key (RFC 9562 version 8, "custom").
CREATE FUNCTION flexfactor.ff_attempt_key(kind text, VARIADIC parts text[])
RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN overlay(overlay(md5('flexfactor:' || kind || ':' || array_to_string(parts, chr(31), ''))
                       PLACING '8' FROM 13) PLACING 'a' FROM 17)::uuid;

CREATE FUNCTION flexfactor._uuid_arg(value text, what text)
RETURNS uuid LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR value !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'invalid %: %', what, coalesce(quote_literal(left(value, 60)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A GUID such as 8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90 is expected.';
    END IF;
    RETURN value::uuid;
END $$;

-- Refuses an /evaluate body FlexFactor would reject for a missing order id,
-- transaction or amount, naming the field (C, shared with the batch queue).
CREATE FUNCTION flexfactor._check_evaluate_body(payload jsonb, caller text)
RETURNS void AS 'MODULE_PATHNAME', 'ff_check_evaluate_body_sql' LANGUAGE C IMMUTABLE STRICT;

-- An /evaluate body for a declined recurring (merchant-initiated) charge.
-- Pass declined_at (when the charge failed) so that rebuilding the body for a
-- retry gives the same bytes; without it the timestamp is left out.
CREATE FUNCTION flexfactor.ff_decline(
    order_id text,
    amount_cents bigint,
    currency text,
    card_token text,
    transaction_id text,
    decline_code text DEFAULT '05',
    email text DEFAULT NULL,
    expiry timestamptz DEFAULT NULL,
    subscription_id text DEFAULT NULL,
    is_recurring boolean DEFAULT true,
    declined_at timestamptz DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE
RETURN jsonb_strip_nulls(jsonb_build_object(
    'orderId', order_id,
    'isMIT', true,
    'isDeclined', true,
    'isRecurring', is_recurring,
    'expiryDateUtc', to_char(expiry AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    'transaction', jsonb_build_object(
        'id', transaction_id,
        'amount', amount_cents,
        'currency', upper(currency),
        'responseCode', decline_code,
        'responseStatus', 'DECLINED',
        'timestampUtc', to_char(declined_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'cardNotPresent', true),
    'paymentMethod', jsonb_build_object('cardNumber', card_token, 'token', true),
    'payer', CASE WHEN email IS NOT NULL THEN jsonb_build_object('email', email) END,
    'subscription', CASE WHEN subscription_id IS NOT NULL THEN jsonb_build_object(
        'subscriptionId', subscription_id, 'price', amount_cents, 'currency', upper(currency)) END));

-- A /transmit body: the copy of a processed (normally successful) payment.
CREATE FUNCTION flexfactor.ff_payment(
    order_id text,
    amount_cents bigint,
    currency text,
    transaction_id text,
    email text DEFAULT NULL,
    paid_at timestamptz DEFAULT NULL,
    card_bin text DEFAULT NULL,
    card_last4 text DEFAULT NULL,
    is_mit boolean DEFAULT true)
RETURNS jsonb LANGUAGE sql STABLE
RETURN jsonb_strip_nulls(jsonb_build_object(
    'orderId', order_id,
    'isMIT', is_mit,
    'isDeclined', false,
    'transaction', jsonb_build_object(
        'id', transaction_id,
        'amount', amount_cents,
        'currency', upper(currency),
        'responseStatus', 'APPROVED',
        'timestampUtc', to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
    'paymentMethod', jsonb_build_object('cardBinNumber', card_bin, 'cardLast4Digits', card_last4),
    'payer', CASE WHEN email IS NOT NULL THEN jsonb_build_object('email', email) END));

/* ------------------------------------------------------- the API from SQL */

-- The one internal door to the REST API (C): bearer token, retry on 401,
-- errors with FF SQLSTATEs.  Granted to nobody: the functions below run as
-- the extension owner (SECURITY DEFINER with a fixed search_path).
CREATE FUNCTION flexfactor._api_call(method text, path text, body jsonb)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_api_call_sql' LANGUAGE C VOLATILE;

CREATE FUNCTION flexfactor._wake_worker_at_commit()
RETURNS void AS 'MODULE_PATHNAME', 'ff_wake_worker_at_commit' LANGUAGE C VOLATILE;

CREATE FUNCTION flexfactor.ff_token_status(
    OUT has_token boolean, OUT expires_at timestamptz, OUT token_requests bigint)
RETURNS record AS 'MODULE_PATHNAME', 'ff_token_status' LANGUAGE C VOLATILE;

CREATE FUNCTION flexfactor.ff_tokenize(card jsonb)
RETURNS text AS 'MODULE_PATHNAME', 'ff_tokenize' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- POST /evaluate (C, see evaluate.c): records the order and its idempotency
-- key before sending, stores FlexFactor's answer after.  No SET search_path:
-- the C code pins its own (pg_catalog only) around its queries, at a fraction
-- of the cost per call.
CREATE FUNCTION flexfactor.ff_evaluate(payload jsonb)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_evaluate' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER;

CREATE FUNCTION flexfactor.ff_order(order_session_key text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key     uuid := flexfactor._uuid_arg($1, 'order_session_key');
    answer  jsonb;
BEGIN
    answer := flexfactor._api_call('GET', 'orders/' || key, NULL);
    UPDATE flexfactor.orders o
       SET status = flexfactor.ff_next_status(o.status, flexfactor.ff_status_from_order(answer)),
           last_response = answer
     WHERE o.order_session_key = key;
    RETURN answer;
END $$;

CREATE FUNCTION flexfactor._order_for_update(key uuid)
RETURNS flexfactor.orders LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    o flexfactor.orders;
BEGIN
    SELECT * INTO o FROM flexfactor.orders WHERE order_session_key = key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order % is not known to flexfactor', key
            USING ERRCODE = 'FF022',
                  DETAIL = 'No row of flexfactor.orders has this order_session_key.',
                  HINT = 'Use the orderSessionKey of an order sent with ff_evaluate() or a batch.';
    END IF;
    RETURN o;
END $$;

CREATE FUNCTION flexfactor.ff_refund(order_session_key text, amount_cents bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key       uuid := flexfactor._uuid_arg($1, 'order_session_key');
    o         flexfactor.orders := flexfactor._order_for_update(key);
    remaining bigint := o.amount_cents - o.refunded_cents;
    amount    bigint := coalesce($2, remaining);
    idem      uuid;
    answer    jsonb;
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
                  DETAIL = format('The order is %s cents and all of it is already refunded.', o.amount_cents);
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
                                  o.amount_cents, o.refunded_cents, remaining),
                  HINT = 'Refund at most what is left; NULL refunds all of it.';
    END IF;

    idem := flexfactor.ff_attempt_key('refund', key::text, o.refunded_cents::text, amount::text);
    answer := flexfactor._api_call('POST', 'orders/' || key || '/refund',
                  jsonb_build_object('amountToRefund', flexfactor.ff_cents_to_dollars(amount)::numeric,
                                     'isPartialRefund', amount < remaining,
                                     'idempotencyKey', idem));
    IF lower(coalesce(answer->>'success', 'true')) = 'false'
       OR upper(coalesce(answer->>'status', '')) = 'FAILED' THEN
        RAISE EXCEPTION 'FlexFactor refused the refund of order %', key
            USING ERRCODE = 'FF012',
                  DETAIL = format('responseCode %s: %s', coalesce(answer->>'responseCode', 'none'),
                                  coalesce(answer->>'responseMessage', answer->>'errors', 'no message')),
                  HINT = 'ff_order() shows what FlexFactor holds for the order.';
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

CREATE FUNCTION flexfactor.ff_cancel(order_session_key text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key     uuid := flexfactor._uuid_arg($1, 'order_session_key');
    o       flexfactor.orders := flexfactor._order_for_update(key);
    answer  jsonb;
BEGIN
    IF o.status NOT IN ('PENDING', 'SUBMITTED', 'PROCESSING', 'CHALLENGE', 'CAPTUREREQUIRED') THEN
        RAISE EXCEPTION 'cannot cancel order %: its status is %', key, o.status
            USING ERRCODE = 'FF020',
                  DETAIL = 'Only pending orders (PENDING, SUBMITTED, PROCESSING, CHALLENGE, CAPTUREREQUIRED) can be cancelled.',
                  HINT = 'Use ff_refund() for an APPROVED order.';
    END IF;
    answer := flexfactor._api_call('POST', 'orders/' || key || '/cancel',
                  jsonb_build_object('idempotencyKey', flexfactor.ff_attempt_key('cancel', key::text)));
    UPDATE flexfactor.orders
       SET status = flexfactor.ff_next_status(status, 'CANCELLED'),
           last_response = answer
     WHERE id = o.id;
    RETURN answer;
END $$;

-- Queues a /transmit copy; the worker sends it after this transaction commits.
CREATE FUNCTION flexfactor.ff_transmit(payload jsonb)
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
    IF coalesce(payload #>> '{paymentMethod,cardNumber}', '') ~ '^[0-9 -]{12,}$' THEN
        RAISE EXCEPTION 'ff_transmit() payload carries a card number'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'paymentMethod.cardNumber looks like a PAN; card numbers are never stored.',
                  HINT = 'Send cardBinNumber and cardLast4Digits instead (ff_payment() does).';
    END IF;
    INSERT INTO flexfactor.transmit_queue (payload) VALUES (payload) RETURNING id INTO queued;
    PERFORM flexfactor._wake_worker_at_commit();
    RETURN queued;
END $$;


/* ------------------------------------------------------- SFTP batches */

-- Queues one declined merchant-initiated charge for the next evaluate batch.
-- A second call for the same attempt (orderId + transaction.id) returns the
-- queued row instead of adding one.
CREATE FUNCTION flexfactor.ff_enqueue_decline(payload jsonb)
RETURNS bigint LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mid    text := coalesce(payload->>'mid', nullif(current_setting('flexfactor.mid'), ''));
    queued bigint;
BEGIN
    PERFORM flexfactor._check_evaluate_body(payload, 'ff_enqueue_decline');
    IF lower(coalesce(payload #>> '{paymentMethod,token}', 'false')) <> 'true'
       OR coalesce(payload #>> '{paymentMethod,cardNumber}', '') = '' THEN
        RAISE EXCEPTION 'ff_enqueue_decline() needs a tokenized card'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Batch lines must carry paymentMethod.cardNumber = a /tokenize token and paymentMethod.token = true; raw card numbers are never queued.',
                  HINT = 'Tokenize the card first (ff_tokenize), or build the body with ff_decline().';
    END IF;
    IF lower(coalesce(payload->>'isMIT', 'true')) <> 'true' THEN
        RAISE EXCEPTION 'ff_enqueue_decline() takes merchant-initiated charges only'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The payload has isMIT = false; SFTP batches carry MIT declines.',
                  HINT = 'Send customer-initiated declines with ff_evaluate().';
    END IF;
    IF (payload #>> '{transaction,amount}')::numeric >= 100000000000 THEN
        RAISE EXCEPTION 'ff_enqueue_decline() payload has an implausible transaction.amount'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('transaction.amount is %s cents.', payload #>> '{transaction,amount}');
    END IF;

    INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
    VALUES (payload->>'orderId', payload #>> '{transaction,id}',
            coalesce((payload->>'idempotencyKey')::uuid,
                     flexfactor.ff_attempt_key('evaluate', mid, payload->>'orderId',
                                               payload #>> '{transaction,id}')),
            payload || jsonb_build_object('isMIT', true))
    ON CONFLICT (order_id, transaction_id) DO NOTHING
    RETURNING id INTO queued;
    IF queued IS NULL THEN
        SELECT d.id INTO queued FROM flexfactor.declines d
         WHERE d.order_id = $1->>'orderId' AND d.transaction_id = $1 #>> '{transaction,id}';
    END IF;
    RETURN queued;
END $$;

-- Fixes up to max_rows pending declines into one evaluate batch: file name,
-- line bytes (with sequenceNumber, mid and idempotencyKey), size and SHA-256
-- are decided here, once, so every later upload writes the same file.
-- Returns the batch id, or NULL when nothing is pending.
CREATE FUNCTION flexfactor._create_evaluate_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mid    text := nullif(current_setting('flexfactor.mid'), '');
    ids    bigint[];
    batch  bigint;
BEGIN
    IF mid IS NULL THEN
        RAISE EXCEPTION 'flexfactor.mid is not set'
            USING ERRCODE = 'FF013',
                  HINT = 'Batch files are named after, and carry, the merchant id; set flexfactor.mid.';
    END IF;

    -- two exporters never take the same row
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM flexfactor.declines
             WHERE state = 'pending'
             ORDER BY id
             LIMIT max_rows
               FOR UPDATE SKIP LOCKED) AS claimed;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;

    batch := nextval(pg_get_serial_sequence('flexfactor.batches', 'id'));
    INSERT INTO flexfactor.batches (id, kind, file_name, line_count)
    OVERRIDING SYSTEM VALUE
    VALUES (batch, 'evaluate',
            format('evaluate_%s_%s_%s.jsonl', mid,
                   to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"'), batch),
            cardinality(ids));

    INSERT INTO flexfactor.batch_lines (batch_id, sequence_number, decline_id, line)
    SELECT batch, u.seq, d.id,
           (d.payload || jsonb_build_object('sequenceNumber', u.seq, 'mid', mid,
                                            'idempotencyKey', d.idempotency_key))::text
      FROM unnest(ids) WITH ORDINALITY AS u(id, seq)
      JOIN flexfactor.declines d ON d.id = u.id;

    UPDATE flexfactor.declines
       SET state = 'batched', batch_id = batch, batched_at = now()
     WHERE id = ANY (ids);

    UPDATE flexfactor.batches b
       SET byte_count = octet_length(f.bytes), sha256 = encode(sha256(f.bytes), 'hex')
      FROM (SELECT convert_to(string_agg(line || E'\n', '' ORDER BY sequence_number), 'UTF8') AS bytes
              FROM flexfactor.batch_lines WHERE batch_id = batch) AS f
     WHERE b.id = batch;
    RETURN batch;
END $$;


-- The transmit counterpart (flexfactor.transmit_via = 'sftp'): fixes pending
-- /transmit copies into one transmit_ batch; each line carries the same
-- idempotencyKey the API path would send for that row.
CREATE FUNCTION flexfactor._create_transmit_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mid    text := nullif(current_setting('flexfactor.mid'), '');
    ids    bigint[];
    batch  bigint;
BEGIN
    IF mid IS NULL THEN
        RAISE EXCEPTION 'flexfactor.mid is not set'
            USING ERRCODE = 'FF013',
                  HINT = 'Batch files are named after, and carry, the merchant id; set flexfactor.mid.';
    END IF;
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM flexfactor.transmit_queue
             WHERE state = 'pending'
             ORDER BY id
             LIMIT max_rows
               FOR UPDATE SKIP LOCKED) AS claimed;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;

    batch := nextval(pg_get_serial_sequence('flexfactor.batches', 'id'));
    INSERT INTO flexfactor.batches (id, kind, file_name, line_count)
    OVERRIDING SYSTEM VALUE
    VALUES (batch, 'transmit',
            format('transmit_%s_%s_%s.jsonl', mid,
                   to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"'), batch),
            cardinality(ids));

    INSERT INTO flexfactor.batch_lines (batch_id, sequence_number, transmit_queue_id, line)
    SELECT batch, u.seq, t.id,
           (t.payload || jsonb_build_object(
                'sequenceNumber', u.seq, 'mid', mid,
                'idempotencyKey', coalesce(t.payload->>'idempotencyKey',
                                           md5('flexfactor-transmit:' || mid || ':' || t.id)::uuid::text)))::text
      FROM unnest(ids) WITH ORDINALITY AS u(id, seq)
      JOIN flexfactor.transmit_queue t ON t.id = u.id;

    UPDATE flexfactor.transmit_queue SET state = 'batched', batch_id = batch WHERE id = ANY (ids);

    UPDATE flexfactor.batches b
       SET byte_count = octet_length(f.bytes), sha256 = encode(sha256(f.bytes), 'hex')
      FROM (SELECT convert_to(string_agg(line || E'\n', '' ORDER BY sequence_number), 'UTF8') AS bytes
              FROM flexfactor.batch_lines WHERE batch_id = batch) AS f
     WHERE b.id = batch;
    RETURN batch;
END $$;

-- Trigger helper for any billing table: queues a row as a declined recurring
-- charge.  Arguments are "field=column" pairs naming the table's columns
-- (values are read from to_jsonb(NEW), so no name is ever spliced into SQL):
--   required: order_id, amount (cents) or amount_dollars, currency, token
--   optional: transaction_id (default: order_id), decline_code, email,
--             sense_key, expiry (timestamptz), subscription_id, declined_at
--   constants: expiry_days=N (rescue window when there is no expiry column)
--   conditions (all must hold; a WHEN clause on the trigger works too):
--             declined_if=column:value   (the column's text equals value)
--             recurring_if=column        (a boolean column is true)
-- It never touches the network: the worker exports the queue.
CREATE FUNCTION flexfactor.ff_decline_trigger()
RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_json  jsonb := to_jsonb(NEW);
    map       jsonb := '{}';
    arg       text;
    field     text;
    col       text;
    amount    bigint;
    expiry    timestamptz;

    known constant text[] := ARRAY['order_id', 'amount', 'amount_dollars', 'currency', 'token',
        'transaction_id', 'decline_code', 'email', 'sense_key', 'expiry', 'expiry_days',
        'subscription_id', 'declined_at', 'declined_if', 'recurring_if'];
BEGIN
    IF TG_OP NOT IN ('INSERT', 'UPDATE') OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'flexfactor.ff_decline_trigger() must be an AFTER INSERT OR UPDATE ... FOR EACH ROW trigger'
            USING ERRCODE = 'trigger_protocol_violated';
    END IF;
    FOREACH arg IN ARRAY coalesce(TG_ARGV, ARRAY[]::text[]) LOOP
        field := split_part(arg, '=', 1);
        col := substr(arg, length(field) + 2);
        IF NOT field = ANY (known) OR position('=' IN arg) = 0 THEN
            RAISE EXCEPTION 'invalid argument "%" of trigger % on %.%', arg, TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Arguments are field=column pairs; fields: %s.', array_to_string(known, ', '));
        END IF;
        IF field NOT IN ('expiry_days', 'declined_if')
           AND NOT row_json ? col THEN
            RAISE EXCEPTION 'column "%" (mapped as %) does not exist in %.%', col, field, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'undefined_column',
                      HINT = format('Fix the argument "%s" of trigger %s.', arg, TG_NAME);
        END IF;
        map := map || jsonb_build_object(field, col);
    END LOOP;

    -- conditions
    IF map ? 'declined_if' THEN
        col := split_part(map->>'declined_if', ':', 1);
        IF NOT row_json ? col THEN
            RAISE EXCEPTION 'column "%" (mapped as declined_if) does not exist in %.%', col, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'undefined_column';
        END IF;
        IF (row_json->>col) IS DISTINCT FROM substr(map->>'declined_if', length(col) + 2) THEN
            RETURN NULL;
        END IF;
    END IF;
    IF map ? 'recurring_if' AND lower(coalesce(row_json->>(map->>'recurring_if'), 'false')) <> 'true' THEN
        RETURN NULL;
    END IF;
    -- an UPDATE that does not newly make the row a decline queues nothing
    IF TG_OP = 'UPDATE' AND map ? 'declined_if'
       AND to_jsonb(OLD)->>split_part(map->>'declined_if', ':', 1)
           IS NOT DISTINCT FROM row_json->>split_part(map->>'declined_if', ':', 1) THEN
        RETURN NULL;
    END IF;

    FOREACH field IN ARRAY ARRAY['order_id', 'currency', 'token'] LOOP
        IF NOT map ? field THEN
            RAISE EXCEPTION 'trigger % on %.% maps no column as %', TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME, field
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Add an argument %s=<column>.', field);
        END IF;
    END LOOP;
    IF map ? 'amount' THEN
        amount := (row_json->>(map->>'amount'))::bigint;
    ELSIF map ? 'amount_dollars' THEN
        amount := round((row_json->>(map->>'amount_dollars'))::numeric * 100);
    ELSE
        RAISE EXCEPTION 'trigger % on %.% maps no column as amount or amount_dollars', TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF map ? 'expiry' THEN
        expiry := (row_json->>(map->>'expiry'))::timestamptz;
    ELSIF map ? 'expiry_days' THEN
        expiry := now() + make_interval(days => (map->>'expiry_days')::integer);
    END IF;

    PERFORM flexfactor.ff_enqueue_decline(
        flexfactor.ff_decline(
            order_id => row_json->>(map->>'order_id'),
            amount_cents => amount,
            currency => row_json->>(map->>'currency'),
            card_token => row_json->>(map->>'token'),
            transaction_id => coalesce(row_json->>(map->>'transaction_id'), row_json->>(map->>'order_id')),
            decline_code => coalesce(row_json->>(map->>'decline_code'), '05'),
            email => row_json->>(map->>'email'),
            expiry => expiry,
            subscription_id => row_json->>(map->>'subscription_id'),
            declined_at => (row_json->>(map->>'declined_at'))::timestamptz)
        || CASE WHEN map ? 'sense_key' AND row_json->>(map->>'sense_key') IS NOT NULL
                THEN jsonb_build_object('senseKey', row_json->>(map->>'sense_key')) ELSE '{}' END);
    RETURN NULL;
END $$;

/* ------------------------------------------------------- views for the DBA */

CREATE VIEW flexfactor.queue_status AS
SELECT q.queue, q.state, q.rows, q.oldest, now() - q.oldest AS oldest_age, q.last_error, q.next_attempt_at
  FROM (SELECT 'declines'::text AS queue, state, count(*) AS rows, min(enqueued_at) AS oldest,
               max(set_aside_reason) AS last_error, NULL::timestamptz AS next_attempt_at
          FROM flexfactor.declines GROUP BY state
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

-- Fixes pending declines into batches and uploads every due batch now (for
-- pg_cron or by hand); returns the number uploaded.  Failures are recorded on
-- the batch and reported as WARNINGs.
CREATE FUNCTION flexfactor.ff_export_batch()
RETURNS integer AS 'MODULE_PATHNAME', 'ff_export_batch' LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/* ------------------------------------------------------------ privileges */

REVOKE ALL ON ALL TABLES IN SCHEMA flexfactor FROM PUBLIC;   -- views included
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flexfactor FROM PUBLIC;
