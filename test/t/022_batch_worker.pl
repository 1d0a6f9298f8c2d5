# The background worker's SFTP export (flexfactor.database = the test
# database, batch_interval = 1 s): queued declines leave with no call; the
# SFTP server stopped for a while (backoff doubling from batch_retry_base,
# never early, the error in batch_status, queue_status and ff_worker_status,
# delivered once it is back); kill -9 of the worker in the middle of an
# upload and after the rename but before its commit; a PostgreSQL
# crash-restart (kill -9 of another backend) during an upload; a connection
# cut mid-file; a fast shutdown during an upload.  After each: every decline
# in exactly one uploaded batch, and the simulator received each idempotency
# key exactly once.  Each attempt writes a temporary file of its own: one
# that failed is removed at the worker's next connection; one whose process
# was killed stays until it is stale (an hour), never under a final name.
use strict;
use warnings;
use Digest::SHA ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '3f4e5d6c-7b8a-4c9d-8e0f-a1b2c3d4e5f6';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffbatch022');
my $sshd = FFSshd->start("$tmp/sshd");
my $relay = FFSshd::Relay->start(target_port => $sshd->port);
my $sim = FFSim->start(name => 'ffsim_022', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $inbound = $sim->inbound_dir;
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts", ports => [ $sshd->port, $relay->port ]);

my $node = ff_node('worker022',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '1'),
	$sshd->node_settings(inbound => $inbound, outbound => $sim->outbound_dir,
		known_hosts => $known_hosts),
	'flexfactor.batch_retry_base' => '1',
	'log_error_verbosity' => 'verbose');    # SQLSTATEs in the server log
my $wpid = ff_start_serving($node, 'ffdb', "ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub reload_and_wait { ff_reload_and_wait($node, 'ffdb', $_[0]) }

sub enqueue { FFSim::enqueue_declines($node, 'ffdb', @_) }

sub batch_of { ff_batch_of($node, 'ffdb', $_[0]) }

sub finals { [ grep { !/\.part$/ } @{ $sim->inbound_files } ] }
sub parts { [ grep { /\.part$/ } @{ $sim->inbound_files } ] }
# the temporary files of a killed attempt are left alone (until stale)
sub forget_parts { unlink "$inbound/$_" for @{ parts() } }

sub wait_until { ff_wait_until(@_) }

# wait until every decline $prefix-* is in an uploaded batch
sub wait_uploaded
{
	my ($prefix, $n) = @_;
	return $node->poll_query_until('ffdb',
		"SELECT count(*) = $n FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
		  WHERE d.order_id LIKE '$prefix-%' AND b.state IN ('uploaded', 'answered')");
}

sub check_delivered { $sim->check_delivered($node, 'ffdb', @_) }

# ------------------------------------------------------------------
# 1. Queued declines leave by themselves
# ------------------------------------------------------------------
is(enqueue('W1', 2500), '2500', '2,500 declines queued');
ok(wait_uploaded('W1', 2500), 'the worker uploaded them with no call');
my $files = check_delivered('worker', 'W1', 2500);
is_deeply([ sort { $a <=> $b } map { scalar @{ $_->{lines} } } values %$files ], [ 500, 2000 ],
	'in files of 2,000 and 500 lines');
is(sq("SELECT count(*) FROM flexfactor.batches WHERE attempts <> 1 OR last_error IS NOT NULL"), '0',
	'each at the first attempt');
is(sq("SELECT last_error IS NULL FROM flexfactor.ff_worker_status() WHERE role = 'worker'"), 't',
	'ff_worker_status: no error');

# ------------------------------------------------------------------
# 2. The SFTP server stops for a while
# ------------------------------------------------------------------
$sshd->stop;
my $offset = -s $node->logfile;
enqueue('W2', 10);
my $t_enq = Time::HiRes::time();
# watch attempts and next_attempt_at; a row per attempt: [attempts, first seen, next_attempt_at]
my (@seen, $b2);
wait_until(sub {
		$b2 //= do { my $b = batch_of('W2'); $b =~ /^\d+$/ ? $b : undef };
		return 0 unless $b2;
		my ($att, $next, $now) = split /\|/, sq(
			"SELECT attempts, extract(epoch FROM next_attempt_at), extract(epoch FROM clock_timestamp())
			   FROM flexfactor.batches WHERE id = $b2");
		push @seen, [ $att, $now, $next ] if $att > 0 && (!@seen || $seen[-1][0] != $att);
		return $att >= 3;
	}, 60);
is_deeply([ map { $_->[0] } @seen ], [ 1, 2, 3 ], 'the worker retried: attempts 1, 2, 3')
  or diag explain \@seen;
for my $i (0 .. $#seen)
{
	my ($att, $when, $next) = @{ $seen[$i] };
	my $delay = $next - $when;
	my $want = 2**($att - 1);
	ok($delay > $want - 0.9 && $delay <= $want + 0.05,
		sprintf('after attempt %d the next is %d s later (batch_retry_base 1 s, doubling): %.2f s', $att, $want, $delay));
	ok($seen[ $i + 1 ][1] >= $next - 0.05, "attempt " . ($att + 1) . " did not come before next_attempt_at")
	  if $i < $#seen;
}
like(sq("SELECT state || ' ' || last_error FROM flexfactor.batch_status WHERE id = $b2"),
	qr/^ready could not connect to the SFTP server \(flexfactor\.sftp_host, sftp_port\): Connection refused/,
	'batch_status: ready, last_error says the connection was refused');
is(sq("SELECT last_error LIKE 'could not connect to the SFTP server (flexfactor.sftp_host, sftp_port)%', next_attempt_at > now()
         FROM flexfactor.queue_status WHERE queue = 'batches' AND state = 'ready'"), 't|t',
	'queue_status: the waiting batch, its last error and next attempt');
my ($werr, $wpid_now) = split /\|/, sq("SELECT last_error, pid FROM flexfactor.ff_worker_status() WHERE role = 'worker'");
like($werr, qr/^could not connect to the SFTP server \(flexfactor\.sftp_host, sftp_port\): Connection refused/,
	'ff_worker_status: the worker shows the error');
is($wpid_now, $wpid, 'the worker kept running (same pid)');
ok(ff_log_contains($node, qr/WARNING:  FF030: flexfactor worker could not upload batch $b2 \(evaluate_\S+\): could not connect/, $offset),
	'the server log has the WARNING with SQLSTATE FF030');
is_deeply($sim->inbound_files, [], 'nothing in inbound meanwhile');

$sshd->start_again;
ok(wait_uploaded('W2', 10), 'delivered once the server is back on its port');
like(sq("SELECT attempts || ' ' || (last_error IS NULL) FROM flexfactor.batch_status WHERE id = $b2"),
	qr/^[4-9] true$/, 'batch_status: uploaded after the failed attempts, error cleared');
check_delivered('server back', 'W2', 10);

# ------------------------------------------------------------------
# 3. kill -9 of the worker in the middle of an upload
# ------------------------------------------------------------------
reload_and_wait("ALTER SYSTEM SET flexfactor.sftp_port = " . $relay->port);
$relay->freeze_after(100_000);
enqueue('W3', 1000);
ok($relay->wait_frozen(60), 'the worker is uploading, held mid-file');
my $b3 = batch_of('W3');
my ($name3, $state3, $att3) = split /\|/, sq("SELECT file_name, state, attempts FROM flexfactor.batches WHERE id = $b3");
my $parts3 = parts();
like("@$parts3", qr/^\Q$name3\E\.\d+-[0-9a-f]{16}\.part$/, 'inbound has the batch as a temporary file only');
is("$state3|$att3", 'ready|0', 'the batch is fixed (committed) and not yet uploaded');
$wpid = ff_worker_pid($node, 'ffdb');
$offset = -s $node->logfile;
kill 'KILL', $wpid;
$node->wait_for_log(qr/\(PID $wpid\) was terminated by signal 9/, $offset);
pass('the worker was killed');
$relay->pass;
my $new = ff_wait_for_worker($node, 'ffdb', $wpid);
ok(wait_uploaded('W3', 1000), 'the new worker uploads the batch');
is_deeply(finals(), [$name3], 'under the same name');
is_deeply(parts(), $parts3, 'the killed attempt\'s temporary file is left alone');
forget_parts();
is(sq("SELECT count(*) FROM flexfactor.batches WHERE id > $b3"), '0', 'no other batch was made');
check_delivered('worker kill -9 mid-upload', 'W3', 1000);
$wpid = $new;

# ------------------------------------------------------------------
# 4. kill -9 of the worker after the rename, before its commit
# ------------------------------------------------------------------
# The batch is fixed here (as the worker would) with its first attempt 3 s
# away; a session holds a share lock on its row, so the worker's "uploaded"
# UPDATE waits after the file is renamed into place.  The session holds the
# exporters' lock meanwhile, so the worker cannot fix the declines first.
sq("SELECT pg_advisory_lock(hashtext('flexfactor.declines')::bigint);
    SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
            'W4-' || i, " . FFSim::batch_cents_sql('i') . ", 'USD', 'tok-' || i, 'tx-' || i,
            " . ff_decline_args(expiry => "now() + interval '14 days'") . "))) FROM generate_series(1, 50) i;
    DO \$\$
    DECLARE b bigint;
    BEGIN
        -- until no transaction older than the declines' (the worker reading
        -- a result file, say) holds the batch horizon back
        -- (bounded: 120 s; a busy machine once took more than 30)
        FOR i IN 1 .. 2400 LOOP
            b := flexfactor._create_evaluate_batch(2000);
            EXIT WHEN b IS NOT NULL;
            PERFORM pg_sleep(0.05);
        END LOOP;
        IF b IS NULL THEN
            RAISE EXCEPTION 'no batch within 120 s: %', (SELECT string_agg(pid || ' ' || backend_type || ' xid '
                || backend_xid || ' since ' || xact_start, '; ') FROM pg_stat_activity WHERE backend_xid IS NOT NULL);
        END IF;
        UPDATE flexfactor.batches SET next_attempt_at = now() + interval '3 seconds' WHERE id = b;
    END \$\$;
    SELECT pg_advisory_unlock(hashtext('flexfactor.declines')::bigint)");
my $b4 = batch_of('W4');
my $name4 = sq("SELECT file_name FROM flexfactor.batches WHERE id = $b4");
my $locker = $node->background_psql('ffdb', timeout => 120);
$locker->query_safe('BEGIN');
$locker->query_safe("SELECT id FROM flexfactor.batches WHERE id = $b4 FOR SHARE");
ok(wait_until(sub {
			@{ finals() } == 1
			  && sq("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $wpid") eq 'Lock' }, 30),
	'the worker renamed the file into place and waits to mark the batch uploaded');
is_deeply(finals(), [$name4], 'the complete file is in inbound');
is(sq("SELECT state, attempts FROM flexfactor.batches WHERE id = $b4"), 'ready|0', 'the batch is still ready');
my $sha4 = Digest::SHA::sha256_hex(FFSim::_slurp_bytes("$inbound/$name4"));
my $scan = $sim->scan;
is_deeply([ map { "$_->{file} $_->{status} $_->{accepted}" } @$scan ], ["$name4 processed 50"],
	'FlexFactor processed it');
$offset = -s $node->logfile;
kill 'KILL', $wpid;
eval { $locker->quit };
$new = ff_wait_for_worker($node, 'ffdb', $wpid);
ok(wait_uploaded('W4', 50), 'after the crash the batch is uploaded again');
is_deeply(finals(), [$name4], 'the same file name');
is(Digest::SHA::sha256_hex(FFSim::_slurp_bytes("$inbound/$name4")), $sha4, 'with the same bytes');
$scan = $sim->scan;
is_deeply([ map { "$_->{file} $_->{status}" } @$scan ], ["$name4 duplicate"],
	'FlexFactor recognises the file (name + SHA-256) and skips it');
$sim->check_keys_once('worker kill -9 after rename', [ split /\n/,
		sq("SELECT idempotency_key FROM flexfactor.decline_status WHERE order_id LIKE 'W4-%'") ]);
$wpid = $new;

# ------------------------------------------------------------------
# 5. PostgreSQL crash-restart (kill -9 of another backend) during an upload
# ------------------------------------------------------------------
$relay->freeze_after(100_000);
enqueue('W5', 1000);
ok($relay->wait_frozen(60), 'the worker is uploading, held mid-file');
my $bystander = $node->background_psql('ffdb', timeout => 60);
my $bpid = $bystander->query_safe('SELECT pg_backend_pid()');
$offset = -s $node->logfile;
kill 'KILL', $bpid;
eval { $bystander->quit };
# release the held connection only once the crash has taken the worker
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
$relay->pass;
# (18 names the process type where 15 said "server process")
ok(ff_log_contains($node, qr/(?:server process|client backend) \(PID $bpid\) was terminated by signal 9/, $offset),
	'a backend was killed: PostgreSQL restarted every process');
$new = ff_wait_for_worker($node, 'ffdb', $wpid);
ok(wait_uploaded('W5', 1000), 'after recovery the batch is uploaded');
is(scalar @{ parts() }, 1, 'the killed attempt\'s temporary file is left alone');
forget_parts();
check_delivered('crash-restart mid-upload', 'W5', 1000);
$wpid = $new;

# ------------------------------------------------------------------
# 6. The connection is cut mid-file
# ------------------------------------------------------------------
$relay->drop_after(100_000);
$offset = -s $node->logfile;
enqueue('W6', 1000);
ok($node->poll_query_until('ffdb',
		"SELECT attempts >= 1 AND last_error IS NOT NULL FROM flexfactor.batches
		  WHERE id IN (SELECT batch_id FROM flexfactor.decline_status WHERE order_id = 'W6-1')"),
	'the cut upload is recorded as failed');
my $b6 = batch_of('W6');
note 'last_error: ' . sq("SELECT last_error FROM flexfactor.batches WHERE id = $b6");
ok(ff_log_contains($node, qr/WARNING:  FF03[03]: flexfactor worker could not upload batch $b6/, $offset),
	'the WARNING carries FF030 or FF033');
is_deeply(finals(), [], 'no complete file');
$relay->pass;
ok(wait_uploaded('W6', 1000), 'the retry delivers it');
is(scalar @{ parts() }, 0, 'the cut attempt\'s temporary file was removed');
check_delivered('connection cut mid-file', 'W6', 1000);

# ------------------------------------------------------------------
# 6b. The server stops answering mid-file: the upload times out
# ------------------------------------------------------------------
reload_and_wait("ALTER SYSTEM SET flexfactor.sftp_timeout_ms = 2000");
$relay->freeze_after(100_000);
$offset = -s $node->logfile;
enqueue('W6T', 1000);
ok($relay->wait_frozen(60), 'the worker is uploading, held mid-file');
ok($node->poll_query_until('ffdb',
		"SELECT attempts >= 1 FROM flexfactor.batch_status
		  WHERE id IN (SELECT batch_id FROM flexfactor.decline_status WHERE order_id = 'W6T-1')"),
	'the held upload gives up after sftp_timeout_ms');
my $b6t = batch_of('W6T');
like(sq("SELECT state || ': ' || last_error FROM flexfactor.batch_status WHERE id = $b6t"),
	qr/^ready: SFTP \w+ timed out: No progress within flexfactor.sftp_timeout_ms = 2000 ms/,
	'batch_status: still ready, the timeout as its last error');
ok(ff_log_contains($node, qr/WARNING:  FF030: flexfactor worker could not upload batch $b6t/, $offset),
	'the WARNING carries FF030');
is_deeply(finals(), [], 'no complete file');
$relay->pass;
ok(wait_uploaded('W6T', 1000), 'once the server answers again, a retry delivers it');
is(scalar @{ parts() }, 0, 'the timed-out attempt\'s temporary file was removed');
check_delivered('timeout mid-file', 'W6T', 1000);
reload_and_wait("ALTER SYSTEM RESET flexfactor.sftp_timeout_ms");

# ------------------------------------------------------------------
# 7. A fast shutdown while an upload is held does not wait for it
# ------------------------------------------------------------------
$relay->freeze_after(100_000);
enqueue('W7', 1000);
ok($relay->wait_frozen(60), 'the worker is uploading, held mid-file');
my $t0 = Time::HiRes::time();
$node->stop('fast');
my $took = Time::HiRes::time() - $t0;
ok($took < 5, sprintf('pg_ctl stop -m fast returns promptly (%.1f s; sftp_timeout_ms is 10 s)', $took));
$relay->pass;
$node->start;
ff_wait_for_worker($node, 'ffdb');
ok(wait_uploaded('W7', 1000), 'after the restart the batch is uploaded');
is(scalar @{ parts() }, 1, 'the stopped attempt\'s temporary file is left alone');
forget_parts();
check_delivered('fast shutdown mid-upload', 'W7', 1000);

# ------------------------------------------------------------------
# 8. After all this
# ------------------------------------------------------------------
is(sq("SELECT count(*) FROM (SELECT f.decline_id FROM flexfactor.batches b
         CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) f
         WHERE b.requeued_as IS NULL GROUP BY f.decline_id HAVING count(*) > 1) d"), '0', 'no decline is a line of two batch files');
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE state <> 'batched'"), '0', 'no decline left behind');
is(sq("SELECT count(*) FROM flexfactor.batches WHERE state NOT IN ('uploaded', 'answered')"), '0',
	'every batch uploaded');
is(scalar @{ $sim->idempotency->{acceptedMoreThanOnce} }, 0, 'the simulator accepted no key twice');

$node->stop('fast');
$relay->stop;
$sim->stop;
$sshd->stop;
done_testing();
