-- sql/install/02_status.sql: C functions that report the listener's refusals, the workers' state and the library's version.
/* ------------------------------------------------------------- functions */

CREATE FUNCTION flexfactor.ff_webhook_refusals(
    OUT reason text,
    OUT http_status integer,
    OUT refused bigint,
    OUT not_flushed bigint)
RETURNS SETOF record LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'ff_webhook_refusals';
COMMENT ON FUNCTION flexfactor.ff_webhook_refusals() IS
    'Requests refused by the webhook listener since the server started, by reason, and how many of them are not in webhook_refusal_counts yet.';

CREATE FUNCTION flexfactor.ff_worker_status(
    OUT role text,
    OUT pid integer,
    OUT database text,
    OUT state text,
    OUT state_since timestamptz,
    OUT started_at timestamptz,
    OUT last_pass_at timestamptz,
    OUT passes bigint,
    OUT config_reloads bigint,
    OUT launches bigint,
    OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ff_worker_status'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION flexfactor.ff_worker_status() IS
    'State of the flexfactor launcher and worker: pid, what each is doing, passes, last error';

CREATE FUNCTION flexfactor.ff_version()
RETURNS text
AS 'MODULE_PATHNAME', 'ff_version'
LANGUAGE C STRICT IMMUTABLE;


