-- bench/trigger/billing.sql: the billing schema of the benchmark, shaped like
-- README's ("Capturing declines with the trigger"), with the trigger as
-- examples/02_flexfactor.sql writes it.
--
-- billing.payments has README's columns (plus cavv_result, which the
-- examples' trigger maps) and no foreign key: the baseline is the cheapest
-- insert of such a row, so the ratio is the strictest.  billing.payments_plain
-- is the same table without the trigger.  The enrich function is README's
-- with examples/'s SET search_path, and it returns billingInformation.country
-- as the examples' does (without it, every decline is refused with FF023).

CREATE SCHEMA billing;

CREATE TABLE billing.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    first_name  text NOT NULL,
    last_name   text NOT NULL
);
CREATE TABLE billing.addresses (
    customer_id   bigint PRIMARY KEY REFERENCES billing.customers,
    line1         text NOT NULL,
    city          text NOT NULL,
    region        text,
    postal_code   text,
    country_code  char(2) NOT NULL
);
INSERT INTO billing.customers (email, first_name, last_name)
SELECT 'customer' || i || '@example.com', 'First' || i, 'Last' || i FROM generate_series(1, 10000) i;
INSERT INTO billing.addresses
SELECT id, id || ' Main St', 'Springfield', 'IL', '62701', 'US' FROM billing.customers;

CREATE TABLE billing.payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no      text NOT NULL,
    customer_id     bigint NOT NULL,
    subscription_id text,
    amount          numeric(12,2) NOT NULL,
    currency        text NOT NULL DEFAULT 'USD',
    card_token      text,
    status          text NOT NULL,
    is_recurring    boolean NOT NULL,
    decline_code    text,
    processor       text,
    avs_result      text,
    cvv_result      text,
    cavv_result     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing.payments_plain (LIKE billing.payments INCLUDING ALL);

CREATE FUNCTION billing.flexfactor_details(p billing.payments) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'payer', jsonb_build_object('email', c.email),
        'billingInformation', jsonb_build_object(
            'firstName', c.first_name, 'lastName', c.last_name,
            'addressLine1', a.line1, 'city', a.city, 'state', a.region,
            'zipCode', a.postal_code, 'countryCode', a.country_code, 'country', a.country_code))
      FROM billing.customers c JOIN billing.addresses a ON a.customer_id = c.id
     WHERE c.id = p.customer_id
$$;

CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency',
        'token=card_token', 'transaction_id=id', 'declined_at=created_at',
        'decline_code=decline_code', 'response_code_source=processor',
        'avs_result_code=avs_result', 'cvv_result_code=cvv_result', 'cavv_result_code=cavv_result',
        'subscription_id=subscription_id', 'subscription_interval=''monthly''',
        'expiry_days=14',
        'enrich=billing.flexfactor_details',
        'declined_if=status:declined',
        'recurring_if=is_recurring');

-- One billing run: n charge attempts; every 12th (8.3 %) a declined
-- renewal (merchant-initiated, queued), every 60th a declined checkout of
-- the customer's own (not queued), the rest paid.  With declines = false,
-- every attempt is paid.  The same rows for both tables.
CREATE FUNCTION billing.run(n integer, declines boolean)
RETURNS TABLE (invoice_no text, customer_id bigint, subscription_id text, amount numeric,
               currency text, card_token text, status text, is_recurring boolean,
               decline_code text, processor text, avs_result text, cvv_result text, cavv_result text)
LANGUAGE sql STABLE AS $$
    SELECT 'INV-' || i, 1 + i % 10000, 'sub-' || (1 + i % 10000), 19.99, 'USD',
           'd3e10716-6aac-4eb8-a74d-' || lpad(to_hex(1 + i % 10000), 12, '0'),
           CASE WHEN declines AND (i % 12 = 0 OR i % 60 = 6) THEN 'declined' ELSE 'paid' END,
           i % 60 <> 6,
           CASE WHEN declines AND (i % 12 = 0 OR i % 60 = 6) THEN '51' END,
           'stripe', 'Y', 'M', NULL
      FROM generate_series(1, n) i
$$;

-- what the queue holds after a run, against what it must hold
CREATE FUNCTION billing.check_queue(n integer)
RETURNS TABLE (queued bigint, expected bigint, distinct_orders bigint, matching bigint, complete bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*), (n / 12)::bigint, count(DISTINCT d.order_id),
           count(*) FILTER (WHERE p.status = 'declined' AND p.is_recurring
                              AND d.transaction_id = p.id::text
                              AND (d.payload #>> '{transaction,amount}')::int = 1999),
           count(*) FILTER (WHERE d.payload #>> '{billingInformation,country}' = 'US'
                              AND d.payload #>> '{payer,email}' LIKE 'customer%@example.com')
      FROM flexfactor.declines d LEFT JOIN billing.payments p ON p.invoice_no = d.order_id
$$;
