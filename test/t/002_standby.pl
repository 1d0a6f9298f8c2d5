# The workers run only on a primary: a standby starts none, and a promoted
# standby starts them.  The webhook listener's health check (GET /healthz,
# for a load balancer) answers 200 on a writable primary only: 503 while
# default_transaction_read_only is on (as a failover manager sets it), and
# nothing answers on a standby.  With a synchronous standby, a delivery
# whose commit's wait for the standby is cut short (a cancel, a terminate:
# the transaction is then committed on the primary only, and a failover
# would lose it) is not acknowledged.  (The failover itself: test/ha/t.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ();
use FlexFactorTest;
use FFSim;

my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $tmp = PostgreSQL::Test::Utils::tempdir('ffstandby002');
my $primary = ff_node('primary', 'flexfactor.database' => 'ffdb',
	'flexfactor.webhook_listen_address' => '127.0.0.1', 'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
	allows_streaming => 1);

sub health
{
	my $r = FFSim::http_request(port => $wport, method => $_[0] // 'GET', path => '/healthz', timeout => 5);
	return defined $r->{status} ? "$r->{status} $r->{body}" : "no answer ($r->{error})";
}
$primary->start;
$primary->safe_psql('postgres', 'CREATE DATABASE ffdb');
$primary->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
ff_wait_for_worker($primary, 'ffdb');
pass('primary runs the worker');
FFSim::wait_for_listener($primary, $wport);
is(health(), "200 primary\n", 'GET /healthz on the primary: 200');
like(health('HEAD'), qr/^200 /, 'HEAD /healthz too');
$primary->safe_psql('postgres', 'ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()');
ok(ff_wait_until(sub { health() eq "503 not a writable primary\n" }, 10),
	'default_transaction_read_only on: 503');
$primary->safe_psql('postgres', 'ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()');
ok(ff_wait_until(sub { health() eq "200 primary\n" }, 10), 'writable again: 200');
like(health('POST'), qr/^404 /, 'POST /healthz: 404 (not a webhook path)');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# make sure the standby has replayed the database and the extension
$primary->safe_psql('ffdb', 'CREATE TABLE marker (x int)');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('ffdb', "SELECT to_regclass('marker') IS NOT NULL"),
	't', 'standby replayed the extension database');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'"),
	'0', 'no flexfactor process runs on a standby');
ok(!FlexFactorTest::ff_log_contains($standby, qr/flexfactor launcher started/),
	'the launcher never started on the standby');

# ---- durable before acknowledged, with a synchronous standby
$primary->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = 'standby'; SELECT pg_reload_conf()");
ok($primary->poll_query_until('postgres', "SELECT sync_state = 'sync' FROM pg_stat_replication"),
	'the standby is synchronous');
my $receiver = $standby->safe_psql('postgres', 'SELECT pid FROM pg_stat_wal_receiver');
my $n = 0;
for my $how (qw(pg_cancel_backend pg_terminate_backend))
{
	my $lpid = FFSim::wait_for_listener($primary, $wport);
	kill 'STOP', $receiver;    # the standby confirms nothing now
	my $out = "$tmp/answer-$how";
	my $order = sprintf('a0000000-0000-4000-8000-%012d', ++$n);
	my $child = fork();
	if ($child == 0)
	{
		my $r = FFSim::post_webhook(port => $wport, timeout => 60,
			body => FFSim::webhook_body(Event => 'order.completed', OrderId => $order));
		open(my $fh, '>', $out);
		print $fh $r->{status} // "none ($r->{error})";
		close $fh;
		POSIX::_exit(0);
	}
	ok($primary->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	        WHERE pid = $lpid AND wait_event = 'SyncRep'"),
		"$how: the delivery's commit waits for the standby");
	$primary->safe_psql('postgres', "SELECT $how($lpid)");
	FFSim::wait_child($child, 90);
	my $status = PostgreSQL::Test::Utils::slurp_file($out);
	isnt($status, '200', "$how during that wait: the delivery is not acknowledged (answer: $status)");
	kill 'CONT', $receiver;
	$primary->wait_for_catchup($standby);
}
$primary->safe_psql('postgres', 'ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf()');

$primary->stop('fast');
like(health(), qr/^no answer/, 'the primary stopped, the standby answers nothing on the port');

$standby->promote;
my $pid = ff_wait_for_worker($standby, 'ffdb');
ok($pid > 0, 'a promoted standby starts the worker');
FFSim::wait_for_listener($standby, $wport);
is(health(), "200 primary\n", 'and its listener: /healthz 200');

$standby->stop('fast');
done_testing();
