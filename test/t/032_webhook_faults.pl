# The webhook listener under faults: no event is lost.
#
# The listener terminated (pg_terminate_backend) and killed (kill -9, crash
# restart) in the middle of a delivery, PostgreSQL stopped with deliveries
# due and crashed right after acknowledging some: every delivery the
# simulator saw answered 2xx has its row in webhook_events (compared by
# nonce), no unacknowledged one was kept, and the simulator's retries store
# the rest, each applied once.  A SIGHUP that moves the listener to another
# port and path restarts it there.  A flood of idle connections (at most 64
# per address, 192 in all: the oldest idle ones are evicted, a half-sent
# request first) does not stop a real delivery, and every connection that
# has not sent its headers 5 s after it opened is dropped.  The attacks
# from many addresses are in 050_security.pl.  The happy paths and refusals are in 031_webhooks.pl.
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $mid = '2c3d4e5f-6071-4b8c-9dae-1f2a3b4c5d6e';
my $key = $FFSim::WEBHOOK_TEST_KEY;
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $path = '/flexfactor/webhook';
my $sim = FFSim->start(name => 'ffsim_032', mid => $mid, webhook_url => "http://127.0.0.1:$wport$path");

my $node = ff_node('webhooks032',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $key,
	'flexfactor.on_order_status' => 'billing.on_flexfactor');
ff_start_serving($node, 'ffdb');
my $lpid = FFSim::wait_for_listener($node, $wport);

sub sq { $node->safe_psql('ffdb', $_[0]) }

$node->safe_psql('ffdb', q{
	CREATE SCHEMA billing;
	CREATE TABLE billing.invoices (invoice_no text PRIMARY KEY, history text[] NOT NULL DEFAULT '{}');
	CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
		UPDATE billing.invoices SET history = history || o.status::text WHERE invoice_no = o.order_id $$;
});

my %osk;    # merchant order id => FlexFactor order id

# managed MIT declines sent with ff_evaluate: SUBMITTED now, order.completed
# one virtual minute later
sub make_orders
{
	for my $order (@_)
	{
		sq("INSERT INTO billing.invoices VALUES ('$order')");
		my $answer = FFSim->decode_json(sq("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('$order', 1503,
		     'USD', 'tok-$order', 'tx-$order', expiry => now() + interval '14 days', " . ff_decline_args(expiry => undef) . "))"));
		die "ff_evaluate($order): $answer->{status}" unless $answer->{status} eq 'SUBMITTED';
		$osk{$order} = $answer->{orderSessionKey};
	}
}

sub statuses
{
	my ($like) = @_;
	return sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders
	            WHERE order_id LIKE '$like'");
}

sub attempts_of
{
	my ($order) = @_;
	return $sim->webhooks(orderId => $osk{$order})->{attempts};
}

sub stored_nonce
{
	my ($nonce) = @_;
	return sq("SELECT count(*) FROM flexfactor.webhook_events WHERE nonce = '$nonce'");
}

# Hold $order's row locked in a session of our own, let the simulator deliver
# its order.completed (the listener then waits for the lock, inside its
# transaction), and interrupt the listener there with $interrupt->($pid).
# Returns the held session and the listener's pid.
sub interrupted_delivery
{
	my ($order, $what, $interrupt) = @_;
	my $hold = $node->background_psql('ffdb');
	$hold->query_safe("BEGIN; SELECT 1 FROM flexfactor.orders WHERE order_id = '$order' FOR UPDATE");
	my $child = $sim->advance_in_background(61);
	my $waiting = 0;
	for (1 .. 150)    # up to 15 s
	{
		last if ($waiting = $node->safe_psql('postgres',
				"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flexfactor webhook listener'
				    AND wait_event_type = 'Lock'") eq '1');
		Time::HiRes::sleep(0.1);
	}
	ok($waiting, "$what: the listener is inside the transaction of a delivery (waiting for $order\'s row)");
	my $pid = FFSim::listener_pid($node);
	$interrupt->($pid);
	is(FFSim::wait_child($child, 60), 0, "$what: the simulator's clock advance finished");
	return ($hold, $pid);
}

# After an interrupted first attempt: it was not acknowledged, nothing of it
# was kept, and the order did not change.
sub check_interrupted
{
	my ($order, $what) = @_;
	my ($first) = @{ attempts_of($order) };
	ok(!defined $first->{status}, "$what: the interrupted delivery got no answer ($first->{error})");
	is(stored_nonce(FFSim::attempt_nonce($first)), '0', "$what: and left no row in webhook_events");
	is(sq("SELECT status FROM flexfactor.orders WHERE order_id = '$order'"), 'SUBMITTED',
		"$what: $order is unchanged");
}

# ==================== pg_terminate_backend in the middle of a delivery
make_orders(qw(K-01 K-02 K-03));
my ($hold, $pid) = interrupted_delivery('K-01', 'terminate', sub {
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($_[0])") });
$lpid = FFSim::wait_for_listener($node, $wport, $pid);
isnt($lpid, $pid, "terminate: the launcher relaunched the listener (pid $pid -> $lpid)");
$hold->query_safe('COMMIT');
$hold->quit;
check_interrupted('K-01', 'terminate');
$sim->advance(61);    # the retry schedule's first minute
is(statuses('K-0%'), 'K-01 APPROVED, K-02 APPROVED, K-03 APPROVED',
	'terminate: after the retries every order is APPROVED');
my @k01 = @{ attempts_of('K-01') };
is(join(',', map { ($_->{isResent} ? 'resent' : 'first') . ':' . ($_->{status} // 'none') } @k01),
	'first:none,resent:200', 'terminate: K-01 was stored by the resend');

# ========================== kill -9 in the middle of a delivery: crash restart
make_orders(qw(K-04 K-05 K-06));
my $log_offset = -s $node->logfile;
($hold, $pid) = interrupted_delivery('K-04', 'kill -9', sub { kill 'KILL', $_[0] });
$lpid = FFSim::wait_for_listener($node, $wport, $pid);
ok(ff_log_contains($node,
		qr/background worker "flexfactor webhook listener" \(PID $pid\) was terminated by signal 9/, $log_offset),
	'kill -9: the listener was killed and PostgreSQL restarted');
eval { $hold->quit };    # its session died with the crash
check_interrupted('K-04', 'kill -9');
$sim->advance(61);
is(statuses('K-0%'), 'K-01 APPROVED, K-02 APPROVED, K-03 APPROVED, K-04 APPROVED, K-05 APPROVED, K-06 APPROVED',
	'kill -9: after the retries K-04..K-06 are APPROVED too');

# ======== PostgreSQL crashes right after acknowledging: nothing acknowledged is lost
make_orders(qw(K-07 K-08 K-09));
my $adv = $sim->advance(61);
my @acked = grep { ($_->{status} // 0) == 200 } map { @{ attempts_of($_) } } qw(K-07 K-08 K-09);
is(scalar @acked, 3, 'crash: K-07..K-09 delivered and acknowledged');
$node->stop('immediate');
$node->start;
$lpid = FFSim::wait_for_listener($node, $wport);
is(join(',', map { stored_nonce(FFSim::attempt_nonce($_)) } @acked), '1,1,1',
	'crash: after crash recovery every acknowledged delivery is still stored');
is(statuses('K-0%'), join(', ', map { "K-0$_ APPROVED" } 1 .. 9), 'crash: and applied');

# ================= PostgreSQL down while deliveries are due: retried until stored
make_orders(qw(K-10 K-11 K-12));
$node->stop('fast');
$adv = $sim->advance(61);
my @down = map { @{ attempts_of($_) } } qw(K-10 K-11 K-12);
is(join(',', map { defined $_->{status} ? $_->{status} : 'refused' } @down), 'refused,refused,refused',
	'down: with PostgreSQL stopped no delivery is answered');
$node->start;
$lpid = FFSim::wait_for_listener($node, $wport);
is(statuses('K-1%'), 'K-10 SUBMITTED, K-11 SUBMITTED, K-12 SUBMITTED', 'down: nothing applied yet');
$sim->advance(61);
is(statuses('K-1%'), 'K-10 APPROVED, K-11 APPROVED, K-12 APPROVED',
	'down: once PostgreSQL is back, the retries are stored and applied');

# ============== SIGHUP with another port and path: the listener moves there
my $wport2 = PostgreSQL::Test::Cluster::get_free_port();
my $path2 = '/billing/flexfactor-hook';
$node->safe_psql('postgres', "ALTER SYSTEM SET flexfactor.webhook_port = $wport2");
$node->safe_psql('postgres', "ALTER SYSTEM SET flexfactor.webhook_path = '$path2'");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $old = $lpid;
$lpid = FFSim::wait_for_listener($node, $wport2, $old);
isnt($lpid, $old, "move: a new listener serves port $wport2 ($old -> $lpid)");
my $r = FFSim::post_webhook(port => $wport, body => FFSim::webhook_body(Event => 'order.completed',
		OrderId => $osk{'K-01'}));
ok(!defined $r->{status}, 'move: the old port is closed');
$r = FFSim::post_webhook(port => $wport2, path => $path, body => FFSim::webhook_body(Event => 'order.completed',
		OrderId => $osk{'K-01'}));
is($r->{status}, 404, 'move: the old path is 404 on the new port');
$sim->config({ webhookUrl => "http://127.0.0.1:$wport2$path2" });
$sim->chargeback($osk{'K-01'}, 1503, '10.4');
ok($sim->wait_for_webhooks(sub { grep { $_->{event} eq 'payment.chargeback.received' && ($_->{status} // 0) == 200 }
			@{ $_[0]{attempts} } }), 'move: deliveries to the new URL are taken');

# ============ a slow client and a flood of idle connections
sub closed_by_server
{
	my ($sock) = @_;
	return 0 unless IO::Select->new($sock)->can_read(0);
	my $n = sysread($sock, my $buf, 4096);
	return !defined $n || $n == 0 ? 1 : 0;    # EOF or reset; data would be an answer
}

my $slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport2, Proto => 'tcp', Timeout => 5)
  or die "connect: $!";
syswrite($slow, "POST $path2 HTTP/1.1\r\nHost: 127.0.0.1:$wport2\r\nx-fc-nonce: 00112233");
my %idle;    # address => [sockets]
for my $addr (qw(127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5))
{
	for (1 .. ($addr eq '127.0.0.2' ? 70 : 60))
	{
		my $s = IO::Socket::INET->new(LocalAddr => $addr, PeerAddr => '127.0.0.1', PeerPort => $wport2,
			Proto => 'tcp', Timeout => 5);
		push @{ $idle{$addr} }, $s if $s;
	}
}
my $t_idle = Time::HiRes::time();
is(join(',', map { scalar @{ $idle{$_} } } sort keys %idle), '70,60,60,60',
	'idle: 250 connections opened from 4 addresses, plus a client that sent half its headers');
my $open = 0;
for (1 .. 50)    # up to 5 s for the listener to accept them all
{
	$open = grep { !closed_by_server($_) } $slow, map { @$_ } values %idle;
	last if $open <= 192;
	Time::HiRes::sleep(0.1);
}
is($open, 192, 'idle: the listener keeps 192 connections (64 per address at most), evicting the oldest idle ones');
ok(closed_by_server($slow), 'idle: the oldest, a client that sent half its headers, was evicted first');

my $t0 = Time::HiRes::time();
$r = FFSim::post_webhook(port => $wport2, path => $path2,
	body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'K-02'}, ConfirmationId => 'IDLE0001'));
is($r->{status}, 200, 'idle: a real delivery is answered while they hang on');
cmp_ok($r->{elapsed}, '<', 3, sprintf('idle: promptly (%.2f s)', $r->{elapsed}));
$sim->chargeback($osk{'K-02'}, 1503, '10.4');
ok($sim->wait_for_webhooks(sub { grep { $_->{orderId} eq $osk{'K-02'} && ($_->{status} // 0) == 200 }
			@{ $_[0]{attempts} } }, 5), 'idle: and so is one from the simulator');

# the header deadline (5 s from the connection) drops them all
my $all_closed;
my $deadline = Time::HiRes::time() + 30;
while (Time::HiRes::time() < $deadline && !$all_closed)
{
	$all_closed //= Time::HiRes::time() - $t_idle
	  if !grep { !closed_by_server($_) } map { @$_ } values %idle;
	Time::HiRes::sleep(0.2);
}
ok(defined $all_closed && $all_closed >= 3 && $all_closed < 10,
	sprintf('idle: all idle connections dropped after the 5 s header deadline (%.1f s)', $all_closed // -1));
close $_ for $slow, map { @$_ } values %idle;
$r = FFSim::post_webhook(port => $wport2, path => $path2,
	body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'K-03'}, ConfirmationId => 'IDLE0002'));
is($r->{status}, 200, 'idle: deliveries go on afterwards');

# ============================================== nothing lost, nothing doubled
my $w = $sim->webhooks;
is(join(',', sort { $a cmp $b } keys %{ { map { ($_->{status} => 1) } @{ $w->{events} } } }), 'delivered',
	'end: every event the simulator emitted is delivered');
my %stored = map { ($_ => 1) } split /\n/, sq('SELECT nonce FROM flexfactor.webhook_events');
my @acked_all = grep { defined $_->{status} && $_->{status} >= 200 && $_->{status} < 300 } @{ $w->{attempts} };
my @unacked = grep { !defined $_->{status} || $_->{status} >= 300 } @{ $w->{attempts} };
is(scalar(grep { !$stored{ FFSim::attempt_nonce($_) } } @acked_all), 0,
	'end: each of the ' . scalar(@acked_all) . ' deliveries answered 2xx has its row (by nonce)');
is(scalar(grep { $stored{ FFSim::attempt_nonce($_) } } @unacked), 0,
	'end: none of the ' . scalar(@unacked) . ' unanswered deliveries left a row');
cmp_ok(scalar @unacked, '>=', 5, 'end: (the faults did interrupt deliveries)');
my $once = 1;
for my $ev (@{ $w->{events} })
{
	my $n = sq("SELECT count(*) FROM flexfactor.webhook_events
	             WHERE order_session_key = '$ev->{orderId}' AND event = '$ev->{event}'
	               AND confirmation_id = '$ev->{confirmationId}' AND apply_state <> 'duplicate'");
	$once = 0, diag("$ev->{event} of $ev->{externalOrderId}: $n rows") if $n ne '1';
}
ok($once, 'end: each of the ' . scalar(@{ $w->{events} }) . ' events is stored and applied exactly once');
is(sq("SELECT count(*) FROM billing.invoices WHERE history <> '{SUBMITTED,APPROVED}'"), '0',
	'end: the billing callback saw each order SUBMITTED then APPROVED, once');
is(sq("SELECT count(*) FROM flexfactor.order_events WHERE callback_state <> 'done'"), '0',
	'end: every callback done');

$node->stop;
$sim->stop;
done_testing();
