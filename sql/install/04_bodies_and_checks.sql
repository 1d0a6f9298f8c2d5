-- sql/install/04_bodies_and_checks.sql: amounts, idempotency keys, the body check, scrubbing remote text, and the /evaluate and /transmit body builders (ff_decline, ff_payment).
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

-- Refuses, before any request or queueing, a body the real FlexFactor would
-- refuse (flexfactor-api.md 12a): one error naming every missing field.
-- kind: 'evaluate' (ff_evaluate), 'batch' (an SFTP evaluate line: also a
-- token and expiryDateUtc), 'transmit' (a /transmit copy).  C, see body_check.c.
CREATE FUNCTION flexfactor._check_body(payload jsonb, kind text, caller text)
RETURNS void AS 'MODULE_PATHNAME', 'ff_check_body_sql' LANGUAGE C STABLE STRICT;

-- Text a remote server sent, cleaned before it is stored or shown: digit
-- runs that could be card numbers, the configured secrets, bearer tokens and
-- JWTs, bytes invalid in the database encoding (C, scrub.c).
CREATE FUNCTION flexfactor._scrub(remote text)
RETURNS text AS 'MODULE_PATHNAME', 'ff_scrub_sql' LANGUAGE C STABLE STRICT;

-- The same for a JSON value (FlexFactor's error tuples): kept as JSON when
-- it still parses, else stored as one JSON string.
CREATE FUNCTION flexfactor._scrub_json(remote jsonb)
RETURNS jsonb LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN flexfactor._scrub(remote::text)::jsonb;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN to_jsonb(flexfactor._scrub(remote::text));
END $$;

-- The /evaluate body of a declined merchant-initiated charge, complete by
-- the real service's rules.  A result code the merchant does not have is
-- sent as the placeholder 'NA' (as FlexFactor's own examples and the real
-- clients do), never left out.  Everything else the service requires (the
-- payer's email, the billing name and address, declined_at, a subscription
-- id and interval for a recurring charge) has no placeholder: without it the
-- body is refused with every missing field named.  Pass declined_at (when the
-- charge failed), so that rebuilding the body for a retry gives the same bytes.
-- C (decline_body.c): the decline trigger builds its bodies with the same code.
CREATE FUNCTION flexfactor.ff_decline(
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

-- A /transmit body: the copy of a processed (normally successful) payment,
-- complete by the real service's rules (flexfactor-api.md 4.2 and 12a): the
-- payer, the five transaction codes ('NA' where unknown, as for ff_decline),
-- isRecurring and the subscription for a merchant-initiated charge, and the
-- card's details (never its number).
CREATE FUNCTION flexfactor.ff_payment(
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

