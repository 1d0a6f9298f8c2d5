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
-- the queue step itself is granted to nobody
SELECT flexfactor._queue_mapped_decline('{"order_id": "A-2"}', NULL);
RESET ROLE;
SELECT rolsuper AS attacker_became_superuser FROM pg_roles WHERE rolname = 'ff_attacker';
SELECT count(*) AS queued_by_attacker FROM flexfactor.declines WHERE order_id LIKE 'A-%';

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
