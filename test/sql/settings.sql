-- Settings: every flexfactor.* parameter exists, has its documented default,
-- and refuses bad values with a message that says what is allowed.
\set VERBOSITY default

SELECT name, boot_val AS default, unit, context, vartype, min_val, max_val
  FROM pg_settings WHERE name LIKE 'flexfactor.%' ORDER BY name;

-- API URL: scheme checked, trailing slash added
SET flexfactor.api_url = 'ftp://example.com/v1/';
SET flexfactor.api_url = '';
SET flexfactor.api_url = 'http://127.0.0.1:8080/v1';
SHOW flexfactor.api_url;
RESET flexfactor.api_url;
SHOW flexfactor.api_url;   -- back to test/regress.conf's value

-- GUIDs
SET flexfactor.mid = 'not-a-guid';
SET flexfactor.mid = '00000000-0000-4000-8000-00000000000';
SET flexfactor.mid = '00000000-0000-4000-8000-000000000001';
SHOW flexfactor.mid;
SET flexfactor.site_id = 'x';

-- numeric ranges (PostgreSQL words its range errors differently from version
-- to version: their SQLSTATE)
\set VERBOSITY sqlstate
SET flexfactor.http_timeout_ms = 50;
\set VERBOSITY default
SET flexfactor.http_timeout_ms = '2s';
SHOW flexfactor.http_timeout_ms;
\set VERBOSITY sqlstate
SET flexfactor.http_timeout_ms = 600001;
\set VERBOSITY default

-- paths must be absolute
SET flexfactor.ca_file = 'relative/ca.pem';
SET flexfactor.ca_file = '/etc/ssl/certs/ca-certificates.crt';
SHOW flexfactor.ca_file;

-- settings only the configuration file may change
SET flexfactor.batch_max_rows = 10;
SET flexfactor.database = 'other';
SET flexfactor.webhook_path = '/x';

-- ALTER SYSTEM validates too (without writing anything bad)
ALTER SYSTEM SET flexfactor.batch_max_rows = 2001;
ALTER SYSTEM SET flexfactor.batch_max_rows = 0;
\set VERBOSITY sqlstate
ALTER SYSTEM SET flexfactor.batch_interval = -1;
\set VERBOSITY default
ALTER SYSTEM SET flexfactor.sftp_port = 0;
ALTER SYSTEM SET flexfactor.sftp_port = 65536;
ALTER SYSTEM SET flexfactor.webhook_port = 70000;
ALTER SYSTEM SET flexfactor.webhook_path = 'no-leading-slash';
ALTER SYSTEM SET flexfactor.webhook_path = '/with?query';
ALTER SYSTEM SET flexfactor.webhook_path = '/healthz';
ALTER SYSTEM SET flexfactor.webhook_listen_address = 'example.com';
\set VERBOSITY sqlstate
ALTER SYSTEM SET flexfactor.webhook_max_skew = -5;
\set VERBOSITY default
ALTER SYSTEM SET flexfactor.sftp_known_hosts_file = 'known_hosts';
ALTER SYSTEM SET flexfactor.sftp_inbound_dir = '';
ALTER SYSTEM SET flexfactor.sftp_host = 'bad host';
-- a bad webhook key is refused without echoing it
ALTER SYSTEM SET flexfactor.webhook_key = 'c2hvcnQ=';
ALTER SYSTEM SET flexfactor.webhook_key = '!!!not base64 at all!!!';
ALTER SYSTEM RESET ALL;

-- unknown names under the reserved prefix are refused
SET flexfactor.no_such_setting = 1;
