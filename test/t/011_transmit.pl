# ff_transmit and the worker's /transmit queue, against the simulator:
# nothing leaves for a rolled-back (or still open) transaction; committed
# rows are sent once, with a stable idempotencyKey; transient failures (5xx,
# 429, dropped connections, timeouts) are retried with backoff; a row is set
# aside after flexfactor.transmit_max_attempts failures (and at once for a
# validation error); an incomplete body is refused at once (FF023, naming
# the missing fields) and never queued; many rows go out at once, bounded by
# transmit_concurrency, with no duplicates; delivered rows are deleted after
# transmit_retention; and the caller never waits on FlexFactor, even while
# it hangs or is down.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $mid = '2d4c6e8a-1b3f-4a5c-8e7d-9f0a1b2c3d4e';
my $secret = 'tap-transmit-secret-71c0a9e2';
my $sim = FFSim->start(name => 'ffsim_011', mid => $mid, app_secret => $secret);

# Short backoff (50 ms, doubling) so that retries take moments; a worker
# request gives up after 3 s.
my $node = ff_node('transmit', $sim->node_settings(
		'flexfactor.database' => 'ffdb',
		'flexfactor.http_timeout_ms' => '3000',
		'flexfactor.transmit_retry_base_ms' => '50',
		'flexfactor.transmit_max_attempts' => '20'));
ff_start_serving($node, 'ffdb');

sub sq
{
	my ($sql) = @_;
	return $node->safe_psql('ffdb', $sql);
}

sub payment
{
	my ($order, $amount) = @_;
	return "flexfactor.ff_payment('$order', " . ($amount // 1999) . ", 'USD', 'tx-" . lc($order) . "', "
	  . ff_payment_args() . ")";
}

# Logged /v1/transmit requests whose body has orderId $order (or matches a
# regexp), each with its decoded body.
sub transmit_requests
{
	my ($match) = @_;
	my @r;
	for my $req (@{ $sim->requests(path => '/v1/transmit') })
	{
		my $b = FFSim->decode_json($req->{body}) // {};
		my $o = $b->{orderId} // '';
		next unless ref $match ? $o =~ $match : $o eq $match;
		push @r, { %$req, json => $b };
	}
	return \@r;
}

sub sim_transmits
{
	my ($match) = @_;
	return [ grep { ref $match ? ($_->{orderId} // '') =~ $match : ($_->{orderId} // '') eq $match }
		  @{ $sim->transmits } ];
}

sub wait_for { ff_wait_until(@_) }

sub wait_state
{
	my ($where, $state, $n) = @_;
	$n //= 1;
	return $node->poll_query_until('ffdb',
		"SELECT count(*) = $n FROM flexfactor.transmit_queue WHERE ($where) AND state = '$state'");
}

sub order_where { "payload->>'orderId' = '$_[0]'" }

sub reload_and_wait { ff_reload_and_wait($node, 'ffdb', $_[0]) }

# ------------------------------------------------------------------
# 1. Nothing for a rolled-back or an open transaction; sent after COMMIT
# ------------------------------------------------------------------
sq("BEGIN; SELECT flexfactor.ff_transmit(" . payment('RB-1') . "); ROLLBACK;");

my $bg = $node->background_psql('ffdb');
$bg->query_safe('BEGIN');
my $open_id = $bg->query_safe("SELECT flexfactor.ff_transmit(" . payment('OPEN-1') . ")");
like($open_id, qr/^\d+$/, 'ff_transmit returns the queue id');

my $id = sq("SELECT flexfactor.ff_transmit(" . payment('OK-1') . ")");
ok(wait_state(order_where('OK-1'), 'delivered'), 'a committed row is delivered');
is(sq("SELECT id FROM flexfactor.transmit_queue WHERE " . order_where('OK-1')), $id,
	'ff_transmit returned the id of its row');
Time::HiRes::sleep(1.2);    # more than a worker pass (batch_interval = 1)
is(scalar @{ transmit_requests('OPEN-1') }, 0, 'nothing sent while the transaction is open');
$bg->query_safe('COMMIT');
$bg->quit;
ok(wait_state(order_where('OPEN-1'), 'delivered'), 'sent after COMMIT');
is(scalar @{ transmit_requests('RB-1') }, 0, 'nothing was ever sent for the rolled-back row');
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE " . order_where('RB-1')), '0',
	'and there is no row for it');

my $reqs = transmit_requests('OK-1');
is(scalar @$reqs, 1, 'exactly one /v1/transmit for the row');
my $key = $reqs->[0]{json}{idempotencyKey} // '';
like($key, qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i,
	'it carries an idempotencyKey');
like($reqs->[0]{headers}{Authorization} // '', qr/^Bearer \S+$/, 'with the bearer token');
my $st = sim_transmits('OK-1');
is(scalar @$st, 1, 'the simulator recorded one transmit');
is(sq("SELECT attempts, transmit_id, delivered_at IS NOT NULL, last_error IS NULL
	FROM flexfactor.transmit_queue WHERE " . order_where('OK-1')),
	"1|$st->[0]{transmitId}|t|t", 'row: 1 attempt, FlexFactor\'s transmitId, delivered_at, no error');
{
	my %body = %{ $reqs->[0]{json} };
	is(delete $body{mid}, $mid, 'the worker added the mid');
	delete $body{idempotencyKey};
	is_deeply(\%body, FFSim->decode_json(sq("SELECT " . payment('OK-1'))),
		'the body is the ff_payment payload, byte for byte as queued');
	is_deeply([ @{ $body{transaction} }{qw(id amount currency timestampUtc responseCode avsResultCode)} ],
		[ 'tx-ok-1', 1999, 'USD', '2026-11-20T10:00:00Z', 'NA', 'NA' ],
		'with the transaction, its time and the placeholder codes');
	ok($body{isMIT} && $body{isRecurring} && !$body{isDeclined}, 'isMIT, isRecurring, not isDeclined');
	is_deeply([ $body{payer}{email}, @{ $body{subscription} }{qw(subscriptionId interval)} ],
		[ 'jane@example.com', 'sub-9', 'monthly' ], 'the payer and the subscription');
	is_deeply($body{paymentMethod}, { holderName => 'Jane Roe', cardType => 'CREDIT', cardBrand => 'VISA',
			cardCountry => 'US', expirationMonth => 3, expirationYear => 2030, cardBinNumber => '424242',
			cardLast4Digits => '4242' }, 'the card details, all of them, and no card number');
}

# ------------------------------------------------------------------
# 2. Transient failures are retried with the same key
# ------------------------------------------------------------------
for my $case (
	[ 'RT-500', { mode => '500', count => 2 }, 3, [ 500, 500, 200 ], 'two 500s' ],
	[ 'RT-429', { mode => '429', count => 1 }, 2, [ 429, 200 ], 'a 429' ],
	[ 'RT-drop', { mode => 'drop', count => 1 }, undef, [ undef, 200 ], 'a dropped connection' ],
	[ 'RT-time', { mode => 'timeout', count => 1, seconds => 30 }, 2, [ undef, 200 ],
		'no answer within http_timeout_ms' ])
{
	my ($order, $fault, $attempts, $statuses, $what) = @$case;
	$sim->fault(endpoint => '/v1/transmit', %$fault);
	sq("SELECT flexfactor.ff_transmit(" . payment($order) . ")");
	ok(wait_state(order_where($order), 'delivered'), "$what: delivered in the end");
	my $got = sq("SELECT attempts, last_error IS NULL FROM flexfactor.transmit_queue WHERE " . order_where($order));
	if (defined $attempts)
	{
		is($got, "$attempts|t", "$what: $attempts attempts");
	}
	else
	{
		# libcurl itself re-sends a request once when a kept-alive connection
		# turns out closed, so this may or may not count as an attempt
		like($got, qr/^[12]\|t$/, "$what: 1 or 2 attempts ($got)");
	}
	$reqs = transmit_requests($order);
	is_deeply([ map { $_->{status} } @$reqs ], $statuses, "$what: the simulator saw the failures, then the success");
	my %keys = map { ($_->{json}{idempotencyKey} // '') => 1 } @$reqs;
	is(scalar keys %keys, 1, "$what: every attempt sent the same idempotencyKey");
	is(scalar @{ sim_transmits($order) }, 1, "$what: recorded once");
}
$sim->clear_faults;

# ------------------------------------------------------------------
# 3. Set aside after transmit_max_attempts failures, or at once for a 400
# ------------------------------------------------------------------
reload_and_wait('ALTER SYSTEM SET flexfactor.transmit_max_attempts = 2');
$sim->fault(endpoint => '/v1/transmit', mode => '500', count => 1000);
sq("SELECT flexfactor.ff_transmit(" . payment('SA-1') . ")");
ok(wait_state(order_where('SA-1'), 'set_aside'), 'a row that keeps failing is set aside');
my ($attempts, $err) = split /\|/, sq("SELECT attempts, last_error FROM flexfactor.transmit_queue WHERE "
	  . order_where('SA-1')), 2;
is($attempts, 2, 'after transmit_max_attempts (2) attempts');
like($err // '', qr/HTTP 500/, 'last_error mentions HTTP 500');
is(scalar @{ transmit_requests('SA-1') }, 2, 'the simulator saw exactly 2 attempts');
Time::HiRes::sleep(0.5);
is(scalar @{ transmit_requests('SA-1') }, 2, 'and no more after it was set aside');
$sim->clear_faults;
reload_and_wait('ALTER SYSTEM RESET flexfactor.transmit_max_attempts');

# a body FlexFactor refuses as invalid is not retried (complete, so that it
# passes the local check, but with a transactionType FlexFactor refuses)
sq("SELECT flexfactor.ff_transmit(" . payment('BAD-1') . " || '{\"transactionType\": \"REFUND\"}')");
ok(wait_state(order_where('BAD-1'), 'set_aside'), 'a row FlexFactor rejects (400) is set aside');
is(sq("SELECT attempts FROM flexfactor.transmit_queue WHERE " . order_where('BAD-1')), '1',
	'at once, without retries');
like(sq("SELECT last_error FROM flexfactor.transmit_queue WHERE " . order_where('BAD-1')),
	qr/400/, 'last_error has the HTTP status');

# an answer of HTTP 200 whose envelope says the request did not succeed
# (success false, flexfactor-api.md section 3) is no delivery: set aside at
# once with FlexFactor's error (it was marked delivered)
$sim->fault(endpoint => '/v1/transmit', mode => 'unsuccessful', count => 1);
sq("SELECT flexfactor.ff_transmit(" . payment('UNS-1') . ")");
ok(wait_state(order_where('UNS-1'), 'set_aside'), 'a 200 answer with success false is set aside, not delivered');
is(sq("SELECT attempts || ' ' || (transmit_id IS NULL) || ' ' || last_error FROM flexfactor.transmit_queue WHERE "
	  . order_where('UNS-1')), '1 true HTTP 200 with success false: injected business error',
	'at once, with no transmitId and FlexFactor\'s error');
$sim->clear_faults;

# ------------------------------------------------------------------
# 3b. Incomplete /transmit bodies: FF023 naming the field, nothing queued
# ------------------------------------------------------------------
# The real FlexFactor answers 400 to a /transmit body without any of these
# (flexfactor-api.md 4.2, 12a); ff_transmit refuses it at once, so that no
# row is queued to be set aside later.
sub queued_rows { sq("SELECT count(*) FROM flexfactor.transmit_queue") }

sub refused_locally
{
	my ($sql, $what, @fields) = @_;
	my ($rows, $before) = (queued_rows(), $sim->last_seq);
	my $r = FFSim::sql_error($node, 'ffdb', $sql);
	ff_refused_ok($r, $what, @fields);
	is(queued_rows(), $rows, "$what: nothing queued");
	Time::HiRes::sleep(0.1);
	is($sim->last_seq, $before, "$what: nothing sent");
	return $r;
}

my $complete = payment('INC-1');
my @transmit_required = qw(orderId isMIT isDeclined isRecurring
  transaction.id transaction.amount transaction.currency transaction.timestampUtc
  transaction.responseCode transaction.responseCodeSource transaction.avsResultCode
  transaction.cvvResultCode transaction.cavvResultCode payer.email paymentMethod
  subscription.subscriptionId subscription.interval
  paymentMethod.holderName paymentMethod.cardType paymentMethod.cardBrand paymentMethod.cardCountry
  paymentMethod.expirationMonth paymentMethod.expirationYear paymentMethod.cardBinNumber
  paymentMethod.cardLast4Digits);
for my $field (@transmit_required)
{
	my $path = '{' . join(',', split /\./, $field) . '}';
	refused_locally("SELECT flexfactor.ff_transmit($complete #- '$path')", "/transmit without $field", $field);
}
refused_locally("SET flexfactor.mid = ''; SELECT flexfactor.ff_transmit($complete)",
	'/transmit without a mid (flexfactor.mid empty)', 'mid');
# what used to be queued and then refused by FlexFactor (400, set aside)
my $r = refused_locally(q{SELECT flexfactor.ff_transmit('{"orderId": "BAD-0", "isDeclined": false}')},
	'a bare /transmit body', qw(isMIT transaction.id transaction.amount transaction.currency
	  transaction.timestampUtc transaction.responseCode transaction.responseCodeSource
	  transaction.avsResultCode transaction.cvvResultCode transaction.cavvResultCode payer.email paymentMethod));
like($r->{hint} // '', qr/flexfactor\.ff_payment/, 'a bare body: the HINT points to ff_payment()');
# ff_payment() with one card detail but not the others
$r = refused_locally("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('INC-1', 1999, 'USD', 'tx-inc-1', "
	  . ff_payment_args(map { $_ => undef } qw(holder_name card_type card_brand card_country expiration_month expiration_year))
	  . "))", 'ff_payment() with card_bin and card_last4 only',
	qw(paymentMethod.holderName paymentMethod.cardType paymentMethod.cardBrand paymentMethod.cardCountry
	  paymentMethod.expirationMonth paymentMethod.expirationYear));
like($r->{hint} // '', qr/^Pass holder_name, card_type, card_brand, card_country, expiration_month, expiration_year to flexfactor\.ff_payment\(\)/,
	'the HINT names the ff_payment() arguments to pass');
for my $case ([ 'paid_at', 'transaction.timestampUtc' ], [ 'email', 'payer.email' ],
	[ 'subscription_interval', 'subscription.interval' ])
{
	my ($arg, $field) = @$case;
	$r = refused_locally("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('INC-1', 1999, 'USD', 'tx-inc-1', "
		  . ff_payment_args($arg => undef) . "))", "ff_payment() without $arg", $field);
	like($r->{hint} // '', qr/^Pass \Q$arg\E to flexfactor\.ff_payment\(\)/, "ff_payment() without $arg: the HINT names $arg");
}
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE payload->>'orderId' IN ('INC-1', 'BAD-0')"), '0',
	'no row for any refused body');

# complete bodies are accepted: without card details (none at all is
# complete), a customer-initiated copy (no subscription), and docs/reference.md's
# call with every field named
my $nocard = sq("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('OK-NOCARD', 1999, 'USD', 'tx-ok-nocard', "
	  . ff_payment_args(map { $_ => undef } qw(holder_name card_type card_brand card_country expiration_month
		  expiration_year card_bin card_last4)) . "))");
my $cit = sq("SELECT flexfactor.ff_transmit(flexfactor.ff_payment('OK-CIT', 1999, 'USD', 'tx-ok-cit', is_mit => false, "
	  . ff_payment_args(subscription_id => undef, subscription_interval => undef) . "))");
my $readme = sq(q{SELECT flexfactor.ff_transmit(flexfactor.ff_payment(
	order_id => 'INV-1002', amount_cents => 2500, currency => 'USD', transaction_id => 'gw-7790',
	email => 'jane@example.com', paid_at => '2026-11-24 09:35+00',
	subscription_id => 'sub_42', subscription_interval => 'monthly',
	holder_name => 'Jane Roe', card_type => 'credit', card_brand => 'visa', card_country => 'US',
	expiration_month => 3, expiration_year => 2030, card_bin => '411111', card_last4 => '1111'))});
ok(wait_state("id IN ($nocard, $cit, $readme)", 'delivered', 3),
	"complete bodies (no card details; customer-initiated; docs/reference.md's ff_transmit(ff_payment(...))) are delivered");
is(scalar @{ sim_transmits(qr/^(OK-NOCARD|OK-CIT|INV-1002)$/) }, 3, 'and recorded by FlexFactor');

# ------------------------------------------------------------------
# 4. Many at once, bounded by transmit_concurrency (16)
# ------------------------------------------------------------------
# every request is held 1 s, so requests in flight together overlap
$sim->fault(endpoint => '/v1/transmit', mode => 'hang', seconds => 1, count => 40);
my $t0 = Time::HiRes::time();
sq("SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('CC-' || i, 1999, 'USD', 'tx-cc-' || i, "
	  . ff_payment_args() . "))) FROM generate_series(1, 40) i");
ok(wait_state("payload->>'orderId' LIKE 'CC-%'", 'delivered', 40), '40 rows held 1 s each are delivered');
my $took = Time::HiRes::time() - $t0;
$reqs = transmit_requests(qr/^CC-/);
my @ev;
for my $r (@$reqs)
{
	next unless defined $r->{durationMs};
	push @ev, [ $r->{ts}, 1 ], [ $r->{ts} + $r->{durationMs} / 1000, -1 ];
}
my ($now_in, $max_in) = (0, 0);
for my $e (sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev)
{
	$now_in += $e->[1];
	$max_in = $now_in if $now_in > $max_in;
}
cmp_ok($max_in, '>=', 8, "requests were sent in parallel (at most $max_in at once)");
cmp_ok($max_in, '<=', 16, 'never more than transmit_concurrency (16) at once');
cmp_ok($took, "<", 20, sprintf("40 one-second requests took %.1f s, not 40 s", $took));

# ------------------------------------------------------------------
# 5. No duplicates: 200 rows, 200 transmits
# ------------------------------------------------------------------
$sim->clear_faults;
sq("SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('N-' || i, 1999, 'USD', 'tx-n-' || i, "
	  . ff_payment_args() . "))) FROM generate_series(1, 200) i");
ok(wait_state("payload->>'orderId' LIKE 'N-%'", 'delivered', 200), '200 rows delivered');
$reqs = transmit_requests(qr/^N-/);
is(scalar @$reqs, 200, 'the simulator received exactly 200 transmit requests');
my %orders = map { $_->{json}{orderId} => 1 } @$reqs;
is(scalar keys %orders, 200, 'one for each row');
my %keys = map { ($_->{json}{idempotencyKey} // '') => 1 } @$reqs;
is(scalar keys %keys, 200, 'with 200 distinct idempotency keys');
is(scalar @{ sim_transmits(qr/^N-/) }, 200, 'the simulator recorded 200 transmits');
is(sq("SELECT count(*), sum(attempts) FROM flexfactor.transmit_queue WHERE payload->>'orderId' LIKE 'N-%'"),
	'200|200', 'each row took one attempt');
is_deeply($sim->idempotency(kind => 'transmit')->{acceptedMoreThanOnce}, [],
	'no transmit key was accepted twice');

# ------------------------------------------------------------------
# 6. Delivered rows are deleted after transmit_retention
# ------------------------------------------------------------------
sq("UPDATE flexfactor.transmit_queue SET delivered_at = now() - interval '8 days' WHERE "
	  . order_where('OK-1'));
ok($node->poll_query_until('ffdb',
		"SELECT count(*) = 0 FROM flexfactor.transmit_queue WHERE " . order_where('OK-1')),
	'a row delivered more than transmit_retention (7 days) ago is deleted');
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE " . order_where('OPEN-1')), '1',
	'a recently delivered row is kept');
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE " . order_where('SA-1')), '1',
	'a set-aside row is kept');

# ------------------------------------------------------------------
# 7. The caller never waits on FlexFactor
# ------------------------------------------------------------------
# (a) the worker is stuck on a hanging request; ff_transmit still returns
$sim->fault(endpoint => '/v1/transmit', mode => 'hang', seconds => 2.5, count => 1);
sq("SELECT flexfactor.ff_transmit(" . payment('H-1') . ")");
my $hanging = wait_for(sub {
		my ($r) = grep { !defined $_->{status} } @{ transmit_requests('H-1') };
		$r;
	}, 10);
ok($hanging, 'the worker\'s request for H-1 hangs at the simulator');
my $h2 = sq("BEGIN; SELECT flexfactor.ff_transmit(" . payment('H-2') . "); COMMIT;");
like($h2, qr/^\d+$/, 'ff_transmit returned while the worker waits on FlexFactor');
my ($still) = grep { $_->{seq} == $hanging->{seq} } @{ $sim->requests(path => '/v1/transmit') };
ok(!defined $still->{status}, 'it returned before the hanging request was answered');
ok(wait_state("payload->>'orderId' IN ('H-1', 'H-2')", 'delivered', 2), 'both are delivered afterwards');
is(scalar @{ transmit_requests('H-2') }, 1, 'H-2 sent once');

# (b) FlexFactor is down: ff_transmit works, the row waits and is delivered
#     when it is back
$sim->stop;
my $s1 = sq("SELECT flexfactor.ff_transmit(" . payment('DOWN-1') . ")");
like($s1, qr/^\d+$/, 'ff_transmit works while FlexFactor is down');
ok($node->poll_query_until('ffdb',
		"SELECT attempts >= 2 AND state = 'pending' AND last_error IS NOT NULL
		   FROM flexfactor.transmit_queue WHERE id = $s1"),
	'the row is retried (connection refused) and stays pending');
note sq("SELECT last_error FROM flexfactor.transmit_queue WHERE id = $s1");
$sim->restart;
ok(wait_state("id = $s1", 'delivered'), 'delivered once FlexFactor is back');
is(scalar @{ sim_transmits('DOWN-1') }, 1, 'and recorded once');

# ------------------------------------------------------------------
unlike(slurp_file($node->logfile), qr/\Q$secret\E/, 'the app_secret is not in the server log');
$node->stop('fast');
$sim->stop;
done_testing();
