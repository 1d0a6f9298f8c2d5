# SFTP batch export faults seen through ff_export_batch(): an unknown client
# key (FF032), a changed or unpinned host key (FF031, nothing sent), the
# SFTP server down (FF030, backoff doubling from batch_retry_base up to 900
# s, the error in batch_status and queue_status, delivery once it is back),
# SFTP not configured (FF013), and kill -9 of the backend waiting in
# ff_export_batch() (a PostgreSQL crash-restart, which also kills the worker)
# in the middle of an upload and after an upload but before the caller's
# transaction committed.  After each: every decline in
# exactly one uploaded batch, and the simulator received each idempotency
# key exactly once.
#
# The worker serves the test database with batch_interval = 0: exports run
# when ff_export_batch() asks for them (the worker's own schedule is 022).
use strict;
use warnings;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '7c2d9e4f-3a5b-4c6d-8e7f-1a2b3c4d5e6f';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffbatch021');
my $sshd = FFSshd->start("$tmp/sshd");
my $relay = FFSshd::Relay->start(target_port => $sshd->port);
my $sim = FFSim->start(name => 'ffsim_021', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $inbound = $sim->inbound_dir;
# our own pinned known_hosts: the server's key at its port and the relay's
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts", ports => [ $sshd->port, $relay->port ]);

my $node = ff_node('faults021',
	# the worker serves ffdb but exports only when ff_export_batch() asks
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $inbound, outbound => $sim->outbound_dir,
		known_hosts => $known_hosts),
	'flexfactor.sftp_timeout_ms' => '5000',
	'flexfactor.batch_retry_base' => '1');
ff_start_serving($node, 'ffdb', "ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub run_sql { ff_run_sql($node, 'ffdb', $_[0]) }

sub set_conf { ff_set_conf($node, 'ffdb', @_) }

sub enqueue { FFSim::enqueue_declines($node, 'ffdb', @_) }

sub batch_of { ff_batch_of($node, 'ffdb', $_[0]) }

sub finals { [ grep { !/\.part$/ } @{ $sim->inbound_files } ] }
sub parts { [ grep { /\.part$/ } @{ $sim->inbound_files } ] }

# make a waiting batch due now, as if its backoff delay had passed
sub make_due { sq("UPDATE flexfactor.batches SET next_attempt_at = now() WHERE id = $_[0]") }

sub check_delivered { $sim->check_delivered($node, 'ffdb', @_) }

sub wait_until { ff_wait_until(@_) }

# wait for the server to be back after a crash-restart
sub wait_recovered
{
	my ($offset) = @_;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->poll_query_until('ffdb', 'SELECT true')
	  or die 'server did not come back after the crash';
}

# ------------------------------------------------------------------
# 1. A client key the server does not know: FF032, nothing sent
# ------------------------------------------------------------------
enqueue('K', 3);
my $stranger = $sshd->new_client_key('stranger_key');
set_conf('flexfactor.sftp_private_key_file', $stranger);
my $r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{stdout}, '0', 'wrong client key: nothing uploaded');
is(scalar @{ $r->{warnings} }, 1, 'one WARNING') or diag $r->{stderr};
is($r->{warnings}[0][0], 'FF032', 'with SQLSTATE FF032 (authentication)');
like($r->{warnings}[0][1], qr/^batch \d+ \(evaluate_\S+\.jsonl\) was not uploaded: SFTP authentication failed for user "postgres"/,
	'the message names the batch, the file and the SFTP user');
like($r->{stderr}, qr/HINT:.*sftp_private_key_file/, 'the hint says which settings to check');
unlike($r->{stderr}, qr/\Q$stranger\E/, 'the key path is not shown');
my $kb = batch_of('K');
is(sq("SELECT state, attempts, last_error LIKE 'SFTP authentication failed for user \"postgres\"%'
         FROM flexfactor.batch_status WHERE id = $kb"), 'ready|1|t',
	'batch_status: ready, 1 attempt, last_error says authentication failed');
is_deeply($sim->inbound_files, [], 'nothing reached inbound');

set_conf('flexfactor.sftp_private_key_file', $sshd->client_key);
make_due($kb);
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'with the right key again: uploaded');
is(sq("SELECT state, attempts, last_error IS NULL FROM flexfactor.batches WHERE id = $kb"),
	'uploaded|2|t', 'second attempt, error cleared');
check_delivered('after FF032', 'K', 3);

# ------------------------------------------------------------------
# 2. The server's host key changes: FF031 before authentication, nothing sent
# ------------------------------------------------------------------
enqueue('H', 4);
my $log_before = length $sshd->log_text;
$sshd->rekey;
$r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{stdout}, '0', 'changed host key: nothing uploaded');
is($r->{warnings}[0][0], 'FF031', 'SQLSTATE FF031 (host key)') or diag $r->{stderr};
like($r->{warnings}[0][1], qr/host key has CHANGED; connection refused/, 'the message says the key CHANGED');
like($r->{stderr}, qr/DETAIL:.*flexfactor\.sftp_host presented a key that differs/, 'DETAIL names the setting');
unlike($r->{stderr}, qr/127\.0\.0\.1/, 'and never its value, hidden from the monitoring role');
is_deeply($sim->inbound_files, [], 'nothing reached inbound, not even a .part');
my $since = substr($sshd->log_text, $log_before);
unlike($since, qr/Accepted publickey|Failed publickey/, 'the client never tried to authenticate');
my $hb = batch_of('H');
is(sq("SELECT state, attempts, last_error LIKE '%host key has CHANGED%' FROM flexfactor.batch_status WHERE id = $hb"),
	'ready|1|t', 'batch_status: ready, 1 attempt, last_error says the key changed');

# an entry for another port only: the key is not pinned
my $other_kh = $sshd->write_known_hosts("$tmp/known_hosts_other", ports => [1]);
set_conf('flexfactor.sftp_known_hosts_file', $other_kh);
make_due($hb);
$r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{warnings}[0][0], 'FF031', 'unpinned host key: FF031') or diag $r->{stderr};
like($r->{warnings}[0][1], qr/host key is not pinned; connection refused/, 'the message says it is not pinned');
like($r->{stderr}, qr/\[host\]:port/, 'DETAIL explains the [host]:port form');
is_deeply($sim->inbound_files, [], 'nothing reached inbound');

# the DBA pins the new key
$sshd->write_known_hosts($known_hosts, ports => [ $sshd->port, $relay->port ]);
set_conf('flexfactor.sftp_known_hosts_file', $known_hosts);
make_due($hb);
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'with the new key pinned: uploaded');
check_delivered('after FF031', 'H', 4);

# ------------------------------------------------------------------
# 3. The SFTP server is down: FF030, backoff, visible, delivered when back
# ------------------------------------------------------------------
$sshd->stop;
enqueue('D', 5);
my $probe = "SELECT attempts || '|' || extract(epoch FROM next_attempt_at - now())::int
               FROM flexfactor.batches WHERE id IN (SELECT batch_id FROM flexfactor.decline_status WHERE order_id = 'D-1')";
$r = run_sql("BEGIN; SELECT flexfactor.ff_export_batch(); $probe; COMMIT;");
is($r->{stdout}, "0\n1|1", 'server down: nothing uploaded; attempt 1, next attempt in batch_retry_base (1 s)');
is($r->{warnings}[0][0], 'FF030', 'SQLSTATE FF030 (connection)') or diag $r->{stderr};
like($r->{warnings}[0][1], qr/could not connect to the SFTP server \(flexfactor\.sftp_host, sftp_port\): Connection refused/,
	'the message names host, port and the reason');
my $db = batch_of('D');
is(sq("SELECT state, attempts, last_error LIKE 'could not connect to the SFTP server (flexfactor.sftp_host, sftp_port)%', next_attempt_at > now()
         FROM flexfactor.batch_status WHERE id = $db"), 'ready|1|t|t',
	'batch_status: ready, attempts, last_error, next_attempt_at');
is(sq("SELECT last_error LIKE 'could not connect to the SFTP server (flexfactor.sftp_host, sftp_port)%', next_attempt_at > now() - interval '1 s'
         FROM flexfactor.queue_status WHERE queue = 'batches' AND state = 'ready'"), 't|t',
	'queue_status: the ready batches show the last error and the next attempt');
$r = run_sql("BEGIN; SELECT flexfactor.ff_export_batch(); $probe; COMMIT;");
is($r->{stdout}, "0\n1|1", 'called again at once: the batch is not due, no attempt');
is(scalar(grep { $_->[1] =~ /batch $db\b/ } @{ $r->{warnings} }), 0, 'and no warning about the batch')
  or diag $r->{stderr};
Time::HiRes::sleep(1.1);
$r = run_sql("BEGIN; SELECT flexfactor.ff_export_batch(); $probe; COMMIT;");
is($r->{stdout}, "0\n2|2", 'after 1 s: attempt 2, next in 2 s');
make_due($db);
$r = run_sql("BEGIN; SELECT flexfactor.ff_export_batch(); $probe; COMMIT;");
is($r->{stdout}, "0\n3|4", 'attempt 3, next in 4 s (doubling)');
sq("UPDATE flexfactor.batches SET attempts = 12, next_attempt_at = now() WHERE id = $db");
$r = run_sql("BEGIN; SELECT flexfactor.ff_export_batch(); $probe; COMMIT;");
is($r->{stdout}, "0\n13|900", 'after many attempts the delay stops at 900 s');
is_deeply($sim->inbound_files, [], 'nothing in inbound while the server is down');

$sshd->start_again;
is($sshd->port, $sshd->env('FFSSHD_PORT'), 'server back on the same port');
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'back, but the batch waits for its next attempt');
make_due($db);
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'once due: uploaded');
is(sq("SELECT state, attempts, last_error IS NULL FROM flexfactor.batch_status WHERE id = $db"),
	'uploaded|14|t', 'batch_status: uploaded, error cleared');
is(sq("SELECT count(*) FROM flexfactor.queue_status WHERE queue = 'batches' AND state = 'ready'"),
	'0', 'queue_status: no batch waiting');
check_delivered('after FF030', 'D', 5);

# ------------------------------------------------------------------
# 3b. The server's disk is full: FF033, backoff, visible, delivered after
# ------------------------------------------------------------------
# The SFTP server runs with a file size limit of 128 kB: a write past it
# fails (EFBIG, SFTP status 4), as on a full disk.  The file is about 285 kB.
enqueue('F', 300);
my $bf = ff_create_batch($node, 'ffdb', '_create_evaluate_batch(2000)');
$sshd->stop;
$sshd->start_again(file_size_limit_kb => 128);
$r = run_sql("SELECT flexfactor.ff_export_batch()");
is($r->{stdout}, '0', 'disk full: nothing uploaded');
is($r->{warnings}[0][0], 'FF033', 'SQLSTATE FF033 (the server refused the write)') or diag $r->{stderr};
my $name_f = sq("SELECT file_name FROM flexfactor.batches WHERE id = $bf");
like($r->{warnings}[0][1], qr/could not write "\Q$name_f\E\.\d+-[0-9a-f]{16}\.part" on the SFTP server/,
	'the message names the file (this attempt\'s temporary file)');
is(sq("SELECT state, attempts, last_error LIKE 'could not write %SFTP status 4 (failure)%', next_attempt_at > now()
         FROM flexfactor.batch_status WHERE id = $bf"), 'ready|1|t|t',
	'batch_status: ready, 1 attempt, the SFTP failure, the next attempt');
is_deeply(finals(), [], 'no file renamed into place');
$sshd->stop;
$sshd->start_again;    # space again
make_due($bf);
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'space again: the retry uploads it');
is_deeply(parts(), [], 'the failed attempt\'s temporary file was removed at the next connection');
is(sq("SELECT state, attempts, last_error IS NULL FROM flexfactor.batch_status WHERE id = $bf"), 'uploaded|2|t',
	'batch_status: uploaded at the second attempt, error cleared');
check_delivered('after a full disk', 'F', 300);

# ------------------------------------------------------------------
# 4. SFTP not configured: FF013
# ------------------------------------------------------------------
enqueue('N', 2);
set_conf('flexfactor.sftp_host', '');
$r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{stdout}, '0', 'no sftp_host: nothing uploaded');
is($r->{warnings}[0][0], 'FF013', 'SQLSTATE FF013 (not configured)') or diag $r->{stderr};
like($r->{warnings}[0][1], qr/flexfactor\.sftp_host is not set/, 'naming the setting');
set_conf('flexfactor.sftp_host', '127.0.0.1');
make_due(batch_of('N'));
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'configured again: uploaded');
check_delivered('after FF013', 'N', 2);

# ------------------------------------------------------------------
# 5. kill -9 of the exporting backend in the middle of an upload
# ------------------------------------------------------------------
# Through the relay, which stops forwarding once 100 kB of the ~450 kB file
# went out: the upload is surely under way and surely not finished.
set_conf('flexfactor.sftp_port', $relay->port);
enqueue('C', 1000);
$relay->freeze_after(100_000);
my ($out, $err, $scan) = ('', '');
my $h = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('ffdb'),
	  '-c', 'SELECT flexfactor.ff_export_batch()' ],
	'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
ok($relay->wait_frozen(60), 'the upload is under way and held mid-file');
my $parts = parts();
is(scalar @$parts, 1, 'a .part file is in inbound') or diag explain $sim->inbound_files;
is_deeply(finals(), [], 'and no complete file');
my $pid = sq("SELECT pid FROM pg_stat_activity WHERE datname = 'ffdb' AND query LIKE '%ff_export_batch%'
               AND pid <> pg_backend_pid()");
like($pid, qr/^\d+$/, 'the exporting backend');
my $offset = -s $node->logfile;
kill 'KILL', $pid;
$h->finish;
# release the held connection only once the crash has taken the worker, so
# that it cannot record the cut as a failed attempt first
wait_recovered($offset);
$relay->pass;
# (18 names the process type where 15 said "server process")
ok(ff_log_contains($node, qr/(?:server process|client backend) \(PID $pid\) was terminated by signal 9/, $offset),
	'PostgreSQL restarted after the kill -9');
# the batch was fixed and committed before its upload began, so it survives
# the crash and is uploaded again under the same name, with the same bytes
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'C-%' AND state = 'batched'"),
	'1000', 'the 1,000 declines stay in the batch fixed before the upload');
(my $part_final = $parts->[0]) =~ s/\.\d+-[0-9a-f]{16}\.part$//;
is(sq("SELECT state FROM flexfactor.batches b WHERE b.file_name = '$part_final'"),
	'ready', 'the batch named like the half-written file waits to be uploaded again');
is_deeply(finals(), [], 'no complete file in inbound');
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'the next export uploads it');
is_deeply(parts(), $parts, 'the retry wrote a file of its own: the killed attempt\'s stays (removed once stale)');
is_deeply(finals(), [$part_final], 'the complete file has the name of the interrupted one');
unlink "$inbound/$_" for @$parts;
check_delivered('after kill -9 mid-upload', 'C', 1000);

# ------------------------------------------------------------------
# 5b. pg_cancel_backend() during a stuck upload (design: "always
# cancellable ... within a second"), after a first file of the same call
# was complete
# ------------------------------------------------------------------
# 4,000 declines: two files of 2,000 lines (~1.9 MB each, complete bodies);
# the relay holds the connection half-way through the second file (1.5
# times the first file's size, estimated from the queued payloads plus
# sequenceNumber, mid and idempotencyKey).
enqueue('X', 4000);
my $x_file_bytes = sq("SELECT sum(octet_length(payload::text) + 120) FROM (SELECT payload FROM flexfactor.declines
                      WHERE order_id LIKE 'X-%' ORDER BY id LIMIT 2000) d");
note "the first file: about $x_file_bytes bytes";
$relay->freeze_after(int($x_file_bytes * 1.5));
($out, $err) = ('', '');
$h = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('ffdb'),
	  '-c', '\set VERBOSITY verbose', '-c', 'SELECT flexfactor.ff_export_batch()' ],
	'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
ok($relay->wait_frozen(60), 'an export held inside its second file');
is(scalar @{ finals() }, 1, 'its first file is complete in inbound') or diag explain $sim->inbound_files;
$pid = sq("SELECT pid FROM pg_stat_activity WHERE datname = 'ffdb' AND query LIKE '%ff_export_batch%'
            AND pid <> pg_backend_pid()");
my $t0 = Time::HiRes::time();
sq("SELECT pg_cancel_backend($pid)");
my $ended = wait_until(sub {
		sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid AND state = 'active'") eq '0' }, 60);
my $elapsed = Time::HiRes::time() - $t0;
ok($ended && $elapsed < 2, sprintf('pg_cancel_backend() ends the stuck export within 2 s (took %.1f s)', $elapsed));
$h->finish;
like($err, qr/57014/, 'the client is told the statement was canceled (57014)') or diag $err;
note "after the cancel the client saw: $out / $err";
$relay->pass;
unlink "$inbound/$_" for @{ parts() };
$scan = $sim->scan;
note 'FlexFactor processed ' . join(', ', map { "$_->{file} ($_->{status}, $_->{accepted} accepted)" } @$scan);
note "after the cancel the X declines are in batch(es) '" . batch_of('X') . "'";
# the worker finishes or retries the same files: ask again (the failed one
# made due) until everything is delivered
my $x_delivered = "SELECT count(*) FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
                    WHERE d.order_id LIKE 'X-%' AND b.state IN ('uploaded', 'answered')";
ok(wait_until(sub {
			sq("UPDATE flexfactor.batches SET next_attempt_at = now() WHERE state = 'ready'");
			sq('SELECT flexfactor.ff_export_batch()');
			sq($x_delivered) eq '4000' }, 60),
	'after the cancel, further exports deliver the 4,000 X declines');
$sim->scan;
my @x_keys = split /\n/, sq("SELECT idempotency_key FROM flexfactor.decline_status WHERE order_id LIKE 'X-%'");
$sim->check_keys_once('cancel mid-upload', \@x_keys);
unlink "$inbound/$_" for @{ $sim->inbound_files };

# ------------------------------------------------------------------
# 6. kill -9 after the upload, before the caller's transaction commits
# ------------------------------------------------------------------
# ff_export_batch() returns once the worker committed its pass, so the
# caller's transaction holds nothing of the export: here the file is renamed
# into place, the caller's transaction then dies with the server, and nothing
# is sent again.
enqueue('R', 20);
($out, $err) = ('', '');
$h = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('ffdb'),
	  '-c', 'BEGIN', '-c', 'SELECT flexfactor.ff_export_batch()', '-c', 'SELECT pg_sleep(120)', '-c', 'COMMIT' ],
	'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(180));
ok(wait_until(sub {
			@{ finals() } == 1 && sq("SELECT count(*) FROM pg_stat_activity WHERE datname = 'ffdb'
			                          AND wait_event = 'PgSleep'") eq '1' }, 60),
	'the file is in inbound and the exporting transaction is still open');
my $first_file = finals()->[0];
$scan = $sim->scan;
is($scan->[0]{accepted}, 20, 'FlexFactor processed it: 20 lines accepted');
$pid = sq("SELECT pid FROM pg_stat_activity WHERE datname = 'ffdb' AND wait_event = 'PgSleep'");
$offset = -s $node->logfile;
kill 'KILL', $pid;
$h->finish;
wait_recovered($offset);
my $pending = sq("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'R-%' AND state = 'pending'");
note "after the crash, $pending of the 20 declines are pending again";
my $n = sq('SELECT flexfactor.ff_export_batch()');
note "the next export uploaded $n file(s): " . join(' ', @{ finals() });
my @r_keys = split /\n/, sq("SELECT idempotency_key FROM flexfactor.decline_status WHERE order_id LIKE 'R-%'");
$sim->scan;
my $batches = $sim->batches;
my @r_files = grep { my $b = $_; grep { ($_->{orderId} // '') =~ /^R-/ } @{ $b->{lines} } } @$batches;
is(scalar @r_files, 1, 'FlexFactor received the declines R-* in one file only (nothing doubled)')
  or diag explain [ map { { file => $_->{file}, status => $_->{status}, lines => $_->{lineCount} } } @r_files ];
$sim->check_keys_once('crash after upload, before commit', \@r_keys);
is(sq("SELECT count(*) FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
        WHERE d.order_id LIKE 'R-%' AND b.state IN ('uploaded', 'answered')"), '20',
	'each R-* decline is in an uploaded batch');

# ------------------------------------------------------------------
# 7. After all this
# ------------------------------------------------------------------
is(sq("SELECT count(*) FROM (SELECT f.decline_id FROM flexfactor.batches b
         CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) f
         WHERE b.requeued_as IS NULL GROUP BY f.decline_id HAVING count(*) > 1) d"), '0', 'no decline is a line of two batch files');
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE state <> 'batched'"), '0', 'no decline left behind');
is(sq("SELECT count(*) FROM flexfactor.batches WHERE state NOT IN ('uploaded', 'answered')"), '0',
	'every batch uploaded');
is(scalar @{ $sim->idempotency->{acceptedMoreThanOnce} }, 0, 'the simulator accepted no key twice');

$node->stop;
$relay->stop;
$sim->stop;
$sshd->stop;
done_testing();
