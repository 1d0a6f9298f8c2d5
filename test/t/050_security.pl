# Attacks on the webhook listener, run as an anonymous client (or with a
# genuine signature but a poisonous body), each asserting that nothing was
# gained, changed, stored or leaked.
#
# - Unprocessable but signed deliveries (a body nested 20,000 levels deep, an
#   amount of 1e999, a \u0000 escape) are never answered 503, which
#   FlexFactor would retry for good: the too-deep body and the \u0000 are
#   refused 400, the amount is kept as 'rejected' and acknowledged 200;
#   their orders do not change; a replay is refused.
# - 13.12: a method, a path or a signed body that is not UTF-8 is refused,
#   nothing invalid is stored, COPY of webhook_rejections and webhook_events
#   succeeds.
# - Refusals cost no commit each (item 6): 3,000 refused requests from one
#   anonymous client (404s and bad signatures on keep-alive connections) add
#   fewer than 50 commits in the database; every one is counted in
#   ff_webhook_refusals() and, within seconds, in webhook_refusal_counts; at
#   most 10 samples of a reason are kept in webhook_rejections, with no
#   signature in them.
# - Slow and idle connections do not starve deliveries (item 5): while 4
#   addresses hold 64 slowloris connections each (a header byte a second)
#   and 40 others hold 2,000 idle connections, reconnecting when dropped,
#   signed deliveries from another address are each answered 200 and stored
#   within 2 s; the slow and idle connections are shut down (counted as
#   'too slow' and 'evicted').  With flexfactor.webhook_allowed_networks a
#   connection from elsewhere is closed at once, unanswered.
# The API client's attacks (echoing servers, tokens, invalid text) are in
# 051_security_api.pl.
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ();
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $key = $FFSim::WEBHOOK_TEST_KEY;
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $path = '/flexfactor/webhook';

my $node = ff_node('security050',
	'flexfactor.database' => 'ffdb',
	'flexfactor.batch_interval' => '0',
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $key);
ff_start_serving($node, 'ffdb');
my $lpid = FFSim::wait_for_listener($node, $wport);

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub deliver { return FFSim::post_webhook(port => $wport, path => $path, @_) }

# what must not change when an attack is refused
sub orders_snapshot
{
	return sq("SELECT coalesce(md5(string_agg(o::text, '|' ORDER BY id)), '') || ' changes='
	               || (SELECT count(*) FROM flexfactor.order_events) || ' refunds='
	               || (SELECT count(*) FROM flexfactor.refunds)
	             FROM flexfactor.orders o");
}

my %osk = map { split /\|/ } split /\n/, sq(q{
	INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents,
	                               currency, status)
	SELECT o, gen_random_uuid(), gen_random_uuid(), 'batch', 1503, 'USD', 'APPROVED'
	  FROM unnest(ARRAY['S-1', 'S-2', 'S-3']) o
	RETURNING order_id || '|' || order_session_key});

# ===================================== 13: signed but unprocessable deliveries
{
	my $before = orders_snapshot();
	my $events = sq('SELECT count(*) FROM flexfactor.webhook_events');

	my $deep = '{"Event":"order.refunded","OrderId":"' . $osk{'S-1'} . '","EventData":'
	  . ('[' x 20000) . (']' x 20000) . '}';
	my $r = deliver(body => $deep);
	is($r->{status}, 400, 'signed body nested 20,000 levels deep: refused 400, not 503 (never retried for good)')
	  or diag explain { status => $r->{status}, body => $r->{body} };
	like($r->{body} . sq("SELECT coalesce(string_agg(reason, ' '), '') FROM flexfactor.webhook_rejections"),
		qr/deeper than 64 levels/, 'the refusal says why');

	my $huge = FFSim::webhook_body(Event => 'order.refunded', OrderId => $osk{'S-2'}, ExternalOrderId => 'S-2',
		EventData => { refundTransactionId => 'rf-1' });
	$huge =~ s/"refundTransactionId"/"amount":1e999,"refundTransactionId"/ or die;
	$r = deliver(body => $huge);
	is($r->{status}, 200, 'signed order.refunded with amount 1e999: acknowledged 200, not 503')
	  or diag explain { status => $r->{status}, body => $r->{body} };
	is(sq("SELECT event || ' ' || apply_state || ' ' || (apply_error ~ 'out of range')
	         FROM flexfactor.webhook_events WHERE nonce = '$r->{nonce}'"),
		'order.refunded rejected true', 'amount 1e999: kept as rejected, with the reason');
	my $replay = deliver(body => $huge, nonce => $r->{nonce});
	is($replay->{status}, 401, 'amount 1e999: a replay of the rejected delivery is refused 401');

	my $nul = FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'S-3'}, ExternalOrderId => 'S-3');
	$nul =~ s/"ExternalOrderId":"S-3"/"ExternalOrderId":"S-3\\u0000"/ or die;
	$r = deliver(body => $nul);
	is($r->{status}, 400, 'signed body with \u0000 (which jsonb cannot hold): refused 400, not 503')
	  or diag explain { status => $r->{status}, body => $r->{body} };

	is(orders_snapshot(), $before, 'unprocessable deliveries: no order, status change or refund');
	is(sq("SELECT count(*) - $events FROM flexfactor.webhook_events"), '1',
		'unprocessable deliveries: only the one rejected row was stored');

	# an unsigned poisonous body is no more than an anonymous refusal
	$r = deliver(body => $huge, sign_key => 'AAAA' . substr($key, 4));
	is($r->{status}, 401, 'amount 1e999 with a bad signature: 401, nothing kept');
}

# ================================ 13.12: bytes that are not UTF-8, anonymously
{
	my $rej = sq('SELECT coalesce(max(id), 0) FROM flexfactor.webhook_rejections');
	my $events = sq('SELECT count(*) FROM flexfactor.webhook_events');
	my @answers;
	for my $raw ("P\xffST $path HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"GE\xc3 $path HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /flexfactor/\xfe\xff HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"POST $path\xc3\x28 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	{
		my $r = FFSim::http_request(port => $wport, raw => $raw);
		push @answers, $r->{status} // 'closed';
	}
	like(join(',', @answers), qr/^((4\d\d|closed),){3}(4\d\d|closed)$/,
		'not UTF-8: a method or a path that is not UTF-8 is refused (' . join(',', @answers) . ')');
	my $r = deliver(body => '{"Event":"order.completed","OrderId":"' . $osk{'S-3'} . '","ExternalOrderId":"S-3\xff\xfe"}');
	is($r->{status}, 400, 'not UTF-8: a signed body with bytes that are not UTF-8 is refused 400');
	is(sq("SELECT count(*) FROM flexfactor.webhook_events") - $events, 0, 'not UTF-8: no event stored');
	cmp_ok(sq("SELECT count(*) FROM flexfactor.webhook_rejections WHERE id > $rej"), '>=', 3,
		'not UTF-8: the refusals are kept as samples');
	is(sq("SELECT count(*) FROM flexfactor.webhook_rejections WHERE NOT (reason || coalesce(remote_addr, '')) IS NORMALIZED"),
		'0', 'not UTF-8: every sample is valid text');
	for my $table (qw(webhook_rejections webhook_events))
	{
		my ($ret, $out, $err) = $node->psql('ffdb', "COPY flexfactor.$table TO STDOUT");
		is($ret, 0, "not UTF-8: COPY flexfactor.$table TO STDOUT succeeds") or diag $err;
	}
}

# ============================ 6: refusals are counted, not committed one by one
# $n requests (the exact bytes $req) on keep-alive connections from $from;
# returns how many were answered $status.
sub hammer
{
	my ($n, $req, $status, $from) = @_;
	my ($sock, $got) = (undef, 0);
	for my $i (1 .. $n)
	{
		$sock //= IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport, Proto => 'tcp',
			($from ? (LocalAddr => $from) : ()))
		  or die "connect: $!";
		syswrite($sock, $req) or do { undef $sock; redo };
		my $resp = '';
		while ($resp !~ /\r\n\r\n/ || length($resp) < length($`) + 4 + (($resp =~ /Content-Length: (\d+)/i)[0] // 0))
		{
			my $k = sysread($sock, $resp, 4096, length $resp);
			last unless $k;
		}
		$got++ if $resp =~ m{^HTTP/1\.1 $status};
		undef $sock if $resp =~ /Connection: close/i || $resp eq '';
	}
	return $got;
}

sub refused_by { sq("SELECT refused FROM flexfactor.ff_webhook_refusals() WHERE reason = '$_[0]'") }

sub commits
{
	sq('SELECT pg_stat_force_next_flush()') if $node->safe_psql('postgres', 'SHOW server_version_num') >= 150000;
	return $node->safe_psql('postgres', "SELECT xact_commit FROM pg_stat_database WHERE datname = 'ffdb'");
}

{
	my $body = FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'S-3'});
	my @h = FFSim::webhook_headers('AAAA' . substr($key, 4), FFSim::webhook_nonce(), FFSim::http_date(time),
		"127.0.0.1:$wport", $body);
	my $unsigned = "POST $path HTTP/1.1\r\nHost: 127.0.0.1:$wport\r\n";
	while (my ($k, $v) = splice(@h, 0, 2)) { $unsigned .= "$k: $v\r\n"; }
	$unsigned .= 'Content-Length: ' . length($body) . "\r\n\r\n$body";
	my $nowhere = "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n";

	# let the samples and counts of the attacks above be written first
	ok($node->poll_query_until('ffdb', 'SELECT sum(not_flushed) = 0 FROM flexfactor.ff_webhook_refusals()'),
		'refusals: the counts of the attacks above are flushed');
	my $rej = sq('SELECT coalesce(max(id), 0) FROM flexfactor.webhook_rejections');
	my ($paths, $sigs) = (refused_by('unknown path'), refused_by('bad signature'));
	my $before = orders_snapshot();
	my $c0 = commits();
	my $wal0 = sq('SELECT pg_current_wal_insert_lsn()');
	my $t0 = Time::HiRes::time();
	my $got = hammer(2000, $nowhere, 404) + hammer(1000, $unsigned, 401);
	my $secs = Time::HiRes::time() - $t0;
	is($got, 3000, 'refusals: 2,000 requests for another path answered 404, 1,000 unsigned ones 401');
	my $c1 = commits();
	my $wal = sq("SELECT pg_current_wal_insert_lsn() - '$wal0'");
	diag sprintf('refusals: 3,000 in %.1f s (%.0f/s), %d commits in the database and %d bytes of WAL meanwhile',
		$secs, 3000 / $secs, $c1 - $c0, $wal);
	cmp_ok($c1 - $c0, '<', 50, 'refusals: 3,000 refusals cost fewer than 50 commits (not one each)');
	cmp_ok($wal, '<', 65536, 'refusals: and less than 64 kB of WAL');
	is(refused_by('unknown path') - $paths, 2000, 'refusals: ff_webhook_refusals() counts the 2,000 404s');
	is(refused_by('bad signature') - $sigs, 1000, 'refusals: and the 1,000 bad signatures');
	ok($node->poll_query_until('ffdb', "SELECT sum(refusals) FILTER (WHERE reason = 'unknown path') = $paths + 2000
	                                       AND sum(refusals) FILTER (WHERE reason = 'bad signature') = $sigs + 1000
	                                      FROM flexfactor.webhook_refusal_counts"),
		'refusals: within seconds webhook_refusal_counts holds them all, by reason');
	my $samples = sq("SELECT http_status || ':' || count(*) FROM flexfactor.webhook_rejections WHERE id > $rej
	                   GROUP BY http_status ORDER BY 1");
	# (20: the attack may straddle the turn of a minute)
	like($samples, qr/\A401:([1-9]|1[0-9]|20)\n404:([1-9]|1[0-9]|20)\z/,
		'refusals: at most 10 samples of each reason a minute are kept one by one') or diag $samples;
	my ($sig) = $unsigned =~ /Signature=([^\r]+)/;
	is(sq("SELECT count(*) FROM flexfactor.webhook_rejections WHERE strpos(reason, '$sig') > 0"), '0',
		'refusals: no signature in the samples');
	is(orders_snapshot(), $before, 'refusals: nothing changed');
}

# ===================================== 5: slow and idle connections, deliveries
# A child process holding connections from each address of @from ($per
# each) for $secs seconds; slowloris ones send a header byte a second, idle
# ones nothing.  A dropped connection is opened again (once a second).
sub attacker
{
	my ($kind, $per, $secs, @from) = @_;
	pipe(my $r, my $w) or die "pipe: $!";
	my $pid = fork() // die "fork: $!";
	if ($pid)
	{
		close $w;
		my $ready = <$r>;    # once the connections are open
		close $r;
		return $pid;
	}
	close $r;
	# the child must never run the test's END blocks (they stop the node) nor
	# its "death by signal" handler: it ends by signal or by _exit only
	$SIG{TERM} = $SIG{INT} = 'DEFAULT';
	local $SIG{PIPE} = 'IGNORE';
	my @socks;
	my $open = sub {
		my ($addr) = @_;
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport, Proto => 'tcp',
			LocalAddr => $addr, Blocking => 0);
		if ($s && $kind eq 'slow')
		{
			syswrite($s, "POST $path HTTP/1.1\r\nHost: 127.0.0.1:$wport\r\n");
		}
		return $s;
	};
	for my $addr (@from) { push @socks, [ $addr, $open->($addr) ] for 1 .. $per; }
	syswrite($w, "ready\n");
	close $w;
	my $until = time + $secs;
	while (time < $until)
	{
		sleep 1;
		for my $c (@socks)
		{
			my $s = $c->[1];
			my $dead = !$s;
			if ($s)
			{
				my $buf;
				my $n = sysread($s, $buf, 4096);
				$dead = 1 if defined $n && $n == 0;    # closed by the listener
				$dead = 1 if $kind eq 'slow' && !defined syswrite($s, 'X');
			}
			$c->[1] = $open->($c->[0]) if $dead;
		}
	}
	POSIX::_exit(0);
}

# $n signed deliveries, one a second, while the attack goes on: how many were
# answered 200 within 2 s and stored, and the slowest
sub deliveries_through
{
	my ($what, $n) = @_;
	my ($worst, $ok, @nonces) = (0, 0);
	for my $i (1 .. $n)
	{
		sleep 1;
		my $r = deliver(body => FFSim::webhook_body(Event => 'payment.chargeback.received',
				OrderId => $osk{'S-1'}, ExternalOrderId => 'S-1', ConfirmationId => "CB-$what-$i"), timeout => 10);
		$ok++ if ($r->{status} // 0) == 200 && $r->{elapsed} < 2;
		$worst = $r->{elapsed} if $r->{elapsed} > $worst;
		push @nonces, $r->{nonce};
		diag "$what: delivery $i: " . ($r->{status} // $r->{error}) . sprintf(' in %.2f s', $r->{elapsed})
		  unless ($r->{status} // 0) == 200;
	}
	my $stored = sq("SELECT count(*) FROM flexfactor.webhook_events WHERE nonce IN ("
		  . join(',', map { "'$_'" } @nonces) . ')');
	return ($ok, $stored, $worst);
}

sub established
{
	my $n = `ss -Htn state established '( sport = :$wport )' 2>/dev/null | wc -l`;
	chomp $n;
	return $n;
}

{
	my @slow = map { "127.0.0.$_" } 2 .. 5;
	my @idle = map { "127.0.1.$_" } 1 .. 40;

	# slowloris alone: 4 addresses x 64
	my $slow0 = refused_by('too slow') + refused_by('evicted');
	my $too_slow0 = refused_by('too slow');
	my @kids = (attacker('slow', 64, 14, @slow));
	my ($ok, $stored, $worst) = deliveries_through('slowloris', 8);
	diag sprintf('slowloris: %d connections established; the slowest delivery took %.2f s', established(), $worst);
	is("$ok $stored", '8 8', 'under 4 x 64 slowloris connections, each of 8 deliveries is answered 200 within 2 s and stored');
	kill 'TERM', @kids;
	waitpid($_, 0) for @kids;
	cmp_ok(refused_by('too slow') + refused_by('evicted') - $slow0, '>=', 128,
		'slowloris: the connections beyond 192 evicted the oldest slow ones, again and again');

	# one slow client alone (no eviction): shut down when its headers are not in after 5 s
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport, Proto => 'tcp',
		LocalAddr => '127.0.0.6') or die "connect: $!";
	syswrite($s, "POST $path HTTP/1.1\r\nHost: 127.0.0.1:$wport\r\n");
	my $t0 = Time::HiRes::time();
	my $closed;
	local $SIG{PIPE} = 'IGNORE';
	while (Time::HiRes::time() - $t0 < 15)
	{
		sleep 1;
		my $n = syswrite($s, 'X');
		last unless defined $n;
		if (IO::Select->new($s)->can_read(0)) { my $k = sysread($s, my $buf, 100); last if !$k; }
	}
	$closed = Time::HiRes::time() - $t0;
	close $s;
	ok($closed >= 4 && $closed < 8, sprintf('a lone slow client sending a header byte a second is dropped after '
		  . 'the 5 s header deadline (%.1f s)', $closed));
	cmp_ok(refused_by('too slow') - $too_slow0, '>=', 1, "and counted as 'too slow'");

	# 2,000 idle connections from 40 addresses, and the slowloris again
	my $shut0 = refused_by('too slow') + refused_by('evicted');
	@kids = (attacker('slow', 64, 14, @slow),
		attacker('idle', 50, 14, @idle[0 .. 13]),
		attacker('idle', 50, 14, @idle[14 .. 26]),
		attacker('idle', 50, 14, @idle[27 .. 39]));
	my $during = established();
	($ok, $stored, $worst) = deliveries_through('idle', 8);
	diag sprintf('idle: %d connections established at the start, %d at the end; the slowest delivery took %.2f s',
		$during, established(), $worst);
	is("$ok $stored", '8 8',
		'under 2,000 idle connections from 40 addresses and the slowloris, each of 8 deliveries is answered 200 within 2 s and stored');
	kill 'TERM', @kids;
	waitpid($_, 0) for @kids;
	cmp_ok(refused_by('too slow') + refused_by('evicted') - $shut0, '>=', 2000,
		'idle: the idle and slow connections were evicted or shut down (at most 192 kept)');
	cmp_ok($during, '<=', 192 + 64, 'idle: the listener never held more than its 192 connections (and those closing)');
	is(FFSim::listener_pid($node), $lpid, 'the listener survived the attacks');
}

# the allow-list: a connection from another network is closed unanswered
{
	FFSim::reload_listener($node, 'ffdb', "ALTER SYSTEM SET flexfactor.webhook_allowed_networks = '127.0.0.1/32, ::1'");
	my $n0 = refused_by('network not allowed');
	my $r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'S-1'}),
		local_address => '127.0.0.9');
	ok(!defined $r->{status}, 'allowed networks: a delivery from 127.0.0.9 is closed unanswered')
	  or diag explain $r;
	is(refused_by('network not allowed') - $n0, 1, "allowed networks: counted as 'network not allowed'");
	$r = deliver(body => FFSim::webhook_body(Event => 'payment.chargeback.received', OrderId => $osk{'S-1'},
			ConfirmationId => 'CB-allowed'));
	is($r->{status}, 200, 'allowed networks: a delivery from 127.0.0.1 is taken');
	my $e = FFSim::sql_error($node, 'ffdb', "ALTER SYSTEM SET flexfactor.webhook_allowed_networks = '10.0.0.0/33'");
	is($e->{sqlstate}, '22023', 'allowed networks: a bad prefix is refused');
	FFSim::reload_listener($node, 'ffdb', 'ALTER SYSTEM RESET flexfactor.webhook_allowed_networks');
}

done_testing();
