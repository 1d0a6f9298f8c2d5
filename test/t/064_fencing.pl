# Fencing (issue 17): a worker whose postmaster is gone stops at once, two
# attempts at one batch never share a file, only a complete file gets a
# final name, and a read-only server does no export work.  One node; a
# watcher samples the inbound folder every few milliseconds throughout and
# fails the suite if a final-named file ever holds other bytes than its
# batch's (a hole of NUL bytes, a short or a long file).
#
#  1. kill -9 of the postmaster while an upload is held mid-file and the
#     worker waits for a held /transmit answer: the worker exits at once,
#     records nothing, never renames; after release nothing of it reaches a
#     final name; after the restart the batch is uploaded whole.
#  2. Two attempts interleaving: another writer truncates and rewrites "its"
#     temporary file while ours is held (what the other node did in the
#     issue); a temporary file that is longer than what was sent; the final
#     file already in place, identical (left as it is) or different
#     (replaced by the verified file); stale temporary files of dead attempts
#     removed, nothing else.
#  3. default_transaction_read_only = on: no export or transmit work, no
#     WARNING or ERROR in the log, ff_export_batch() answers at once, the
#     webhook listener answers 503; once writable, everything leaves and a
#     delivery is stored.
#  4. Both nodes write the same bytes: a streaming standby with another
#     TimeZone, DateStyle and extra_float_digits rebuilds every batch file
#     with the SHA-256 the primary recorded.
use strict;
use warnings;
use Digest::SHA ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFInbound;
use FFSim;
use FFSshd;

my $mid = '7d1e2f30-4a5b-4c6d-9e8f-0a1b2c3d4e5f';
my $tmp = PostgreSQL::Test::Utils::tempdir('fffence062');
my $sshd = FFSshd->start("$tmp/sshd");
my $relay = FFSshd::Relay->start(target_port => $sshd->port);
my $sim = FFSim->start(name => 'ffsim_062', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $inbound = $sim->inbound_dir;
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts", ports => [ $sshd->port, $relay->port ]);
my $wport = PostgreSQL::Test::Cluster::get_free_port();

my $node = ff_node('fence062',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '1',
		'flexfactor.http_timeout_ms' => '30000'),
	$sshd->node_settings(inbound => $inbound, outbound => $sim->outbound_dir,
		known_hosts => $known_hosts, port => $relay->port),
	'flexfactor.sftp_timeout_ms' => '60000',
	'flexfactor.batch_retry_base' => '1',
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
	'log_error_verbosity' => 'verbose',
	allows_streaming => 1);
ff_start_serving($node, 'ffdb', "ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");
my $watch = FFInbound->watch($inbound);

sub sq { $node->safe_psql('ffdb', $_[0]) }
sub enqueue { FFSim::enqueue_declines($node, 'ffdb', @_) }
sub batch_of { ff_batch_of($node, 'ffdb', $_[0]) }
sub finals { [ grep { !/\.part$/ && !/^\./ } @{ $sim->inbound_files } ] }
sub parts { [ grep { /\.part$/ } @{ $sim->inbound_files } ] }

sub wait_uploaded
{
	my ($prefix, $n) = @_;
	return $node->poll_query_until('ffdb',
		"SELECT count(*) = $n FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
		  WHERE d.order_id LIKE '$prefix-%' AND b.state IN ('uploaded', 'answered')");
}

sub transmit_payment
{
	my ($id) = @_;
	sq("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('$id', 2500, 'USD', 'ptx-$id',
	      email => 'jane\@example.com', paid_at => '2026-11-24 09:30+00', subscription_id => 'sub-1',
	      subscription_interval => 'monthly'))");
}

# The batch of the declines "$prefix-*", once fixed: its id, file name, and
# the size and SHA-256 of its file, which the watcher then expects.
sub fixed_batch
{
	my ($prefix) = @_;
	my $id = ff_wait_until(sub { my $b = batch_of($prefix); $b =~ /^\d+$/ ? $b : undef }, 60)
	  or die "no batch for $prefix";
	my ($name, $size, $sha) = split /\|/, sq(
		"SELECT b.file_name, octet_length(c), encode(sha256(convert_to(c, 'UTF8')), 'hex')
		   FROM flexfactor.batches b,
		        (SELECT string_agg(line || E'\\n', '' ORDER BY sequence_number) c
		           FROM flexfactor.batch_file_lines($id)) f
		  WHERE b.id = $id");
	$watch->expect($name, $size, $sha);
	return { id => $id, name => $name, size => $size, sha => $sha };
}

# The bytes of a batch's file, from its rows.
sub batch_bytes
{
	my ($b) = @_;
	my $bytes = sq("SELECT line FROM flexfactor.batch_file_lines($b->{id}) ORDER BY sequence_number") . "\n";
	die 'batch_file_lines does not give the recorded bytes' unless Digest::SHA::sha256_hex($bytes) eq $b->{sha};
	return $bytes;
}

# The temporary file our worker is writing for batch $b (the only one named
# after it), waiting until it exists.
sub temp_of
{
	my ($b) = @_;
	my $t = ff_wait_until(sub { my @p = grep { index($_, "$b->{name}.") == 0 } @{ parts() }; @p == 1 ? $p[0] : undef }, 30);
	die "no temporary file for $b->{name}: @{ $sim->inbound_files }" unless $t;
	return $t;
}

sub sha_of { Digest::SHA::sha256_hex(FFSim::_slurp_bytes("$inbound/$_[0]")) }

# Queue $n declines "$prefix-*" with the relay set to hold the upload after
# $at bytes; returns their batch (fixed_batch) once the upload is held, with
# {temp}, our temporary file.
sub held_upload
{
	my ($what, $prefix, $n, $at) = @_;
	$relay->freeze_after($at);
	enqueue($prefix, $n);
	ok($relay->wait_frozen(60), "$what: our upload is held mid-file");
	my $b = fixed_batch($prefix);
	$b->{temp} = temp_of($b);
	return $b;
}

# Put $bytes in inbound under $name at once (written aside, then renamed).
sub put_file
{
	my ($name, $bytes) = @_;
	open(my $fh, '>:raw', "$inbound/.put") or die "open: $!";
	print $fh $bytes;
	close $fh;
	rename("$inbound/.put", "$inbound/$name") or die "rename: $!";
}

# pids of the postmaster's children
sub children_of
{
	my ($ppid) = @_;
	my @kids;
	opendir(my $d, '/proc') or die "/proc: $!";
	for my $p (grep { /^\d+$/ } readdir $d)
	{
		my $stat = eval { slurp_file("/proc/$p/stat") } // next;
		push @kids, $p if $stat =~ /^\d+ \(.*\) \S (\d+) / && $1 == $ppid;
	}
	closedir $d;
	return @kids;
}

# whether $pid still runs (an exited child of a dead postmaster may stay a
# zombie until init reaps it)
sub running
{
	my ($pid) = @_;
	my $stat = eval { slurp_file("/proc/$pid/stat") } // return 0;
	return $stat !~ /^\d+ \(.*\) [ZX] /;
}

sub check_watch
{
	my ($what) = @_;
	my $r = $watch->report;
	ok($r->{samples} > 100, "$what: the watcher sampled the inbound folder ($r->{samples} samples)");
	is_deeply($r->{bad}, [], "$what: no final-named file was ever incomplete or corrupt");
}

# ------------------------------------------------------------------
# 1. kill -9 of the postmaster mid-upload, with a /transmit answer held
# ------------------------------------------------------------------
$relay->freeze_after(300_000);
is(enqueue('K', 1000), '1000', 'pm death: 1,000 declines queued (a file of about 1 MB)');
ok($relay->wait_frozen(60), 'pm death: the upload is held mid-file');
my $bk = fixed_batch('K');
my $temp_k = temp_of($bk);
my $wpid = ff_worker_pid($node, 'ffdb');
$sim->fault(endpoint => '/v1/transmit', mode => 'hang', seconds => 20, count => 1);
transmit_payment('T-K');
ok($node->poll_query_until('ffdb', "SELECT query = 'flexfactor: sending queued transmits'
      FROM pg_stat_activity WHERE pid = $wpid"),
	'pm death: meanwhile the worker waits for a /transmit answer (held 20 s)');
my $pmpid = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @old = children_of($pmpid);
ok(grep({ $_ == $wpid } @old), 'pm death: the worker is a child of the postmaster');
my $size_at_kill = -s "$inbound/$temp_k";
my $offset = -s $node->logfile;
my $t0 = Time::HiRes::time();
$node->kill9;
my $gone = ff_wait_until(sub { !running($wpid) }, 30);
my $took = Time::HiRes::time() - $t0;
ok($gone && $took < 1, sprintf('pm death: the worker exits at once (%.2f s after the kill; the answer was held 20 s)', $took));
like(ff_log_since($node, $offset), qr/flexfactor worker exits at once: the postmaster is gone/,
	'pm death: and says why in the log');
# release the held connection: whatever the dead worker left in the network
# reaches its own temporary file at most
$relay->thaw;
Time::HiRes::sleep(2);
my $size_after = -s "$inbound/$temp_k";
diag sprintf('pm death: temporary file %s: %d bytes at the kill, %d after the release (file: %d)',
	$temp_k, $size_at_kill, $size_after // -1, $bk->{size});
ok(!defined $size_after || $size_after < $bk->{size}, 'pm death: the dead attempt never completed its file');
is_deeply(finals(), [], 'pm death: nothing was renamed into place');
ok(!exists $watch->report->{seen}{ $bk->{name} }, 'pm death: the watcher never saw the final name');
# every process of the old postmaster must be gone before it starts again
ok(ff_wait_until(sub { !grep { running($_) } @old }, 60), 'pm death: every old process is gone');
# (and reaped: a new postmaster refuses to start while they hold shared memory)
ff_wait_until(sub { !grep { kill 0, $_ } @old }, 30);
$node->start;
ff_wait_for_worker($node, 'ffdb');
is(sq("SELECT state || ' ' || attempts FROM flexfactor.transmit_queue WHERE payload::text LIKE '%T-K%'"),
	'pending 0', 'pm death: the dead worker recorded no outcome for the held transmit');
ok(wait_uploaded('K', 1000), 'pm death: after the restart the batch is uploaded');
is(sha_of($bk->{name}), $bk->{sha}, 'pm death: the final file is the whole batch');
sq("UPDATE flexfactor.transmit_queue SET next_attempt_at = now() WHERE payload::text LIKE '%T-K%'");
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload::text LIKE '%T-K%'"), 'pm death: the held transmit is delivered by the new worker');
check_watch('pm death');
$sim->check_delivered($node, 'ffdb', 'pm death', 'K', 1000);    # (FlexFactor takes the file)

# ------------------------------------------------------------------
# 2a. Another writer truncates and rewrites its temporary file meanwhile
# ------------------------------------------------------------------
# In the issue the new primary truncated "<name>.part" and wrote 60 kB while
# the old worker still wrote its later bytes there, then renamed it: the
# final file had a hole.  Here the other writer is this test, using the
# name another node's attempt would use (each attempt has its own).
unlink map { "$inbound/$_" } @{ parts() };
my $bi = held_upload('interleave', 'I', 1000, 300_000);
my $temp_i = $bi->{temp};
(my $other = $temp_i) =~ s/\.\d+-[0-9a-f]{16}\.part$/.99999-00000000deadbeef.part/;
note "ours: $temp_i; the other attempt's: $other";
# the other writer opens its file with truncation, as every attempt once
# did, and writes the first 60 kB
my $head = substr(FFSim::_slurp_bytes("$inbound/$temp_i"), 0, 60_000);
open(my $fh, '>:raw', "$inbound/$other") or die "open: $!";
print $fh $head;
close $fh;
$relay->thaw;
ok(wait_uploaded('I', 1000), 'interleave: our upload finishes');
is(sha_of($bi->{name}), $bi->{sha}, 'interleave: the final file is the whole batch');
ok(-e "$inbound/$other", 'interleave: the other attempt\'s file is left to it (it is fresh)');
ok(!-e "$inbound/$temp_i", 'interleave: our temporary file is gone (renamed)');
check_watch('interleave');

# ------------------------------------------------------------------
# 2b. A temporary file longer than what was sent is never renamed
# ------------------------------------------------------------------
unlink "$inbound/$other";
$offset = -s $node->logfile;
my $bl = held_upload('size check', 'L', 1000, 300_000);
my $temp_l = $bl->{temp};
truncate("$inbound/$temp_l", 3_000_000) or die "truncate: $!";
$relay->thaw;
ok(wait_uploaded('L', 1000), 'size check: the batch is uploaded in the end');
is(sha_of($bl->{name}), $bl->{sha}, 'size check: the final file is the whole batch');
is(sq("SELECT attempts FROM flexfactor.batches WHERE id = $bl->{id}"), '2',
	'size check: at the second attempt');
like(ff_log_since($node, $offset),
	qr/WARNING:  FF033: flexfactor worker could not upload batch $bl->{id} \(\S+\): the uploaded file "\Q$temp_l\E" has 3000000 bytes on the SFTP server, not $bl->{size}/,
	'size check: the first attempt was refused with FF033, naming both sizes');
ok(!-e "$inbound/$temp_l", 'size check: the refused temporary file was removed');
check_watch('size check');

# ------------------------------------------------------------------
# 2c. The final file is already in place, identical: left as it is
# ------------------------------------------------------------------
$offset = -s $node->logfile;
my $bd = held_upload('in place', 'D', 500, 150_000);
put_file($bd->{name}, batch_bytes($bd));
my @st0 = stat("$inbound/$bd->{name}");
$relay->thaw;
ok(wait_uploaded('D', 500), 'in place: the batch is recorded uploaded');
my @st1 = stat("$inbound/$bd->{name}");
is("$st1[1] $st1[9]", "$st0[1] $st0[9]", 'in place: the final file was not replaced (same inode and mtime)');
ok(!-e "$inbound/$bd->{temp}", 'in place: our temporary file was removed');
is(sq("SELECT attempts || ' ' || sha256 FROM flexfactor.batches WHERE id = $bd->{id}"), "1 $bd->{sha}",
	'in place: one attempt, the SHA-256 recorded');
unlike(ff_log_since($node, $offset), qr/(?:WARNING|ERROR):/, 'in place: no warning');

# ------------------------------------------------------------------
# 2d. The final file is in place but different: replaced
# ------------------------------------------------------------------
$offset = -s $node->logfile;
my $bc = held_upload('corrupt in place', 'C', 500, 150_000);
my $bad = batch_bytes($bc);
substr($bad, 10_000, 10_000) = "\0" x 10_000;    # the issue's hole, same size
$watch->expect($bc->{name}, 'ignore');    # a bad file on purpose, until the worker replaced it
put_file($bc->{name}, $bad);
$relay->thaw;
ok(wait_uploaded('C', 500), 'corrupt in place: the batch is uploaded');
$watch->expect($bc->{name}, $bc->{size}, $bc->{sha});
is(sha_of($bc->{name}), $bc->{sha}, 'corrupt in place: the final file is now the whole batch');
like(ff_log_since($node, $offset),
	qr/WARNING:  XX001: flexfactor worker replaced "\Q$bc->{name}\E" on the SFTP server: it held other bytes than batch $bc->{id}/,
	'corrupt in place: a WARNING says it was replaced');

# ------------------------------------------------------------------
# 2e. Stale temporary files of dead attempts are removed, nothing else
# ------------------------------------------------------------------
$relay->pass;
my $old_name = "evaluate_${mid}_20260101T000000Z_9000.jsonl";
my %files = (
	"$old_name.4242-0011223344556677.part" => 'removed',      # ours, 2 h old
	"$old_name.4243-8899aabbccddeeff.part" => 'kept fresh',   # ours, just written
	"${old_name}x.part" => 'kept',                            # not a batch name
	"evaluate_${mid}_20260101T000000Z_9001.jsonl.part" => 'removed',    # an older version's, 2 h old
	"notes.part" => 'kept',
	"evaluate_${mid}_20260101T000000Z_9002.jsonl.bak" => 'kept',
	"transmit_${mid}_20260101T000000Z_9003.jsonl" => 'kept');    # a final name: never touched
for my $f (sort keys %files)
{
	open($fh, '>', "$inbound/$f") or die "open: $!";
	print $fh "x\n";
	close $fh;
	utime(time - 7200, time - 7200, "$inbound/$f") unless $files{$f} eq 'kept fresh';
}
$watch->expect("transmit_${mid}_20260101T000000Z_9003.jsonl", 2, Digest::SHA::sha256_hex("x\n"));
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'cleanup: an export pass (nothing to upload)');
is_deeply({ map { ($_ => (-e "$inbound/$_" ? 'present' : 'removed')) } keys %files },
	{ map { ($_ => ($files{$_} eq 'removed' ? 'removed' : 'present')) } keys %files },
	'cleanup: only stale temporary files named like a batch\'s are removed');
unlink map { "$inbound/$_" } grep { $files{$_} ne 'removed' } keys %files;
check_watch('two attempts');

# ------------------------------------------------------------------
# 3. A read-only server does no export or transmit work, quietly
# ------------------------------------------------------------------
$offset = -s $node->logfile;
my $listener_reloads = "SELECT config_reloads FROM flexfactor.ff_worker_status() WHERE role = 'listener'";
my $lreloads = sq($listener_reloads);
ff_reload_and_wait($node, 'ffdb', 'ALTER SYSTEM SET default_transaction_read_only = on');
ok($node->poll_query_until('ffdb', "SELECT ($listener_reloads) > $lreloads"), 'read-only: the listener reloaded too');
my $event = FFSim::webhook_body(Event => 'order.completed', OrderId => 'a0000000-0000-4000-8000-0000000000f1',
	ExternalOrderId => 'R-1');
my $res = FFSim::post_webhook(port => $wport, body => $event);
is($res->{status}, 503, 'read-only: a webhook delivery is answered 503 (FlexFactor delivers it again)');
sq("SET default_transaction_read_only = off; SELECT " . FFSim::enqueue_declines_sql('R', 20));
sq("SET default_transaction_read_only = off; SELECT flexfactor.ff_transmit(flexfactor.ff_payment('T-R', 2500,
      'USD', 'ptx-T-R', email => 'jane\@example.com', paid_at => '2026-11-24 09:30+00',
      subscription_id => 'sub-1', subscription_interval => 'monthly'))");
$t0 = Time::HiRes::time();
my $r = ff_run_sql($node, 'ffdb', "SET statement_timeout = '20s'; SELECT flexfactor.ff_export_batch()");
ok(Time::HiRes::time() - $t0 < 5, 'read-only: ff_export_batch() answers at once');
is($r->{stdout}, '0', 'read-only: nothing exported');
is($r->{warnings}[0][0], '25006', 'read-only: its WARNING says why, SQLSTATE 25006') or diag $r->{stderr};
Time::HiRes::sleep(4);    # four scheduled passes
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'R-%' AND batch_id IS NULL"), '20',
	'read-only: no batch was fixed');
is(sq("SELECT state || ' ' || attempts FROM flexfactor.transmit_queue WHERE payload::text LIKE '%T-R%'"),
	'pending 0', 'read-only: the transmit was not sent');
is(sq("SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'worker'"),
	'waiting: the server is read-only', 'read-only: ff_worker_status() says so');
my $log = ff_log_since($node, $offset);
my $fpids = join '|', split /\n/, $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'");
my @noise = grep { /\[(?:$fpids)\].*\b(?:WARNING|ERROR):/ } split /\n/, $log;
is_deeply(\@noise, [], 'read-only: no WARNING or ERROR from flexfactor\'s processes in the server log');
is(scalar(() = $log =~ /LOG:  (?:00000: )?flexfactor worker pauses: the server is read-only/g), 1,
	'read-only: one LOG line says the worker pauses');
is(scalar(() = $log =~ /LOG:  (?:00000: )?flexfactor webhook listener pauses: the server is read-only/g), 1,
	'read-only: and one that the listener does');
$lreloads = sq($listener_reloads);
$offset = -s $node->logfile;
ff_reload_and_wait($node, 'ffdb', 'SET default_transaction_read_only = off; ALTER SYSTEM RESET default_transaction_read_only');
ok(wait_uploaded('R', 20), 'read-only: once writable, the batch is uploaded');
ok($node->poll_query_until('ffdb', "SELECT state = 'delivered' FROM flexfactor.transmit_queue
      WHERE payload::text LIKE '%T-R%'"), 'read-only: and the transmit delivered');
like(ff_log_since($node, $offset), qr/flexfactor worker resumes: the server is writable/,
	'read-only: a LOG line says the worker resumes');
ok($node->poll_query_until('ffdb', "SELECT ($listener_reloads) > $lreloads"), 'read-only: the listener reloaded');
$res = FFSim::post_webhook(port => $wport, body => $event);
is($res->{status}, 200, 'read-only: once writable, the delivery is answered 200');
is(sq("SELECT count(*) FROM flexfactor.webhook_events WHERE nonce = '$res->{nonce}'"), '1', 'read-only: and stored');
like(ff_log_since($node, $offset), qr/flexfactor webhook listener resumes: the server is writable/,
	'read-only: a LOG line says the listener resumes');
check_watch('read-only');

# ------------------------------------------------------------------
# 4. A standby rebuilds every batch file byte for byte
# ------------------------------------------------------------------
$node->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('fence062_standby');
$standby->init_from_backup($node, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	"TimeZone = 'Asia/Kolkata'\nDateStyle = 'SQL, DMY'\nextra_float_digits = 0\n");
$standby->start;
$node->wait_for_catchup($standby);
my $rebuilt = "SELECT string_agg(b.id || ':' || b.sha256 || ':' || f.sha, ',' ORDER BY b.id)
                 FROM flexfactor.batches b
                 CROSS JOIN LATERAL (SELECT encode(sha256(convert_to(string_agg(line || E'\\n', ''
                                      ORDER BY sequence_number), 'UTF8')), 'hex') sha
                                       FROM flexfactor.batch_file_lines(b.id)) f";
my $on_standby = $standby->safe_psql('ffdb', $rebuilt);
my @rebuilt = split /,/, $on_standby;
is($on_standby, sq($rebuilt), 'both nodes: every batch file rebuilt on the standby is the primary\'s');
is(scalar(grep { my (undef, $recorded, $now) = split /:/; $recorded ne $now } @rebuilt), 0,
	'both nodes: each has the SHA-256 recorded at its upload (' . scalar(@rebuilt) . ' batches)');
$standby->stop('fast');

$watch->stop;
$node->stop('fast');
$relay->stop;
$sim->stop;
$sshd->stop;
done_testing();
