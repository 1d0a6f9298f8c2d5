-- Secrets: masked for everyone, invisible to ordinary roles, never echoed.
\set VERBOSITY default

-- superuser: secrets are masked, ordinary settings readable
SHOW flexfactor.app_secret;
SHOW flexfactor.tokenization_key;
SHOW flexfactor.webhook_key;
SELECT current_setting('flexfactor.app_secret');
SHOW flexfactor.sftp_passphrase;          -- unset: empty
SHOW flexfactor.app_key;
-- secrets are left out of pg_settings altogether (reset_val would show them)
SELECT name FROM pg_settings
 WHERE name IN ('flexfactor.app_secret', 'flexfactor.tokenization_key',
                'flexfactor.sftp_passphrase', 'flexfactor.webhook_key',
                'flexfactor.webhook_key_previous');
SELECT count(*) AS secret_values_visible FROM pg_settings
 WHERE setting LIKE '%regress-secret%' OR reset_val LIKE '%regress-secret%'
    OR boot_val LIKE '%regress-secret%';

-- an ordinary role sees neither secrets nor paths
CREATE ROLE ff_plain_reader LOGIN;
SET ROLE ff_plain_reader;
-- (PostgreSQL words "permission denied" differently from version to version:
-- its SQLSTATE)
\set VERBOSITY sqlstate
SHOW flexfactor.app_secret;
SHOW flexfactor.webhook_key;
SHOW flexfactor.sftp_private_key_file;
SHOW flexfactor.app_key;
SELECT current_setting('flexfactor.tokenization_key');
SELECT current_setting('flexfactor.sftp_known_hosts_file');
\set VERBOSITY default
SELECT name FROM pg_settings WHERE name LIKE 'flexfactor.%' ORDER BY name;
-- ... and cannot change them
SET flexfactor.app_secret = 'x';
SET flexfactor.api_url = 'http://evil.example/v1/';
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
-- the timeout is the one setting an ordinary role may lower for itself
SET flexfactor.http_timeout_ms = 5000;
SHOW flexfactor.http_timeout_ms;
RESET ROLE;
DROP ROLE ff_plain_reader;

-- credentials are never stored where every role can read them: not with
-- ALTER DATABASE/ROLE ... SET (pg_db_role_setting), not in a function's SET
-- clause (pg_proc); nothing is stored by the refusals
\set VERBOSITY default
SELECT current_database() AS db \gset
ALTER DATABASE :"db" SET flexfactor.app_secret = 'db-level-secret';
CREATE ROLE ff_secret_role;
ALTER ROLE ff_secret_role SET flexfactor.tokenization_key = 'role-level-key';
ALTER ROLE ff_secret_role IN DATABASE :"db" SET flexfactor.app_key = 'role-db-key';
CREATE FUNCTION pg_temp.with_secret() RETURNS int LANGUAGE sql
    SET flexfactor.app_secret = 'function-secret' AS 'SELECT 1';
SELECT count(*) AS stored_anywhere FROM pg_db_role_setting
 WHERE array_to_string(setconfig, ',') ~ 'flexfactor\.(app_secret|app_key|tokenization_key)';
ALTER DATABASE :"db" SET flexfactor.mid = '00000000-0000-4000-8000-000000000009';
SELECT count(*) AS mid_is_not_a_secret FROM pg_db_role_setting
 WHERE array_to_string(setconfig, ',') ~ 'flexfactor\.mid';
ALTER DATABASE :"db" RESET flexfactor.mid;
DROP ROLE ff_secret_role;
