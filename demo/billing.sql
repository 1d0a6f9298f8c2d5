-- demo/billing.sql: an example merchant billing schema, its flexfactor
-- wiring (trigger, callback) and one billing run.  Loaded by demo/run.sh;
-- :subscriptions and :decline_pct are set on the psql command line.

CREATE SCHEMA billing;

CREATE TABLE billing.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL,
    card_token  text NOT NULL          -- from FlexFactor's /tokenize (never a card number)
);

CREATE TABLE billing.subscriptions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES billing.customers,
    plan         text NOT NULL,
    price_cents  integer NOT NULL
);

CREATE TABLE billing.invoices (
    invoice_no       text PRIMARY KEY,
    subscription_id  bigint NOT NULL REFERENCES billing.subscriptions,
    amount_cents     integer NOT NULL,
    state            text NOT NULL DEFAULT 'open'   -- open, paid, past_due, written_off
);

CREATE TABLE billing.payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no      text NOT NULL REFERENCES billing.invoices,
    amount          numeric(12,2) NOT NULL,         -- dollars, as the processor reports it
    currency        text NOT NULL DEFAULT 'USD',
    card_token      text NOT NULL,
    status          text NOT NULL,                  -- approved, declined
    decline_code    text,
    is_recurring    boolean NOT NULL DEFAULT true,
    customer_email  text,
    subscription_id bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Declined recurring charges go to FlexFactor; FlexFactor may retry for 14 days.
CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency',
        'token=card_token', 'transaction_id=id', 'decline_code=decline_code',
        'email=customer_email', 'subscription_id=subscription_id', 'declined_at=created_at',
        'expiry_days=14', 'declined_if=status:declined', 'recurring_if=is_recurring');

-- FlexFactor's outcomes come back to the invoices.
CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
    UPDATE billing.invoices
       SET state = CASE o.status
                       WHEN 'APPROVED' THEN 'paid'
                       WHEN 'EXPIRED' THEN 'written_off'
                       WHEN 'DECLINED' THEN 'written_off'
                       WHEN 'CANCELLED' THEN 'written_off'
                       ELSE state END
     WHERE invoice_no = o.order_id $$;

-- Customers and subscriptions.  Plan prices: the simulator rescues a
-- managed MIT decline after a minute, except amounts ending in 14, which
-- expire at expiryDateUtc, and in 02, which FlexFactor declines at once.
SET seed = 0.42;
INSERT INTO billing.customers (email, card_token)
SELECT 'customer' || i || '@example.com', gen_random_uuid()::text
  FROM generate_series(1, :subscriptions) i;
INSERT INTO billing.subscriptions (customer_id, plan, price_cents)
SELECT c.id, p.plan, p.price
  FROM billing.customers c
  JOIN LATERAL (SELECT * FROM (VALUES ('starter', 999), ('standard', 1999), ('plus', 2914),
                                      ('pro', 4999), ('team', 8914), ('annual', 11902)) AS v(plan, price)
                 ORDER BY random() + c.id * 0 LIMIT 1) p ON true;

-- The billing run: one invoice and one charge per subscription; some are
-- declined by the card processor with the usual codes.
INSERT INTO billing.invoices (invoice_no, subscription_id, amount_cents)
SELECT 'INV-' || lpad(s.id::text, 6, '0'), s.id, s.price_cents FROM billing.subscriptions s;

INSERT INTO billing.payments (invoice_no, amount, card_token, status, decline_code, customer_email, subscription_id)
SELECT i.invoice_no, i.amount_cents / 100.0, c.card_token,
       CASE WHEN r.x < :decline_pct / 100.0 THEN 'declined' ELSE 'approved' END,
       CASE WHEN r.x < :decline_pct / 100.0
            THEN (ARRAY['51', '05', '61', '65', '54', '14'])[1 + floor(r.y * 6)::int] END,
       c.email, s.id
  FROM billing.invoices i
  JOIN billing.subscriptions s ON s.id = i.subscription_id
  JOIN billing.customers c ON c.id = s.customer_id
  CROSS JOIN LATERAL (SELECT random() AS x, random() AS y, i.invoice_no AS k) r
 ORDER BY i.invoice_no;

UPDATE billing.invoices i SET state = CASE p.status WHEN 'approved' THEN 'paid' ELSE 'past_due' END
  FROM billing.payments p WHERE p.invoice_no = i.invoice_no;
