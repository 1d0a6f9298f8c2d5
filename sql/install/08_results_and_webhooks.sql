-- sql/install/08_results_and_webhooks.sql: results come home: status changes and the billing callback, webhook events, result and error files.
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
SELECT pg_catalog.pg_extension_config_dump('flexfactor.order_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flexfactor.order_events', 'id'), '');

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
SELECT pg_catalog.pg_extension_config_dump('flexfactor.result_files', '');

-- Result and error files that could not be applied (unreadable, not UTF-8
-- text, not matching their batch, answering no batch, an error file after
-- the batch was answered ...): one row per file, the version refused (size
-- and modification time, as the SFTP server lists them) and why.  The worker
-- skips a file while it stays as it was refused, without reading it, across
-- restarts; a file that changes is tried again, and loses its row once
-- applied.  Delete a row to have its file tried again as it is.
CREATE TABLE flexfactor.refused_result_files (
    file_name    text PRIMARY KEY,
    byte_count   bigint NOT NULL,
    modified_at  timestamptz NOT NULL,
    sqlstate     text NOT NULL,
    reason       text NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flexfactor.refused_result_files', '');

-- Records that a file was refused (the worker, after the error): the same
-- file refused again in another version replaces the row.
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

-- Runs the callback as its owner, never with the rights of the process that
-- applies the change (C, callback.c).  Granted to nobody.
CREATE FUNCTION flexfactor._invoke_callback(fn regprocedure, o flexfactor.orders)
RETURNS void AS 'MODULE_PATHNAME', 'ff_invoke_callback' LANGUAGE C STRICT;

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

-- After a status change: log it (an order recorded by ff_evaluate() was
-- PENDING until its answer), NOTIFY flexfactor_order (any role may LISTEN:
-- the payload is the order's row id and its status only; what the order is
-- needs SELECT on flexfactor.orders), run the callback (C, order_events.c).
CREATE FUNCTION flexfactor._orders_status_changed()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_status_changed' LANGUAGE C;
-- The AFTER INSERT triggers act on orders created by the inserting
-- transaction (created_at is its now(): nothing of ours sets it).  A row
-- that comes with an older created_at was created elsewhere: the data of a
-- pg_dump restored after CREATE EXTENSION, whose order_events, callbacks and
-- applied webhooks came with it and must not be made, run or applied again.
CREATE TRIGGER orders_10_status_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.status <> 'PENDING' AND NEW.created_at = now())
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

-- Keeps an authentic delivery that can never be stored or applied (its
-- content fails the same way on every retry) as 'rejected', with the reason,
-- so that the listener can acknowledge it.  Its body is kept as received;
-- the event name is read from it without parsing it as JSON.
CREATE FUNCTION flexfactor._record_rejected_webhook_event(
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

-- When an order gets its FlexFactor key, events that came first are applied
-- (C, order_events.c).  (Triggers on one event fire in name order:
-- orders_10_* record the order's own status change before orders_20_* apply
-- the events that waited for it.)
CREATE FUNCTION flexfactor._orders_key_known()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_key_known' LANGUAGE C;
CREATE TRIGGER orders_20_key_set
    AFTER INSERT ON flexfactor.orders
    FOR EACH ROW WHEN (NEW.order_session_key IS NOT NULL AND NEW.created_at = now())   -- see orders_10_status_set
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

-- The batch a result file (<batch base>.result.jsonl) or an error file
-- (<batch base>.error.json) answers, locked: NULL when the file was applied
-- already.  Refused (FF009) when it answers no batch, or when an error file
-- comes after the batch was answered (a batch is answered once: a late error
-- file never rewrites the answer).  The worker asks before it reads a file,
-- and again in the transaction that applies it.
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

-- Stores a run of a result file's lines (lines first_line.. of the file, in
-- order; the worker sends a file a chunk at a time, all in one transaction)
-- as the answers to the batch's lines: each line must be a JSON object whose
-- sequenceNumber is a line of the batch not answered yet and whose orderId,
-- if it has one, is that line's.  The first run that breaks this refuses the
-- file (FF009): the caller's transaction then stores nothing of it.
-- Transmit lines also record their transmitId.  Returns the lines stored.
-- Each line is parsed once and only the fields kept are held, so memory
-- follows the answers, not the size of the lines.
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

-- Ends the application of a result file whose line_count lines were all
-- stored by _apply_result_lines(): refuses it (FF009) unless they answer
-- every line of the batch; accepted evaluate lines become orders (source
-- 'batch'), REJECTED lines set their decline aside with FlexFactor's errors;
-- the batch is answered and the file recorded as applied (with the SHA-256
-- of its bytes).
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

-- Applies a result file given whole (for a file received by other means, and
-- the tests; the worker streams files through the three functions above):
-- once, all of it or nothing.
CREATE FUNCTION flexfactor._apply_result_file(result_name text, content text)
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

-- Applies <batch base>.error.json, a whole-file rejection, once.  Policy:
-- the batch becomes 'rejected' and its rows are set aside with FlexFactor's
-- reason (a rejected file is not re-sent as it is); ff_requeue_batch()
-- queues them again once the cause is fixed.
CREATE FUNCTION flexfactor._apply_error_file(error_name text, content text)
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

