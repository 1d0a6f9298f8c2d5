# Long-running behaviour of the worker and the webhook listener, measured on
# the live processes (/proc/<pid>/fd, pg_log_backend_memory_contexts(),
# pg_stat_activity, pg_locks, pg_stat_user_tables):
#
#  1. ProcSignalBarriers (DROP DATABASE of another database) and memory
#     context logging while the worker waits for a TCP connect that never
#     completes (a loopback socket whose backlog is full): no crash, the
#     worker keeps its pid, the postmaster did not reinitialise.
#  2. 100 export passes whose SFTP connect fails after TCP (host key not
#     pinned): the worker's fd count and its ESTABLISHED connections to the
#     SSH server stay flat, its memory grows by less than a fixed bound.
#  3. Result files: a valid one applied although an unreadable, an
#     oversized and a bogus one sort before it; each bad one is warned about
#     once over 60 passes; a late error file does not undo an answered batch;
#     memory stays bounded (062 reads large files and refused ones further).
#  4. 20,000 refused webhook requests: the listener's memory grows by less
#     than a fixed bound, and autovacuum sees the inserts (n_tup_ins).
#  5. Bad API credentials stop only the transmit phase: ff_export_batch()
#     still uploads at once; once fixed, ff_worker_status() shows no error.
#  6. No transaction id, snapshot or queue lock held by the worker while a
#     /transmit answer takes 5 s and while an upload is stalled mid-file.
#  7. The worker leaves its database mid-upload in time for a RENAME, and a
#     transmit queued while an upload is stalled is delivered within 4 s.
#  8. COMMIT PREPARED wakes the worker.
#  9. One poison answer (jsonb refuses it) sets only its own row aside.
use strict;
use warnings;
use IO::Socket::INET;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Socket qw(SOMAXCONN);
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $t_start = Time::HiRes::time();
my $mid = '0c2d9e4f-3a5b-4c6d-8e7f-1a2b3c4d5e60';
my $tmp = PostgreSQL::Test::Utils::tempdir('fflong060');
my $sshd = FFSshd->start("$tmp/sshd");
my $relay = FFSshd::Relay->start(target_port => $sshd->port);
my $sim = FFSim->start(name => 'ffsim_060', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts", ports => [ $sshd->port, $relay->port ]);
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $outbound = $sim->outbound_dir;

my $node = ff_node('long060',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $outbound,
		known_hosts => $known_hosts),
	'flexfactor.sftp_timeout_ms' => '5000',
	'flexfactor.batch_retry_base' => '1',
	'flexfactor.transmit_retry_base_ms' => '200',
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
	'max_prepared_transactions' => '2',
	'log_error_verbosity' => 'verbose');    # SQLSTATEs in the server log
ff_start_serving($node, 'ffdb', "ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");
my $lpid = FFSim::wait_for_listener($node, $wport);

sub sq { $node->safe_psql('ffdb', $_[0]) }
sub wpid { ff_worker_pid($node, 'ffdb') }

sub reload_worker { ff_reload_and_wait($node, 'ffdb', join('; ', @_)) }

# complete bodies, as the simulator requires
my $n_decl = 0;
sub enqueue_declines
{
	my ($prefix, $n) = @_;
	sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline('$prefix-' || i, 1999, 'USD',
	      'tok-' || i, 'tx-$prefix-' || i, email => 'jane\@example.com', first_name => 'Jane',
	      last_name => 'Roe', address_line1 => '1 Main St', city => 'Springfield', country_code => 'US',
	      subscription_id => 'sub-' || i, subscription_interval => 'monthly',
	      declined_at => '2026-11-24 09:30+00', expiry => now() + interval '14 days')))
	    FROM generate_series(1, $n) i");
}

sub transmit_payment
{
	my ($id) = @_;
	sq("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('$id', 2500, 'USD', 'ptx-$id',
	      email => 'jane\@example.com', paid_at => '2026-11-24 09:30+00', subscription_id => 'sub-1',
	      subscription_interval => 'monthly'))");
}

sub export { ff_run_sql($node, 'ffdb', "SET statement_timeout = '20s'; SELECT flexfactor.ff_export_batch()") }

sub fd_count
{
	my ($pid) = @_;
	opendir(my $d, "/proc/$pid/fd") or die "cannot read /proc/$pid/fd: $!";
	my $n = grep { !/^\./ } readdir($d);
	closedir $d;
	return $n;
}

sub rss_kb { ff_proc_kb($_[0], 'VmRSS') }

# ESTABLISHED TCP connections to 127.0.0.1:$port
sub established_to
{
	my ($port) = @_;
	my $hex = sprintf('0100007F:%04X', $port);
	return scalar grep { (split ' ')[2] eq $hex && (split ' ')[3] eq '01' }
	  grep { /^\s*\d+:/ } split /\n/, slurp_file('/proc/net/tcp');
}

# whether $pid has a TCP socket in SYN_SENT to 127.0.0.1:$port
sub syn_sent_to
{
	my ($pid, $port) = @_;
	my %inodes;
	opendir(my $d, "/proc/$pid/fd") or return 0;
	for (readdir $d)
	{
		my $l = readlink("/proc/$pid/fd/$_") // '';
		$inodes{$1} = 1 if $l =~ /^socket:\[(\d+)\]/;
	}
	closedir $d;
	my $hex = sprintf('0100007F:%04X', $port);
	for (split /\n/, slurp_file('/proc/net/tcp'))
	{
		my @f = split ' ';
		next unless @f > 9 && $f[0] =~ /^\d+:$/;
		return 1 if $f[2] eq $hex && $f[3] eq '02' && $inodes{ $f[9] };
	}
	return 0;
}

sub hwm_kb { ff_proc_kb($_[0], 'VmHWM') }

# Grand total and TopMemoryContext's own total (bytes) of $pid, taken while it is idle.
sub memory_of { ff_memory_of($node, 'ffdb', $_[0]) }

# ------------------------------------------------------------------
# 1. Barriers and memory-context logging during a TCP connect that hangs
# ------------------------------------------------------------------
# a listening socket with a full backlog: further SYNs are dropped, so a
# connect to it stays in progress until the worker's timeout
my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 0,
	Proto => 'tcp', ReuseAddr => 1) or die "listen: $!";
my @fillers;
for (1 .. 4)
{
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $hole->sockport,
		Proto => 'tcp', Blocking => 0);
	push @fillers, $s if $s;
	Time::HiRes::sleep(0.05);
}
my $wpid = wpid();
my $started = sq('SELECT pg_postmaster_start_time()');
reload_worker("ALTER SYSTEM SET flexfactor.sftp_port = " . $hole->sockport,
	"ALTER SYSTEM SET flexfactor.sftp_timeout_ms = 8000",
	"ALTER SYSTEM SET flexfactor.batch_interval = 1");
ok(ff_wait_until(sub { syn_sent_to($wpid, $hole->sockport) }, 30),
	'crash: the worker waits for a TCP connect that hangs (SYN_SENT)');
my $off = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE ff060_other');
$node->safe_psql('postgres', 'DROP DATABASE ff060_other');
$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($wpid)");
$node->safe_psql('postgres', 'CREATE DATABASE ff060_other2');
$node->safe_psql('postgres', 'DROP DATABASE ff060_other2');
ok(ff_wait_until(sub { ff_log_contains($node, qr/\[$wpid\] [^\n]*?LOG:  (?:00000: )?Grand total:/, $off) }, 20),
	'crash: the worker logged its memory contexts while connecting');
ok(ff_wait_until(sub { syn_sent_to($wpid, $hole->sockport) }, 20),
	'crash: and goes on connecting after the barriers');
Time::HiRes::sleep(0.5);
is(sq('SELECT pg_postmaster_start_time()'), $started, 'crash: the postmaster did not reinitialise');
is(wpid(), $wpid, 'crash: the worker kept its pid');
unlike(ff_log_since($node, $off), qr/terminated by signal|was terminated|reinitializing|double free|corrupted/,
	'crash: no process was terminated');
reload_worker("ALTER SYSTEM SET flexfactor.sftp_port = " . $sshd->port,
	"ALTER SYSTEM SET flexfactor.sftp_timeout_ms = 5000",
	"ALTER SYSTEM SET flexfactor.batch_interval = 0");
close $_ for @fillers;
close $hole;

# ------------------------------------------------------------------
# 2. 100 passes whose SFTP connect fails after TCP (host key not pinned)
# ------------------------------------------------------------------
my $other_kh = $sshd->write_known_hosts("$tmp/known_hosts_other", ports => [1]);
reload_worker("ALTER SYSTEM SET flexfactor.sftp_known_hosts_file = '$other_kh'");
my $r = export();
is($r->{warnings}[0][0], 'FF031', 'host key: the connect is refused (FF031)') or diag $r->{stderr};
export() for 1 .. 5;    # warm-up: caches, plans
$wpid = wpid();
my ($fd0, $est0, $rss0) = (fd_count($wpid), established_to($sshd->port), rss_kb($wpid));
my ($mem0, $top0) = memory_of($wpid);
my $t0 = Time::HiRes::time();
my $refused = 0;
for (1 .. 100)
{
	my $x = export();
	$refused++ if ($x->{warnings}[0][0] // '') eq 'FF031';
}
my $secs = Time::HiRes::time() - $t0;
is($refused, 100, 'host key: 100 more passes, each refused');
my ($fd1, $est1, $rss1) = (fd_count($wpid), established_to($sshd->port), rss_kb($wpid));
my ($mem1, $top1) = memory_of($wpid);
diag sprintf('host key: 100 passes in %.1f s; fds %d -> %d; ESTABLISHED %d -> %d; RSS %d -> %d kB; '
	  . 'memory %d -> %d bytes (TopMemoryContext %d -> %d)',
	$secs, $fd0, $fd1, $est0, $est1, $rss0, $rss1, $mem0, $mem1, $top0, $top1);
ok($fd1 <= $fd0 + 1, "host key: the worker's open files stay flat ($fd0 -> $fd1)");
ok($est1 <= $est0, "host key: no connection left open on the SSH server ($est0 -> $est1)");
ok($mem1 - $mem0 < 65536, "host key: memory grew by less than 64 kB (" . ($mem1 - $mem0) . ' bytes)');
ok($top1 - $top0 < 16384, 'host key: TopMemoryContext grew by less than 16 kB (' . ($top1 - $top0) . ' bytes)');
ok($rss1 - $rss0 < 4096, 'host key: RSS grew by less than 4 MB (' . ($rss1 - $rss0) . ' kB)');
is(wpid(), $wpid, 'host key: same worker throughout');
reload_worker("ALTER SYSTEM SET flexfactor.sftp_known_hosts_file = '$known_hosts'");

# ------------------------------------------------------------------
# 3. Result files: bad ones sort first, are refused once, never block
# ------------------------------------------------------------------
enqueue_declines('R', 3);
is(export()->{stdout}, '1', 'results: a batch uploaded');
my ($rb, $rfile) = split /\|/, sq("SELECT id, file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1");
$sim->scan;
(my $result_name = $rfile) =~ s/\.jsonl$/.result.jsonl/;
ok(-f "$outbound/$result_name", 'results: the simulator answered the batch');
# bad files that sort before it
my @bad = ('evaluate_00_oversized.result.jsonl', 'evaluate_01_bogus.result.jsonl',
	'evaluate_02_unreadable.result.jsonl');
{
	open(my $f, '>', "$outbound/$bad[0]") or die;
	print $f ('{"sequenceNumber": 1, "status": "APPROVED", "pad": "' . ('x' x 1000) . "\"}\n") x 5000;
	close $f;
	open($f, '>', "$outbound/$bad[1]") or die;
	print $f qq({"sequenceNumber": 1, "status": "APPROVED"}\n);
	close $f;
	open($f, '>', "$outbound/$bad[2]") or die;
	print $f qq({"sequenceNumber": 1}\n);
	close $f;
	chmod 0000, "$outbound/$bad[2]";
}
$off = -s $node->logfile;
$r = export();
is(sq("SELECT state FROM flexfactor.batches WHERE id = $rb"), 'answered',
	'results: the valid file was applied although three bad ones sort before it');
ok(!-f "$outbound/$result_name", 'results: and removed from the outbound folder');
export() for 1 .. 5;
($mem0, $top0) = memory_of($wpid);
$rss0 = rss_kb($wpid);
export() for 1 .. 60;
($mem1, $top1) = memory_of($wpid);
$rss1 = rss_kb($wpid);
my $log = ff_log_since($node, $off);
for my $b (@bad)
{
	my $n = () = $log =~ /WARNING:  \S+: flexfactor worker could not apply result file "\Q$b\E"/g;
	is($n, 1, "results: $b is warned about once over 66 passes");
}
like($log, qr/result file \Q$bad[0]\E answers no known batch/,
	'results: the oversized file is refused before it is read (it answers no batch)');
diag sprintf('results: 60 passes; memory %d -> %d bytes (TopMemoryContext %d -> %d); RSS %d -> %d kB',
	$mem0, $mem1, $top0, $top1, $rss0, $rss1);
ok($mem1 - $mem0 < 65536, 'results: memory grew by less than 64 kB (' . ($mem1 - $mem0) . ' bytes)');
ok($rss1 - $rss0 < 4096, 'results: RSS grew by less than 4 MB (' . ($rss1 - $rss0) . ' kB)');

# a result file of almost 4 MB that names a real batch is read and parsed
# (and refused: it does not match the batch): the worker's peak RSS
enqueue_declines('M', 1);
is(export()->{stdout}, '1', 'results: another batch uploaded');
my $mfile = sq("SELECT file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1");
(my $mresult = $mfile) =~ s/\.jsonl$/.result.jsonl/;
{
	open(my $f, '>', "$outbound/$mresult") or die;
	my $line = '{"sequenceNumber": 1, "status": "APPROVED", "pad": "' . ('x' x 900) . "\"}\n";
	print $f $line x int(4_000_000 / length $line);
	close $f;
}
my $hwm0 = hwm_kb($wpid);
$r = export();
like($r->{stderr}, qr/does not match batch/, 'results: the large file was read, parsed and refused');
my $hwm1 = hwm_kb($wpid);
diag sprintf('results: a %d-byte result file: peak RSS %d -> %d kB', -s "$outbound/$mresult", $hwm0, $hwm1);
ok($hwm1 - $hwm0 < 262144, 'results: applying it needed less than 256 MB (' . ($hwm1 - $hwm0) . ' kB)');
unlink "$outbound/$mresult";

# a late error file for the answered batch
(my $error_name = $rfile) =~ s/\.jsonl$/.error.json/;
{
	open(my $f, '>', "$outbound/$error_name") or die;
	print $f qq({"error": "late"});
	close $f;
}
$r = export();
like($r->{stderr}, qr/error file \Q$error_name\E arrived after batch $rb was answered/,
	'results: a late error file is refused') or diag $r->{stderr};
is(sq("SELECT state FROM flexfactor.batches WHERE id = $rb"), 'answered', 'results: the batch stays answered');
is(sq("SELECT count(*) FROM flexfactor.declines WHERE order_id LIKE 'R-%' AND set_aside_reason IS NOT NULL"),
	'0', 'results: its declines are not set aside');
chmod 0644, "$outbound/$bad[2]";
unlink map { "$outbound/$_" } @bad, $error_name;

# ------------------------------------------------------------------
# 4. 20,000 refused webhook requests
# ------------------------------------------------------------------
# $n requests to an unknown path over kept-alive connections; returns how many got 404
sub refused_requests
{
	my ($n) = @_;
	my ($sock, $buf, $got) = (undef, '', 0);
	for my $i (1 .. $n)
	{
		$sock //= IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport, Proto => 'tcp')
		  or die "connect: $!";
		syswrite($sock, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n") or do { undef $sock; redo };
		my $resp = '';
		while ($resp !~ /\r\n\r\n/ || length($resp) < length($`) + 4 + (($resp =~ /Content-Length: (\d+)/i)[0] // 0))
		{
			my $k = sysread($sock, $resp, 4096, length $resp);
			last unless $k;
		}
		$got++ if $resp =~ m{^HTTP/1\.1 404};
		undef $sock if $resp =~ /Connection: close/i || $resp eq '';
	}
	return $got;
}
$lpid = FFSim::listener_pid($node);
refused_requests(500);    # warm-up
my $refused0 = sq("SELECT refused FROM flexfactor.ff_webhook_refusals() WHERE reason = 'unknown path'");
($mem0, $top0) = memory_of($lpid);
$rss0 = rss_kb($lpid);
$t0 = Time::HiRes::time();
is(refused_requests(20000), 20000, 'listener: 20,000 requests refused with 404');
$secs = Time::HiRes::time() - $t0;
($mem1, $top1) = memory_of($lpid);
$rss1 = rss_kb($lpid);
diag sprintf('listener: 20,000 refusals in %.1f s; memory %d -> %d bytes (TopMemoryContext %d -> %d); RSS %d -> %d kB',
	$secs, $mem0, $mem1, $top0, $top1, $rss0, $rss1);
ok($mem1 - $mem0 < 65536, 'listener: memory grew by less than 64 kB (' . ($mem1 - $mem0) . ' bytes)');
ok($top1 - $top0 < 16384, 'listener: TopMemoryContext grew by less than 16 kB (' . ($top1 - $top0) . ' bytes)');
is(FFSim::listener_pid($node), $lpid, 'listener: same process throughout');
is(sq("SELECT refused - $refused0 FROM flexfactor.ff_webhook_refusals() WHERE reason = 'unknown path'"), '20000',
	'listener: every refusal is counted in shared memory');
ok($node->poll_query_until('ffdb', "SELECT n_tup_ins + n_tup_upd > 0 FROM pg_stat_user_tables
      WHERE relid = 'flexfactor.webhook_refusal_counts'::regclass"),
	'listener: the counts are flushed and the statistics see it (autovacuum sees them)');

# ------------------------------------------------------------------
# 5. Bad credentials stop only the transmit phase
# ------------------------------------------------------------------
$off = -s $node->logfile;
$sim->revoke_tokens;
reload_worker("ALTER SYSTEM SET flexfactor.app_secret = 'wrong-secret-value'");
transmit_payment('P-5');
ok(ff_wait_until(sub { ff_log_contains($node, qr/WARNING:  FF004: flexfactor worker could not send queued transmits/, $off) }, 30),
	'isolation: the transmit phase fails with FF004, logged with its SQLSTATE');
enqueue_declines('I', 2);
$t0 = Time::HiRes::time();
$r = export();
is($r->{stdout}, '1', 'isolation: ff_export_batch() still uploads while the API refuses the credentials')
  or diag $r->{stderr};
ok(Time::HiRes::time() - $t0 < 10, 'isolation: and returns at once');
like(sq("SELECT last_error FROM flexfactor.ff_worker_status() WHERE role = 'worker'"),
	qr/credentials|secret|401|FF004|token/i, 'isolation: ff_worker_status() shows the transmit failure');
reload_worker("ALTER SYSTEM RESET flexfactor.app_secret");
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload->>'orderId' = 'P-5' OR payload::text LIKE '%P-5%'"),
	'isolation: once fixed, the transmit is delivered');
ok($node->poll_query_until('ffdb', "SELECT last_error IS NULL AND state = 'idle'
      FROM flexfactor.ff_worker_status() WHERE role = 'worker'"),
	'isolation: ff_worker_status() then shows no stale error and an idle state');

# ------------------------------------------------------------------
# 6. No xid, snapshot or lock across network I/O
# ------------------------------------------------------------------
$wpid = wpid();
my $held = "SELECT (a.backend_xid IS NOT NULL)::int + (a.backend_xmin IS NOT NULL)::int
                 + (SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                     WHERE l.pid = a.pid AND c.relname IN ('transmit_queue', 'declines', 'batches'))
            FROM pg_stat_activity a WHERE a.pid = $wpid";
$sim->fault(endpoint => '/v1/transmit', mode => 'hang', seconds => 5, count => 1);
transmit_payment('P-6');
ok($node->poll_query_until('ffdb', "SELECT query = 'flexfactor: sending queued transmits'
      FROM pg_stat_activity WHERE pid = $wpid"), 'network: the worker waits for a /transmit answer');
my @seen;
for (1 .. 6) { push @seen, sq($held); Time::HiRes::sleep(0.4); }
is(join(',', @seen), '0,0,0,0,0,0', 'network: during the 5 s answer, no xid, no xmin, no lock on the queues');
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload::text LIKE '%P-6%'"), 'network: the transmit is then delivered');

reload_worker("ALTER SYSTEM SET flexfactor.sftp_port = " . $relay->port,
	"ALTER SYSTEM SET flexfactor.sftp_timeout_ms = 15000");
$relay->freeze_after(40000);
enqueue_declines('U', 200);
my ($stdout, $stderr) = ('', '');
my $h = IPC::Run::start([ 'psql', '-X', '-A', '-t', '-d', $node->connstr('ffdb'), '-c',
		'SELECT flexfactor.ff_export_batch()' ], '>', \$stdout, '2>', \$stderr);
ok($relay->wait_frozen(30), 'network: the upload is stalled mid-file');
ok($node->poll_query_until('ffdb', "SELECT query = 'flexfactor: uploading a batch' FROM pg_stat_activity WHERE pid = $wpid"),
	'network: the worker is uploading');
# While the upload waits, the worker gives the transmit queue its turn every
# second (a short transaction of its own, under another activity): a sample
# counts only when the worker is in the upload itself.
my $held_uploading = "SELECT CASE WHEN a.query = 'flexfactor: uploading a batch' THEN ($held) END
                        FROM pg_stat_activity a WHERE a.pid = $wpid";
@seen = ();
for (1 .. 8) { push @seen, sq($held_uploading); Time::HiRes::sleep(0.2); }
my @uploading = grep { $_ ne '' } @seen;
cmp_ok(scalar @uploading, '>=', 4, 'network: most samples find the worker in the stalled upload (' . join(',', @seen) . ')');
is(join(',', grep { $_ ne '0' } @uploading), '', 'network: during the stalled upload, no xid, no xmin, no lock');

# 7. a worker in a long pass leaves in time for ALTER DATABASE ... RENAME
sq("SELECT pg_cancel_backend(pid) FROM pg_stat_activity
     WHERE query LIKE '%ff_export_batch()%' AND pid <> pg_backend_pid()");
$h->finish;
$r = ff_run_sql($node, 'postgres', 'ALTER DATABASE ffdb RENAME TO ffdb_renamed');
is($r->{ret}, 0, 'leave: the worker left its database mid-upload, in time for RENAME') or diag $r->{stderr};
$node->safe_psql('postgres', 'ALTER DATABASE ffdb_renamed RENAME TO ffdb') if $r->{ret} == 0;
$wpid = ff_wait_for_worker($node, 'ffdb');

# 8. a stalled upload does not hold up the transmit queue
($stdout, $stderr) = ('', '');
$h = IPC::Run::start([ 'psql', '-X', '-A', '-t', '-d', $node->connstr('ffdb'), '-c',
		'SELECT flexfactor.ff_export_batch()' ], '>', \$stdout, '2>', \$stderr);
ok($relay->wait_frozen(30, 2), 'latency: the upload is stalled again');
diag 'latency: the worker: ' . sq("SELECT state || ' | ' || query || ' | ' || coalesce(wait_event, '-') FROM pg_stat_activity WHERE pid = $wpid");
$t0 = Time::HiRes::time();
transmit_payment('P-7');
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload::text LIKE '%P-7%'"), 'latency: a transmit queued during the stalled upload is delivered');
my $latency = Time::HiRes::time() - $t0;
ok($latency < 4, sprintf('latency: within %.1f s (bound 4 s), the upload still stalled', $latency));
ok($h->pumpable && $stdout eq '', 'latency: ff_export_batch() was still waiting for the upload');
$relay->pass;    # cuts the frozen connection: the upload is retried
$h->finish;
sq("UPDATE flexfactor.batches SET next_attempt_at = now() WHERE state = 'ready'");
export();    # (the new worker's first pass may have uploaded it already)
is(sq("SELECT count(*) FROM flexfactor.batches WHERE state = 'ready'"), '0',
	'network: the batch is uploaded once the server moves again');

# 9. COMMIT PREPARED wakes the worker (its PREPARE ran the commit callbacks)
transmit_payment('P-9a');
$node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue WHERE payload::text LIKE '%P-9a%'");
sq("BEGIN; SELECT flexfactor.ff_transmit(flexfactor.ff_payment('P-9b', 2500, 'USD', 'ptx-P-9b',
      email => 'jane\@example.com', paid_at => '2026-11-24 09:30+00', subscription_id => 'sub-1',
      subscription_interval => 'monthly')); PREPARE TRANSACTION 'ff060'");
$t0 = Time::HiRes::time();
sq("COMMIT PREPARED 'ff060'");
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload::text LIKE '%P-9b%'"), 'prepared: the transmit is delivered');
$latency = Time::HiRes::time() - $t0;
ok($latency < 2.5, sprintf('prepared: within %.1f s of COMMIT PREPARED (bound 2.5 s; the worker ticks every 5 s)', $latency));

# 10. one poison answer sets only its own row aside
$sim->fault(endpoint => '/v1/transmit', mode => 'poison', count => 1);
sq("BEGIN; " . join('; ', map { "SELECT flexfactor.ff_transmit(flexfactor.ff_payment('P-10$_', 2500, 'USD',
      'ptx-P-10$_', email => 'jane\@example.com', paid_at => '2026-11-24 09:30+00',
      subscription_id => 'sub-1', subscription_interval => 'monthly'))" } qw(a b c)) . "; COMMIT");
ok($node->poll_query_until('ffdb', "SELECT count(*) FILTER (WHERE state = 'pending') = 0
      FROM flexfactor.transmit_queue WHERE payload::text ~ 'P-10[abc]'"), 'poison: the three rows are handled');
is(sq("SELECT string_agg(state || ':' || coalesce((last_error LIKE 'FlexFactor''s answer could not be processed: %')::text, ''),
         ',' ORDER BY state) FROM flexfactor.transmit_queue WHERE payload::text ~ 'P-10[abc]'"),
	'delivered:,delivered:,set_aside:true',
	'poison: the row with the poison answer is set aside with the reason, the others are delivered');

is(sq('SELECT pg_postmaster_start_time()'), $started, 'the postmaster never reinitialised');
diag sprintf('060 took %.0f s', Time::HiRes::time() - $t_start);
$node->stop;
done_testing();
