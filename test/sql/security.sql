-- Attacks by an unprivileged role with the grants of docs/security.md, each asserting
-- that nothing was gained, changed or stored (issue 13).
\set VERBOSITY default
\set SHOW_CONTEXT never
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';

-- the role of a billing schema's owner: EXECUTE on the trigger, its own tables
CREATE ROLE ff_attacker LOGIN;
GRANT USAGE ON SCHEMA flexfactor TO ff_attacker;
GRANT EXECUTE ON FUNCTION flexfactor.ff_decline_trigger() TO ff_attacker;
CREATE SCHEMA attacker AUTHORIZATION ff_attacker;
SET ROLE ff_attacker;

-- 1. The decline trigger runs with the writer's rights: a cast to json, a
-- type's function or an enrich function of the attacker's gain nothing
CREATE TYPE attacker.card AS (token text);
CREATE FUNCTION attacker.escalate(attacker.card) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    ALTER ROLE ff_attacker SUPERUSER;
    RETURN '{}';
END $$;
CREATE CAST (attacker.card AS json) WITH FUNCTION attacker.escalate(attacker.card) AS ASSIGNMENT;
CREATE TABLE attacker.payments (invoice_no text, amount numeric, currency text, token text,
                                card attacker.card, status text, recurring boolean);
CREATE FUNCTION attacker.details(p attacker.payments) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    ALTER ROLE ff_attacker SUPERUSER;
    RETURN '{}';
END $$;
CREATE TRIGGER steal AFTER INSERT ON attacker.payments FOR EACH ROW
    EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_no', 'amount_dollars=amount',
        'currency=currency', 'token=token', 'email=card', 'enrich=attacker.details',
        'declined_if=status:declined', 'recurring_if=recurring');
\set VERBOSITY sqlstate
INSERT INTO attacker.payments VALUES ('A-1', 9.99, 'USD', 'tok', ROW('x'), 'declined', true);
\set VERBOSITY default
-- the queue step is C, callable from no SQL; the one SQL door to the
-- queue is granted to nobody
SELECT flexfactor.ff_enqueue_decline('{"orderId": "A-2"}');
RESET ROLE;
SELECT rolsuper AS attacker_became_superuser FROM pg_roles WHERE rolname = 'ff_attacker';
SELECT count(*) AS queued_by_attacker FROM flexfactor.declines WHERE order_id LIKE 'A-%';

-- 1b. Only the insert into the queue runs as the queue's owner, and nothing
-- of the writer's runs in it: functions and an operator shadowing those
-- the insert, the queue's defaults and its check use, first on the
-- writer's search_path (from the first decline of the session, when the
-- insert is planned), are never called; each would make its caller a
-- superuser.  The decline itself is queued.
SET ROLE ff_attacker;
CREATE FUNCTION attacker.grab() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    ALTER ROLE ff_attacker SUPERUSER;
    RETURN true;
END $$;
CREATE FUNCTION attacker.now() RETURNS timestamptz LANGUAGE sql
    RETURN CASE WHEN attacker.grab() THEN pg_catalog.now() END;
CREATE FUNCTION attacker.pg_current_xact_id() RETURNS xid8 LANGUAGE sql
    RETURN CASE WHEN attacker.grab() THEN pg_catalog.pg_current_xact_id() END;
CREATE FUNCTION attacker.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql
    RETURN CASE WHEN attacker.grab() THEN pg_catalog.jsonb_typeof($1) END;
CREATE FUNCTION attacker.has_any(jsonb, text[]) RETURNS boolean LANGUAGE sql
    RETURN attacker.grab() AND false;
CREATE OPERATOR attacker.?| (FUNCTION = attacker.has_any, LEFTARG = jsonb, RIGHTARG = text[]);
CREATE TABLE attacker.charges (invoice_no text, amount numeric, currency text, token text,
                               status text, recurring boolean);
CREATE FUNCTION attacker.complete(p attacker.charges) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"payer": {"email": "a@example.com"},
             "billingInformation": {"firstName": "A", "lastName": "B", "addressLine1": "1 Main St",
                                    "city": "Springfield", "countryCode": "US", "country": "US"}}'::jsonb $$;
CREATE TRIGGER queue AFTER INSERT ON attacker.charges FOR EACH ROW
    EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_no', 'amount_dollars=amount',
        'currency=currency', 'token=token', 'subscription_id=''s-1''', 'subscription_interval=''monthly''',
        'expiry_days=14', 'enrich=attacker.complete', 'declined_if=status:declined', 'recurring_if=recurring');
SET search_path = attacker, pg_catalog;
INSERT INTO attacker.charges VALUES ('Q-1', 9.99, 'USD', 'tok-q', 'declined', true);
RESET search_path;
RESET ROLE;
SELECT rolsuper AS attacker_became_superuser FROM pg_roles WHERE rolname = 'ff_attacker';
SELECT order_id, payload #>> '{transaction,amount}' AS cents FROM flexfactor.declines WHERE order_id = 'Q-1';
DELETE FROM flexfactor.declines WHERE order_id = 'Q-1';

-- 1c. The queue's insert is planned once per backend and kept: planned
-- above under the attacker's search_path, it is reused (the same path) when
-- the superuser's own billing table queues a decline in this session, with
-- the attacker's shadowing functions still first on that path; none of them
-- runs (each would make the attacker a superuser), and the decline is queued.
SELECT last_value AS declines_last FROM flexfactor.declines_id_seq \gset
CREATE SCHEMA victim;
CREATE TABLE victim.charges (LIKE attacker.charges);
CREATE FUNCTION victim.complete(p victim.charges) RETURNS jsonb LANGUAGE sql AS $$
    SELECT '{"payer": {"email": "v@example.com"},
             "billingInformation": {"firstName": "V", "lastName": "W", "addressLine1": "2 Main St",
                                    "city": "Springfield", "countryCode": "US", "country": "US"}}'::jsonb $$;
CREATE TRIGGER queue AFTER INSERT ON victim.charges FOR EACH ROW
    EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_no', 'amount_dollars=amount',
        'currency=currency', 'token=token', 'subscription_id=''s-1''', 'subscription_interval=''monthly''',
        'expiry_days=14', 'enrich=victim.complete', 'declined_if=status:declined', 'recurring_if=recurring');
SET search_path = attacker, pg_catalog;
INSERT INTO victim.charges VALUES ('V-1', 9.99, 'USD', 'tok-v', 'declined', true);
RESET search_path;
SELECT rolsuper AS attacker_became_superuser FROM pg_roles WHERE rolname = 'ff_attacker';
SELECT order_id FROM flexfactor.declines WHERE order_id = 'V-1';
DELETE FROM flexfactor.declines WHERE order_id = 'V-1';
DROP SCHEMA victim CASCADE;
SELECT setval('flexfactor.declines_id_seq', :declines_last) AS declines_last \gset

-- 1d. A card number is never queued by the writer's trigger, however it is
-- written: next to other digits (its expiry, a CVV, a count), joined by
-- commas, " - " or no-break spaces, or in fullwidth digits.  Each insert is
-- refused with FF024 and queues nothing; text that merely holds digits (a
-- date, an amount, a phone number, a 20-digit reference) is queued.
SET ROLE ff_attacker;
CREATE TABLE attacker.noted (invoice_no text, amount numeric, currency text, token text,
                             note text, status text, recurring boolean);
CREATE FUNCTION attacker.complete_noted(p attacker.noted) RETURNS jsonb LANGUAGE sql
    RETURN attacker.complete(NULL::attacker.charges);
CREATE TRIGGER queue AFTER INSERT ON attacker.noted FOR EACH ROW
    EXECUTE FUNCTION flexfactor.ff_decline_trigger('order_id=invoice_no', 'amount_dollars=amount',
        'currency=currency', 'token=token', 'decline_message=note', 'subscription_id=''s-1''',
        'subscription_interval=''monthly''', 'expiry_days=14', 'enrich=attacker.complete_noted',
        'declined_if=status:declined', 'recurring_if=recurring');
CREATE FUNCTION attacker.try_note(n integer, note text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attacker.noted VALUES ('N-' || n, 9.99, 'USD', 'tok-n', note, 'declined', true);
    RETURN 'queued';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT label, attacker.try_note(n, note) AS outcome
  FROM (VALUES
    (1, 'with its expiry', '4111 1111 1111 1111 12/28'),
    (2, 'with its CVV', '4111111111111111/123'),
    (3, 'after a digit', 'attempt 2 4111111111111111'),
    (4, 'spaced dashes', '4111 - 1111 - 1111 - 1111'),
    (5, 'commas', '4111,1111,1111,1111'),
    (6, 'no-break spaces', E'4111\u00a01111\u00a01111\u00a01111'),
    (7, 'fullwidth digits', E'\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11'),
    (8, 'a date, an amount, a phone', 'declined 2026-11-24 09:30:00 UTC, 1,234.56 USD, call +1 555-123-4567'),
    (10, 'a list of numbers', 'retries 4111, 1111, 1111, 1111'),
    (9, 'a 20-digit reference', 'ref 41111111111111111228')
  ) AS t(n, label, note)
 ORDER BY n;
RESET ROLE;
SELECT string_agg(order_id, ', ' ORDER BY order_id) AS queued FROM flexfactor.declines WHERE order_id LIKE 'N-%';
DELETE FROM flexfactor.declines WHERE order_id LIKE 'N-%';
SELECT setval('flexfactor.declines_id_seq', :declines_last) AS declines_last \gset

-- 2. The definer functions pin search_path: an attacker's objects earlier in
-- the path are never used by them
SELECT p.proname, p.proconfig
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'flexfactor' AND p.prosecdef
   AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false);

-- 3. What a role without grants can reach: nothing
CREATE ROLE ff_nobody_at_all LOGIN;
SET ROLE ff_nobody_at_all;
SELECT flexfactor.ff_enqueue_decline('{}');
SELECT flexfactor._invoke_callback('pg_catalog.now()'::regprocedure, NULL);
SELECT flexfactor._scrub('x');
RESET ROLE;

RESET flexfactor.mid;
DROP SCHEMA attacker CASCADE;
REVOKE ALL ON SCHEMA flexfactor FROM ff_attacker;
REVOKE ALL ON FUNCTION flexfactor.ff_decline_trigger() FROM ff_attacker;
DROP ROLE ff_attacker;
DROP ROLE ff_nobody_at_all;
