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
-- a refund reported by ff_refund() and again by an order.refunded webhook is one refund
CREATE UNIQUE INDEX refunds_transaction_idx ON flexfactor.refunds (transaction_id)
    WHERE transaction_id IS NOT NULL;

/* --------------------------------------------------------------- batches */

-- One SFTP batch file.  Its name and its rows are fixed when it is created;
-- its bytes are derived from those rows (flexfactor.batch_file_lines), which
-- never change, so a retried upload writes the same file.  The first upload
-- records the size and SHA-256, and every later one must match them.
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
    mid              text NOT NULL,           -- carried by every line
    -- an evaluate batch's declines: queue positions first..last, inclusive
    first_xid        xid8,
    first_id         bigint,
    last_xid         xid8,
    last_id          bigint,
    requeued_as      bigint REFERENCES flexfactor.batches (id),
    CONSTRAINT batches_file_name_key UNIQUE (file_name),
    CONSTRAINT batches_range_check CHECK ((kind = 'evaluate') = (num_nonnulls(first_xid, first_id, last_xid, last_id) = 4)),
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
CREATE INDEX batches_queue_position_idx ON flexfactor.batches (last_xid, last_id)
    WHERE kind = 'evaluate';

/* ---------------------------------------------------------------- queues */

-- Declined merchant-initiated charges queued for evaluate batches.
--
-- A row never changes once queued (only set_aside_reason may be set later),
-- and a batch is a range of rows in queue order (enqueue_xid, id): fixing a
-- batch writes one batches row and nothing per decline, and the batch file's
-- lines are derived from its rows the same way at every upload
-- (flexfactor.batch_file_lines).  enqueue_xid is the inserting transaction's
-- id, so a range is only closed below the oldest transaction still running:
-- no decline can later commit inside it.
CREATE TABLE flexfactor.declines (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id          text NOT NULL,
    transaction_id    text NOT NULL,          -- the processor's id of this charge attempt
    idempotency_key   uuid NOT NULL,
    payload           jsonb NOT NULL,         -- the /evaluate body; never a raw card number
    enqueue_xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    set_aside_reason  text,                   -- why FlexFactor refused it
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT declines_attempt_key UNIQUE (order_id, transaction_id),
    CONSTRAINT declines_idempotency_key_key UNIQUE (idempotency_key),
    -- the batch line adds these three, from the batch and the row
    CONSTRAINT declines_payload_check CHECK (jsonb_typeof(payload) = 'object'
                                             AND NOT payload ?| '{idempotencyKey,mid,sequenceNumber}')
);
CREATE INDEX declines_queue_order_idx ON flexfactor.declines (enqueue_xid, id);

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

-- What FlexFactor's result file said about each line of a batch file (the
-- line itself is flexfactor.batch_file_lines(batch_id)); one row per line,
-- written when the result file is applied.
CREATE TABLE flexfactor.batch_lines (
    batch_id           bigint NOT NULL REFERENCES flexfactor.batches (id) ON DELETE CASCADE,
    sequence_number    integer NOT NULL,
    decline_id         bigint REFERENCES flexfactor.declines (id),
    transmit_queue_id  bigint REFERENCES flexfactor.transmit_queue (id),
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
-- REJECTED); APPROVED, or a pending order, may still become REFUNDED.
-- Unknown states rank NULL and never replace a known one.
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
    -- a refund proves the rescue: it also lands on an order still pending
    -- (its order.refunded overtook its order.completed)
    WHEN incoming = 'REFUNDED' THEN
        CASE WHEN current = 'APPROVED' OR flexfactor.ff_status_rank(current) < 10
             THEN 'REFUNDED' ELSE current END
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
            (payload - '{idempotencyKey,mid,sequenceNumber}'::text[]) || jsonb_build_object('isMIT', true))
    ON CONFLICT (order_id, transaction_id) DO NOTHING
    RETURNING id INTO queued;
    IF queued IS NULL THEN
        SELECT d.id INTO queued FROM flexfactor.declines d
         WHERE d.order_id = $1->>'orderId' AND d.transaction_id = $1 #>> '{transaction,id}';
    END IF;
    RETURN queued;
END $$;

-- Batch files are named after, and carry, the merchant id.
CREATE FUNCTION flexfactor._batch_mid()
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF nullif(current_setting('flexfactor.mid'), '') IS NULL THEN
        RAISE EXCEPTION 'flexfactor.mid is not set'
            USING ERRCODE = 'FF013',
                  HINT = 'Batch files are named after, and carry, the merchant id; set flexfactor.mid.';
    END IF;
    RETURN current_setting('flexfactor.mid');
END $$;

-- A new batch row, named <kind>_<mid>_<UTC stamp>_<id>.jsonl; an evaluate
-- batch also gets its range of declines.
CREATE FUNCTION flexfactor._new_batch(kind text, mid text, line_count integer,
                                      first_xid xid8 DEFAULT NULL, first_id bigint DEFAULT NULL,
                                      last_xid xid8 DEFAULT NULL, last_id bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    batch bigint := nextval(pg_get_serial_sequence('flexfactor.batches', 'id'));
BEGIN
    INSERT INTO flexfactor.batches (id, kind, mid, file_name, line_count, first_xid, first_id, last_xid, last_id)
    OVERRIDING SYSTEM VALUE
    VALUES (batch, kind, mid,
            format('%s_%s_%s_%s.jsonl', kind, mid,
                   to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"'), batch),
            line_count, first_xid, first_id, last_xid, last_id);
    RETURN batch;
END $$;

-- Fixes the next (up to) max_rows queued declines, in queue order, into one
-- evaluate batch: its file name and its range of rows are decided here, once.
-- Only declines of transactions older than every running one are taken, so
-- no decline can ever commit inside a closed range; one exporter at a time
-- (a second one finds the lock taken and takes nothing).  Returns the batch
-- id, or NULL when nothing is ready.
CREATE FUNCTION flexfactor._create_evaluate_batch(max_rows integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mid       text := flexfactor._batch_mid();
    done_xid  xid8;
    done_id   bigint;
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
    SELECT b.last_xid, b.last_id INTO done_xid, done_id
      FROM flexfactor.batches b WHERE b.kind = 'evaluate'
     ORDER BY b.last_xid DESC, b.last_id DESC LIMIT 1;
    IF NOT FOUND THEN
        done_xid := '0'::xid8;
        done_id := 0;
    END IF;
    horizon := pg_snapshot_xmin(pg_current_snapshot());

    WITH next AS MATERIALIZED (
        SELECT d.enqueue_xid, d.id FROM flexfactor.declines d
         WHERE (d.enqueue_xid, d.id) > (done_xid, done_id) AND d.enqueue_xid < horizon
         ORDER BY d.enqueue_xid, d.id
         LIMIT max_rows)
    SELECT (SELECT count(*) FROM next), f.enqueue_xid, f.id, l.enqueue_xid, l.id
      INTO n, f_xid, f_id, l_xid, l_id
      FROM (SELECT * FROM next ORDER BY enqueue_xid, id LIMIT 1) f,
           (SELECT * FROM next ORDER BY enqueue_xid DESC, id DESC LIMIT 1) l;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    RETURN flexfactor._new_batch('evaluate', mid, n, f_xid, f_id, l_xid, l_id);
END $$;

-- The transmit counterpart (flexfactor.transmit_via = 'sftp'): fixes pending
-- /transmit copies into one transmit_ batch (each row records its batch).
-- A caller fixing several batches in one transaction passes the last id it
-- claimed, so the claim skips the index entries of rows it already batched.
CREATE FUNCTION flexfactor._create_transmit_batch(max_rows integer, after_id bigint DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
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

-- The lines of a batch file, in file order: each row's payload plus its
-- sequenceNumber, the merchant id and its idempotencyKey (a transmit row
-- carries the key the API path would send for it).  Derived from rows that
-- never change, so every call gives the same bytes.
CREATE FUNCTION flexfactor.batch_file_lines(batch_id bigint)
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
                    WHERE (q.enqueue_xid, q.id) >= (b.first_xid, b.first_id)
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
COMMENT ON FUNCTION flexfactor.batch_file_lines(bigint) IS
    'The exact lines of a batch file, in order, each without its trailing newline';

-- Queued declines cannot be changed, and cannot be removed while their batch
-- file may still be uploaded or answered: the file's bytes and its
-- sequence numbers come from them.
CREATE FUNCTION flexfactor._declines_frozen()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.id, NEW.order_id, NEW.transaction_id, NEW.idempotency_key, NEW.payload, NEW.enqueue_xid)
           IS DISTINCT FROM
           (OLD.id, OLD.order_id, OLD.transaction_id, OLD.idempotency_key, OLD.payload, OLD.enqueue_xid) THEN
            RAISE EXCEPTION 'a queued decline cannot be changed'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Decline %s (order %s) is a line of a batch file, as it was queued.', OLD.id, OLD.order_id),
                      HINT = 'Queue a new attempt with its own transaction.id instead.';
        END IF;
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM flexfactor.batches b
                WHERE b.kind = 'evaluate' AND b.state IN ('ready', 'uploaded')
                  AND (OLD.enqueue_xid, OLD.id) BETWEEN (b.first_xid, b.first_id) AND (b.last_xid, b.last_id)) THEN
        RAISE EXCEPTION 'decline % is in a batch file not answered yet', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Order %s is a line of a batch that is still to be uploaded or answered.', OLD.order_id),
                  HINT = 'Wait for the result file (see flexfactor.batch_status).';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER declines_frozen BEFORE UPDATE OR DELETE ON flexfactor.declines
    FOR EACH ROW EXECUTE FUNCTION flexfactor._declines_frozen();

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
  FROM (SELECT 'declines'::text AS queue, d.state, count(*) AS rows, min(d.enqueued_at) AS oldest,
               max(d.set_aside_reason) AS last_error, NULL::timestamptz AS next_attempt_at
          FROM (SELECT CASE WHEN q.set_aside_reason IS NOT NULL THEN 'set_aside'
                            WHEN c.last_id IS NULL OR (q.enqueue_xid, q.id) > (c.last_xid, c.last_id) THEN 'pending'
                            ELSE 'batched' END AS state,
                       q.enqueued_at, q.set_aside_reason
                  FROM flexfactor.declines q
                  LEFT JOIN (SELECT b.last_xid, b.last_id FROM flexfactor.batches b WHERE b.kind = 'evaluate'
                              ORDER BY b.last_xid DESC, b.last_id DESC LIMIT 1) c ON true) d
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
        WHERE b.kind = 'evaluate'
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
-- pass's first failure is recorded on its batch and re-raised as a WARNING.
-- Declines the caller has not committed yet are left for a later pass.
CREATE FUNCTION flexfactor.ff_export_batch()
RETURNS integer AS 'MODULE_PATHNAME', 'ff_export_batch' LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;


/* ------------------------------------------------------- results come home */

-- Every change of an order's status, with the state of the billing callback.
CREATE TABLE flexfactor.order_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_ref        bigint NOT NULL REFERENCES flexfactor.orders (id) ON DELETE CASCADE,
    old_status       text,
    new_status       text NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now(),
    callback_state   text NOT NULL DEFAULT 'none',
    callback_attempts integer NOT NULL DEFAULT 0,
    callback_error   text,
    next_callback_at timestamptz,
    CONSTRAINT order_events_callback_check CHECK (callback_state IN (
        'none',             -- no callback configured
        'done',             -- the callback returned
        'failed',           -- it raised an error; retried by the worker
        'gave_up'))         -- failed 10 times; see callback_error
);
CREATE INDEX order_events_order_idx ON flexfactor.order_events (order_ref);
CREATE INDEX order_events_retry_idx ON flexfactor.order_events (next_callback_at)
    WHERE callback_state = 'failed';

-- Result and error files read from the outbound folder, applied once each.
CREATE TABLE flexfactor.result_files (
    file_name   text PRIMARY KEY,
    kind        text NOT NULL,
    batch_id    bigint REFERENCES flexfactor.batches (id),
    sha256      text NOT NULL,
    line_count  integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT result_files_kind_check CHECK (kind IN ('result', 'error'))
);

-- Calls the function named in flexfactor.on_order_status with the order, in
-- a subtransaction: a failing callback is recorded (and retried by the
-- worker), never lost and never allowed to undo the status change.
CREATE FUNCTION flexfactor._run_callback(event_id bigint, o flexfactor.orders)
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
            EXECUTE format('SELECT %s($1)', fn::regproc) USING o;
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

-- After a status change: log it, NOTIFY flexfactor_order, run the callback.
CREATE FUNCTION flexfactor._orders_status_changed()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    event_id bigint;
    previous text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
BEGIN
    INSERT INTO flexfactor.order_events (order_ref, old_status, new_status)
    VALUES (NEW.id, previous, NEW.status) RETURNING id INTO event_id;
    PERFORM pg_notify('flexfactor_order', json_build_object(
        'id', NEW.id, 'order_id', NEW.order_id, 'order_session_key', NEW.order_session_key,
        'status', NEW.status, 'previous', previous, 'source', NEW.source)::text);
    PERFORM flexfactor._run_callback(event_id, NEW);
    RETURN NULL;
END $$;
CREATE TRIGGER orders_10_status_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.status <> 'PENDING')
    EXECUTE FUNCTION flexfactor._orders_status_changed();
CREATE TRIGGER orders_10_status_changed
    AFTER UPDATE OF status ON flexfactor.orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION flexfactor._orders_status_changed();

-- Applies events that wait for an order which exists by now.  The order's
-- trigger applies them when it inserts the order, but cannot see an event
-- stored by a transaction that was not committed yet; the worker sweeps
-- those up every pass.
CREATE FUNCTION flexfactor._apply_waiting_events(max_events integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    waiting bigint;
    n integer := 0;
BEGIN
    FOR waiting IN SELECT w.id FROM flexfactor.webhook_events w
                    WHERE w.apply_state = 'waiting_order'
                      AND EXISTS (SELECT 1 FROM flexfactor.orders o
                                   WHERE o.order_session_key = w.order_session_key)
                    ORDER BY w.id LIMIT max_events
                      FOR UPDATE OF w SKIP LOCKED LOOP
        PERFORM flexfactor._apply_webhook_event(waiting);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Retries failed callbacks that are due (the worker calls this every pass).
CREATE FUNCTION flexfactor._retry_callbacks(max_events integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    n integer := 0;
BEGIN
    FOR e IN SELECT ev.id, o AS ord
               FROM flexfactor.order_events ev
               JOIN flexfactor.orders o ON o.id = ev.order_ref
              WHERE ev.callback_state = 'failed' AND ev.next_callback_at <= now()
              ORDER BY ev.id LIMIT max_events
                FOR UPDATE OF ev SKIP LOCKED LOOP
        PERFORM flexfactor._run_callback(e.id, e.ord);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Applies one stored webhook event to its order, forward-only.
CREATE FUNCTION flexfactor._apply_webhook_event(event_id bigint)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e       flexfactor.webhook_events;
    o       flexfactor.orders;
    target  text;
    cents   bigint;
    outcome text := 'applied';
BEGIN
    SELECT * INTO e FROM flexfactor.webhook_events WHERE id = event_id;
    SELECT * INTO o FROM flexfactor.orders WHERE order_session_key = e.order_session_key FOR UPDATE;
    IF NOT FOUND THEN
        UPDATE flexfactor.webhook_events SET apply_state = 'waiting_order' WHERE id = event_id;
        RETURN 'waiting_order';
    END IF;

    target := CASE e.event
        WHEN 'order.completed' THEN 'APPROVED'
        WHEN 'order.expired' THEN 'EXPIRED'
        WHEN 'order.cancelled' THEN 'CANCELLED'
        WHEN 'order.refunded' THEN 'REFUNDED'
        WHEN 'order.capturerequired' THEN 'CAPTUREREQUIRED'
    END;
    IF e.event = 'payment.chargeback.received' THEN
        UPDATE flexfactor.orders SET chargeback_at = coalesce(chargeback_at, e.event_time, now())
         WHERE id = o.id;
    ELSIF target IS NULL THEN
        outcome := 'ignored';
    ELSE
        IF e.event = 'order.refunded' AND jsonb_typeof(e.event_data->'amount') = 'number' THEN
            cents := round((e.event_data->>'amount')::numeric * 100);
            IF cents > 0 THEN
                INSERT INTO flexfactor.refunds (order_ref, amount_cents, idempotency_key, transaction_id, response)
                VALUES (o.id, cents,
                        flexfactor.ff_attempt_key('refund-webhook', e.order_session_key::text,
                                                  coalesce(e.event_data->>'refundTransactionId', e.nonce)),
                        e.event_data->>'refundTransactionId', e.event_data)
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    UPDATE flexfactor.orders SET refunded_cents = least(amount_cents, refunded_cents + cents)
                     WHERE id = o.id;
                END IF;
            END IF;
        END IF;
        UPDATE flexfactor.orders
           SET status = flexfactor.ff_next_status(status, target),
               confirmation_id = coalesce(e.confirmation_id, confirmation_id)
         WHERE id = o.id;
    END IF;
    UPDATE flexfactor.webhook_events SET apply_state = outcome, applied_at = now() WHERE id = event_id;
    RETURN outcome;
END $$;

-- Stores one verified delivery (refusing a replayed nonce), recognises a
-- repeat of an event already stored, and applies it.  Called by
-- ff_ingest_webhook() and the listener after verification.
CREATE FUNCTION flexfactor._record_webhook_event(
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

-- When an order gets its FlexFactor key, events that came first are applied.
-- (Triggers on one event fire in name order: orders_10_* record the order's
-- own status change before orders_20_* apply the events that waited for it.)
CREATE FUNCTION flexfactor._orders_key_known()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    waiting bigint;
BEGIN
    FOR waiting IN SELECT id FROM flexfactor.webhook_events
                    WHERE order_session_key = NEW.order_session_key AND apply_state = 'waiting_order'
                    ORDER BY id LOOP
        PERFORM flexfactor._apply_webhook_event(waiting);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER orders_20_key_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.order_session_key IS NOT NULL)
    EXECUTE FUNCTION flexfactor._orders_key_known();
CREATE TRIGGER orders_20_key_known
    AFTER UPDATE OF order_session_key ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.order_session_key IS NOT NULL
                       AND OLD.order_session_key IS DISTINCT FROM NEW.order_session_key)
    EXECUTE FUNCTION flexfactor._orders_key_known();

CREATE FUNCTION flexfactor.ff_ingest_webhook(headers jsonb, body text)
RETURNS text AS 'MODULE_PATHNAME', 'ff_ingest_webhook' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flexfactor.ff_ingest_webhook(jsonb, text) IS
    'Verifies a FlexFactor webhook delivery (headers as received, raw body), stores and applies it';

CREATE FUNCTION flexfactor.ff_webhook_check(headers jsonb, body text, at timestamptz DEFAULT now())
RETURNS text AS 'MODULE_PATHNAME', 'ff_webhook_check' LANGUAGE C STABLE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flexfactor.ff_webhook_check(jsonb, text, timestamptz) IS
    'Says whether a delivery passes the signature and date checks ("ok" or the reason); stores nothing';

-- Applies a result file (<batch base>.result.jsonl) to its batch, once:
-- each line's orderSessionKey and status go to the batch line; accepted
-- evaluate lines become orders (source 'batch'); REJECTED lines set their
-- decline aside with FlexFactor's errors; transmit lines record transmitId.
CREATE FUNCTION flexfactor._apply_result_file(result_name text, content text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      flexfactor.batches;
    lines  jsonb[];
    stored bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM flexfactor.result_files WHERE file_name = result_name) THEN
        RETURN 'already applied';
    END IF;
    SELECT * INTO b FROM flexfactor.batches
     WHERE file_name = regexp_replace(result_name, '\.result\.jsonl$', '.jsonl') FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'result file % answers no known batch', result_name
            USING ERRCODE = 'FF009',
                  HINT = 'Only files named <batch file name without .jsonl>.result.jsonl are applied.';
    END IF;
    BEGIN
        SELECT array_agg(l::jsonb ORDER BY n) INTO lines
          FROM regexp_split_to_table(content, E'\n') WITH ORDINALITY AS t(l, n)
         WHERE l <> '';
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'result file % is not JSON Lines', result_name
            USING ERRCODE = 'FF009';
    END;

    -- each result line answers the order on the same line of the batch: the
    -- lines are stored where sequenceNumber and orderId agree, and the file
    -- is refused whole (nothing stored) unless every line of the batch is
    IF coalesce(cardinality(lines), 0) <> b.line_count
       OR (SELECT count(DISTINCT j->>'sequenceNumber') FROM unnest(lines) AS j) <> b.line_count THEN
        stored := -1;
    ELSE
        INSERT INTO flexfactor.batch_lines AS bl
               (batch_id, sequence_number, decline_id, transmit_queue_id, order_session_key, status, errors)
        SELECT b.id, f.sequence_number, f.decline_id, f.transmit_queue_id,
               CASE WHEN j->>'orderSessionKey' ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                    THEN (j->>'orderSessionKey')::uuid END,
               upper(j->>'status'), j->'errors'
          FROM unnest(lines) AS j
          JOIN flexfactor.batch_file_lines(b.id) f ON f.sequence_number = (j->>'sequenceNumber')::integer
         WHERE NOT (j ? 'orderId' AND j->>'orderId' IS DISTINCT FROM f.line::jsonb->>'orderId');
        GET DIAGNOSTICS stored = ROW_COUNT;
    END IF;
    IF stored <> b.line_count THEN
        RAISE EXCEPTION 'result file % does not match batch %', result_name, b.id
            USING ERRCODE = 'FF009',
                  DETAIL = format('The batch has %s lines; the file has %s, or a line''s sequenceNumber/orderId differs from the batch line it answers.',
                                  b.line_count, coalesce(cardinality(lines), 0)),
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
               transaction_id = EXCLUDED.transaction_id,
               idempotency_key = EXCLUDED.idempotency_key,
               source = 'batch',
               status = flexfactor.ff_next_status(o.status, EXCLUDED.status);
        UPDATE flexfactor.declines d
           SET set_aside_reason = format('FlexFactor rejected line %s of %s: %s', bl.sequence_number,
                                         b.file_name, coalesce(bl.errors::text, 'no reason given'))
          FROM flexfactor.batch_lines bl
         WHERE bl.batch_id = b.id AND bl.decline_id = d.id AND bl.status = 'REJECTED';
    ELSE
        UPDATE flexfactor.transmit_queue t
           SET transmit_id = j->>'transmitId'
          FROM unnest(lines) AS j, flexfactor.batch_lines bl
         WHERE bl.batch_id = b.id AND bl.sequence_number = (j->>'sequenceNumber')::integer
           AND t.id = bl.transmit_queue_id;
    END IF;

    UPDATE flexfactor.batches SET state = 'answered', result_at = now() WHERE id = b.id;
    INSERT INTO flexfactor.result_files (file_name, kind, batch_id, sha256, line_count)
    VALUES (result_name, 'result', b.id, encode(sha256(convert_to(content, 'UTF8')), 'hex'),
            coalesce(cardinality(lines), 0));
    RETURN format('applied %s lines to batch %s', coalesce(cardinality(lines), 0), b.id);
END $$;

-- Applies <batch base>.error.json, a whole-file rejection, once.  Policy:
-- the batch becomes 'rejected' and its rows are set aside with FlexFactor's
-- reason (a rejected file is not re-sent as it is); ff_requeue_batch()
-- queues them again once the cause is fixed.
CREATE FUNCTION flexfactor._apply_error_file(error_name text, content text)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      flexfactor.batches;
    reason text;
BEGIN
    IF EXISTS (SELECT 1 FROM flexfactor.result_files WHERE file_name = error_name) THEN
        RETURN 'already applied';
    END IF;
    SELECT * INTO b FROM flexfactor.batches
     WHERE file_name = regexp_replace(error_name, '\.error\.json$', '.jsonl') FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'error file % answers no known batch', error_name USING ERRCODE = 'FF009';
    END IF;
    BEGIN
        reason := coalesce(content::jsonb->>'error', content);
    EXCEPTION WHEN invalid_text_representation THEN
        reason := left(content, 500);
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
    RETURN format('batch %s rejected: %s', b.id, reason);
END $$;

-- Queues the rows of a batch FlexFactor rejected whole again, once the cause
-- is fixed: they leave in a new batch (for declines, a new file over the same
-- range of rows).  Returns how many rows.
CREATE FUNCTION flexfactor.ff_requeue_batch(batch_id bigint)
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
                                       b.first_xid, b.first_id, b.last_xid, b.last_id);
    ELSE
        UPDATE flexfactor.transmit_queue t
           SET state = 'pending', batch_id = NULL, last_error = NULL, delivered_at = NULL
         WHERE t.batch_id = $1 AND t.state = 'set_aside';
        GET DIAGNOSTICS requeued = ROW_COUNT;
    END IF;
    UPDATE flexfactor.batches SET requeued_as = again WHERE id = b.id;
    RETURN requeued;
END $$;

/* ------------------------------------------------------- outcome views */

CREATE VIEW flexfactor.order_outcomes AS
SELECT o.id, o.order_id, o.order_session_key, o.source, o.status, o.amount_cents, o.currency,
       o.refunded_cents, o.confirmation_id, o.chargeback_at, o.expiry_date_utc,
       o.created_at, o.status_changed_at,
       (SELECT count(*) FROM flexfactor.webhook_events w
         WHERE w.order_session_key = o.order_session_key) AS webhook_events
  FROM flexfactor.orders o;
COMMENT ON VIEW flexfactor.order_outcomes IS 'Each order with its outcome and how many webhooks it received';

CREATE VIEW flexfactor.recovery_stats AS
SELECT date_trunc('day', created_at)::date AS day,
       currency,
       count(*) AS submitted,
       count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')) AS approved,
       count(*) FILTER (WHERE status = 'EXPIRED') AS expired,
       count(*) FILTER (WHERE status IN ('CANCELLED', 'DECLINED', 'REJECTED')) AS cancelled,
       count(*) FILTER (WHERE status = 'REFUNDED') AS refunded,
       count(*) FILTER (WHERE flexfactor.ff_status_rank(status) < 10) AS pending,
       round(100.0 * count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED'))
             / nullif(count(*) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10), 0), 1)
           AS recovery_rate_pct,
       coalesce(sum(amount_cents - refunded_cents) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')), 0)
           AS recovered_cents
  FROM flexfactor.orders
 GROUP BY 1, 2;
COMMENT ON VIEW flexfactor.recovery_stats IS
    'Per day and currency: orders submitted, approved, expired, cancelled, refunded, still pending, recovery rate (approved / decided) and amount recovered net of refunds';

/* ------------------------------------------------------------ privileges */

REVOKE ALL ON ALL TABLES IN SCHEMA flexfactor FROM PUBLIC;   -- views included
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flexfactor FROM PUBLIC;
