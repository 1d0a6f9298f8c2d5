# High availability 3: 5,000 queued transmits (ff_transmit) and a failover in
# the middle of their sending.
#
# node1's worker sends the queue to POST /transmit, 64 at a time.  Once
# about 1,500 are delivered, FlexFactor (the simulator) holds the next 64
# requests for 5 s (it takes them, then answers late), and node1's machine
# dies while they are held (kill -9 of pg_autoctl and of the postmaster).
# node2 is promoted and sends the rest; the rows node1 had claimed come due
# again once their lease runs out, and node2 sends them again.  Asserted:
# the old worker stops at once and sends nothing more; every row is
# delivered on node2, with the transmitId FlexFactor gave its order; every
# request for an order carried the same idempotencyKey, FlexFactor accepted
# each key once and answered the resends as replays, and made exactly one
# transmit per order.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFHA;
use FFSim;

if (my $why = FFHA::unavailable()) { plan skip_all => $why; }

my $t_start = Time::HiRes::time();
my $mid = '8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f';
my $n_rows = 5000;
my $sim = FFSim->start(name => 'ffsim_ha003', mid => $mid);
# the lease of claimed rows: 60 s + 2 x (1000 / 64 + 1) x 1 s = 92 s
my $ha = FFHA->flexfactor_pair(common => {
		$sim->node_settings(
			'flexfactor.http_timeout_ms' => '1000',
			'flexfactor.transmit_concurrency' => '64',
			'flexfactor.transmit_retry_base_ms' => '50',
			'flexfactor.transmit_max_attempts' => '100') });
my ($n1, $n2) = ($ha->node('node1'), $ha->node('node2'));
note sprintf('formation ready after %.1f s', Time::HiRes::time() - $t_start);

sub delivered
{
	my ($node) = @_;
	return $node->safe_psql('ffdb', "SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'delivered'");
}

is($n1->safe_psql('ffdb', "SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment(
        'T-' || i, 1000 + i % 5000, 'USD', 'tx-' || i, " . ff_payment_args() . ")))
      FROM generate_series(1, $n_rows) i"), $n_rows, "$n_rows transmits queued on node1");
ok(ff_wait_until(sub { delivered($n1) >= 1500 }, 120), "node1's worker is sending them");
$sim->fault(endpoint => '/v1/transmit', mode => 'hang', seconds => 5, count => 64);
ok(ff_wait_until(sub { my $f = $sim->admin('GET', '/_admin/faults')->{faults}[0]; $f && $f->{hits} >= 16 }, 30),
	'FlexFactor holds the requests in flight');
my $old_worker = ff_worker_pid($n1, 'ffdb');
my $seq_kill = $sim->last_seq;
# the simulator numbers each connection it accepts: the client port alone
# does not tell them apart (node2's worker may reuse a port of node1's on
# loopback once the old connection is gone)
my %old_connections = map { ($_->{connection} => 1) }
  @{ $sim->requests(path => '/v1/transmit', since => $seq_kill - 200) };
my $t_kill = Time::HiRes::time();
my $pm = $ha->kill_node($n1);
my $gone = ff_wait_until(sub { !FFHA::alive($old_worker) }, 10);
my $t_gone = Time::HiRes::time() - $t_kill;
ok($gone && $t_gone < 1,
	sprintf("the old worker (pid $old_worker, in the middle of its requests) stopped once its postmaster died (%.1f s)", $t_gone));
kill 'KILL', $old_worker if FFHA::alive($old_worker);

$ha->wait_states(node2 => 'wait_primary|primary', timeout => 90);
ok(1, sprintf('the monitor promoted node2 (%.1f s after the kill)', Time::HiRes::time() - $t_kill));
ff_wait_for_worker($n2, 'ffdb');
my $at_promotion = delivered($n2);
note "node2 found $at_promotion rows delivered";
ok($at_promotion >= 1500 && $at_promotion < $n_rows, 'the failover came in the middle of the queue');
ok(ff_wait_until(sub { delivered($n2) == $n_rows }, 240),
	'node2 delivered every row (those node1 had claimed once their lease ran out)');
is($n2->safe_psql('ffdb', "SELECT count(*) FROM flexfactor.transmit_queue WHERE state <> 'delivered' OR transmit_id IS NULL"),
	'0', 'none left pending or set aside, each with its transmitId');

# FlexFactor's records
my $reqs = $sim->requests(path => '/v1/transmit', since => $seq_kill);
# A request written just before the kill can be read by the simulator a
# little after it (its arrival time is when its body was read): those are
# sent by a live worker.  Without fencing the old worker went on sending for
# 2-3 s after its postmaster died; anything read 0.5 s after the kill was
# sent after it.
my @late_old = grep { $old_connections{ $_->{connection} } && $_->{ts} > $t_kill + 0.5 } @$reqs;
is(scalar @late_old, 0, "no request came on the old worker's connections after the kill")
  or diag explain [ map { sprintf('%s (connection %d) %.3f s after the kill', $_->{client}, $_->{connection},
			$_->{ts} - $t_kill) } @late_old ];
my (%keys_of, %sent);
for my $r (@{ $sim->requests(path => '/v1/transmit') })
{
	my $b = FFSim->decode_json($r->{body}) // {};
	$keys_of{ $b->{orderId} // '' }{ $b->{idempotencyKey} // '' } = 1;
	$sent{ $b->{orderId} // '' }++;
}
is(scalar keys %keys_of, $n_rows, "FlexFactor received the $n_rows orders");
my @resent = grep { $sent{$_} > 1 } keys %sent;
ok(scalar @resent >= 1, scalar(@resent) . ' orders were sent more than once (in flight at the failover, or retried)');
is(scalar(grep { keys %{ $keys_of{$_} } != 1 || exists $keys_of{$_}{''} } keys %keys_of), 0,
	'every request for an order carried the same idempotencyKey');
my $idem = $sim->idempotency_by_key;
my @keys = map { keys %{ $keys_of{$_} } } keys %keys_of;
is(scalar(grep { ($idem->{$_}{accepted} // 0) != 1 } @keys), 0, 'FlexFactor accepted each key once');
is(scalar(grep { ($idem->{$_}{replayed} // 0) < 1 } map { keys %{ $keys_of{$_} } } @resent), 0,
	'and answered every resend as a replay');
my %tx_of;
$tx_of{ $_->{orderId} }{ $_->{transmitId} } = 1 for @{ $sim->transmits };
is(scalar(grep { keys %{ $tx_of{$_} } != 1 } keys %keys_of), 0, 'it made exactly one transmit per order');
my %db_tx = map { split /\|/ } split /\n/,
  $n2->safe_psql('ffdb', "SELECT payload->>'orderId', transmit_id FROM flexfactor.transmit_queue");
is(scalar(grep { !$tx_of{$_}{ $db_tx{$_} // '' } } keys %keys_of), 0,
	"node2 recorded each order's transmitId, FlexFactor's");

note sprintf('suite file run time: %.1f s', Time::HiRes::time() - $t_start);
$ha->stop;
$sim->stop;
done_testing();
