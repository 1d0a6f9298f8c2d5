# After the DBA fixes a setting, what failed before waits for its backoff:
# ff_export_batch() says which batch files wait and until when (a NOTICE,
# the time that batch_status shows), and ff_export_batch(retry_now => true)
# uploads them at once.  retry_now also makes queued transmits and failed
# billing callbacks that wait for a later attempt due at once, and says how
# many of each; the worker sends and runs them right after.
# ff_export_batch() keeps its signature and its grants (pg_cron jobs).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffretry025');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_025', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);

# long backoffs, so that nothing is retried in this test unless asked
my $node = ff_node('retry025',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.batch_retry_base' => '600',
	'flexfactor.transmit_retry_base_ms' => '300000',
	'flexfactor.on_order_status' => 'billing.on_flexfactor');
ff_start_serving($node, 'ffdb');

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub reload_and_wait { ff_reload_and_wait($node, 'ffdb', $_[0]) }

# ff_export_batch(...) with verbose messages; adds notices => [[message, detail, hint]]
sub export
{
	my ($args) = @_;
	my $r = ff_run_sql($node, 'ffdb', "SELECT flexfactor.ff_export_batch($args)");
	my @n;
	while ($r->{stderr} =~ /NOTICE:\s+00000: (.*)\n((?:(?:DETAIL|HINT|LOCATION|CONTEXT):.*\n)*)/g)
	{
		my ($msg, $rest) = ($1, $2);
		my ($detail) = $rest =~ /^DETAIL:\s+(.*)$/m;
		my ($hint) = $rest =~ /^HINT:\s+(.*)$/m;
		push @n, [ $msg, $detail // '', $hint // '' ];
	}
	$r->{notices} = \@n;
	return $r;
}

# the merchant's billing schema; its callback fails until it is fixed
sq(q{
	CREATE SCHEMA billing;
	CREATE TABLE billing.heard (order_id text, status text);
	CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'billing is closed for maintenance'; END $$;
});

# ------------------------------------------------------------------
# 1. A batch fails on a bad setting and waits for its backoff
# ------------------------------------------------------------------
my $key = $sshd->client_key;
reload_and_wait("ALTER SYSTEM SET flexfactor.sftp_private_key_file = '$tmp/no_such_key'");
FFSim::enqueue_declines($node, 'ffdb', 'R', 3);
my $r = export('');
is($r->{stdout}, '0', 'bad setting: nothing uploaded');
is($r->{warnings}[0][0], 'FF032', 'the WARNING says why') or diag $r->{stderr};
my $batch = ff_batch_of($node, 'ffdb', 'R');
my ($next, $file) = split /\|/, sq("SELECT next_attempt_at, file_name FROM flexfactor.batch_status WHERE id = $batch");
ok(sq("SELECT next_attempt_at > now() + interval '9 minutes' FROM flexfactor.batch_status WHERE id = $batch") eq 't',
	'the batch waits about 10 minutes (batch_retry_base = 600 s)');
is(scalar @{ $r->{notices} }, 1, 'and a NOTICE says what waits') or diag $r->{stderr};
is($r->{notices}[0][0], "1 batch file waits for its next upload attempt, at $next",
	'NOTICE: one batch file waits, until the time batch_status shows');
is($r->{notices}[0][1], "batch $batch ($file): attempt 2 at $next.", 'DETAIL: which batch, which attempt, when');
like($r->{notices}[0][2], qr/upload them now with SELECT flexfactor\.ff_export_batch\(retry_now => true\)/,
	'HINT: how to retry now');

# ------------------------------------------------------------------
# 2. The DBA fixes the setting: without retry_now the batch still waits,
#    and the result says so
# ------------------------------------------------------------------
reload_and_wait("ALTER SYSTEM SET flexfactor.sftp_private_key_file = '$key'");
$r = export('');
is($r->{stdout}, '0', 'setting fixed, plain export: nothing uploaded yet');
is(scalar @{ $r->{warnings} }, 0, 'no WARNING: nothing failed') or diag $r->{stderr};
is($r->{notices}[0][0], "1 batch file waits for its next upload attempt, at $next",
	'but the NOTICE says the batch waits, and until when');
is($r->{notices}[0][1], "batch $batch ($file): attempt 2 at $next.", 'naming it');
is_deeply($sim->inbound_files, [], 'nothing reached inbound');

# ------------------------------------------------------------------
# 3. retry_now => true: uploaded at once
# ------------------------------------------------------------------
$r = export('retry_now => true');
is($r->{stdout}, '1', 'retry_now: the waiting batch is uploaded at once');
is(scalar @{ $r->{warnings} }, 0, 'without a WARNING') or diag $r->{stderr};
is(scalar @{ $r->{notices} }, 1, 'one NOTICE') or diag $r->{stderr};
is($r->{notices}[0][0],
	'retry now: 1 batch file, 0 queued transmits and 0 failed billing callbacks that waited for a later attempt are due at once',
	'it says what was made due');
is(sq("SELECT state, attempts, last_error IS NULL FROM flexfactor.batch_status WHERE id = $batch"),
	'uploaded|2|t', 'batch_status: uploaded on the second attempt, error cleared');
$sim->check_delivered($node, 'ffdb', 'retry now', 'R', 3);
$r = export('retry_now => true');
is_deeply($r->{notices}, [], 'nothing waits any more: no NOTICE') or diag $r->{stderr};

# the old signature is unchanged: its grant keeps working for a job role
sq('CREATE ROLE cron_job LOGIN; GRANT USAGE ON SCHEMA flexfactor TO cron_job;
    GRANT EXECUTE ON FUNCTION flexfactor.ff_export_batch() TO cron_job');
my ($ret, $out, $err) = $node->psql('ffdb', 'SELECT flexfactor.ff_export_batch()',
	extra_params => [ '-U', 'cron_job' ]);
is($out, '0', 'ff_export_batch() runs for a role granted it by its old signature') or diag $err;
($ret, $out, $err) = $node->psql('ffdb', 'SELECT flexfactor.ff_export_batch(retry_now => true)',
	extra_params => [ '-U', 'cron_job' ]);
like($err, qr/permission denied for function ff_export_batch/,
	'retry_now needs a grant of its own (nothing is granted to PUBLIC)');

# ------------------------------------------------------------------
# 4. A failed billing callback waiting for its backoff: retried at once
# ------------------------------------------------------------------
$sim->scan;
export('');    # reads the result file: orders, callbacks (which fail)
my $failed = sq("SELECT count(*) FROM flexfactor.order_events WHERE callback_state = 'failed'");
ok($failed > 0, "the callback failed for $failed order events");
# as after several failures: the next try an hour away
sq("UPDATE flexfactor.order_events SET next_callback_at = now() + interval '1 hour'
     WHERE callback_state = 'failed'");
sq(q{CREATE OR REPLACE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
	INSERT INTO billing.heard VALUES (o.order_id, o.status) $$});

# ------------------------------------------------------------------
# 5. A queued transmit waiting for its backoff: retried at once
# ------------------------------------------------------------------
$sim->fault(endpoint => '/v1/transmit', mode => '500', count => 1);
sq("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('T-1', 1999, 'USD', 'tx-t-1', " . ff_payment_args() . "))");
ok(ff_wait_until(sub { sq("SELECT attempts = 1 AND state = 'pending' AND next_attempt_at > now() + interval '4 minutes'
                             FROM flexfactor.transmit_queue") eq 't' }, 60),
	'the transmit failed once and waits 5 minutes');

$r = export('retry_now => true');
is($r->{notices}[0][0],
	"retry now: 0 batch files, 1 queued transmit and $failed failed billing callbacks that waited for a later attempt are due at once",
	'retry_now says it made the transmit and the callbacks due') or diag $r->{stderr};
ok(ff_wait_until(sub { sq("SELECT count(*) FROM flexfactor.order_events WHERE callback_state = 'done'") == $failed }, 30),
	'the callbacks ran at once');
is(sq('SELECT count(*) FROM billing.heard'), $failed, 'the billing schema heard of every order');
ok(ff_wait_until(sub { sq("SELECT state FROM flexfactor.transmit_queue") eq 'delivered' }, 30),
	'the transmit was delivered at once');

done_testing();
