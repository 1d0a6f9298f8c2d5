# High availability 1 and 4: a failover under pg_auto_failover while a batch
# upload is held in the middle of its file, then the old primary rejoins.
#
# node1 (primary) and node2 (its synchronous standby) export through a
# relay in front of the SFTP server.  The relay freezes node1's upload after
# 100 kB; node1's machine dies (kill -9 of pg_autoctl and of the postmaster:
# the worker is left to notice by itself); the monitor promotes node2;
# node2 uploads the batch; only then does the held connection move again.
# Asserted: the old worker stops without writing another byte; a watcher on
# the inbound folder never sees an incomplete or different file under a
# final name; every queued decline is in exactly one accepted batch line,
# by orderId + transaction.id; HAProxy follows the primary.  Then node1's
# pg_autoctl runs again: node1 rejoins as a standby, runs no flexfactor
# process, and nothing is sent twice.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFHA;
use FFSim;
use FFSshd;

if (my $why = FFHA::unavailable()) { plan skip_all => $why; }

my $t_start = Time::HiRes::time();
my $mid = '6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffha001');
my $sshd = FFSshd->start("$tmp/sshd");
my $relay = FFSshd::Relay->start(target_port => $sshd->port);
my $sim = FFSim->start(name => 'ffsim_ha001', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);    # files stay in inbound until /_admin/scan
my $inbound = $sim->inbound_dir;
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts", ports => [ $sshd->port, $relay->port ]);

# a held upload must end only by the worker noticing its postmaster's
# death, not by flexfactor.sftp_timeout_ms: 60 s here
my $ha = FFHA->flexfactor_pair(common => {
		$sim->node_settings('flexfactor.batch_interval' => '1'),
		$sshd->node_settings(inbound => $inbound, outbound => $sim->outbound_dir,
			port => $relay->port, known_hosts => $known_hosts),
		'flexfactor.batch_retry_base' => '1',
		'flexfactor.sftp_timeout_ms' => '60000' });
my ($n1, $n2) = ($ha->node('node1'), $ha->node('node2'));
note sprintf('formation ready after %.1f s', Time::HiRes::time() - $t_start);

is($n1->safe_psql('postgres', 'SHOW synchronous_standby_names'), 'ANY 1 (pgautofailover_standby_2)',
	'pg_auto_failover: node1 commits only once node2 has the WAL (synchronous_standby_names)');
is($n1->safe_psql('postgres', "SELECT sync_state FROM pg_stat_replication"), 'quorum',
	'node2 is its synchronous (quorum) standby');
is($n2->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'"),
	'0', 'no flexfactor process on the standby');

sub finals { [ grep { /\.jsonl$/ } @{ $sim->inbound_files } ] }

sub wait_uploaded
{
	my ($node, $prefix, $n) = @_;
	return $node->poll_query_until('ffdb',
		"SELECT count(*) = $n FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
		  WHERE d.order_id LIKE '$prefix-%' AND b.state IN ('uploaded', 'answered')");
}

sub wchar
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/io") or return undef;
	local $/;
	my ($w) = (<$fh> // '') =~ /^wchar:\s*(\d+)/m;
	close $fh;
	return $w;
}

# ------------------------------------------------------------------
# 1. kill -9 of the primary's postmaster while its upload is held
# ------------------------------------------------------------------
$relay->freeze_after(100_000);
is(FFSim::enqueue_declines($n1, 'ffdb', 'F1', 1000), '1000', '1,000 declines queued on node1');
ok($relay->wait_frozen(60), "node1's worker is uploading the batch, held after 100 kB");
my $b1 = ff_batch_of($n1, 'ffdb', 'F1');
my ($name1, $state1) = split /\|/,
  $n1->safe_psql('ffdb', "SELECT file_name, state FROM flexfactor.batches WHERE id = $b1");
is($state1, 'ready', "batch $b1 is fixed (committed on both nodes) and not uploaded yet");
is_deeply(finals(), [], 'no file under a final name yet');
my $old_worker = ff_worker_pid($n1, 'ffdb');
ok($old_worker =~ /^\d+$/, "node1's worker: pid $old_worker");

my $watch = FFHA::Watcher->start($inbound, "$tmp/inbound-watch.log");
$relay->hold;    # node2's connections will pass; node1's stays frozen
my $n2_offset = -s $n2->logfile // 0;
my $t_kill = Time::HiRes::time();
my $pm = $ha->kill_node($n1);
note "node1's pg_autoctl and postmaster ($pm) killed";
# the old worker, held in its upload: gone by itself, at once
my $gone = ff_wait_until(sub { !FFHA::alive($old_worker) }, 10);
my $t_gone = Time::HiRes::time() - $t_kill;
ok($gone && $t_gone < 1, sprintf("the old worker (pid $old_worker) stopped once its postmaster died (%.1f s)", $t_gone));

my $failover = $ha->wait_states(node2 => 'wait_primary|primary', timeout => 90);
ok(1, sprintf('the monitor promoted node2 (%.1f s after the kill)', Time::HiRes::time() - $t_kill));
my $lb_s = $ha->lb->wait_only_up('node2', 30);
ok(1, sprintf('HAProxy sends webhooks to node2 only (%.1f s later)', $lb_s));
ff_wait_for_worker($n2, 'ffdb');
ok(wait_uploaded($n2, 'F1', 1000), 'node2 uploaded the batch');
my ($sha1, $bytes1) = split /\|/,
  $n2->safe_psql('ffdb', "SELECT sha256, byte_count FROM flexfactor.batches WHERE id = $b1");

my $w0 = wchar($old_worker);
$relay->thaw;    # the held connection moves again
ok(ff_wait_until(sub { ($relay->stats->{thawed} // 0) >= 1 }, 10), 'the held connection was released');
# what an old worker still alive would do now, it does within moments
Time::HiRes::sleep(3);
my $w1 = wchar($old_worker);
ok(!defined $w1 || (defined $w0 && $w1 == $w0),
	'the old worker wrote not another byte after its connection was released')
  or diag "wchar before $w0, after $w1";
if (FFHA::alive($old_worker))
{
	diag "the old worker $old_worker is still alive: killed now";
	kill 'KILL', $old_worker;
}

my $seen = $watch->stop;
my @at_final = grep { $_->{name} =~ /\.jsonl$/ } @$seen;
ok(scalar @at_final >= 1, 'the watcher saw the file under its final name');
my @bad = grep { $_->{name} ne $name1 || $_->{size} != $bytes1 || $_->{sha256} ne $sha1 } @at_final;
is(scalar @bad, 0, "every look at a final name in inbound found $name1, complete ($bytes1 bytes, its SHA-256)")
  or diag explain \@bad;
my %inodes = map { ($_->{inode} => 1) } @at_final;
is(scalar keys %inodes, 1, 'it was put in place once (one rename)')
  or diag explain \@at_final;
is_deeply(finals(), [$name1], 'inbound holds this one file under a final name');

my $files = $sim->check_delivered($n2, 'ffdb', 'failover mid-upload', 'F1', 1000);
my $lines = $sim->accepted_line_counts;
my @declines = split /\n/, $n2->safe_psql('ffdb',
	"SELECT order_id || ' ' || transaction_id FROM flexfactor.decline_status WHERE order_id LIKE 'F1-%'");
is(scalar @declines, 1000, 'node2 has the 1,000 declines');
is(scalar(grep { ($lines->{$_} // 0) != 1 } @declines), 0,
	'each is in exactly one accepted batch line (orderId + transaction.id)');
is(scalar(keys %$lines), 1000, 'and FlexFactor accepted no other line');
is($n2->safe_psql('ffdb', "SELECT count(*) FROM flexfactor.batches WHERE id <> $b1"), '0',
	'node2 made no other batch');
ok(!ff_log_contains($n2, qr/read-only transaction/, $n2_offset),
	'node2 did no export work while it was still read-only after its promotion');

# ------------------------------------------------------------------
# 4. The old primary rejoins as a standby
# ------------------------------------------------------------------
my $n1_offset = -s $n1->logfile;
my $files_before = scalar @{ $sim->batches };
my $requests_before = $sim->last_seq;
$ha->restart_node($n1);
my $rejoin = $ha->wait_states(node1 => 'secondary', node2 => 'primary', timeout => 120);
ok(1, sprintf('node1 rejoined as the standby (%.1f s)', $rejoin));
is($n1->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'node1 is in recovery');
is($n1->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'"),
	'0', 'no flexfactor process runs on node1');
ok(!ff_log_contains($n1, qr/flexfactor (launcher|worker|webhook listener) (started|accepting)/, $n1_offset),
	'none started there since it came back');
ok(!FFHA::alive($old_worker), 'the old worker is gone');
$ha->wait_replayed($n2, $n1);
my $batches_sql = 'SELECT id, state, file_name, sha256, line_count FROM flexfactor.batches ORDER BY id';
is($n1->safe_psql('ffdb', $batches_sql), $n2->safe_psql('ffdb', $batches_sql),
	"node1's batches are node2's (its own last writes were rewound)");
is(scalar @{ $sim->batches }, $files_before, 'FlexFactor received no file meanwhile');
is($sim->last_seq, $requests_before, 'and no API request');

# new work leaves from node2, once
is(FFSim::enqueue_declines($n2, 'ffdb', 'F4', 10), '10', '10 more declines queued on node2');
ok(wait_uploaded($n2, 'F4', 10), 'node2 uploads them');
$sim->check_delivered($n2, 'ffdb', 'after the rejoin', 'F4', 10);
is(scalar(grep { ($_->{status} // '') ne 'processed' } @{ $sim->batches }), 0,
	'FlexFactor processed every file it received once (no duplicate, no rejected file)');
is(scalar @{ $sim->idempotency->{acceptedMoreThanOnce} }, 0, 'and accepted no key twice');
is_deeply(finals(), [], 'inbound holds no other file under a final name');
my @left = grep { !/\.jsonl$/ } @{ $sim->inbound_files };
note 'left in inbound by the interrupted attempt: ' . join(', ', @left) if @left;

note sprintf('suite file run time: %.1f s', Time::HiRes::time() - $t_start);
$ha->stop;
$relay->stop;
$sim->stop;
$sshd->stop;
done_testing();
