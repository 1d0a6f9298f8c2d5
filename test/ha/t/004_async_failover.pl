# High availability 5: a failover without a synchronous standby, in the
# worst case the design allows: the old primary exported, sent and
# acknowledged things that never reached the standby.
#
# node2 stops counting for synchronous replication (pg_autoctl set node
# replication-quorum false: node1 commits without waiting for it).  100
# declines and 10 transmits are queued on node1 and replicated; then node1's
# WAL sender is stopped (SIGSTOP), so nothing node1 commits from now on
# reaches node2, and node1: queues 5 more declines, fixes and uploads a batch
# of the 105, sends the 10 transmits, reads FlexFactor's result file, and
# acknowledges the 105 order.completed webhooks.  Then node1 dies and node2
# is promoted.  What docs/high-availability.md states, asserted exactly:
#   - the 5 declines queued after the stop are gone from the database (with
#     the transactions that queued them); FlexFactor has their orders, and
#     their webhooks are kept as 'waiting_order' on the new primary;
#   - the 100 replicated declines are queued again on node2, which exports
#     them in a new file; every line carries the idempotency key it had in
#     the first file, so FlexFactor accepts each decline once and answers
#     the second file's lines as replays, with the same orderSessionKey;
#   - the 10 transmits are sent again with the same idempotency keys:
#     replays, one transmit per order at FlexFactor;
#   - the 105 acknowledged webhooks are lost: FlexFactor does not send an
#     acknowledged delivery again, and the orders stay SUBMITTED on node2
#     until ff_order() reads their status back (APPROVED).
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
my $mid = '9d0e1f2a-3b4c-4d5e-8f6a-7b8c9d0e1f2a';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffha004');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_ha004', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $ha = FFHA->flexfactor_pair(common => {
		$sim->node_settings('flexfactor.batch_interval' => '1',
			'flexfactor.transmit_retry_base_ms' => '50',
			'flexfactor.transmit_max_attempts' => '100'),
		$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir) });
my ($n1, $n2) = ($ha->node('node1'), $ha->node('node2'));
$sim->config({ webhookUrl => $ha->lb->url('/flexfactor/webhook') });
note sprintf('formation ready after %.1f s', Time::HiRes::time() - $t_start);

sub q1 { $n1->safe_psql('ffdb', $_[0]) }
sub q2 { $n2->safe_psql('ffdb', $_[0]) }

# declines $prefix-1..$n whose orders complete one virtual minute later
sub enqueue
{
	my ($node, $prefix, $n) = @_;
	return $node->safe_psql('ffdb', "SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
	        '$prefix-' || i, 1050 + 100 * (i % 90), 'USD', 'tok-' || i, 'tx-' || i, "
		  . ff_decline_args(expiry => "now() + interval '14 days'") . ")))
	      FROM generate_series(1, $n) i");
}

# ------------------------------------------------------------------
# asynchronous replication
# ------------------------------------------------------------------
$ha->set_replication_quorum($n2, 0);
ok($n1->poll_query_until('postgres', "SELECT current_setting('synchronous_standby_names') = ''"),
	'node2 no longer counts: node1 commits without waiting for it (synchronous_standby_names empty)');
is($n1->safe_psql('postgres', 'SELECT sync_state FROM pg_stat_replication'), 'async', 'node2 is an asynchronous standby');

# what node2 will have: 100 declines (not exported: the exporters' lock is
# held) and 10 transmits (not sent: FlexFactor answers 500 for now)
my $lock = $n1->background_psql('ffdb', timeout => 120);
$lock->query_safe("SELECT pg_advisory_lock(hashtext('flexfactor.declines')::bigint)");
$sim->fault(endpoint => '/v1/transmit', mode => '500', count => 100000);
is(enqueue($n1, 'A', 100), '100', '100 declines queued on node1');
is(q1("SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('AT-' || i, 1500 + i, 'USD', 'ptx-' || i, "
		  . ff_payment_args() . "))) FROM generate_series(1, 10) i"), '10', '10 transmits queued on node1');
ok(ff_wait_until(sub { q1("SELECT count(*) FROM flexfactor.transmit_queue WHERE attempts > 0") == 10 }, 30),
	'node1 tried to send them (FlexFactor answered 500)');
$ha->wait_replayed($n1, $n2);
is(q2("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'A-%' AND state = 'pending'"), '100',
	'node2 has the 100 declines, pending');
is(q2("SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'pending'"), '10',
	'and the 10 transmits, pending');

# from now on nothing node1 commits reaches node2
my $walsender = $n1->safe_psql('postgres', 'SELECT pid FROM pg_stat_replication');
kill 'STOP', $walsender;
my $lsn_stop = $n1->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
note "node1's WAL sender ($walsender) stopped at $lsn_stop";

is(enqueue($n1, 'AL', 5), '5', '5 more declines queued on node1');
$lock->query_safe("SELECT pg_advisory_unlock(hashtext('flexfactor.declines')::bigint)");
$lock->quit;
$sim->clear_faults;
ok($n1->poll_query_until('ffdb', "SELECT count(*) = 105 FROM flexfactor.decline_status d
        JOIN flexfactor.batches b ON b.id = d.batch_id WHERE b.state = 'uploaded'"),
	'node1 fixed and uploaded a batch of the 105');
my $file1 = q1("SELECT file_name FROM flexfactor.batches b JOIN flexfactor.decline_status d ON d.batch_id = b.id
        WHERE d.order_id = 'A-1'");
ok(ff_wait_until(sub { q1("SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'delivered'") == 10 }, 30),
	'node1 delivered the 10 transmits');
my ($p1) = @{ $sim->scan };
is("$p1->{file} $p1->{status} $p1->{accepted}", "$file1 processed 105", 'FlexFactor accepted the 105 lines');
ok($n1->poll_query_until('ffdb', "SELECT count(*) = 105 FROM flexfactor.orders WHERE order_session_key IS NOT NULL"),
	'node1 read the result file');
my $adv = $sim->advance(60);
ok($n1->poll_query_until('ffdb', "SELECT count(*) = 105 FROM flexfactor.orders WHERE status = 'APPROVED'"),
	'node1 acknowledged the 105 order.completed webhooks (orders APPROVED)');
my $w = $sim->webhooks;
is(scalar(grep { $_->{status} eq 'delivered' } @{ $w->{events} }), 105, 'FlexFactor counts them delivered');
is($n2->safe_psql('postgres', 'SELECT pg_last_wal_receive_lsn() <= ' . "'$lsn_stop'::pg_lsn"), 't',
	'node2 received none of it');
my %key1 = map { split /\|/ } split /\n/,
  q1("SELECT order_id, order_session_key FROM flexfactor.orders WHERE order_id LIKE 'A-%'");

# ------------------------------------------------------------------
# node1 dies, node2 is promoted
# ------------------------------------------------------------------
my $t_kill = Time::HiRes::time();
$ha->kill_node($n1);
kill 'KILL', $walsender;
$ha->wait_states(node2 => 'wait_primary|primary', timeout => 90);
ok(1, sprintf('the monitor promoted node2 (%.1f s after the kill)', Time::HiRes::time() - $t_kill));
$ha->lb->wait_only_up('node2', 30);
ff_wait_for_worker($n2, 'ffdb');

# lost: the 5 declines queued after the stop
is(q2("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'AL-%'"), '0',
	'the 5 declines queued after the stop are gone (with their transactions)');
# the batch is lost, not its declines: exported again, under a new name
ok($n2->poll_query_until('ffdb', "SELECT count(*) = 100 FROM flexfactor.decline_status d
        JOIN flexfactor.batches b ON b.id = d.batch_id WHERE d.order_id LIKE 'A-%' AND b.state = 'uploaded'"),
	'node2 exported the 100 declines again');
my $file2 = q2("SELECT file_name FROM flexfactor.batches b JOIN flexfactor.decline_status d ON d.batch_id = b.id
        WHERE d.order_id = 'A-1'");
isnt($file2, $file1, "in a file of another name ($file2)");
my ($p2) = @{ $sim->scan };
is("$p2->{file} $p2->{status} $p2->{accepted}", "$file2 processed 100", 'FlexFactor took its 100 lines');
my $idem = $sim->idempotency_by_key(kind => 'evaluate');
my @keys_a = split /\n/, q2("SELECT idempotency_key FROM flexfactor.decline_status WHERE order_id LIKE 'A-%'");
is(scalar(grep { ($idem->{$_}{seen} // 0) == 2 && $idem->{$_}{accepted} == 1 && $idem->{$_}{replayed} == 1 } @keys_a),
	100, 'each line carried its first key: each decline accepted once, its second line a replay');
is(scalar(grep { ($_->{externalOrderId} // '') =~ /^A-/ } @{ $sim->orders }), 100,
	'FlexFactor holds one order per decline');
ok($n2->poll_query_until('ffdb', "SELECT count(*) = 100 FROM flexfactor.orders WHERE order_id LIKE 'A-%'
        AND order_session_key IS NOT NULL"), "node2 read the second file's results");
my %key2 = map { split /\|/ } split /\n/,
  q2("SELECT order_id, order_session_key FROM flexfactor.orders WHERE order_id LIKE 'A-%'");
is(scalar(grep { ($key2{$_} // '') ne $key1{$_} } keys %key1), 0, 'with the same orderSessionKey as the first time');

# transmits: sent again, same keys, replays
ok(ff_wait_until(sub { q2("SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'delivered'") == 10 }, 60),
	'node2 sent the 10 transmits again');
my (%keys_of, %tx_of);
for my $r (@{ $sim->requests(path => '/v1/transmit') })
{
	my $b = FFSim->decode_json($r->{body}) // {};
	$keys_of{ $b->{orderId} }{ $b->{idempotencyKey} } = 1 if $r->{status} && $r->{status} == 200;
}
is(scalar(grep { keys %{ $keys_of{$_} } == 1 } keys %keys_of), 10,
	'each with the idempotency key node1 had sent (answered 200 to both)');
$tx_of{ $_->{orderId} }{ $_->{transmitId} } = 1 for @{ $sim->transmits };
is(scalar(grep { keys %{ $tx_of{$_} } == 1 } keys %tx_of), 10, 'FlexFactor made one transmit per order');

# webhooks acknowledged by node1: lost
is(q2("SELECT count(*) FROM flexfactor.webhook_events"), '0',
	'the 105 webhooks node1 acknowledged are not on node2');
is(q2("SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'A-%' AND status = 'SUBMITTED'"), '100',
	'its orders are still SUBMITTED there');
$sim->advance(86400);
is(q2("SELECT count(*) FROM flexfactor.webhook_events"), '0', 'FlexFactor does not send them again');
is(q2("SELECT count(flexfactor.ff_order(order_session_key::text)) FROM flexfactor.orders WHERE status = 'SUBMITTED'"),
	'100', 'ff_order() on the open orders reads their status back');
is(q2("SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'A-%' AND status = 'APPROVED'"), '100',
	'they are APPROVED');

# the lost declines' orders live on at FlexFactor
my ($al) = grep { $_->{externalOrderId} eq 'AL-1' } @{ $sim->orders };
ok($al, 'FlexFactor has an order for a lost decline (AL-1)');
my $att = $sim->resend_webhook($al->{id});
is($att->{status}, 200, 'its webhook, sent again, is acknowledged by node2');
is(q2("SELECT apply_state FROM flexfactor.webhook_events WHERE external_order_id = 'AL-1'"), 'waiting_order',
	"and kept as 'waiting_order': no order of the database matches");

note sprintf('suite file run time: %.1f s', Time::HiRes::time() - $t_start);
$ha->stop;
$sim->stop;
$sshd->stop;
done_testing();
