-- examples/03_cron.sql: the pg_cron jobs.  Run by a superuser in the
-- database named by cron.database_name (here the billing database), after
-- the server preloads pg_cron.  Scheduling again under the same name
-- replaces a job, so this file can be run again after editing it.
--
-- With flexfactor.batch_interval = 0 the worker exports only when asked:
-- this job asks every minute.  Each call fixes the declines committed so far
-- into batch files, uploads them over SFTP, and reads FlexFactor's result
-- files; it returns the number of files uploaded.  A minute is the finest
-- pg_cron 1.4 schedule; when nothing is pending the call costs one SFTP
-- listing of the outbound folder.  A failed upload is recorded on its batch
-- (flexfactor.batch_status) and retried with backoff by later calls; the
-- call itself only WARNs, so cron.job_run_details still says 'succeeded':
-- watch flexfactor.queue_status, not only the job's status.

CREATE EXTENSION IF NOT EXISTS pg_cron;

-- the job role reads and trims its own rows of cron.job_run_details
GRANT USAGE ON SCHEMA cron TO billing_jobs;

SELECT cron.schedule_in_database('flexfactor-export', '* * * * *',
                                 'SELECT flexfactor.ff_export_batch()',
                                 current_database(), 'billing_jobs');

-- Housekeeping: pg_cron keeps a row per run forever (1,440 a day for the job
-- above).  Row-level security limits the role to its own jobs' rows.
SELECT cron.schedule_in_database('flexfactor-housekeeping', '17 3 * * *',
                                 $$DELETE FROM cron.job_run_details WHERE end_time < now() - interval '14 days'$$,
                                 current_database(), 'billing_jobs');
