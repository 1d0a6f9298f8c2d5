# The FlexFactor API from SQL, against the simulator (test/ffsim): the happy
# paths of ff_tokenize, ff_evaluate, ff_order, ff_refund and ff_cancel, the
# shared bearer token (one fetch for many sessions, refreshed before expiry
# and after a 401), every error with its SQLSTATE, local refusals that send
# nothing (among them every incomplete /evaluate body: FF023 naming the
# missing fields), idempotency keys that survive a rolled-back failure, one
# order's requests never in flight together, query cancel
# during a hanging answer, privileges, and no secret or card number in the
# server log.  Assertions use the simulator's inspection API and our tables.
use strict;
use warnings;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $mid = '6a1f3c2e-9b7d-4e21-8c3a-0d5e7f9a1b24';
my $site = '1b9e2d4c-7a3f-4d8e-9c1b-5e6f7a8b9c0d';
my $secret = 'tap-api-secret-3f9c1e7a-never-log';
my $tokkey = 'tap-tok-key-8d2b6e40-never-log';
my $pan = '4242424242424242';
my $bad_pan = '4242424242424241';    # fails Luhn
my $uuid_re = qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
my $T = JSON::PP::true();

my $sim = FFSim->start(
	name => 'ffsim_010',
	mid => $mid,
	app_key => 'tap-app-key',
	app_secret => $secret,
	tokenization_key => $tokkey);

my $node = ff_node('api', $sim->node_settings(
		'flexfactor.database' => 'ffdb',
		'flexfactor.site_id' => $site,
		'flexfactor.http_timeout_ms' => '10000'));
ff_start_serving($node, 'ffdb');

my $all_stderr = '';    # every error text the client saw, checked for secrets

sub sq
{
	my ($sql) = @_;
	return $node->safe_psql('ffdb', $sql);
}

sub jq
{
	my ($sql) = @_;
	my $text = sq($sql);
	my $v = FFSim->decode_json($text);
	die "not JSON: $text" unless defined $v;
	return $v;
}

sub err
{
	my ($sql, %opts) = @_;
	my $e = FFSim::sql_error($node, 'ffdb', $sql, %opts);
	$all_stderr .= $e->{stderr};
	return $e;
}

# Bodies of the /v1 requests to $path logged after sequence number $since.
sub bodies
{
	my ($path, $since) = @_;
	return [ map { FFSim->decode_json($_->{body}) }
		  @{ $sim->requests(path => $path, since => $since // 0) } ];
}

sub decline
{
	my ($order, $amount, $tx, %o) = @_;
	my $token = $o{token} // 'tok-' . lc $order;
	return "flexfactor.ff_decline('$order', $amount, 'USD', '$token', '$tx', " . ff_decline_args() . ")";
}

# The simulator's idempotency record of one key.
sub idem_record
{
	my ($key) = @_;
	my ($rec) = grep { $_->{key} eq $key } @{ $sim->idempotency->{keys} };
	return $rec;
}

# ------------------------------------------------------------------
# 1. One token for the cluster: 20 calls from 4 concurrent sessions
# ------------------------------------------------------------------
is(sq('SELECT has_token, expires_at IS NULL, token_requests FROM flexfactor.ff_token_status()'),
	'f|t|0', 'no token before the first call');

# Hold the token answer for 5 s: all 4 sessions need the token while the
# first fetch is still running, and must wait for it instead of fetching.
$sim->fault(endpoint => '/v1/oauth2/token', mode => 'hang', seconds => 5, count => 1);
my $seq = $sim->last_seq;
my @runs;
for my $s (1 .. 4)
{
	my $file = "$PostgreSQL::Test::Utils::tmp_check/parallel_$s.sql";
	append_to_file($file, join '',
		map { "SELECT flexfactor.ff_evaluate(" . decline("P-$s-$_", 1999, "tx-p-$s-$_") . ")->>'status';\n" }
		  1 .. 5);
	my %run = (out => '', err => '');
	$run{h} = IPC::Run::start(
		[ 'psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('ffdb'), '-f', $file ],
		'<', \undef, '>', \$run{out}, '2>', \$run{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	push @runs, \%run;
}
# while the token request hangs, all four sessions are inside ff_evaluate
my $waiting = 0;
my $poll_until = Time::HiRes::time() + 4.5;
while (Time::HiRes::time() < $poll_until)
{
	my $tok_in_flight = grep { !defined $_->{status} }
	  @{ $sim->requests(path => '/v1/oauth2/token', since => $seq) };
	$waiting = sq("SELECT count(*) FROM pg_stat_activity
		WHERE state = 'active' AND query LIKE '%ff_evaluate%' AND pid <> pg_backend_pid()");
	last if $tok_in_flight && $waiting == 4;
	Time::HiRes::sleep(0.05);
}
is($waiting, 4, 'the 4 sessions were all in ff_evaluate while the token request was in flight');
my $all_ok = 1;
for my $run (@runs)
{
	$run->{h}->finish;
	$all_ok = 0 unless $run->{h}->result(0) == 0 && $run->{out} eq join('', ("SUBMITTED\n") x 5);
	diag $run->{err} if $run->{err} ne '';
}
ok($all_ok, '4 sessions made 5 ff_evaluate calls each, all answered SUBMITTED');
my $tokens = $sim->tokens;
is($tokens->{count}, 1, 'the simulator issued exactly one token for the 20 calls');
my $evals = $sim->requests(path => '/v1/evaluate', since => $seq);
is(scalar @$evals, 20, 'the simulator saw 20 evaluate requests');
my $bearer = "Bearer $tokens->{tokens}[0]{accessToken}";
is(scalar(grep { ($_->{headers}{Authorization} // '') eq $bearer } @$evals), 20,
	'every evaluate carried that one bearer token');
my %clients = map { $_->{client} => 1 } @$evals;
cmp_ok(scalar keys %clients, '>=', 4, 'the calls came over at least 4 connections (4 sessions)');
is(sq('SELECT has_token, token_requests FROM flexfactor.ff_token_status()'),
	't|1', 'ff_token_status: a token, 1 request since start');
my $exp_ms = $tokens->{tokens}[0]{expires};
cmp_ok(abs(sq('SELECT extract(epoch FROM expires_at) * 1000 FROM flexfactor.ff_token_status()') - $exp_ms),
	'<', 1000, 'ff_token_status.expires_at is the token\'s expires');
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'P-%' AND status = 'SUBMITTED' AND source = 'api'"),
	'20', '20 orders stored as SUBMITTED');

# ------------------------------------------------------------------
# 2. ff_tokenize: the card goes to /tokenize with mid and environment
# ------------------------------------------------------------------
# The card is read from a file so that the statement text (log_statement =
# all in TAP nodes) never holds the card number.
my $card_file = "$PostgreSQL::Test::Utils::tmp_check/card.json";
my $bad_card_file = "$PostgreSQL::Test::Utils::tmp_check/bad_card.json";
sub card_json
{
	my ($number) = @_;
	return FFSim->encode_json({ payment_method => { email => 'jane@example.com',
		credit_card => { first_name => 'Jane', last_name => 'Roe', number => $number,
			verification_value => '123', month => '03', year => '2030' } } });
}
append_to_file($card_file, card_json($pan));
append_to_file($bad_card_file, card_json($bad_pan));

$seq = $sim->last_seq;
my $card_token = sq("SELECT flexfactor.ff_tokenize(pg_read_file('$card_file')::jsonb)");
like($card_token, $uuid_re, 'ff_tokenize returns the token');
my $cards = $sim->admin('GET', '/_admin/cards')->{cards};
my ($card) = grep { $_->{token} eq $card_token } @$cards;
ok($card && $card->{last4} eq '4242', 'the simulator vaulted that card');
my $tokreq = $sim->requests(path => '/v1/tokenize', since => $seq);
is(scalar @$tokreq, 1, 'one /tokenize request');
my %query = map { my ($k, $v) = split /=/, $_, 2; ($k => $v) } split /&/, ($tokreq->[0]{query} // '');
is($query{mid}, $mid, 'mid sent as query parameter');
is($query{environment}, $tokkey, 'tokenization key sent as the environment query parameter');
my $tokbody = FFSim->decode_json($tokreq->[0]{body});
is($tokbody->{payment_method}{credit_card}{number}, $pan, 'the card body is sent as given');

# /tokenize carries no idempotency key, so it must never be re-sent: libcurl
# silently repeats a request once when a kept-alive connection turns out dead,
# hence /tokenize always gets a connection of its own.  In one session, warm a
# kept-alive connection (an evaluate), then drop the /tokenize answer: the call
# fails (FF001) after exactly one request instead of being repeated.
$seq = $sim->last_seq;
$sim->fault(endpoint => '/v1/tokenize', mode => 'drop', count => 1);
my $e_drop = FFSim::sql_error($node, 'ffdb', "DO \$\$ BEGIN
	PERFORM flexfactor.ff_evaluate(" . decline('WARM-1', 1999, 'tx-warm', token => 'tok-warm') . ");
	PERFORM flexfactor.ff_tokenize(pg_read_file('$card_file')::jsonb);
END \$\$");
is($e_drop->{sqlstate}, 'FF001', 'a /tokenize answer lost on the wire: FF001');
is(scalar @{ $sim->requests(path => '/v1/tokenize', since => $seq) }, 1,
	'the lost /tokenize request was sent once, not repeated on a reused connection');
$sim->clear_faults;

# ------------------------------------------------------------------
# 3. ff_evaluate: fills in mid, siteId, isDeclined, idempotencyKey
# ------------------------------------------------------------------
$seq = $sim->last_seq;
my $ans = jq("SELECT flexfactor.ff_evaluate("
	  . "flexfactor.ff_decline('E-1', 1999, 'USD', '$card_token', 'tx-e1', email => 'e1\@example.com', "
	  . ff_decline_args(email => undef) . ") - 'isDeclined')");
is($ans->{status}, 'SUBMITTED', 'managed MIT decline: SUBMITTED');
like($ans->{orderSessionKey}, $uuid_re, 'the answer has an orderSessionKey');
my $sent = bodies('/v1/evaluate', $seq);
is(scalar @$sent, 1, 'one /evaluate request');
my $b = $sent->[0];
is($b->{mid}, $mid, 'mid filled in from flexfactor.mid');
is($b->{siteId}, $site, 'siteId filled in from flexfactor.site_id');
ok($b->{isDeclined} && JSON::PP::is_bool($b->{isDeclined}), 'isDeclined filled in as true');
like($b->{idempotencyKey} // '', $uuid_re, 'an idempotencyKey is sent');
is($b->{orderId}, 'E-1', 'orderId');
is_deeply($b->{transaction}, {
		id => 'tx-e1', amount => 1999, currency => 'USD', responseStatus => 'DECLINED',
		timestampUtc => '2026-11-20T10:00:00Z', timezoneUtcOffset => 0, cardNotPresent => $T,
		responseCode => 'NA', responseCodeSource => 'NA', avsResultCode => 'NA',
		cvvResultCode => 'NA', cavvResultCode => 'NA' },
	"transaction built by ff_decline: the codes the merchant did not give are 'NA'");
is_deeply($b->{paymentMethod}, { cardNumber => $card_token, token => $T },
	'the card token, marked as a token');
ok($b->{isMIT}, 'isMIT');
ok($b->{isRecurring} && JSON::PP::is_bool($b->{isRecurring}), 'isRecurring');
is_deeply($b->{payer}, { email => 'e1@example.com' }, 'payer.email');
is_deeply($b->{billingInformation}, {
		firstName => 'Jane', lastName => 'Roe', addressLine1 => '1 Main St', city => 'Springfield',
		state => 'IL', zipCode => '62701', countryCode => 'US', country => 'US' },
	'billingInformation: name and address, country defaulting to the code');
is_deeply($b->{subscription}, { subscriptionId => 'sub-9', interval => 'monthly', price => 1999,
		currency => 'USD' }, 'subscription: id, interval, price, currency');
like($b->{expiryDateUtc} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'expiryDateUtc (managed MIT)');
my $ereq = $sim->requests(path => '/v1/evaluate', since => $seq)->[0];
like($ereq->{headers}{'Content-Type'} // '', qr{^application/json}, 'Content-Type application/json');
like($ereq->{headers}{Authorization} // '', qr/^Bearer \S+$/, 'Authorization: Bearer');

my $row = sq("SELECT order_id, transaction_id, idempotency_key, source, is_mit, amount_cents, currency, status,
	order_session_key, last_response = '" . FFSim->encode_json($ans) =~ s/'/''/gr . "'::jsonb
	FROM flexfactor.orders WHERE order_id = 'E-1'");
is($row, "E-1|tx-e1|$b->{idempotencyKey}|api|t|1999|USD|SUBMITTED|$ans->{orderSessionKey}|t",
	'orders row: ids, the key that was sent, amount, SUBMITTED, session key, last response');
my $e1 = $ans->{orderSessionKey};

# a fixed idempotencyKey in the payload is sent as is
my $fixed_key = '0b4f7a6e-2c1d-4e3f-9a8b-7c6d5e4f3a2b';
$seq = $sim->last_seq;
sq("SELECT flexfactor.ff_evaluate(" . decline('E-K', 1999, 'tx-ek')
	  . " || '{\"idempotencyKey\": \"$fixed_key\"}')");
is(bodies('/v1/evaluate', $seq)->[0]{idempotencyKey}, $fixed_key, 'a given idempotencyKey is kept');
is(sq("SELECT idempotency_key FROM flexfactor.orders WHERE order_id = 'E-K'"), $fixed_key,
	'and stored');

# amount ending in 01: approved at once
$ans = jq("SELECT flexfactor.ff_evaluate(" . decline('E-2', 2501, 'tx-e2') . ")");
is($ans->{status}, 'APPROVED', 'amount ending in 01: APPROVED');
is(sq("SELECT status, order_session_key FROM flexfactor.orders WHERE order_id = 'E-2'"),
	"APPROVED|$ans->{orderSessionKey}", 'APPROVED stored');
my $e2 = $ans->{orderSessionKey};

# ------------------------------------------------------------------
# 4. ff_order
# ------------------------------------------------------------------
$ans = jq("SELECT flexfactor.ff_order('$e1')");
is($ans->{id}, $e1, 'ff_order returns the order');
is($ans->{referenceNumber}, 'E-1', 'with the merchant order id');
like(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'E-1'"), qr/^(SUBMITTED|PROCESSING)$/,
	'a pending order stays pending after ff_order');
# …13 cents: cancelled after a virtual minute; …14: expires at expiryDateUtc
sq("SELECT flexfactor.ff_evaluate(" . decline('E-13', 1913, 'tx-e13') . ")");
sq("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('E-14', 1914, 'USD', 'tok-e14', 'tx-e14',
	expiry => now() + interval '2 seconds', " . ff_decline_args(expiry => undef) . "))");
$sim->advance(61);
$ans = jq("SELECT flexfactor.ff_order(order_session_key::text) FROM flexfactor.orders WHERE order_id = 'E-13'");
is($ans->{statusName}, 'CANCELLED', 'FlexFactor cancelled the …13 order');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'E-13'"), 'CANCELLED', 'CANCELLED stored');
$sim->advance(86400);
# expiry is read from the order's expiryDate, against our clock
ff_wait_until(sub { sq("SELECT now() > expiry_date_utc FROM flexfactor.orders WHERE order_id = 'E-14'") eq 't' }, 10);
$ans = jq("SELECT flexfactor.ff_order(order_session_key::text) FROM flexfactor.orders WHERE order_id = 'E-14'");
is($ans->{statusName}, 'CANCELLED', 'the …14 order expired: CANCELLED (there is no Expired status)');
cmp_ok(sq("SELECT '$ans->{expiryDate}'::timestamptz < now()"), 'eq', 't', 'with its expiryDate passed');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'E-14'"), 'EXPIRED', 'EXPIRED stored');
$ans = jq("SELECT flexfactor.ff_order('$e1')");
is($ans->{statusName}, 'COMPLETED', 'after one virtual minute FlexFactor says COMPLETED');
is(sq("SELECT status, last_response->>'statusName' FROM flexfactor.orders WHERE order_id = 'E-1'"),
	'APPROVED|COMPLETED', 'COMPLETED stored as APPROVED, with the answer');

# an order FlexFactor knows but we do not (its ff_evaluate rolled back)
my $ghost = sq("BEGIN; SELECT flexfactor.ff_evaluate(" . decline('G-1', 2501, 'tx-g1')
	  . ")->>'orderSessionKey'; ROLLBACK;");
like($ghost, $uuid_re, 'an order created at FlexFactor in a rolled-back transaction');
$ans = jq("SELECT flexfactor.ff_order('$ghost')");
is($ans->{id}, $ghost, 'ff_order still fetches an order that is not stored locally');
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_session_key = '$ghost' OR order_id = 'G-1'"),
	'0', 'and stores nothing');

my $e = err("SELECT flexfactor.ff_order('8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a')");
is($e->{sqlstate}, 'FF010', 'ff_order of an order FlexFactor does not know: FF010');

# ------------------------------------------------------------------
# 5. ff_refund: partial, then the rest; exact dollars
# ------------------------------------------------------------------
$seq = $sim->last_seq;
$ans = jq("SELECT flexfactor.ff_refund('$e2', 1234)");
is($ans->{status}, 'SUCCESS', 'partial refund accepted');
my $rreq = $sim->requests(path => "/v1/orders/$e2/refund", since => $seq);
is(scalar @$rreq, 1, 'one refund request');
like($rreq->[0]{body}, qr/"amountToRefund"\s*:\s*12\.34(?![0-9])/, 'amountToRefund sent as exactly 12.34');
is(sq("SELECT refunded_cents, status FROM flexfactor.orders WHERE order_id = 'E-2'"),
	'1234|REFUNDED', 'refunded_cents 1234, status REFUNDED');
is(sq("SELECT count(*), sum(r.amount_cents), bool_and(r.transaction_id IS NOT NULL)
	FROM flexfactor.refunds r JOIN flexfactor.orders o ON o.id = r.order_ref WHERE o.order_id = 'E-2'"),
	'1|1234|t', 'one refunds row of 1234 cents with its transaction id');

$seq = $sim->last_seq;
$ans = jq("SELECT flexfactor.ff_refund('$e2')");
is($ans->{status}, 'SUCCESS', 'refund of the rest accepted');
like($sim->requests(path => "/v1/orders/$e2/refund", since => $seq)->[0]{body},
	qr/"amountToRefund"\s*:\s*12\.67(?![0-9])/, 'NULL refunds what is left: 12.67');
is(sq("SELECT refunded_cents, status FROM flexfactor.orders WHERE order_id = 'E-2'"),
	'2501|REFUNDED', 'fully refunded');
is($sim->order($e2)->{refundedAmount}, 2501, 'FlexFactor holds the same refunded amount');
is(sq("SELECT count(*) FROM flexfactor.refunds r JOIN flexfactor.orders o ON o.id = r.order_ref
	WHERE o.order_id = 'E-2'"), '2', 'two refunds rows');
$ans = jq("SELECT flexfactor.ff_order('$e2')");
is($ans->{statusName}, 'RETURNED', 'FlexFactor says RETURNED');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'E-2'"), 'REFUNDED', 'RETURNED is REFUNDED');

# a trailing zero stays: 10 cents is 0.10
sq("SELECT flexfactor.ff_evaluate(" . decline('E-3', 1501, 'tx-e3') . ")");
my $e3 = sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = 'E-3'");
$seq = $sim->last_seq;
sq("SELECT flexfactor.ff_refund('$e3', 10)");
like($sim->requests(path => "/v1/orders/$e3/refund", since => $seq)->[0]{body},
	qr/"amountToRefund"\s*:\s*0\.10(?![0-9])/, '10 cents sent as 0.10');

# the same refund retried after a rolled-back transaction is replayed, not doubled
sq("BEGIN; SELECT flexfactor.ff_refund('$e3', 500); ROLLBACK;");
sq("SELECT flexfactor.ff_refund('$e3', 500)");
is($sim->order($e3)->{refundedAmount}, 510, 'a refund retried after a rollback is not refunded twice');
is(sq("SELECT refunded_cents FROM flexfactor.orders WHERE order_id = 'E-3'"), '510', 'refunded_cents 510');

# FlexFactor refuses a refund (it refunded more than we know: a rolled-back call)
sq("BEGIN; SELECT flexfactor.ff_refund('$e3', 700); ROLLBACK;");
$e = err("SELECT flexfactor.ff_refund('$e3')");
is($e->{sqlstate}, 'FF012', 'a FAILED refund answer (2001): FF012');
like($e->{detail} // '', qr/2001/, 'DETAIL has the responseCode');
is(sq("SELECT refunded_cents, (SELECT count(*) FROM flexfactor.refunds WHERE order_ref = o.id)
	FROM flexfactor.orders o WHERE order_id = 'E-3'"), '510|2', 'nothing recorded for the refused refund');

# ------------------------------------------------------------------
# 6. ff_cancel
# ------------------------------------------------------------------
sq("SELECT flexfactor.ff_evaluate(" . decline('X-1', 1999, 'tx-x1') . ")");
my $x1 = sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = 'X-1' AND status = 'SUBMITTED'");
like($x1, $uuid_re, 'a SUBMITTED order to cancel');
$seq = $sim->last_seq;
sq("SELECT flexfactor.ff_cancel('$x1')");
is($sim->request_count(path => "/v1/orders/$x1/cancel", since => $seq), 1, 'one cancel request');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'X-1'"), 'CANCELLED', 'CANCELLED stored');
is($sim->order($x1)->{statusName}, 'CANCELLED', 'FlexFactor cancelled it');

# ------------------------------------------------------------------
# 7. Local refusals: nothing is sent
# ------------------------------------------------------------------
sq("SELECT flexfactor.ff_evaluate(" . decline('L-1', 1999, 'tx-l1') . ")");
my $l1 = sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = 'L-1'");
sq("SELECT flexfactor.ff_evaluate(" . decline('L-2', 3001, 'tx-l2') . ")");
my $l2 = sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = 'L-2'");
sq("SELECT flexfactor.ff_refund('$l2', 1000)");
my $unknown = '3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a';

for my $case (
	[ "SELECT flexfactor.ff_refund('$unknown', 100)", 'FF022', 'refund of an order unknown locally' ],
	[ "SELECT flexfactor.ff_refund('$l1', 100)", 'FF020', 'refund of a SUBMITTED order' ],
	[ "SELECT flexfactor.ff_refund('$l2', 2002)", 'FF021', 'refund of more than is left (2002 > 2001)' ],
	[ "SELECT flexfactor.ff_refund('$l2', 0)", 'FF021', 'refund of 0 cents' ],
	[ "SELECT flexfactor.ff_refund('$l2', -5)", 'FF021', 'refund of a negative amount' ],
	[ "SELECT flexfactor.ff_refund('$e2')", 'FF021', 'refund of a fully refunded order (nothing left)' ],
	[ "SELECT flexfactor.ff_cancel('$e2')", 'FF020', 'cancel of a REFUNDED order' ],
	[ "SELECT flexfactor.ff_cancel('$l2')", 'FF020', 'cancel of an APPROVED order' ],
	[ "SELECT flexfactor.ff_cancel('$x1')", 'FF020', 'cancel of a CANCELLED order' ],
	[ "SELECT flexfactor.ff_cancel('$unknown')", 'FF022', 'cancel of an order unknown locally' ])
{
	my ($sql, $state, $what) = @$case;
	my $before = $sim->last_seq;
	my $r = err($sql);
	is($r->{sqlstate}, $state, "$what: $state")
	  or diag $r->{stderr};
	ok(defined $r->{detail} || defined $r->{hint}, "$what: DETAIL or HINT given");
	is($sim->last_seq, $before, "$what: no request reached FlexFactor");
}
is(sq("SELECT refunded_cents, status FROM flexfactor.orders WHERE order_id = 'L-2'"), '1000|REFUNDED',
	'refused calls changed nothing');

# ------------------------------------------------------------------
# 7b. Incomplete /evaluate bodies: FF023 naming the field, nothing sent
# ------------------------------------------------------------------
# The real FlexFactor answers 400 to an /evaluate body without any of these
# (flexfactor-api.md 12a); ff_evaluate refuses it before any request (not
# even a token fetch) and stores no order.
sub refused_locally
{
	my ($sql, $what, @fields) = @_;
	my $before = $sim->last_seq;
	my $r = err($sql);
	ff_refused_ok($r, $what, @fields);
	is($sim->last_seq, $before, "$what: nothing was sent to FlexFactor");
	like($r->{detail} // '', qr/nothing was sent or queued/, "$what: DETAIL says nothing was sent");
	return $r;
}

my $complete = decline('INC-1', 1999, 'tx-inc1');
for my $field (@FF_EVALUATE_REQUIRED)
{
	my $path = '{' . join(',', split /\./, $field) . '}';
	refused_locally("SELECT flexfactor.ff_evaluate($complete #- '$path')", "/evaluate without $field", $field);
}
# an empty or blank value is no value
refused_locally("SELECT flexfactor.ff_evaluate(jsonb_set($complete, '{payer,email}', '\"\"'))",
	'/evaluate with payer.email ""', 'payer.email');
refused_locally("SELECT flexfactor.ff_evaluate(jsonb_set($complete, '{billingInformation,city}', '\"  \"'))",
	'/evaluate with a blank billingInformation.city', 'billingInformation.city');
# no mid in the body and none configured
refused_locally("SET flexfactor.mid = ''; SELECT flexfactor.ff_evaluate($complete)",
	'/evaluate without a mid (flexfactor.mid empty)', 'mid');
# all at once, from ff_decline() without the payer and the address: one
# error names every field, and its HINT the arguments that supply them
my $r = refused_locally("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('INC-1', 1999, 'USD', 'tok-inc1', 'tx-inc1', "
	  . ff_decline_args(map { $_ => undef } qw(email first_name last_name address_line1 city state zip_code country_code))
	  . "))",
	'ff_decline() without payer and billing address',
	qw(payer.email billingInformation.firstName billingInformation.lastName billingInformation.addressLine1
	  billingInformation.city billingInformation.country billingInformation.countryCode));
like($r->{hint} // '', qr/^Pass email, first_name, last_name, address_line1, city, country, country_code to flexfactor\.ff_decline\(\)/,
	'the HINT names the ff_decline() arguments to pass');
# the arguments without a default, each left out of ff_decline()
for my $case ([ 'declined_at', 'transaction.timestampUtc' ], [ 'expiry', 'expiryDateUtc' ],
	[ 'subscription_interval', 'subscription.interval' ], [ 'subscription_id', 'subscription.subscriptionId' ])
{
	my ($arg, $field) = @$case;
	$r = refused_locally("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('INC-1', 1999, 'USD', 'tok-inc1', 'tx-inc1', "
		  . ff_decline_args($arg => undef) . "))", "ff_decline() without $arg", $field);
	like($r->{hint} // '', qr/^Pass \Q$arg\E to flexfactor\.ff_decline\(\)/, "ff_decline() without $arg: the HINT names $arg");
}
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_id = 'INC-1'"), '0',
	'no order was stored for any refused body');

# flexfactor.mit_mode = 'sync' (an account without managed MIT): an MIT
# /evaluate needs no expiryDateUtc
$sim->config({ mitMode => 'sync' });
$seq = $sim->last_seq;
$r = err("SET flexfactor.mit_mode = 'sync'; SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('INC-SYNC', 1999, 'USD',
	'tok-inc-sync', 'tx-inc-sync', " . ff_decline_args(expiry => undef) . "))->>'success'");
is($r->{sqlstate}, undef, "mit_mode = 'sync': an MIT /evaluate without expiry is sent") or diag $r->{stderr};
is(scalar @{ bodies('/v1/evaluate', $seq) }, 1, "mit_mode = 'sync': one /evaluate request");
ok(!exists bodies('/v1/evaluate', $seq)->[0]{expiryDateUtc}, "mit_mode = 'sync': without expiryDateUtc");
$sim->config({ mitMode => 'managed' });

# the README's call, every field named, is complete
$seq = $sim->last_seq;
$ans = jq(q{SELECT flexfactor.ff_evaluate(flexfactor.ff_decline(
         order_id => 'INV-1001', amount_cents => 4999, currency => 'USD',
         card_token => 'd3e10716-6aac-4eb8-a74d-c1a3027f1d96', transaction_id => 'gw-7781',
         decline_code => '51', response_code_source => 'stripe', email => 'jane@example.com',
         first_name => 'Jane', last_name => 'Roe', address_line1 => '1 Main St', city => 'Springfield',
         state => 'IL', zip_code => '62701', country_code => 'US',
         subscription_id => 'sub_42', subscription_interval => 'monthly',
         expiry => now() + interval '14 days', declined_at => '2026-11-24 09:30+00'))});
is($ans->{status}, 'SUBMITTED', "the README's complete ff_evaluate(ff_decline(...)) is accepted: SUBMITTED");
$b = bodies('/v1/evaluate', $seq)->[0];
is_deeply([ @{ $b->{transaction} }{qw(responseCode responseCodeSource avsResultCode timestampUtc)} ],
	[ '51', 'stripe', 'NA', '2026-11-24T09:30:00Z' ], 'with the decline code, its source and the time given');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'INV-1001'"), 'SUBMITTED', 'and stored');

# ------------------------------------------------------------------
# 8. ff_cents_to_dollars
# ------------------------------------------------------------------
is(sq("SELECT string_agg(flexfactor.ff_cents_to_dollars(c), ' ' ORDER BY o)
	FROM unnest('{1,10,999,123456789}'::bigint[]) WITH ORDINALITY AS t(c, o)"),
	'0.01 0.10 9.99 1234567.89', 'ff_cents_to_dollars: 0.01 0.10 9.99 1234567.89');

# ------------------------------------------------------------------
# 9. Token refreshed after a 401, and before it expires
# ------------------------------------------------------------------
my $count0 = $sim->token_count;
my $req0 = sq('SELECT token_requests FROM flexfactor.ff_token_status()');
$sim->revoke_tokens;
$seq = $sim->last_seq;
$ans = jq("SELECT flexfactor.ff_evaluate(" . decline('R-1', 1999, 'tx-r1') . ")");
is($ans->{status}, 'SUBMITTED', 'the call after a revocation succeeds');
is($sim->token_count, $count0 + 1, 'exactly one new token was fetched');
is(sq('SELECT token_requests FROM flexfactor.ff_token_status()'), $req0 + 1, 'token_requests + 1');
my @seen = map { [ $_->{path}, $_->{status} ] } @{ $sim->requests(since => $seq) };
is_deeply(\@seen,
	[ [ '/v1/evaluate', 401 ], [ '/v1/oauth2/token', 200 ], [ '/v1/evaluate', 200 ] ],
	'the simulator saw the 401, one token request, then the retry');
my $r1 = bodies('/v1/evaluate', $seq);
is($r1->[0]{idempotencyKey}, $r1->[1]{idempotencyKey}, 'the retry sent the same idempotencyKey');

# a token with 31 s to live is inside the 30 s margin a second later
$sim->set_token_ttl(31);
$sim->revoke_tokens;
sq("SELECT flexfactor.ff_evaluate(" . decline('R-2', 1999, 'tx-r2') . ")");
$sim->set_token_ttl(600);
my $count1 = $sim->token_count;
is($count1, $count0 + 2, 'a short-lived token was fetched');
Time::HiRes::sleep(1.5);
$seq = $sim->last_seq;
$ans = jq("SELECT flexfactor.ff_evaluate(" . decline('R-3', 1999, 'tx-r3') . ")");
is($ans->{status}, 'SUBMITTED', 'the call near expiry succeeds');
@seen = map { [ $_->{path}, $_->{status} ] } @{ $sim->requests(since => $seq) };
is_deeply(\@seen, [ [ '/v1/oauth2/token', 200 ], [ '/v1/evaluate', 200 ] ],
	'a token within 30 s of expiry is replaced before the call, without a 401');
is($sim->token_count, $count1 + 1, 'one new token');
$tokens = $sim->tokens;
is($sim->requests(path => '/v1/evaluate', since => $seq)->[0]{headers}{Authorization},
	"Bearer $tokens->{tokens}[-1]{accessToken}", 'the call used the new token');
$seq = $sim->last_seq;
sq("SELECT flexfactor.ff_evaluate(" . decline('R-4', 1999, 'tx-r4') . ")");
is($sim->request_count(path => '/v1/oauth2/token', since => $seq), 0, 'and the new token is reused');

# ------------------------------------------------------------------
# 10. Errors, each with its SQLSTATE
# ------------------------------------------------------------------
sub no_order
{
	my ($order, $what) = @_;
	is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_id = '$order'"), '0',
		"$what: the order row is rolled back");
}

# validation (400), both error shapes
$e = err("SELECT flexfactor.ff_evaluate(" . decline('V-1', 5, 'tx-v1') . ")");
is($e->{sqlstate}, 'FF005', 'amount of 5 cents: FF005');
like($e->{detail} // '', qr/transaction\.amount:/i, 'DETAIL names transaction.amount');
ok(defined $e->{hint}, 'with a HINT');
no_order('V-1', 'validation error');
$sim->config({ errorShape => 'flat' });
$e = err("SELECT flexfactor.ff_evaluate(" . decline('V-2', 5, 'tx-v2') . ")");
is($e->{sqlstate}, 'FF005', 'flat error shape: FF005');
like($e->{detail} // '', qr/transaction\.amount:/i, 'flat shape: DETAIL names transaction.amount');
unlike($e->{detail} // '', qr/traceid/i, 'flat shape: the TraceId entry is not a field error');
$sim->config({ errorShape => 'problem' });

# idempotency conflict (409): the same key with another body
my $k409 = '5e4d3c2b-1a09-4f8e-8d7c-6b5a4f3e2d1c';
sq("SELECT flexfactor.ff_evaluate(" . decline('D-1', 1999, 'tx-d1') . " || '{\"idempotencyKey\": \"$k409\"}')");
$e = err("SELECT flexfactor.ff_evaluate(" . decline('D-1', 2999, 'tx-d1') . " || '{\"idempotencyKey\": \"$k409\"}')");
is($e->{sqlstate}, 'FF006', 'same idempotencyKey, different body: FF006');
is(sq("SELECT amount_cents FROM flexfactor.orders WHERE order_id = 'D-1'"), '1999',
	'the stored order is unchanged');

# 429, 500, malformed, 403, 404 via faults or bodies
for my $case ([ '429', 'FF007', 'rate limited (429)' ], [ '500', 'FF008', 'server error (500)' ],
	[ 'malformed', 'FF009', 'malformed JSON answer' ])
{
	my ($mode, $state, $what) = @$case;
	$sim->fault(endpoint => '/v1/evaluate', mode => $mode, count => 1);
	$e = err("SELECT flexfactor.ff_evaluate(" . decline("F-$mode", 1999, "tx-f-$mode") . ")");
	is($e->{sqlstate}, $state, "$what: $state") or diag $e->{stderr};
	ok(defined $e->{detail}, "$what: with a DETAIL");
	no_order("F-$mode", $what);
}
$sim->fault(endpoint => '/v1/evaluate', mode => '429', count => 1, seconds => 7);
$e = err("SELECT flexfactor.ff_evaluate(" . decline('F-429b', 1999, 'tx-f-429b') . ")");
like($e->{detail} // '', qr/Retry-After:?\s*7/i, '429: DETAIL has Retry-After');

$e = err("SELECT flexfactor.ff_evaluate(" . decline('F-403', 1999, 'tx-f403')
	  . " || '{\"mid\": \"00000000-0000-4000-8000-00000000dead\"}')");
is($e->{sqlstate}, 'FF011', 'mid that is not the token\'s: FF011');

# not configured
$e = err("SET flexfactor.mid = ''; SELECT flexfactor.ff_order('$e1')");
is($e->{sqlstate}, 'FF013', 'flexfactor.mid empty: FF013');

# connection refused
my $closed = PostgreSQL::Test::Cluster::get_free_port();
$e = err("SET flexfactor.api_url = 'http://127.0.0.1:$closed/v1/';
	SELECT flexfactor.ff_evaluate(" . decline('F-conn', 1999, 'tx-fconn') . ")");
is($e->{sqlstate}, 'FF001', 'connection refused: FF001') or diag $e->{stderr};
$e = err("SET flexfactor.api_url = 'http://127.0.0.1:$closed/v1/';
	SELECT flexfactor.ff_tokenize(pg_read_file('$card_file')::jsonb)");
is($e->{sqlstate}, 'FF001', 'ff_tokenize, connection refused: FF001');

# timeout
$sim->fault(endpoint => '/v1/evaluate', mode => 'timeout', seconds => 20, count => 1);
$e = err("SET flexfactor.http_timeout_ms = 500;
	SELECT flexfactor.ff_evaluate(" . decline('F-time', 1999, 'tx-ftime') . ")");
is($e->{sqlstate}, 'FF002', 'no answer within http_timeout_ms: FF002') or diag $e->{stderr};
cmp_ok($e->{elapsed}, '<', 3, 'the call gave up after about 0.5 s');
$sim->fault(endpoint => '/v1/evaluate', mode => 'hang', seconds => 5, count => 1);
$e = err("SET flexfactor.http_timeout_ms = 500;
	SELECT flexfactor.ff_evaluate(" . decline('F-hang', 1999, 'tx-fhang') . ")");
is($e->{sqlstate}, 'FF002', 'a hanging answer longer than http_timeout_ms: FF002');

# bad credentials: the cached token is revoked and the secret is wrong
$sim->revoke_tokens;
$e = err("SET flexfactor.app_secret = 'wrong-secret-value';
	SELECT flexfactor.ff_evaluate(" . decline('F-cred', 1999, 'tx-fcred') . ")");
is($e->{sqlstate}, 'FF004', 'wrong app_secret: FF004') or diag $e->{stderr};
unlike($e->{stderr}, qr/wrong-secret-value/, 'the secret is not in the error');
$ans = jq("SELECT flexfactor.ff_evaluate(" . decline('F-cred', 1999, 'tx-fcred') . ")");
is($ans->{status}, 'SUBMITTED', 'with the right secret again the call succeeds');

# ------------------------------------------------------------------
# 11. Query cancel while FlexFactor hangs: 57014 within about a second
# ------------------------------------------------------------------
$sim->fault(endpoint => '/v1/evaluate', mode => 'hang', seconds => 30, count => 1);
$e = err("SET statement_timeout = '1s';
	SELECT flexfactor.ff_evaluate(" . decline('C-st', 1999, 'tx-cst') . ")");
is($e->{sqlstate}, '57014', 'statement_timeout during a hanging answer: 57014');
cmp_ok($e->{elapsed}, '<', 3, 'the call returned within 3 s');
no_order('C-st', 'statement_timeout');

$sim->fault(endpoint => '/v1/evaluate', mode => 'hang', seconds => 30, count => 1);
my %bg = (out => '', err => '');
$bg{h} = IPC::Run::start(
	[ 'psql', '-X', '-A', '-t', '-v', 'VERBOSITY=verbose', '-d', $node->connstr('ffdb'),
	  '-c', "SELECT flexfactor.ff_evaluate(" . decline('C-pc', 1999, 'tx-cpc') . ")" ],
	'<', \undef, '>', \$bg{out}, '2>', \$bg{err},
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
my $deadline = time + 30;
my $in_flight;
while (time < $deadline)
{
	($in_flight) = grep { !defined $_->{status} && ($_->{body} // '') =~ /C-pc/ }
	  @{ $sim->requests(path => '/v1/evaluate') };
	last if $in_flight;
	Time::HiRes::sleep(0.05);
}
ok($in_flight, 'the evaluate request is hanging at the simulator')
  or diag "psql: $bg{err} $bg{out}; last requests: "
  . FFSim->encode_json([ map { [ $_->{seq}, $_->{path}, $_->{status}, $_->{fault}, substr($_->{body}, 0, 60) ] }
	  @{ $sim->requests(limit => 4) } ]);
my $bgpid = sq("SELECT pid FROM pg_stat_activity WHERE query LIKE '%C-pc%' AND pid <> pg_backend_pid()");
# meanwhile pg_stat_activity names the wait from PostgreSQL 17 on
my $http_wait = $node->pg_version >= 17 ? 'FlexFactorHttp' : 'Extension';
ok($node->poll_query_until('ffdb',
		"SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $bgpid",
		"Extension:$http_wait"),
	"the session waits on $http_wait while FlexFactor hangs");
my $t0 = Time::HiRes::time();
sq("SELECT pg_cancel_backend($bgpid)");
$bg{h}->finish;
my $took = Time::HiRes::time() - $t0;
$all_stderr .= $bg{err};
like($bg{err}, qr/57014/, 'pg_cancel_backend during a hanging answer: 57014');
cmp_ok($took, '<', 3, 'the call returned within 3 s of the cancel');
no_order('C-pc', 'pg_cancel_backend');

# ------------------------------------------------------------------
# 12. A failed call rolls back, and its retry sends the same key
# ------------------------------------------------------------------
$seq = $sim->last_seq;
$sim->fault(endpoint => '/v1/evaluate', mode => '500', after => $T, count => 1);
$e = err("SELECT flexfactor.ff_evaluate(" . decline('I-1', 1999, 'tx-i1') . ")");
is($e->{sqlstate}, 'FF008', 'the answer is lost (500 after processing): FF008');
no_order('I-1', 'lost answer');
$ans = jq("SELECT flexfactor.ff_evaluate(" . decline('I-1', 1999, 'tx-i1') . ")");
is($ans->{status}, 'SUBMITTED', 'the retry of the same attempt succeeds');
my $ib = bodies('/v1/evaluate', $seq);
is(scalar @$ib, 2, 'two evaluate requests');
my $ikey = $ib->[0]{idempotencyKey};
is($ib->[1]{idempotencyKey}, $ikey, 'the retry sent the same idempotencyKey');
my $rec = idem_record($ikey);
ok($rec, 'the simulator has a record of the key');
is($rec->{accepted}, 1, 'the key was accepted once');
is($rec->{seen}, 2, 'and seen twice (the retry was a replay)');
is(scalar @{ $sim->orders(externalOrderId => 'I-1') }, 1, 'FlexFactor holds one order for I-1');
is(sq("SELECT idempotency_key, order_session_key FROM flexfactor.orders WHERE order_id = 'I-1'"),
	"$ikey|$ans->{orderSessionKey}", 'the stored order has that key and the order id');
is_deeply($sim->idempotency->{acceptedMoreThanOnce}, [], 'no key was ever accepted twice');
# a new charge attempt (new transaction.id) is a new key
$seq = $sim->last_seq;
sq("SELECT flexfactor.ff_evaluate(" . decline('I-1', 1999, 'tx-i2') . ")");
my $ikey2 = bodies('/v1/evaluate', $seq)->[0]{idempotencyKey};
isnt($ikey2, $ikey, 'a new transaction.id gives a new key');
is(sq("SELECT transaction_id, idempotency_key FROM flexfactor.orders WHERE order_id = 'I-1'"),
	"tx-i1|$ikey2", 'the stored order keeps its first transaction, with the new attempt\'s key');

# ------------------------------------------------------------------
# 12b. One order's requests never overlap; a call keeps no lock after it
# ------------------------------------------------------------------
# ff_evaluate() writes the order once, with its answer.  Until then a lock
# on the order id (advisory, class 0x4646 = 17990) keeps a second call for
# the same order, from any session, from sending.
sub psql_bg
{
	my ($sql) = @_;
	my %run = (out => '', err => '');
	$run{h} = IPC::Run::start(
		[ 'psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('ffdb'), '-c', $sql ],
		'<', \undef, '>', \$run{out}, '2>', \$run{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%run;
}
sub lk_requests
{
	my ($since) = @_;
	return [ grep { ($_->{body} // '') =~ /"LK-1"/ } @{ $sim->requests(path => '/v1/evaluate', since => $since) } ];
}
$seq = $sim->last_seq;
$sim->fault(endpoint => '/v1/evaluate', mode => 'hang', seconds => 3, count => 1);
my $lk1 = psql_bg("SELECT flexfactor.ff_evaluate(" . decline('LK-1', 1999, 'tx-lk1') . ")->>'status'");
$deadline = time + 30;
while (time < $deadline)
{
	last if grep { !defined $_->{status} } @{ lk_requests($seq) };
	Time::HiRes::sleep(0.05);
}
my $lk2 = psql_bg("SELECT flexfactor.ff_evaluate(" . decline('LK-1', 1999, 'tx-lk2') . ")->>'status'");
ok($node->poll_query_until('ffdb',
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 17990 AND NOT granted", '1'),
	'a second call for the order waits on the order id while the first request is in flight');
is(scalar @{ lk_requests($seq) }, 1, 'and it has sent nothing yet');
$lk1->{h}->finish;
$lk2->{h}->finish;
is($lk1->{out} . $lk2->{out}, "SUBMITTED\nSUBMITTED\n", 'both calls are answered, one after the other')
  or diag "$lk1->{err} $lk2->{err}";
my $lk = lk_requests($seq);
is(scalar @$lk, 2, 'two requests for the order');
is(sq("SELECT transaction_id || ' ' || idempotency_key FROM flexfactor.orders WHERE order_id = 'LK-1'"),
	'tx-lk1 ' . FFSim->decode_json($lk->[1]{body})->{idempotencyKey},
	'one order row: its first transaction, the key of the latest attempt');
# any number of orders in one transaction: no lock is left behind by a call
is(sq("BEGIN;
	SELECT count(flexfactor.ff_evaluate(flexfactor.ff_decline('LM-' || i, 1999, 'USD', 'tok-lm', 'tx-lm-' || i, "
	  . ff_decline_args() . "))) FROM generate_series(1, 50) i;
	SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
	COMMIT;"), "50\n0", '50 orders in one transaction: no advisory lock held after the calls');

# ------------------------------------------------------------------
# 13. Card numbers stay out of messages
# ------------------------------------------------------------------
$e = err("SELECT flexfactor.ff_tokenize(pg_read_file('$bad_card_file')::jsonb)");
is($e->{sqlstate}, 'FF005', 'a card failing Luhn: FF005');
unlike($e->{stderr}, qr/\Q$bad_pan\E/, 'the card number is not in the error');

# ------------------------------------------------------------------
# 14. Privileges: nothing is executable by PUBLIC
# ------------------------------------------------------------------
sq("CREATE ROLE ff_plain LOGIN; GRANT USAGE ON SCHEMA flexfactor TO ff_plain");
is(sq("SELECT count(*) FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
	WHERE p.pronamespace = 'flexfactor'::regnamespace AND a.grantee = 0"),
	'0', 'no function of the schema is granted to PUBLIC');
# non-NULL arguments: a strict function called with NULLs is folded to NULL
# by the planner without a privilege check
my @fns = split /\n/, sq(q{SELECT p.proname || ':' || coalesce(string_agg(
		CASE WHEN p.provariadic <> 0 AND o = p.pronargs THEN 'VARIADIC ' ELSE '' END
		|| quote_literal(CASE format_type(t, NULL)
			WHEN 'jsonb' THEN '{}' WHEN 'bigint' THEN '1' WHEN 'integer' THEN '1'
			WHEN 'boolean' THEN 't' WHEN 'timestamp with time zone' THEN '2024-01-01 00:00:00+00'
			WHEN 'text[]' THEN '{x}' WHEN 'integer[]' THEN '{400}'
			WHEN 'uuid' THEN '00000000-0000-4000-8000-000000000001'
			ELSE 'x' END) || '::' || format_type(t, NULL), ', ' ORDER BY o), '')
	FROM pg_proc p LEFT JOIN unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o) ON true
	WHERE p.pronamespace = 'flexfactor'::regnamespace
	  AND (p.proname LIKE 'ff\_%' OR p.proname IN ('_api_call', '_api_call_answer'))
	GROUP BY p.oid, p.proname, p.provariadic, p.pronargs ORDER BY p.proname});
my %want = map { $_ => 1 } qw(ff_tokenize ff_evaluate ff_order ff_refund ff_capture ff_cents_to_dollars
  ff_cancel ff_transmit ff_decline ff_payment ff_token_status _api_call _api_call_answer);
my %checked;
for my $fn (@fns)
{
	my ($name, $args) = split /:/, $fn, 2;
	my $r = err("SELECT flexfactor.$name($args)", extra_params => [ '-U', 'ff_plain' ]);
	is($r->{sqlstate}, '42501', "a plain role cannot execute $name ($r->{sqlstate})")
	  or diag $r->{stderr};
	$checked{$name} = 1;
}
is_deeply([ grep { !$checked{$_} } sort keys %want ], [], 'every API function was checked');

# ------------------------------------------------------------------
# 15. No secret and no card number in the server log
# ------------------------------------------------------------------
my $log = slurp_file($node->logfile);
for my $case ([ $secret, 'app_secret' ], [ $tokkey, 'tokenization_key' ], [ $pan, 'card number' ],
	[ $bad_pan, 'rejected card number' ])
{
	my ($s, $what) = @$case;
	unlike($log, qr/\Q$s\E/, "the $what is not in the server log");
	unlike($all_stderr, qr/\Q$s\E/, "the $what is not in any error the client saw");
}

$node->stop('fast');
$sim->stop;
done_testing();
