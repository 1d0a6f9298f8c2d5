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

-- One row per merchant order that FlexFactor was asked to rescue, whether
-- through /evaluate (source 'api') or an SFTP batch (source 'batch').
CREATE TABLE flexfactor.orders (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id           text NOT NULL,          -- merchant orderId (ExternalOrderId in webhooks)
    order_session_key  uuid,                   -- FlexFactor order id (OrderId in webhooks)
    idempotency_key    uuid NOT NULL,          -- of the current attempt, stored before sending
    source             text NOT NULL,
    is_mit             boolean NOT NULL DEFAULT true,
    amount_cents       bigint NOT NULL,
    currency           text NOT NULL,
    refunded_cents     bigint NOT NULL DEFAULT 0,
    status             text NOT NULL DEFAULT 'PENDING',
    confirmation_id    text,
    expiry_date_utc    timestamptz,
    chargeback_at      timestamptz,
    last_response      jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    status_changed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_order_id_key UNIQUE (order_id),
    CONSTRAINT orders_order_session_key_key UNIQUE (order_session_key),
    CONSTRAINT orders_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT orders_order_id_check CHECK (order_id <> ''),
    CONSTRAINT orders_source_check CHECK (source IN ('api', 'batch')),
    CONSTRAINT orders_amount_check CHECK (amount_cents > 0),
    CONSTRAINT orders_currency_check CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT orders_refund_check CHECK (refunded_cents >= 0 AND refunded_cents <= amount_cents),
    CONSTRAINT orders_status_check CHECK (status IN (
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
        'REJECTED'))        -- refused by FlexFactor's validation
);
CREATE INDEX orders_open_idx ON flexfactor.orders (status_changed_at)
    WHERE status IN ('PENDING', 'SUBMITTED', 'PROCESSING', 'CHALLENGE', 'CAPTUREREQUIRED');

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
    CONSTRAINT transmit_queue_state_check CHECK (state IN ('pending', 'delivered', 'set_aside')),
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

/* ------------------------------------------------------------ privileges */

REVOKE ALL ON ALL TABLES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flexfactor FROM PUBLIC;
