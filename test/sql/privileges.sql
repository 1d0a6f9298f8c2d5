-- Privileges: nothing is granted to PUBLIC; a role without grants can do
-- nothing, and the GRANTs of docs/security.md give a billing role exactly what it needs.
\set VERBOSITY terse

SELECT count(*) AS public_table_grants
  FROM information_schema.role_table_grants
 WHERE table_schema = 'flexfactor' AND grantee = 'PUBLIC';
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'flexfactor' ORDER BY p.proname;
-- every SECURITY DEFINER function pins its search_path
SELECT p.proname AS definer_without_search_path
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'flexfactor' AND p.prosecdef
   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
 ORDER BY 1;

CREATE ROLE ff_nobody;
SET ROLE ff_nobody;
SELECT * FROM flexfactor.orders;
SELECT * FROM flexfactor.ff_worker_status();
INSERT INTO flexfactor.declines (order_id, transaction_id, idempotency_key, payload)
VALUES ('x', 'y', gen_random_uuid(), '{}');
RESET ROLE;
-- even with USAGE on the schema, every table and function stays closed
GRANT USAGE ON SCHEMA flexfactor TO ff_nobody;
SET ROLE ff_nobody;
SELECT * FROM flexfactor.orders;
SELECT * FROM flexfactor.webhook_events;
UPDATE flexfactor.batches SET state = 'ready';
DELETE FROM flexfactor.transmit_queue;
SELECT * FROM flexfactor.ff_worker_status();
SELECT flexfactor.ff_version();
SELECT nextval('flexfactor.orders_id_seq');
RESET ROLE;
REVOKE USAGE ON SCHEMA flexfactor FROM ff_nobody;

-- the grants of docs/security.md for a monitoring role
CREATE ROLE ff_monitor;
GRANT USAGE ON SCHEMA flexfactor TO ff_monitor;
GRANT SELECT ON flexfactor.orders, flexfactor.batches TO ff_monitor;
GRANT EXECUTE ON FUNCTION flexfactor.ff_worker_status() TO ff_monitor;
SET ROLE ff_monitor;
SELECT count(*) FROM flexfactor.orders;
SELECT count(*) AS worker_rows FROM flexfactor.ff_worker_status();
DELETE FROM flexfactor.orders;
SELECT count(*) FROM flexfactor.webhook_events;
RESET ROLE;

DROP OWNED BY ff_monitor;
DROP ROLE ff_monitor;
DROP ROLE ff_nobody;
