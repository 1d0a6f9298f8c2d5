-- sql/install/05_api.sql: the REST API from SQL (ff_evaluate, ff_refund, ff_capture, ff_cancel, ff_tokenize, ff_transmit, ...) and the queueing entry points.
/* ------------------------------------------------------- the API from SQL */

-- The one internal door to the REST API (C): bearer token, retry on 401,
-- errors with FF SQLSTATEs.  Granted to nobody: the functions below run as
-- the extension owner (SECURITY DEFINER with a fixed search_path).
CREATE FUNCTION flexfactor._api_call(method text, path text, body jsonb)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_api_call_sql' LANGUAGE C VOLATILE;

-- _api_call() for refund and capture, whose refusals may come with a 4xx
-- status: a status of answer_statuses whose body is FlexFactor's business
-- answer (it has "success" or "responseCode") is returned with that body
-- instead of raising, so the caller can read the responseCode.
CREATE FUNCTION flexfactor._api_call_answer(method text, path text, body jsonb,
                                            answer_statuses integer[],
                                            OUT http_status integer, OUT answer jsonb)
RETURNS record AS 'MODULE_PATHNAME', 'ff_api_call_answer_sql' LANGUAGE C VOLATILE;

-- DETAIL of a refused refund or capture: the HTTP status, FlexFactor's
-- responseCode and message (from the answer or its first error tuple).
CREATE FUNCTION flexfactor._refusal_detail(http_status integer, answer jsonb)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- remote text, scrubbed as every remote message (card numbers, secrets,
-- bearer tokens; flexfactor._scrub), then cut: a secret cut first could
-- leave its beginning
RETURN left(flexfactor._scrub(format('HTTP %s, responseCode %s: %s', http_status,
              coalesce(nullif(answer->>'responseCode', ''), answer #>> '{errors,0,item2}', 'none'),
              coalesce(nullif(answer->>'responseMessage', ''), answer #>> '{errors,0,item1}', answer->>'title',
                       'no message'))), 600);

CREATE FUNCTION flexfactor._wake_worker_at_commit()
RETURNS void AS 'MODULE_PATHNAME', 'ff_wake_worker_at_commit' LANGUAGE C VOLATILE;

CREATE FUNCTION flexfactor.ff_token_status(
    OUT has_token boolean, OUT expires_at timestamptz, OUT token_requests bigint)
RETURNS record AS 'MODULE_PATHNAME', 'ff_token_status' LANGUAGE C VOLATILE;

CREATE FUNCTION flexfactor.ff_tokenize(card jsonb)
RETURNS text AS 'MODULE_PATHNAME', 'ff_tokenize' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- POST /evaluate (C, see evaluate.c): records the order and its idempotency
-- key before sending, stores FlexFactor's answer after.
CREATE FUNCTION flexfactor.ff_evaluate(payload jsonb)
RETURNS jsonb AS 'MODULE_PATHNAME', 'ff_evaluate' LANGUAGE C VOLATILE STRICT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flexfactor.ff_order(order_session_key text)
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

-- POST /orders/{id}/refund.  The refund model has no idempotency key (one
-- sent is ignored): FlexFactor de-duplicates refunds per order, and here the
-- order's row lock serializes refunds of one order.  A refund is booked
-- (refunds row, refunded_cents, REFUNDED) only when the answer says it
-- happened: success true, status SUCCESS (or APPROVED, the word ActiveMerchant
-- also reads as success and the sandbox was seen to give), no responseCode,
-- and no responseMessage DECLINED.  Anything else raises FF012 and books
-- nothing; the order.refunded webhook stays authoritative.
CREATE FUNCTION flexfactor.ff_refund(order_session_key text, amount_cents bigint DEFAULT NULL)
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

-- POST /capture for a CAPTUREREQUIRED order (auth+capture accounts): the
-- authorised amount, or less.  The key is derived from the order and the
-- amount, so a retry after a failed, rolled-back call sends the same key and
-- FlexFactor replays its first answer.  status/captureStatus SUCCESS makes the
-- order APPROVED (with NOTIFY and the callback, as every status change);
-- anything else raises FF012 and changes nothing.
CREATE FUNCTION flexfactor.ff_capture(order_session_key text, amount_cents bigint DEFAULT NULL)
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
    PERFORM flexfactor._check_body(payload, 'transmit', 'ff_transmit');
    INSERT INTO flexfactor.transmit_queue (payload) VALUES (payload) RETURNING id INTO queued;
    PERFORM flexfactor._wake_worker_at_commit();
    RETURN queued;
END $$;


