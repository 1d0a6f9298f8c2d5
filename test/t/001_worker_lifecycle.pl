# The flexfactor launcher and worker: wait calmly for the database and the
# extension, reload on SIGHUP, never block DROP DATABASE (or RENAME, or a
# copy), come back after kill -9 and after pg_terminate_backend, stop on
# shutdown, and keep secrets out of the log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;

my $secret = 'tap-secret-8c1d7f0e-never-log-me';
my $node = ff_node(
	'worker',
	'flexfactor.database' => 'ffdb',
	'flexfactor.batch_interval' => '1',
	'flexfactor.app_secret' => $secret,
	'flexfactor.tokenization_key' => "$secret-tok",
	'log_min_messages' => 'debug1');
$node->start;

# --- the database does not exist yet: the launcher waits, no worker runs
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'flexfactor launcher'")
  or die 'launcher did not start';
$node->wait_for_log(qr/flexfactor is waiting for database "ffdb" to be created/);
pass('launcher says it is waiting for the database');
is(ff_worker_pid($node, 'ffdb'), '', 'no worker while the database is missing');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flexfactor launcher' AND datname IS NULL"),
	'1', 'the launcher holds no database connection');
unlike(slurp_file($node->logfile), qr/FATAL/, 'waiting produced no FATAL errors');

# --- the database appears: the worker connects and waits for the extension
$node->safe_psql('postgres', 'CREATE DATABASE ffdb');
my $pid = ff_wait_for_worker($node, 'ffdb');
ok($pid > 0, 'worker connected once the database exists');
$node->wait_for_log(qr/waiting for the extension to be created in database "ffdb"/);
pass('worker says it is waiting for the extension');
is($node->safe_psql('postgres',
		"SELECT application_name FROM pg_stat_activity WHERE pid = $pid"),
	'flexfactor worker', 'worker has a clear name in pg_stat_activity');

# --- the extension appears: the worker runs passes and reports them
$node->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
$node->poll_query_until('ffdb',
	"SELECT state = 'idle' AND passes >= 2 FROM flexfactor.ff_worker_status() WHERE role = 'worker'")
  or die 'worker did not start its passes';
my $status = $node->safe_psql('ffdb',
	"SELECT pid, database, state FROM flexfactor.ff_worker_status() WHERE role = 'worker'");
is($status, "$pid|ffdb|idle", 'ff_worker_status shows the running worker');
is($node->safe_psql('ffdb',
		"SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'launcher'"),
	'supervising workers', 'ff_worker_status shows the launcher');
# between passes it waits on a wait event of its own from PostgreSQL 17 on
my $idle_wait = $node->pg_version >= 17 ? 'FlexFactorWorkerMain' : 'Extension';
ok($node->poll_query_until('ffdb',
		"SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $pid",
		"Extension:$idle_wait"),
	"the idle worker shows wait event $idle_wait in pg_stat_activity");
SKIP:
{
	skip 'pg_get_loaded_modules() came with PostgreSQL 18', 1 if $node->pg_version < 18;
	is($node->safe_psql('ffdb',
			"SELECT module_name || ' ' || version FROM pg_get_loaded_modules() WHERE file_name = 'flexfactor.so'"),
		'flexfactor ' . $node->safe_psql('ffdb', 'SELECT flexfactor.ff_version()'),
		'the library reports its name and version (PG_MODULE_MAGIC_EXT)');
}

# --- SIGHUP: the worker re-reads the configuration
my $reloads = $node->safe_psql('ffdb',
	"SELECT config_reloads FROM flexfactor.ff_worker_status() WHERE role = 'worker'");
$node->safe_psql('ffdb',
	"ALTER SYSTEM SET flexfactor.batch_interval = 2; SELECT pg_reload_conf()");
$node->poll_query_until('ffdb',
	"SELECT config_reloads > $reloads FROM flexfactor.ff_worker_status() WHERE role = 'worker'")
  or die 'worker did not reload its configuration';
pass('worker reloaded its configuration on SIGHUP');
is(ff_worker_pid($node, 'ffdb'), $pid, 'reload did not restart the worker');

# --- a role that may not drop, copy, rename or move the database cannot
# send the worker away by trying (security issue 13.4)
$node->safe_psql('postgres', 'CREATE ROLE ff_intruder LOGIN');
foreach my $attempt ('DROP DATABASE ffdb', 'CREATE DATABASE ffdb_stolen TEMPLATE ffdb',
	'ALTER DATABASE ffdb RENAME TO ffdb_gone', 'ALTER DATABASE ffdb SET TABLESPACE pg_default')
{
	my ($r, $o, $e) = $node->psql('postgres', $attempt, extra_params => [ '-U', 'ff_intruder' ]);
	isnt($r, 0, "ff_intruder: $attempt fails");
	like($e, qr/must be owner|permission denied/, "ff_intruder: $attempt is refused by PostgreSQL");
}
is(ff_worker_pid($node, 'ffdb'), $pid, 'the worker stayed connected through the refused attempts');
is($node->safe_psql('ffdb', "SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'worker'"),
	'idle', 'and keeps working');
$node->safe_psql('postgres', 'DROP ROLE ff_intruder');

# --- the worker never blocks commands that need the database to themselves
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	'CREATE DATABASE ffdb_copy TEMPLATE ffdb');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE ffdb succeeds while the worker runs')
  or diag $stderr;
$pid = ff_wait_for_worker($node, 'ffdb');
($ret, $stdout, $stderr) = $node->psql('postgres',
	'ALTER DATABASE ffdb RENAME TO ffdb_renamed');
is($ret, 0, 'ALTER DATABASE ffdb RENAME succeeds') or diag $stderr;
$node->safe_psql('postgres', 'ALTER DATABASE ffdb_renamed RENAME TO ffdb');
$pid = ff_wait_for_worker($node, 'ffdb');
my $offset = -s $node->logfile;
($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE ffdb');
is($ret, 0, 'DROP DATABASE (without FORCE) succeeds while the worker runs')
  or diag $stderr;
$node->wait_for_log(qr/waiting for database "ffdb" to be created/, $offset);
pass('launcher waits again after the database is dropped');

# --- recreated: the worker comes back
$node->safe_psql('postgres', 'CREATE DATABASE ffdb');
$node->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
$pid = ff_wait_for_worker($node, 'ffdb');
ok($pid > 0, 'worker returns when the database is created again');

# --- terminated: the launcher starts it again
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $new_pid = ff_wait_for_worker($node, 'ffdb', $pid);
isnt($new_pid, $pid, 'launcher restarts a terminated worker');
$pid = $new_pid;

# --- kill -9: PostgreSQL restarts, and so do the launcher and worker
kill 'KILL', $pid;
$new_pid = ff_wait_for_worker($node, 'ffdb', $pid);
isnt($new_pid, $pid, 'worker is back after kill -9 and crash recovery');
$node->poll_query_until('ffdb',
	"SELECT state = 'idle' FROM flexfactor.ff_worker_status() WHERE role = 'worker'")
  or die 'worker not idle after crash restart';
pass('worker runs its passes again after the crash');
ok(ff_log_contains($node, qr/background worker "flexfactor worker" \(PID $pid\) was terminated by signal 9/),
	'the crash was the kill -9 of the worker');

# --- only one worker ever
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flexfactor worker'"),
	'1', 'exactly one worker');

# --- shutdown: stops promptly and cleanly
$offset = -s $node->logfile;
$node->stop('fast');
ok(ff_log_contains($node, qr/terminating background worker "flexfactor worker" due to administrator command/, $offset),
	'worker stops on shutdown');
ok(ff_log_contains($node, qr/database system is shut down/, $offset), 'server shut down');

# --- no secret ever reached the log
unlike(slurp_file($node->logfile), qr/\Q$secret\E/, 'secrets never appear in the server log');

done_testing();
