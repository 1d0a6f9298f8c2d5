-- examples/02_flexfactor.sql: wires the billing schema of 01_billing_schema.sql
-- to FlexFactor.  Run by a superuser in the billing database (the one named
-- by flexfactor.database), after the server preloads flexfactor.
--
--   1. the extension, and what each billing role may use of it;
--   2. the trigger: declined recurring charges are queued for FlexFactor;
--   3. the callback: FlexFactor's outcomes update invoices and subscriptions.
--
-- It can be run again: after DROP EXTENSION flexfactor CASCADE (which drops
-- the trigger, the callback and every grant on flexfactor's objects, see
-- docs/operations.md), running it again creates the extension and the
-- wiring anew.

CREATE EXTENSION IF NOT EXISTS flexfactor;

-- 1. Privileges.  Nothing in schema flexfactor is granted to PUBLIC.
GRANT USAGE ON SCHEMA flexfactor TO billing_owner, billing_app, billing_jobs;
-- checked when billing_owner creates the trigger below
GRANT EXECUTE ON FUNCTION flexfactor.ff_decline_trigger() TO billing_owner;
-- the application may look up what became of its invoices
GRANT SELECT ON flexfactor.orders, flexfactor.order_outcomes TO billing_app;
-- the pg_cron job exports; the views are for watching it
GRANT EXECUTE ON FUNCTION flexfactor.ff_export_batch() TO billing_jobs;
GRANT SELECT ON flexfactor.queue_status, flexfactor.batch_status, flexfactor.recovery_stats
   TO billing_jobs;

SET ROLE billing_owner;

-- 2. A declined merchant-initiated charge goes to FlexFactor, which may
-- retry it for 14 days.  Customer-initiated attempts (is_recurring false)
-- and approved charges are not queued.  The trigger never touches the
-- network, and a rolled-back insert queues nothing.
--
-- FlexFactor needs more than the payment row holds: the payer and the
-- billing address live with the customer.  This function, called by the
-- trigger for each declined renewal only and with the rights of whoever
-- inserts the payment, returns them; the processor's codes are mapped from
-- the row itself, and the ones it did not give are sent as 'NA'.
CREATE OR REPLACE FUNCTION billing.flexfactor_decline_details(p billing.payments) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
               'payer', jsonb_build_object('email', c.email),
               'billingInformation', jsonb_build_object(
                   'firstName', c.first_name, 'lastName', c.last_name,
                   'addressLine1', a.line1, 'addressLine2', a.line2, 'city', a.city,
                   'state', a.region, 'zipCode', a.postal_code,
                   'countryCode', a.country_code, 'country', a.country_code))
      FROM billing.subscriptions s
      JOIN billing.customers c ON c.id = s.customer_id
      LEFT JOIN billing.addresses a ON a.customer_id = c.id
     WHERE s.id = p.subscription_id
$$;

CREATE OR REPLACE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency',
        'token=card_token', 'transaction_id=id', 'declined_at=created_at',
        'decline_code=decline_code', 'response_code_source=processor',
        'avs_result_code=avs_result', 'cvv_result_code=cvv_result', 'cavv_result_code=cavv_result',
        'subscription_id=subscription_id', 'subscription_interval=''monthly''',
        'expiry_days=14',
        'enrich=billing.flexfactor_decline_details',
        'declined_if=status:declined',
        'recurring_if=is_recurring');

-- 3. Called by flexfactor, in the transaction that changes the order's
-- status, with the flexfactor.orders row.  It runs as its owner,
-- billing_owner (flexfactor calls a callback as its owner; SECURITY DEFINER
-- says the same for any other caller), whatever process applies the change (the worker, the
-- webhook listener, ff_order()).  It may be called again for the same status
-- (a failed call is retried), so every branch is idempotent.  An error here
-- does not undo the status change: it is recorded in
-- flexfactor.order_events.callback_error and retried with backoff.
CREATE OR REPLACE FUNCTION billing.on_flexfactor_order(o flexfactor.orders) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    inv billing.invoices;
BEGIN
    SELECT * INTO inv FROM billing.invoices WHERE invoice_no = o.order_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;                 -- an order made outside this schema (ff_evaluate by hand)
    END IF;

    CASE o.status
    WHEN 'APPROVED' THEN
        -- FlexFactor collected the charge: record the money, close the
        -- invoice, and put the subscription back in good standing.
        INSERT INTO billing.payments (invoice_no, subscription_id, amount, currency, card_token,
                                      customer_email, is_recurring, status, flexfactor_order)
        SELECT p.invoice_no, p.subscription_id, o.amount_cents / 100.0, o.currency, p.card_token,
               p.customer_email, true, 'recovered', o.order_session_key
          FROM billing.payments p
         WHERE p.invoice_no = o.order_id AND p.status = 'declined'
         ORDER BY p.id DESC LIMIT 1
        ON CONFLICT (flexfactor_order) DO NOTHING;
        UPDATE billing.invoices SET status = 'paid', paid_via = 'flexfactor', paid_at = now()
         WHERE invoice_no = o.order_id AND status IN ('open', 'past_due');
        UPDATE billing.subscriptions SET status = 'active', needs_attention = NULL
         WHERE id = inv.subscription_id AND status = 'past_due';
    WHEN 'EXPIRED' THEN
        -- The rescue window closed without a payment: stop the service.
        UPDATE billing.invoices SET status = 'uncollectible'
         WHERE invoice_no = o.order_id AND status IN ('open', 'past_due');
        UPDATE billing.subscriptions
           SET status = 'cancelled', cancelled_at = now(),
               cancel_reason = format('invoice %s not recovered: FlexFactor order expired', o.order_id)
         WHERE id = inv.subscription_id AND status <> 'cancelled';
    WHEN 'DECLINED', 'CANCELLED' THEN
        -- FlexFactor will not retry this one: a person should contact the customer.
        UPDATE billing.subscriptions
           SET needs_attention = format('FlexFactor %s the rescue of invoice %s',
                                        lower(o.status), o.order_id)
         WHERE id = inv.subscription_id AND status = 'past_due';
    WHEN 'REFUNDED' THEN
        UPDATE billing.invoices SET status = 'refunded'
         WHERE invoice_no = o.order_id AND o.refunded_cents >= o.amount_cents;
    ELSE
        NULL;                   -- still pending (SUBMITTED, PROCESSING, ...)
    END CASE;
END $$;
REVOKE EXECUTE ON FUNCTION billing.on_flexfactor_order(flexfactor.orders) FROM PUBLIC;

RESET ROLE;

-- The callback is a superuser-only setting; the workers pick it up on reload.
ALTER SYSTEM SET flexfactor.on_order_status = 'billing.on_flexfactor_order';
SELECT pg_reload_conf();
