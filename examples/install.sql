-- examples/install.sql: the whole example integration, in order.
--   psql -X -v ON_ERROR_STOP=1 -d billing -f examples/install.sql
\set ON_ERROR_STOP 1
\ir 01_billing_schema.sql
\ir 02_flexfactor.sql
\ir 03_cron.sql
