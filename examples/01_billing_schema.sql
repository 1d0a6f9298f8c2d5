-- examples/01_billing_schema.sql: a subscription billing schema, as a
-- merchant might already have it.  Nothing here knows about FlexFactor; the
-- wiring is in 02_flexfactor.sql.  Run by a superuser in the billing database
-- (install.sql runs the three files in order).
--
-- Roles (cluster-wide, made only if missing; give them LOGIN and passwords,
-- or grant them to your own login roles):
--   billing_owner   owns the schema, its tables, the trigger and the callback
--   billing_app     the application: records invoices and charge attempts
--   billing_jobs    the pg_cron jobs (03_cron.sql); LOGIN, no password

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['billing_owner', 'billing_app', 'billing_jobs'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I %s', r, CASE r WHEN 'billing_jobs' THEN 'LOGIN' ELSE 'NOLOGIN' END);
        END IF;
    END LOOP;
END $$;

CREATE SCHEMA billing AUTHORIZATION billing_owner;
SET ROLE billing_owner;

CREATE TABLE billing.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    card_token  text,                   -- a vaulted card (never a card number)
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer's billing address (the card's address, as the processor saw it).
CREATE TABLE billing.addresses (
    customer_id   bigint PRIMARY KEY REFERENCES billing.customers,
    line1         text NOT NULL,
    line2         text,
    city          text NOT NULL,
    region        text,                 -- state or province; required in the US
    postal_code   text,
    country_code  char(2) NOT NULL      -- ISO 3166-1 alpha-2
);

CREATE TABLE billing.subscriptions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES billing.customers,
    plan             text NOT NULL,
    price_cents      integer NOT NULL CHECK (price_cents > 0),
    currency         text NOT NULL DEFAULT 'USD',
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'past_due', 'cancelled')),
    needs_attention  text,              -- why a person should look at it
    cancelled_at     timestamptz,
    cancel_reason    text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.invoices (
    invoice_no       text PRIMARY KEY,  -- the orderId FlexFactor sees
    subscription_id  bigint NOT NULL REFERENCES billing.subscriptions,
    amount_cents     integer NOT NULL CHECK (amount_cents > 0),
    currency         text NOT NULL DEFAULT 'USD',
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'paid', 'past_due', 'uncollectible', 'refunded')),
    paid_via         text CHECK (paid_via IN ('card', 'flexfactor')),
    paid_at          timestamptz,
    issued_at        timestamptz NOT NULL DEFAULT now()
);

-- Every charge attempt, as the card processor reported it.  The renewal run
-- inserts merchant-initiated attempts (is_recurring); a customer's own
-- checkout inserts customer-initiated ones.
CREATE TABLE billing.payments (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no        text NOT NULL REFERENCES billing.invoices,
    subscription_id   bigint REFERENCES billing.subscriptions,
    amount            numeric(12,2) NOT NULL CHECK (amount > 0),   -- dollars
    currency          text NOT NULL DEFAULT 'USD',
    card_token        text NOT NULL,
    customer_email    text,
    is_recurring      boolean NOT NULL,
    status            text NOT NULL CHECK (status IN ('approved', 'declined', 'recovered')),
    decline_code      text,             -- the processor's code: 05, 51, 54, 61, 65 ...
    processor         text,             -- who answered: 'stripe', 'nmi', 'adyen' ...
    avs_result        text,             -- the processor's AVS, CVV and 3-D Secure (CAVV)
    cvv_result        text,             -- result codes, when it gave them
    cavv_result       text,
    flexfactor_order  uuid UNIQUE,      -- for 'recovered': FlexFactor's orderSessionKey
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_invoice_idx ON billing.payments (invoice_no);

-- What the billing system does with a first attempt: an approved charge pays
-- the invoice, a declined one leaves it past due (and its subscription, when
-- it was the renewal).
CREATE FUNCTION billing.payments_settle() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.status = 'approved' THEN
        UPDATE billing.invoices SET status = 'paid', paid_via = 'card', paid_at = NEW.created_at
         WHERE invoice_no = NEW.invoice_no AND status IN ('open', 'past_due');
    ELSIF NEW.status = 'declined' THEN
        UPDATE billing.invoices SET status = 'past_due'
         WHERE invoice_no = NEW.invoice_no AND status = 'open';
        UPDATE billing.subscriptions SET status = 'past_due'
         WHERE id = NEW.subscription_id AND status = 'active' AND NEW.is_recurring;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER payments_settle AFTER INSERT ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION billing.payments_settle();

RESET ROLE;

GRANT USAGE ON SCHEMA billing TO billing_app;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA billing TO billing_app;
