# High availability 2: a planned switchover (pg_autoctl perform switchover)
# in the middle of a stream of 2,000 signed webhooks that FlexFactor (the
# simulator) posts to one URL, HAProxy's, which passes each to the node
# whose listener answers GET /healthz with 200 (a writable primary).
#
# 2,000 declines leave node1 in a batch; FlexFactor completes the 2,000
# orders one virtual minute later and posts order.completed for each, one
# after the other; after about 400 are stored, node1 and node2 switch
# roles.  Deliveries that find no primary get no 2xx, and the simulator
# sends them again (IsResent, one virtual minute later).  Asserted on the
# new primary: every event is stored exactly once (repeats of a stored
# event are kept as 'duplicate' and change nothing), every delivery that
# was answered 2xx is there (by its nonce), before the switch as after, and
# every order is APPROVED; the standby has the same rows; HAProxy sends to
# node2 only; /healthz answers 503 on a primary that is read-only.
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
my $mid = '7b8c9d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e';
my $n_events = 2000;
my $tmp = PostgreSQL::Test::Utils::tempdir('ffha002');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_ha002', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $ha = FFHA->flexfactor_pair(common => {
		$sim->node_settings('flexfactor.batch_interval' => '1'),
		$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir) });
my ($n1, $n2) = ($ha->node('node1'), $ha->node('node2'));
note sprintf('formation ready after %.1f s', Time::HiRes::time() - $t_start);

sub health
{
	my ($node) = @_;
	my $r = FFSim::http_request(port => $ha->webhook_port($node), method => 'GET', path => '/healthz', timeout => 5);
	return defined $r->{status} ? "$r->{status} $r->{body}" : "no answer ($r->{error})";
}

like(health('node1'), qr/^200 primary\n\z/, 'node1 (primary): GET /healthz answers 200');
like(health('node2'), qr/^no answer \(connect/, 'node2 (standby) runs no listener: nothing answers');

# ------------------------------------------------------------------
# 2,000 orders at FlexFactor, known to node1
# ------------------------------------------------------------------
# cents ending in 50: SUBMITTED, then COMPLETED (order.completed) after one
# virtual minute
is($n1->safe_psql('ffdb', "SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'W-' || i, 1050 + 100 * (i % 90), 'USD', 'tok-' || i, 'tx-' || i, "
		  . ff_decline_args(expiry => "now() + interval '14 days'") . ")))
      FROM generate_series(1, $n_events) i"), $n_events, "$n_events declines queued on node1");
ok($n1->poll_query_until('ffdb', "SELECT count(*) = $n_events FROM flexfactor.decline_status d
        JOIN flexfactor.batches b ON b.id = d.batch_id WHERE b.state = 'uploaded'"),
	'node1 uploaded them');
my ($scanned) = @{ $sim->scan };
is("$scanned->{status} $scanned->{accepted}", "processed $n_events", 'FlexFactor accepted every line');
ok($n1->poll_query_until('ffdb', "SELECT count(*) = $n_events FROM flexfactor.orders
        WHERE order_id LIKE 'W-%' AND order_session_key IS NOT NULL AND status = 'SUBMITTED'"),
	'node1 read the result file: every order is SUBMITTED with its FlexFactor key');
$ha->wait_replayed($n1, $n2);

# ------------------------------------------------------------------
# the stream, and the switchover in its middle
# ------------------------------------------------------------------
$sim->config({ webhookUrl => $ha->lb->url('/flexfactor/webhook') });
my $stream = $sim->advance_in_background(60);
my $stored_q = "SELECT count(*) FROM flexfactor.webhook_events WHERE received_via = 'listener'";
ok($n1->poll_query_until('ffdb', "SELECT ($stored_q) >= 400"), 'the deliveries flow to node1 through HAProxy');
my $t_switch = Time::HiRes::time();
my $before = $n1->safe_psql('ffdb', $stored_q);
my $took = $ha->switchover;
ok(1, sprintf('pg_autoctl perform switchover: %.1f s, after %d of %d deliveries were stored', $took, $before, $n_events));
$ha->wait_states(node1 => 'secondary', node2 => 'primary');
my $lb_s = $ha->lb->wait_only_up('node2', 30);
ok(1, sprintf('HAProxy sends to node2 only (%.1f s after the switchover returned)', $lb_s));
is(FFSim::wait_child($stream, 300), 0, 'the simulator made its first attempt at every delivery');

# the deliveries that found no primary are sent again, one virtual minute later
my $w;
for my $delay (60, 300, 1800)
{
	$w = $sim->webhooks;
	last unless grep { $_->{status} ne 'delivered' } @{ $w->{events} };
	$sim->advance($delay);
}
$w = $sim->webhooks;
my @events = grep { $_->{event} eq 'order.completed' } @{ $w->{events} };
is(scalar @events, $n_events, "FlexFactor sent $n_events order.completed events");
is(scalar(grep { $_->{status} ne 'delivered' } @events), 0, 'each was acknowledged in the end');
my @attempts = @{ $w->{attempts} };
my @ok = grep { defined $_->{status} && $_->{status} >= 200 && $_->{status} < 300 } @attempts;
my @failed = grep { !defined $_->{status} || $_->{status} < 200 || $_->{status} >= 300 } @attempts;
my @ok_before = grep { $_->{realTime} < $t_switch } @ok;
note sprintf('%d attempts: %d answered 2xx (%d before the switchover began), %d not (%s)',
	scalar @attempts, scalar @ok, scalar @ok_before, scalar @failed,
	join(', ', map { $_->{status} // $_->{error} } @failed[ 0 .. ($#failed < 4 ? $#failed : 4) ]));
ok(scalar(grep { $_->{isResent} } @attempts) > 0 || @failed == 0,
	'deliveries that got no 2xx were sent again with IsResent');

# on the new primary
my %stored;
for my $row (split /\n/, $n2->safe_psql('ffdb',
		"SELECT nonce, order_session_key, event, confirmation_id, apply_state
		   FROM flexfactor.webhook_events WHERE received_via = 'listener'"))
{
	my ($nonce, $key, $event, $conf, $state) = split /\|/, $row;
	$stored{nonce}{$nonce} = 1;
	$stored{event}{"$key $event $conf"}++ if $state ne 'duplicate';
}
my @missing = grep { !$stored{nonce}{ FFSim::attempt_nonce($_) // '' } } @ok;
is(scalar @missing, 0, 'node2 has every delivery that was answered 2xx, by its nonce ('
	  . scalar(@ok) . ')');
is(scalar(grep { !$stored{nonce}{ FFSim::attempt_nonce($_) // '' } } @ok_before), 0,
	'... among them the ' . scalar(@ok_before) . ' acknowledged by node1 before the switchover');
my @not_once = grep { ($stored{event}{"$_->{orderId} $_->{event} $_->{confirmationId}"} // 0) != 1 } @events;
is(scalar @not_once, 0, "each of the $n_events events is stored exactly once (other copies: 'duplicate')")
  or diag explain [ @not_once[ 0 .. 2 ] ];
is(scalar keys %{ $stored{event} }, $n_events, 'and no other event');
is($n2->safe_psql('ffdb', "SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'W-%' AND status = 'APPROVED'"),
	$n_events, 'every order is APPROVED on node2');
ok($before > 0 && $before < $n_events, "the switch came in the middle: $before events were stored on node1 first");
$ha->wait_replayed($n2, $n1);
my $rows_q = "SELECT md5(string_agg(nonce || apply_state, ',' ORDER BY id)) FROM flexfactor.webhook_events";
is($n1->safe_psql('ffdb', $rows_q), $n2->safe_psql('ffdb', $rows_q), 'node1, now the standby, has the same rows');

# ------------------------------------------------------------------
# /healthz after the switch, and on a primary that is read-only
# ------------------------------------------------------------------
like(health('node2'), qr/^200 primary\n\z/, 'node2 (the primary now): /healthz answers 200');
like(health('node1'), qr/^no answer \(connect/, 'node1 (the standby now) runs no listener');
$n2->safe_psql('postgres', "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()");
ok(ff_wait_until(sub { health('node2') =~ /^503 not a writable primary\n\z/ }, 10),
	'a read-only primary: /healthz answers 503');
ok(ff_wait_until(sub { ($ha->lb->server_states->{node2} // '') eq 'DOWN' }, 10), 'and HAProxy takes it out of service');
$n2->safe_psql('postgres', "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()");
ok($ha->lb->wait_only_up('node2', 10) >= 0, 'writable again: back in service');
my $r = FFSim::http_request(port => $ha->webhook_port('node2'), method => 'POST', path => '/healthz', body => '{}');
is($r->{status}, 404, 'POST /healthz is not a webhook path: 404');

note sprintf('suite file run time: %.1f s', Time::HiRes::time() - $t_start);
$ha->stop;
$sim->stop;
$sshd->stop;
done_testing();
