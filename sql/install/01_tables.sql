-- sql/install/01_tables.sql: the schema, its domains and every table of state (orders, refunds, captures, batches, queues, batch lines, webhook events, refusals).

-- Created here, not through the control file, so that the schema is a member
-- of the extension and DROP EXTENSION removes it.
CREATE SCHEMA flexfactor;
REVOKE ALL ON SCHEMA flexfactor FROM PUBLIC;

-- The era of this installation of the extension: the time CREATE EXTENSION
-- ran, in microseconds, written into the function's body here.  A pg_dump
-- restore runs CREATE EXTENSION again and so starts a later era, while
-- pg_upgrade and a standby keep the function as it is.  The era leads a
-- decline's queue position (see flexfactor.declines), so the rows of a
-- restored dump sort before every row queued after the restore, whatever
-- the transaction ids of either cluster.  IMMUTABLE: a column default that
-- calls it is folded to the constant when an INSERT is planned.
DO $era$
BEGIN
    EXECUTE format('CREATE FUNCTION flexfactor._queue_era() RETURNS bigint'
                   ' LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN %s::bigint',
                   floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
END $era$;

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
    transaction_id     text,                   -- processor id of the charge attempt first sent
    idempotency_key    uuid NOT NULL,          -- of the latest /evaluate attempt, stored before
                                               -- sending; derived from the attempt, so unique with it
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
SELECT pg_catalog.pg_extension_config_dump('flexfactor.orders', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.orders', 'id'), '');

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
SELECT pg_catalog.pg_extension_config_dump('flexfactor.refunds', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.refunds', 'id'), '');

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
    -- an evaluate batch's declines: those of era `era` (never two eras in
    -- one batch) at queue positions (first_xid, first_id)..(last_xid,
    -- last_id), inclusive
    first_xid        xid8,
    first_id         bigint,
    last_xid         xid8,
    last_id          bigint,
    requeued_as      bigint REFERENCES flexfactor.batches (id),
    era              bigint,
    CONSTRAINT batches_file_name_key UNIQUE (file_name),
    CONSTRAINT batches_range_check CHECK ((kind = 'evaluate') = (num_nonnulls(era, first_xid, first_id, last_xid, last_id) = 5)),
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
CREATE INDEX batches_queue_position_idx ON flexfactor.batches (era, last_xid, last_id)
    WHERE kind = 'evaluate';
SELECT pg_catalog.pg_extension_config_dump('flexfactor.batches', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.batches', 'id'), '');

/* ---------------------------------------------------------------- queues */

-- Declined merchant-initiated charges queued for evaluate batches.
--
-- A row never changes once queued (only set_aside_reason may be set later),
-- and a batch is a range of rows in queue order (enqueue_era, enqueue_xid,
-- id): fixing a batch writes one batches row and nothing per decline, and
-- the batch file's lines are derived from its rows the same way at every
-- upload (flexfactor.batch_file_lines).  enqueue_xid is the inserting
-- transaction's id, so a range of this era is only closed below the oldest
-- transaction still running: no decline can later commit inside it.
-- enqueue_era is the installation's era (flexfactor._queue_era()): rows
-- restored from a dump keep the era, and the transaction ids, of the
-- cluster they were queued in; they sort before the rows queued here, and
-- are all committed.  The insert path writes neither column: both defaults
-- are what it must be.
CREATE TABLE flexfactor.declines (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id          text NOT NULL,
    transaction_id    text NOT NULL,          -- the processor's id of this charge attempt
    idempotency_key   uuid NOT NULL,
    payload           jsonb NOT NULL,         -- the /evaluate body; never a raw card number
    enqueue_xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    set_aside_reason  text,                   -- why FlexFactor refused it
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    enqueue_era       bigint NOT NULL DEFAULT flexfactor._queue_era(),
    CONSTRAINT declines_attempt_key UNIQUE (order_id, transaction_id),
    CONSTRAINT declines_idempotency_key_key UNIQUE (idempotency_key),
    -- the batch line adds these three, from the batch and the row
    CONSTRAINT declines_payload_check CHECK (jsonb_typeof(payload) = 'object'
                                             AND NOT payload ?| '{idempotencyKey,mid,sequenceNumber}')
);
CREATE INDEX declines_queue_order_idx ON flexfactor.declines (enqueue_era, enqueue_xid, id);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.declines', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.declines', 'id'), '');

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
-- pending rows in claim order: the exporter claims them for transmit_
-- batches from where its last claim ended, without reading past rows
CREATE INDEX transmit_queue_claim_idx ON flexfactor.transmit_queue (id)
    WHERE state = 'pending';
-- a transmit batch's rows, in order: where a claim ended (the exporter fixes
-- many batches in one transaction, each claim starting after the last, so
-- that claiming stays linear), the batch file's lines, its answer
CREATE INDEX transmit_queue_batch_idx ON flexfactor.transmit_queue (batch_id, id)
    WHERE batch_id IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('flexfactor.transmit_queue', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.transmit_queue', 'id'), '');

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
SELECT pg_catalog.pg_extension_config_dump('flexfactor.batch_lines', '');

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
    apply_error        text,                  -- why it was not applied (not_applicable)
    CONSTRAINT webhook_events_received_via_check CHECK (received_via IN ('listener', 'sql')),
    CONSTRAINT webhook_events_apply_state_check CHECK (apply_state IN (
        'pending',          -- stored, not applied yet
        'applied',          -- order updated
        'duplicate',        -- repeat of an applied event: changed nothing
        'waiting_order',    -- order not known yet; applied when it appears
        'ignored',          -- no state change for this event type
        'not_applicable',   -- names no order (payout.*, no OrderId): acknowledged, kept
        'rejected'))        -- authentic but can never be applied (a value out of range): acknowledged, kept
);
CREATE INDEX webhook_events_order_idx ON flexfactor.webhook_events (order_session_key);
CREATE INDEX webhook_events_pending_idx ON flexfactor.webhook_events (id)
    WHERE apply_state IN ('pending', 'waiting_order');
CREATE UNIQUE INDEX webhook_events_nonce_idx ON flexfactor.webhook_events (nonce)
    WHERE nonce IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.webhook_events', 'id'), '');

-- A sample of the requests refused by the listener (bad signature, stale
-- date, ...; at most 10 of a reason and 60 in all per minute, kept 7 days):
-- the reason only, never the key or the signature.  Every refusal is
-- counted in webhook_refusal_counts.
CREATE TABLE flexfactor.webhook_rejections (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    remote_addr  text,
    http_status  integer NOT NULL,
    reason       text NOT NULL,
    CONSTRAINT webhook_rejections_status_check CHECK (http_status BETWEEN 400 AND 599)
);
CREATE INDEX webhook_rejections_received_idx ON flexfactor.webhook_rejections (received_at);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_rejections', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.webhook_rejections', 'id'), '');

-- Every request the listener refused, counted by reason: one row per reason
-- and minute, added to from shared memory every few seconds (never a commit
-- per refusal), kept 7 days.  ff_webhook_refusals() shows the live counters.
CREATE TABLE flexfactor.webhook_refusal_counts (
    minute       timestamptz NOT NULL,
    reason       text NOT NULL,
    http_status  integer,                  -- NULL: the connection was closed unanswered
    refusals     bigint NOT NULL,
    PRIMARY KEY (minute, reason),
    CONSTRAINT webhook_refusal_counts_check CHECK (refusals > 0 AND http_status BETWEEN 400 AND 599)
);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.webhook_refusal_counts', '');

