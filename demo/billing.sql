-- demo/billing.sql: one billing run on the example integration's schema
-- (examples/01_billing_schema.sql and 02_flexfactor.sql, loaded first by
-- demo/run.sh: tables, trigger and callback).  :subscriptions and
-- :decline_pct are set on the psql command line.
--
-- What FlexFactor makes of each decline depends on its decline code: the
-- demo's simulator runs with --outcomes decline-code (test/ffsim/README.md,
-- "Outcomes by decline code"), so soft declines (51, 05, 61, 65) are mostly
-- rescued and the rest expire, hard ones (54 expired card, 14 invalid card
-- number) are declined at once; seeded, so every run gives the same report.
SET seed = 0.42;
INSERT INTO billing.customers (email, first_name, last_name, card_token)
-- card tokens without digits: flexfactor refuses a body in which a run of
-- 13-19 digits passes the Luhn check as a card number, and a random UUID's
-- hex digits do so about once in 5,000 tokens
SELECT 'customer' || i || '@example.com', 'Given' || i, 'Family' || i,
       'tok_' || translate(md5('demo card ' || i), '0123456789', 'ghijklmnop')
  FROM generate_series(1, :subscriptions) i;
INSERT INTO billing.addresses (customer_id, line1, city, region, postal_code, country_code)
SELECT c.id, c.id || ' Main St', 'Springfield', 'IL', '62701', 'US' FROM billing.customers c;
INSERT INTO billing.subscriptions (customer_id, plan, price_cents)
SELECT c.id, p.plan, p.price
  FROM billing.customers c
  JOIN LATERAL (SELECT * FROM (VALUES ('starter', 999), ('standard', 1999), ('plus', 2900),
                                      ('pro', 4999), ('team', 8900), ('annual', 11900)) AS v(plan, price)
                 ORDER BY random() + c.id * 0 LIMIT 1) p ON true;

-- The billing run: one invoice and one merchant-initiated charge per
-- subscription; some are declined by the card processor with the usual
-- codes.  The schema's own trigger marks invoices paid or past due, and
-- flexfactor's trigger queues the declines.
INSERT INTO billing.invoices (invoice_no, subscription_id, amount_cents)
SELECT 'INV-' || lpad(s.id::text, 6, '0'), s.id, s.price_cents FROM billing.subscriptions s;

INSERT INTO billing.payments (invoice_no, subscription_id, amount, card_token, customer_email,
                              is_recurring, status, decline_code, processor, avs_result, cvv_result)
SELECT i.invoice_no, s.id, i.amount_cents / 100.0, c.card_token, c.email, true,
       CASE WHEN r.x < :decline_pct / 100.0 THEN 'declined' ELSE 'approved' END,
       CASE WHEN r.x < :decline_pct / 100.0
            THEN (ARRAY['51', '05', '61', '65', '54', '14'])[1 + floor(r.y * 6)::int] END,
       'stripe', 'Y', 'M'
  FROM billing.invoices i
  JOIN billing.subscriptions s ON s.id = i.subscription_id
  JOIN billing.customers c ON c.id = s.customer_id
  CROSS JOIN LATERAL (SELECT random() AS x, random() AS y, i.invoice_no AS k) r
 ORDER BY i.invoice_no;
