-- sql/install/06_batches_and_trigger.sql: SFTP batches (naming, fixing queued declines and transmits into batches, their lines) and the decline trigger's SQL side.
/* ------------------------------------------------------- SFTP batches */

-- Queues one declined merchant-initiated charge for the next evaluate batch,
-- checked as a batch line (FF023, FF024).  A second call for the same
-- attempt (orderId + transaction.id) returns the queued row instead of
-- adding one.  C (decline_queue.c): the one insert into flexfactor.declines,
-- shared with the decline trigger.
CREATE FUNCTION flexfactor.ff_enqueue_decline(payload jsonb)
RETURNS bigint AS 'MODULE_PATHNAME', 'ff_enqueue_decline' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

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
-- batch also gets its range of declines: an era, and queue positions in it.
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

-- Fixes the next (up to) max_rows queued declines, in queue order, into one
-- evaluate batch: its file name and its range of rows are decided here, once.
-- Queue order is (enqueue_era, enqueue_xid, id).  Declines of this
-- installation's era are taken only from transactions older than every
-- running one, so no decline can ever commit inside a closed range; those
-- of an earlier era (restored from a dump) were all committed where they
-- were queued, and come first.  A batch never spans two eras.  One exporter
-- at a time (a second one finds the lock taken and takes nothing).  Returns
-- the batch id, or NULL when nothing is ready.
CREATE FUNCTION flexfactor._create_evaluate_batch(max_rows integer)
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

-- The transmit counterpart (flexfactor.transmit_via = 'sftp'): fixes pending
-- /transmit copies into one transmit_ batch (each row records its batch).
-- A caller fixing several batches in one transaction passes the last id it
-- claimed, so the claim skips the index entries of rows it already batched.
-- The claim walks transmit_queue_claim_idx from there and reads only the
-- rows it takes: enable_sort = off, because a backlog just queued has no
-- statistics yet, and the planner, guessing a handful of pending rows, would
-- rather sort them all than walk the index (reading every pending row at
-- every claim: quadratic).
CREATE FUNCTION flexfactor._create_transmit_batch(max_rows integer, after_id bigint DEFAULT 0)
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
COMMENT ON FUNCTION flexfactor.batch_file_lines(bigint) IS
    'The exact lines of a batch file, in order, each without its trailing newline';

-- The rows behind lines first_line..last_line of a batch file, in file
-- order, with the orderId of each line: what the lines of a result file are
-- checked against, a chunk at a time, without building the batch's lines.
-- The rows and the order are those of flexfactor.batch_file_lines, whose
-- range it repeats (the regress suite checks that both agree).
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

-- Queued declines cannot be changed, and cannot be removed while their batch
-- file may still be uploaded or answered: the file's bytes and its
-- sequence numbers come from them.
CREATE FUNCTION flexfactor._declines_frozen()
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
CREATE TRIGGER declines_frozen BEFORE UPDATE OR DELETE ON flexfactor.declines
    FOR EACH ROW EXECUTE FUNCTION flexfactor._declines_frozen();

-- Trigger helper for any billing table: queues a row as a declined recurring
-- charge (C, decline_trigger.c).  It runs with the rights of the role that
-- writes the row; only the insert into flexfactor.declines runs as the
-- table's owner, and it takes data only.  Arguments, parsed once per statement:
--   field=column   a column of the row (read by attribute number)
--   field='text'   a constant
--   required: order_id, amount (cents) or amount_dollars, currency, token
--   optional: transaction_id (default: order_id), decline_code,
--             decline_message, response_code_source, avs_result_code,
--             cvv_result_code, cavv_result_code, email, phone, first_name,
--             last_name, address_line1, address_line2, city, state,
--             zip_code, country_code, country, subscription_id,
--             subscription_interval, expiry (timestamptz), declined_at
--             (default: now()), holder_name, card_brand, card_bin,
--             card_last4, expiration_month, expiration_year, sense_key
--   expiry_days=N  the rescue window when there is no expiry column
--   enrich=function  a function(<the table's row type>) returning jsonb with
--             what lives in other tables (payer, billingInformation, the
--             gateway's codes ...), called with the writer's rights; it may
--             add to the body, never change the order id, transaction id,
--             amount, currency or card token
--   conditions (all must hold; a WHEN clause on the trigger works too):
--             declined_if=column:value   (the column's text equals value)
--             recurring_if=column        (a boolean column is true)
-- A row that fails a condition costs two column reads.  It never touches
-- the network: the worker exports the queue.
CREATE FUNCTION flexfactor.ff_decline_trigger()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_decline_trigger' LANGUAGE C;

