# flexfactor without shared_preload_libraries: CREATE EXTENSION, LOAD and
# every C function of an installed extension raise one clear ERROR (SQLSTATE
# 55000, with the setting to change in its hint), never a FATAL that drops the
# connection; the session goes on, nothing is created and no flexfactor.*
# setting is registered.  In binary-upgrade mode (pg_upgrade) the library
# loads quietly and starts nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->start;

my $MSG = 'flexfactor must be loaded through shared_preload_libraries';

# Run $sql in one session with verbose messages, going on after errors:
# {stdout, stderr, errors => [[sqlstate, message]]}.
sub session
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0);
	my @e;
	push @e, [ $1, $2 ] while ($err // '') =~ /^(?:psql:\S+ )?(?:ERROR|FATAL):\s+([0-9A-Z]{5}): (.*)$/mg;
	return { ret => $ret, stdout => $out // '', stderr => $err // '', errors => \@e };
}

# Assert that $r holds exactly $n errors, each the not-preloaded ERROR.
sub not_preloaded_errors_ok
{
	my ($r, $n, $what) = @_;
	is(scalar @{ $r->{errors} }, $n, "$what: $n error(s)") or diag $r->{stderr};
	for my $e (@{ $r->{errors} })
	{
		is($e->[0], '55000', "$what: SQLSTATE 55000 (object not in prerequisite state)");
		is($e->[1], $MSG, "$what: the message says how it must be loaded");
	}
	unlike($r->{stderr}, qr/FATAL|server closed the connection|PGC_POSTMASTER/,
		"$what: no FATAL, the connection stays");
	like($r->{stderr}, qr/^HINT:\s+Add flexfactor to shared_preload_libraries .* and restart PostgreSQL/m,
		"$what: the hint says what to change and that a restart is needed");
	like($r->{stderr}, qr/^DETAIL:\s+.*only at server start/m, "$what: the detail says why");
}

my $log_offset = -s $node->logfile;

# --- CREATE EXTENSION: an ERROR, the same session goes on, twice
my $r = session(q{
SELECT 'pid-before:' || pg_backend_pid();
CREATE EXTENSION flexfactor;
SELECT 'pid-after:' || pg_backend_pid();
CREATE EXTENSION flexfactor;
SELECT 'settings:' || count(*) FROM pg_settings WHERE name LIKE 'flexfactor.%';
SELECT 'setting:' || coalesce(current_setting('flexfactor.database', true), 'none');
SELECT 'schema:' || count(*) FROM pg_namespace WHERE nspname = 'flexfactor';
SELECT 'extension:' || count(*) FROM pg_extension WHERE extname = 'flexfactor';
SELECT 'functions:' || count(*) FROM pg_proc WHERE probin LIKE '%flexfactor%';
});
not_preloaded_errors_ok($r, 2, 'CREATE EXTENSION without preload');
my ($before) = $r->{stdout} =~ /pid-before:(\d+)/;
my ($after) = $r->{stdout} =~ /pid-after:(\d+)/;
ok(defined $before && defined $after && $before == $after,
	'the session is still alive afterwards (same backend)');
like($r->{stdout}, qr/^settings:0$/m, 'no flexfactor.* setting was registered');
like($r->{stdout}, qr/^setting:none$/m, 'flexfactor.database is not defined');
like($r->{stdout}, qr/^schema:0$/m, 'no schema flexfactor was created');
like($r->{stdout}, qr/^extension:0$/m, 'no extension row was created');
like($r->{stdout}, qr/^functions:0$/m, 'no function of the library was created');

# --- LOAD: the same ERROR
$r = session(q{
LOAD 'flexfactor';
SELECT 'alive';
});
not_preloaded_errors_ok($r, 1, 'LOAD without preload');
like($r->{stdout}, qr/^alive$/m, 'LOAD: the session is still alive afterwards');

unlike(ff_log_since($node, $log_offset), qr/FATAL/, 'the server log has no FATAL');

# --- installed with preload, then the server restarts without it: every
# C function raises the same ERROR, the tables stay readable
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'flexfactor'\n");
$node->restart;
$node->safe_psql('postgres', 'CREATE EXTENSION flexfactor');
is($node->safe_psql('postgres', 'SELECT flexfactor.ff_version() IS NOT NULL'),
	't', 'with preload: the extension is created and its functions work');
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->restart;
$r = session(q{
SELECT flexfactor.ff_version();
SELECT flexfactor.ff_export_batch();
SELECT * FROM flexfactor.ff_worker_status();
SELECT 'batches:' || count(*) FROM flexfactor.batches;
});
not_preloaded_errors_ok($r, 3, 'functions of an installed extension without preload');
like($r->{stdout}, qr/^batches:0$/m, 'the tables stay readable');

# --- pg_upgrade starts servers in binary-upgrade mode: the library loads
# (so that the functions can be created) and starts nothing
$node->stop;
$node->command_ok([ 'pg_ctl', '-D', $node->data_dir, '-l', $node->logfile, '-w',
	'-o', '-b', 'start' ], 'the server starts in binary-upgrade mode');
my ($ret, $out, $err) = $node->psql('postgres', q{LOAD 'flexfactor'; SELECT 'loaded'});
is($out, 'loaded', 'binary-upgrade mode: LOAD succeeds') or diag $err;
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name LIKE 'flexfactor.%'"),
	'0', 'binary-upgrade mode: nothing is registered');
$node->command_ok([ 'pg_ctl', '-D', $node->data_dir, '-m', 'fast', '-w', 'stop' ],
	'and stops again');

done_testing();
