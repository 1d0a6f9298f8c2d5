-- sql/install/03_order_states.sql: the forward-only order state machine (ranks, next state, state of a GET /orders answer).
/* ------------------------------------------------------- order states */

-- Order states only move forward: PENDING < SUBMITTED < PROCESSING/CHALLENGE
-- < CAPTUREREQUIRED < a final state (APPROVED, DECLINED, EXPIRED, CANCELLED,
-- REJECTED) < REFUNDED.  See ff_next_status() for the exceptions (a DECLINED
-- order may still be rescued; what may become REFUNDED).  Unknown states
-- rank NULL and never replace a known one.
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

-- The state an order is in after `incoming` is reported while it is in
-- `current` (by /evaluate, GET /orders/{id}, a capture, a refund, a webhook or
-- a result file).  The rule, in order:
--   1. nothing new (NULL, the same state) or an unknown state: no change;
--   2. REFUNDED lands on APPROVED, on DECLINED and on any pending state (a
--      refund proves the rescue: its order.refunded may overtake the
--      order.completed, or the later /evaluate of a sync MIT); REFUNDED stays
--      REFUNDED, and EXPIRED, CANCELLED and REJECTED are never refunded;
--   3. DECLINED may be followed by APPROVED or CAPTUREREQUIRED: a sync
--      (unmanaged) MIT keeps being worked after its first DECLINED answer,
--      and a later /evaluate of the same orderId reports the rescue;
--   4. every other final state (APPROVED, EXPIRED, CANCELLED, REJECTED) is
--      kept: EXPIRED never overwrites APPROVED, nor APPROVED EXPIRED;
--   5. a pending state moves to a state of higher rank, never back.
CREATE FUNCTION flexfactor.ff_next_status(current text, incoming text)
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

-- Our order state for a GET /orders/{id} answer: statusName (any case), or
-- the integer status when there is no statusName we know.  The order enum
-- has no Expired member: an expired managed MIT reads as Cancelled (status
-- 2) with its expiryDate passed, so Cancelled is EXPIRED when the answer's
-- expiryDate (else sent_expiry, the expiryDateUtc we sent) is before `at`,
-- and CANCELLED otherwise.  Integer 1 is not read: the public sources
-- disagree on it (Onhold, or Approved).  NULL for anything else.
CREATE FUNCTION flexfactor.ff_status_from_order(answer jsonb, at timestamptz DEFAULT now(),
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

-- updated_at, and status_changed_at when the status changes (C, order_events.c)
CREATE FUNCTION flexfactor._orders_touch()
RETURNS trigger AS 'MODULE_PATHNAME', 'ff_orders_touch' LANGUAGE C;
CREATE TRIGGER orders_touch BEFORE UPDATE ON flexfactor.orders
    FOR EACH ROW EXECUTE FUNCTION flexfactor._orders_touch();

