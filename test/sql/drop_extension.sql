-- DROP EXTENSION flexfactor CASCADE on a wired billing schema: what goes with
-- it (the merchant's trigger, callback and views built on flexfactor's
-- objects, every grant on flexfactor's objects, every queued row), what stays
-- (the merchant's tables, rows, other functions, roles and settings), and how
-- the wiring comes back.  docs/operations.md, "Dropping and re-creating the
-- extension", states exactly these facts.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';

-- a merchant's billing schema wired as examples/02_flexfactor.sql does
CREATE ROLE shop_owner NOLOGIN;
CREATE ROLE shop_app NOLOGIN;
CREATE SCHEMA shop AUTHORIZATION shop_owner;
GRANT USAGE ON SCHEMA flexfactor TO shop_owner, shop_app;
GRANT EXECUTE ON FUNCTION flexfactor.ff_decline_trigger() TO shop_owner;
GRANT SELECT ON flexfactor.orders TO shop_owner, shop_app;
GRANT USAGE ON SCHEMA shop TO shop_app;
SET ROLE shop_owner;
CREATE TABLE shop.payments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no   text NOT NULL,
    amount       numeric(12,2) NOT NULL,
    card_token   text NOT NULL,
    status       text NOT NULL,
    is_recurring boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT '2026-11-24 09:30+00'
);
CREATE TABLE shop.callback_calls (order_id text, status text);
GRANT INSERT, SELECT ON shop.payments TO shop_app;
-- the enrich function takes the merchant's row type only
CREATE FUNCTION shop.details(p shop.payments) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'payer', jsonb_build_object('email', 'jane@example.com'),
        'billingInformation', jsonb_build_object(
            'firstName', 'Jane', 'lastName', 'Roe', 'addressLine1', '1 Main St',
            'city', 'Springfield', 'state', 'IL', 'zipCode', '62701', 'countryCode', 'US',
            'country', 'US')) $$;
CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON shop.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=''USD''',
        'token=card_token', 'transaction_id=id', 'declined_at=created_at',
        'response_code_source=''stripe''', 'subscription_id=invoice_no',
        'subscription_interval=''monthly''', 'expiry_days=14', 'enrich=shop.details',
        'declined_if=status:declined', 'recurring_if=is_recurring');
-- the callback takes a flexfactor.orders row: it depends on flexfactor's type
CREATE FUNCTION shop.on_order(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
    INSERT INTO shop.callback_calls VALUES (o.order_id, o.status) $$;
-- a report of the merchant's own, on flexfactor's table
CREATE VIEW shop.rescued AS SELECT order_id FROM flexfactor.orders WHERE status = 'APPROVED';
RESET ROLE;
ALTER SYSTEM SET flexfactor.on_order_status = 'shop.on_order';
SET flexfactor.on_order_status = 'shop.on_order';

-- wired: a declined recurring payment is queued, a status change calls back
SET ROLE shop_app;
INSERT INTO shop.payments (invoice_no, amount, card_token, status, is_recurring)
VALUES ('INV-1', 49.99, 'tok-1', 'declined', true);
RESET ROLE;
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-1', '8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90', 'batch', 4999, 'USD');
UPDATE flexfactor.orders SET status = 'APPROVED' WHERE order_id = 'INV-1';
SELECT (SELECT count(*) FROM flexfactor.declines) AS queued,
       (SELECT count(*) FROM shop.callback_calls) AS callbacks;

-- without CASCADE the drop is refused, naming what depends on flexfactor
DROP EXTENSION flexfactor;
-- save the definitions of those objects first, to create them again after
CREATE TEMP TABLE saved_wiring AS
SELECT 1 AS n, pg_get_triggerdef(oid) AS ddl FROM pg_trigger WHERE tgname = 'payments_to_flexfactor'
UNION ALL SELECT 2, pg_get_functiondef('shop.on_order(flexfactor.orders)'::regprocedure)
UNION ALL SELECT 3, 'CREATE VIEW shop.rescued AS ' || pg_get_viewdef('shop.rescued'::regclass);
GRANT SELECT ON saved_wiring TO shop_owner;
-- with CASCADE those objects go too
DROP EXTENSION flexfactor CASCADE;

-- gone: the trigger, the callback, the view, flexfactor's schema and rows
SELECT tgname FROM pg_trigger WHERE tgrelid = 'shop.payments'::regclass AND NOT tgisinternal;
SELECT oid::regprocedure AS shop_functions_left FROM pg_proc
 WHERE pronamespace = 'shop'::regnamespace ORDER BY 1::text;
SELECT relname AS shop_relations_left FROM pg_class
 WHERE relnamespace = 'shop'::regnamespace AND relkind IN ('r', 'v') ORDER BY 1;
SELECT count(*) AS flexfactor_schemas FROM pg_namespace WHERE nspname = 'flexfactor';
-- kept: the merchant's rows, roles and grants on its own objects
SELECT (SELECT count(*) FROM shop.payments) AS payments,
       (SELECT count(*) FROM shop.callback_calls) AS callback_calls,
       (SELECT count(*) FROM pg_roles WHERE rolname IN ('shop_owner', 'shop_app')) AS roles,
       has_table_privilege('shop_app', 'shop.payments', 'INSERT') AS app_may_insert;
-- kept: every setting, in the session and in the configuration files (the
-- settings belong to the preloaded library, not to the extension)
SELECT current_setting('flexfactor.on_order_status') AS on_order_status,
       current_setting('flexfactor.mid') AS mid;
SELECT name, setting FROM pg_file_settings
 WHERE sourcefile LIKE '%postgresql.auto.conf' AND name LIKE 'flexfactor.%';
SELECT count(*) > 0 AS conf_file_settings_kept FROM pg_file_settings
 WHERE sourcefile LIKE '%/postgresql.conf' AND name = 'flexfactor.app_secret';
-- while the extension is away, a declined payment is written and queued nowhere
SET ROLE shop_app;
INSERT INTO shop.payments (invoice_no, amount, card_token, status, is_recurring)
VALUES ('INV-2', 19.99, 'tok-2', 'declined', true);
RESET ROLE;

-- re-created: empty, and none of the old grants
CREATE EXTENSION flexfactor;
SELECT (SELECT count(*) FROM flexfactor.declines) AS queued,
       (SELECT count(*) FROM flexfactor.orders) AS orders,
       has_schema_privilege('shop_owner', 'flexfactor', 'USAGE') AS owner_has_usage,
       has_function_privilege('shop_owner', 'flexfactor.ff_decline_trigger()', 'EXECUTE') AS owner_may_attach,
       has_table_privilege('shop_app', 'flexfactor.orders', 'SELECT') AS app_may_read_orders;
-- the setting still names the callback, which is gone: a status change now
-- stands, and the callback is recorded as failed, to be retried with backoff
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-0', '0c6a3f1e-2b4d-4e8f-9a1b-3c5d7e9f0a2b', 'batch', 999, 'USD');
UPDATE flexfactor.orders SET status = 'APPROVED' WHERE order_id = 'INV-0';
SELECT new_status, callback_state, callback_error FROM flexfactor.order_events;
-- so the trigger cannot be attached again before the grants are
SET ROLE shop_owner;
CREATE TRIGGER payments_to_flexfactor AFTER INSERT ON shop.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_no');
RESET ROLE;

-- the wiring back: the grants, then the saved definitions, created by their
-- owner (examples/02_flexfactor.sql, run again, does both for the example
-- integration)
GRANT USAGE ON SCHEMA flexfactor TO shop_owner, shop_app;
GRANT EXECUTE ON FUNCTION flexfactor.ff_decline_trigger() TO shop_owner;
GRANT SELECT ON flexfactor.orders TO shop_owner, shop_app;
SET ROLE shop_owner;
-- (not echoed: PostgreSQL versions print the definitions differently)
\set ECHO none
SELECT ddl FROM saved_wiring ORDER BY n \gexec
\set ECHO all
RESET ROLE;

-- wired again: new declines are queued (the one written in between is not),
-- and the unchanged setting finds the callback again
SET ROLE shop_app;
INSERT INTO shop.payments (invoice_no, amount, card_token, status, is_recurring)
VALUES ('INV-3', 29.99, 'tok-3', 'declined', true);
RESET ROLE;
SELECT order_id FROM flexfactor.declines ORDER BY id;
INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency)
VALUES ('INV-3', 'b1e0c3a4-5d6f-4a7b-8c9d-0e1f2a3b4c5d', 'batch', 2999, 'USD');
UPDATE flexfactor.orders SET status = 'APPROVED' WHERE order_id = 'INV-3';
-- the worker's retry (here: when due, by hand) calls the callback back in
UPDATE flexfactor.order_events SET next_callback_at = now() WHERE callback_state = 'failed';
SELECT flexfactor._retry_callbacks() AS retried;
SELECT o.order_id, new_status, callback_state, callback_attempts FROM flexfactor.order_events e
  JOIN flexfactor.orders o ON o.id = e.order_ref ORDER BY e.id;
SELECT order_id, status FROM shop.callback_calls ORDER BY order_id;
SELECT * FROM shop.rescued;

-- clean up for the suites that follow: without the merchant's objects, a
-- plain DROP EXTENSION goes through
ALTER SYSTEM RESET flexfactor.on_order_status;
DROP SCHEMA shop CASCADE;
DROP EXTENSION flexfactor;
CREATE EXTENSION flexfactor;
DROP OWNED BY shop_owner, shop_app;
DROP ROLE shop_owner, shop_app;
