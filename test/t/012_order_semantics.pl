# Order semantics of the real service (flexfactor-api.md 4.3.4, 4.5, 4.7,
# 4.8, 7.2 and 12a), against the simulator:
#   - expiry detected by polling: Cancelled with its expiryDate passed is
#     EXPIRED, without any isExpired field;
#   - sync MIT: DECLINED, then a later /evaluate of the same orderId answers
#     APPROVED, which is stored (NOTIFY, callback); a re-evaluate never
#     rewrites the order's amount, currency or transaction;
#   - ff_capture(): CAPTUREREQUIRED (NOTIFY, callback) -> APPROVED, local
#     refusals, a refusal by FlexFactor, the captured amount bounds refunds;
#   - refunds booked only when the answer says they happened: success, the
#     recorded 2001 refusal served with 200 and with 400, the 2024
#     "DECLINED" shape (and its order.refunded webhook booking it);
#   - payout.* webhooks (no OrderId) acknowledged once and recorded.
# Webhooks are off (the simulator has no target) except where a section
# turns them on, so each section sees the signal it tests and no other.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $mid = '3e8a1c5d-7b2f-4d6e-9a0c-1f2e3d4c5b6a';
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $wurl = "http://127.0.0.1:$wport/flexfactor/webhook";
my $uuid_re = qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

my $sim = FFSim->start(name => 'ffsim_012', mid => $mid, webhook_url => $wurl);
$sim->config({ webhookUrl => '' });    # on only where a section says so

my $node = ff_node('orders012', $sim->node_settings(
		'flexfactor.database' => 'ffdb',
		'flexfactor.webhook_listen_address' => '127.0.0.1',
		'flexfactor.webhook_port' => $wport,
		'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
		'flexfactor.on_order_status' => 'billing.on_flexfactor'));
ff_start_serving($node, 'ffdb');
FFSim::wait_for_listener($node, $wport);

sub sq { return $node->safe_psql('ffdb', $_[0]) }

sub jq
{
	my $text = sq($_[0]);
	my $v = FFSim->decode_json($text);
	die "not JSON: $text" unless defined $v;
	return $v;
}

sub err { return FFSim::sql_error($node, 'ffdb', $_[0]) }

# the billing schema: every callback call is kept, in order
sq(q{
	CREATE SCHEMA billing;
	CREATE TABLE billing.calls (id bigserial PRIMARY KEY, order_id text, status text,
	                            amount_cents bigint, currency text);
	CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
		INSERT INTO billing.calls (order_id, status, amount_cents, currency)
		VALUES (o.order_id, o.status, o.amount_cents, o.currency) $$;
});
sub calls { return sq("SELECT coalesce(string_agg(status, ',' ORDER BY id), '') FROM billing.calls WHERE order_id = '$_[0]'") }

my $listen = $node->background_psql('ffdb');
$listen->query_safe('LISTEN flexfactor_order');
my $heard = '';
# NOTIFY payloads heard so far for $order (each {id, status}: any role may
# LISTEN, so the payload says nothing more)
sub notes
{
	my ($order) = @_;
	$heard .= $listen->query_safe('SELECT 1');
	my $id = 0 + sq("SELECT id FROM flexfactor.orders WHERE order_id = '$order'");
	return [ grep { $_->{id} == $id } map { FFSim->decode_json($_) }
		  $heard =~ /Asynchronous notification "flexfactor_order" with payload "(.*?)" received/g ];
}
sub heard { return join ',', map { $_->{status} } @{ notes($_[0]) } }

# A complete /evaluate body for a declined recurring charge (every field the
# strict real service requires), as SQL text.
sub body
{
	my ($order, $cents, $tx, %o) = @_;
	my %b = (
		orderId => $order, isMIT => JSON::PP::true, isDeclined => JSON::PP::true,
		isRecurring => JSON::PP::true,
		transaction => { id => $tx, amount => $cents + 0, currency => $o{currency} // 'USD',
			timestampUtc => '2026-11-29T09:30:00Z', responseCode => '05',
			responseCodeSource => 'processor', responseStatus => 'DECLINED',
			avsResultCode => 'Y', cvvResultCode => 'M', cavvResultCode => '2' },
		paymentMethod => { cardNumber => 'tok-' . lc $order, token => JSON::PP::true },
		payer => { email => 'jane@example.com' },
		billingInformation => { firstName => 'Jane', lastName => 'Roe', country => 'United States',
			countryCode => 'US', addressLine1 => '1 Main St', city => 'Springfield', state => 'IL',
			zipCode => '62701' },
		subscription => { subscriptionId => "sub-$order", interval => 'monthly', price => $cents + 0,
			currency => $o{currency} // 'USD' });
	$b{transactionType} = 'AUTHORIZATION' if $o{authorization};
	my $json = FFSim->encode_json(\%b);
	my $sql = "'$json'::jsonb";
	$sql .= " || jsonb_build_object('expiryDateUtc', to_char(($o{expiry}) AT TIME ZONE 'UTC', "
	  . "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))" if $o{expiry};
	return $sql;
}

sub evaluate { return jq('SELECT flexfactor.ff_evaluate(' . body(@_) . ')') }
sub key_of { return sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = '$_[0]'") }

# what must not change when a call is refused
sub snapshot
{
	return sq("SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM flexfactor.orders o")
	  . ' ' . sq('SELECT count(*) FROM flexfactor.refunds') . ' ' . sq('SELECT count(*) FROM flexfactor.captures')
	  . ' ' . sq('SELECT count(*) FROM flexfactor.order_events');
}

# ======================================================================
# 1. Expired, detected by polling (managed MIT)
# ======================================================================
# …14 expires at its expiryDateUtc; …13 is cancelled after a virtual minute.
# E-2's deadline passes after it was cancelled: once the deadline passed,
# polling cannot tell it from an expiry (there is no Expired status), so it
# reads EXPIRED; E-3's deadline is days away, so it reads CANCELLED.
my $deadline = sq("SELECT now() + interval '3 seconds'");
evaluate('E-1', 1914, 'tx-e1', expiry => "'$deadline'::timestamptz");
evaluate('E-2', 1913, 'tx-e2', expiry => "'$deadline'::timestamptz");
evaluate('E-3', 1913, 'tx-e3', expiry => "now() + interval '5 days'");
is(sq("SELECT string_agg(status, ',' ORDER BY order_id) FROM flexfactor.orders WHERE order_id LIKE 'E-%'"),
	'SUBMITTED,SUBMITTED,SUBMITTED', 'expired: three managed MIT orders SUBMITTED');
$sim->advance(300);
ff_wait_until(sub { sq("SELECT now() > '$deadline'::timestamptz") eq 't' }, 10);
my %poll;
for my $o (qw(E-1 E-2 E-3))
{
	$poll{$o} = jq("SELECT flexfactor.ff_order('" . key_of($o) . "')");
}
is(join(',', map { "$poll{$_}{statusName}/$poll{$_}{status}" } qw(E-1 E-2 E-3)),
	'CANCELLED/2,CANCELLED/2,CANCELLED/2', 'expired: FlexFactor answers Cancelled (2) for all three');
ok(!$poll{'E-2'}{isExpired}, 'expired: E-2\'s answer does not say it expired (no isExpired: true)');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders WHERE order_id LIKE 'E-%'"),
	'E-1 EXPIRED, E-2 EXPIRED, E-3 CANCELLED',
	'expired: Cancelled with expiryDate passed is EXPIRED; before it, CANCELLED');
is(calls('E-2'), 'SUBMITTED,EXPIRED', 'expired: the callback was told E-2 EXPIRED');
is(heard('E-2'), 'SUBMITTED,EXPIRED', 'expired: NOTIFY announced E-2 EXPIRED');
# a later order.completed for E-1 would not undo it; polling again changes nothing
jq("SELECT flexfactor.ff_order('" . key_of('E-1') . "')");
is(sq("SELECT count(*) FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
        WHERE o.order_id = 'E-1'"), '2', 'expired: polling again records no change');

# ======================================================================
# 2. Sync MIT: DECLINED, then APPROVED on a later /evaluate
# ======================================================================
# a sync-MIT account: FlexFactor and flexfactor.mit_mode agree (no expiryDateUtc needed)
$sim->config({ mitMode => 'sync' });
sq("ALTER DATABASE ffdb SET flexfactor.mit_mode = 'sync'");
my $ans = evaluate('S-1', 4902, 'tx-s1');
is($ans->{status}, 'DECLINED', 'sync MIT: the first /evaluate answers DECLINED');
my $s1 = $ans->{orderSessionKey};
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'S-1'"), 'DECLINED', 'sync MIT: DECLINED stored');
# FlexFactor keeps working; the merchant's next retry (a new charge attempt) asks again
$sim->rescue($s1, notify => 0);
my $seq = $sim->last_seq;
$ans = evaluate('S-1', 4902, 'tx-s2');
is($ans->{status}, 'APPROVED', 'sync MIT: a later /evaluate of the same orderId answers APPROVED');
is($ans->{orderSessionKey}, $s1, 'sync MIT: for the same FlexFactor order');
my $sent = FFSim->decode_json($sim->requests(path => '/v1/evaluate', since => $seq)->[0]{body});
isnt($sent->{idempotencyKey}, sq("SELECT flexfactor.ff_attempt_key('evaluate', '$mid', 'S-1', 'tx-s1')"),
	'sync MIT: the retry went out with a new idempotencyKey (a new attempt)');
is(sq("SELECT status, order_session_key FROM flexfactor.orders WHERE order_id = 'S-1'"), "APPROVED|$s1",
	'sync MIT: APPROVED is stored');
is(sq("SELECT string_agg(coalesce(old_status, '') || '>' || new_status || ':' || callback_state, ',' ORDER BY e.id)
        FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref WHERE o.order_id = 'S-1'"),
	'PENDING>DECLINED:done,DECLINED>APPROVED:done', 'sync MIT: order_events has DECLINED -> APPROVED, callback done');
is(calls('S-1'), 'DECLINED,APPROVED', 'sync MIT: the billing callback was called with APPROVED');
is(heard('S-1'), 'DECLINED,APPROVED', 'sync MIT: NOTIFY announced DECLINED -> APPROVED');

# the same orderId sent again with another amount, currency and transaction
# (the security finding: 4902 USD became 19999 EUR) changes none of them
my $events_before = sq('SELECT count(*) FROM flexfactor.order_events');
$ans = evaluate('S-1', 19999, 'tx-s3', currency => 'EUR');
is($ans->{status}, 'APPROVED', 'rewrite: FlexFactor answers the order\'s state, APPROVED');
is(sq("SELECT amount_cents, currency, transaction_id, status, is_mit FROM flexfactor.orders WHERE order_id = 'S-1'"),
	'4902|USD|tx-s1|APPROVED|t', 'rewrite: amount, currency and transaction are the first ones');
is(sq('SELECT count(*) FROM flexfactor.order_events'), $events_before, 'rewrite: no status change recorded');
is(calls('S-1'), 'DECLINED,APPROVED', 'rewrite: the callback was not called again');

# ======================================================================
# 3. ff_capture
# ======================================================================
$ans = evaluate('C-1', 4950, 'tx-c1', authorization => 1);
is($ans->{status}, 'CAPTUREREQUIRED', 'capture: an AUTHORIZATION answers CAPTUREREQUIRED');
my $c1 = $ans->{orderSessionKey};
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'C-1'"), 'CAPTUREREQUIRED', 'capture: stored');
is(calls('C-1'), 'CAPTUREREQUIRED', 'capture: the callback is told about CAPTUREREQUIRED');
is(heard('C-1'), 'CAPTUREREQUIRED', 'capture: NOTIFY announced CAPTUREREQUIRED');

# local refusals send nothing and change nothing
for my $case ([ "ff_capture('$c1', 4951)", 'FF021', 'more than authorised' ],
	[ "ff_capture('$c1', 0)", 'FF021', 'zero cents' ],
	[ "ff_capture('$s1')", 'FF020', 'an APPROVED order' ],
	[ "ff_capture('5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d')", 'FF022', 'an unknown order' ])
{
	my ($call, $state, $what) = @$case;
	my ($before, $last) = (snapshot(), $sim->last_seq);
	my $e = err("SELECT flexfactor.$call");
	is($e->{sqlstate}, $state, "capture refused locally, $what: $state") or diag $e->{stderr};
	ok(defined $e->{detail} && defined $e->{hint}, "capture refused locally, $what: DETAIL and HINT");
	is($sim->last_seq, $last, "capture refused locally, $what: no request");
	is(snapshot(), $before, "capture refused locally, $what: nothing changed");
}

# the happy path, after a first attempt rolled back: the same key, replayed
$seq = $sim->last_seq;
sq("BEGIN; SELECT flexfactor.ff_capture('$c1'); ROLLBACK;");
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'C-1'"), 'CAPTUREREQUIRED',
	'capture: a rolled-back capture left the order CAPTUREREQUIRED');
$ans = jq("SELECT flexfactor.ff_capture('$c1')");
is("$ans->{status}/$ans->{captureStatus}", 'SUCCESS/SUCCESS', 'capture: status and captureStatus SUCCESS');
my @cap = map { FFSim->decode_json($_->{body}) } @{ $sim->requests(path => '/v1/capture', since => $seq) };
is(scalar @cap, 2, 'capture: two /capture requests (the rolled-back one and the retry)');
my $ckey = sq("SELECT flexfactor.ff_attempt_key('capture', '$c1', '4950')");
is_deeply($cap[1], { idempotencyKey => $ckey, orderId => $c1, amount => 4950, currency => 'USD' },
	'capture: body {idempotencyKey, orderId = orderSessionKey, amount in cents, currency}');
is($cap[0]{idempotencyKey}, $ckey, 'capture: the retry sent the same idempotencyKey');
my ($crec) = grep { $_->{key} eq $ckey } @{ $sim->idempotency->{keys} };
is("$crec->{accepted}/$crec->{replayed}", '1/1', 'capture: FlexFactor captured once and replayed the retry');
is(sq("SELECT o.status, c.amount_cents, c.idempotency_key FROM flexfactor.orders o
        JOIN flexfactor.captures c ON c.order_ref = o.id WHERE o.order_id = 'C-1'"),
	"APPROVED|4950|$ckey", 'capture: order APPROVED, one captures row with its key');
is(calls('C-1'), 'CAPTUREREQUIRED,APPROVED', 'capture: the callback was told APPROVED');
is(heard('C-1'), 'CAPTUREREQUIRED,APPROVED', 'capture: NOTIFY announced APPROVED');
is($sim->order($c1)->{state}, 'COMPLETED', 'capture: FlexFactor holds the order COMPLETED');
my $e = err("SELECT flexfactor.ff_capture('$c1')");
is($e->{sqlstate}, 'FF020', 'capture: a second capture is refused locally (FF020)');

# a partial capture bounds what can be refunded
$ans = evaluate('C-2', 4950, 'tx-c2', authorization => 1);
my $c2 = $ans->{orderSessionKey};
jq("SELECT flexfactor.ff_capture('$c2', 3000)");
is($sim->order($c2)->{capturedAmount}, 3000, 'partial capture: FlexFactor captured 3000 cents');
$e = err("SELECT flexfactor.ff_refund('$c2', 3001)");
is($e->{sqlstate}, 'FF021', 'partial capture: refunding more than was captured is refused (FF021)');
$seq = $sim->last_seq;
jq("SELECT flexfactor.ff_refund('$c2')");
like($sim->requests(path => "/v1/orders/$c2/refund", since => $seq)->[0]{body},
	qr/"amountToRefund"\s*:\s*30\.00?(?![0-9])/, 'partial capture: NULL refunds what was captured, 30.00');
is(sq("SELECT refunded_cents, status FROM flexfactor.orders WHERE order_id = 'C-2'"), '3000|REFUNDED',
	'partial capture: refunded_cents 3000');

# FlexFactor refuses: the capture window passed (voided there, not known here)
$ans = evaluate('C-3', 4950, 'tx-c3', authorization => 1);
my $c3 = $ans->{orderSessionKey};
$sim->advance(1440 * 60 + 1);
is($sim->order($c3)->{statusName}, 'CANCELLED', 'refused capture: FlexFactor voided C-3');
my $before = snapshot();
$e = err("SELECT flexfactor.ff_capture('$c3')");
is($e->{sqlstate}, 'FF012', 'refused capture: FF012') or diag $e->{stderr};
like($e->{detail} // '', qr/^HTTP 200, responseCode 2002: Order is not awaiting capture/,
	'refused capture: DETAIL has the HTTP status, responseCode and message');
like($e->{hint} // '', qr/ff_order\(\)/, 'refused capture: HINT points to ff_order()');
is(snapshot(), $before, 'refused capture: nothing changed (no captures row, still CAPTUREREQUIRED)');

# ======================================================================
# 4. Refunds: booked only when the answer says the refund happened
# ======================================================================
$sim->config({ mitMode => 'managed' });
sq("ALTER DATABASE ffdb RESET flexfactor.mit_mode");
my %r;
for my $o (qw(F-1 F-2 F-3 F-4))
{
	$r{$o} = evaluate($o, 2501, "tx-" . lc $o, expiry => "now() + interval '5 days'")->{orderSessionKey};
}
is(sq("SELECT string_agg(DISTINCT status, ',') FROM flexfactor.orders WHERE order_id LIKE 'F-%'"), 'APPROVED',
	'refunds: four APPROVED orders');

# success ("current": responseMessage APPROVED)
$sim->refund_answer('current');
$seq = $sim->last_seq;
$ans = jq("SELECT flexfactor.ff_refund('$r{'F-1'}', 1000)");
is("$ans->{status}/$ans->{responseMessage}", 'SUCCESS/APPROVED', 'refund: FlexFactor answers SUCCESS, APPROVED');
my $rbody = FFSim->decode_json($sim->requests(path => "/v1/orders/$r{'F-1'}/refund", since => $seq)->[0]{body});
is_deeply([ sort keys %$rbody ], [qw(amountToRefund isPartialRefund)],
	'refund: the body has amountToRefund and isPartialRefund, no idempotencyKey');
is(sq("SELECT o.refunded_cents || ' ' || o.status || ' ' || r.amount_cents || ' ' || (r.transaction_id = '$ans->{transactionId}')
        FROM flexfactor.orders o JOIN flexfactor.refunds r ON r.order_ref = o.id WHERE o.order_id = 'F-1'"),
	'1000 REFUNDED 1000 true', 'refund: booked (refunds row with its transaction, refunded_cents, REFUNDED)');
# retried after a rolled-back transaction: FlexFactor de-duplicates it per order
sq("BEGIN; SELECT flexfactor.ff_refund('$r{'F-1'}', 500); ROLLBACK;");
jq("SELECT flexfactor.ff_refund('$r{'F-1'}', 500)");
is($sim->order($r{'F-1'})->{refundedAmount}, 1500, 'refund: a retry after a rollback is not refunded twice');
is(sq("SELECT refunded_cents || '/' || (SELECT count(*) FROM flexfactor.refunds WHERE order_ref = o.id)
        FROM flexfactor.orders o WHERE order_id = 'F-1'"), '1500/2', 'refund: and booked once');

# refusals: the recorded 2001 body with 200, then with 400
for my $case ([ 'refused200', 200, 500, '5\.00' ], [ 'refused400', 400, 600, '6\.00' ])
{
	my ($mode, $status, $cents, $dollars) = @$case;
	$sim->refund_answer($mode);
	$before = snapshot();
	$e = err("SELECT flexfactor.ff_refund('$r{'F-2'}', $cents)");
	is($e->{sqlstate}, 'FF012', "refund $mode: FF012") or diag $e->{stderr};
	like($e->{detail} // '', qr/^HTTP $status, responseCode 2001: Amount to refund \($dollars\) is greater than maximum refund amount/,
		"refund $mode: DETAIL has HTTP $status, responseCode 2001 and the message");
	like($e->{hint} // '', qr/Nothing was booked/, "refund $mode: HINT says nothing was booked");
	is(snapshot(), $before, "refund $mode: nothing booked, the order unchanged");
	is($sim->order($r{'F-2'})->{refundedAmount}, 0, "refund $mode: FlexFactor refunded nothing");
}

# the 2024 shape: success true, responseMessage DECLINED (the refund did happen)
$sim->refund_answer('declined2024');
$before = snapshot();
$e = err("SELECT flexfactor.ff_refund('$r{'F-3'}', 700)");
is($e->{sqlstate}, 'FF012', 'refund declined2024: FF012') or diag $e->{stderr};
like($e->{detail} // '', qr/responseMessage DECLINED/, 'refund declined2024: DETAIL quotes responseMessage DECLINED');
like($e->{hint} // '', qr/ff_order\(\).*order\.refunded/, 'refund declined2024: HINT says to check with ff_order()');
is(snapshot(), $before, 'refund declined2024: nothing booked');
is($sim->order($r{'F-3'})->{refundedAmount}, 700, 'refund declined2024: (FlexFactor did refund 7.00)');
# the authoritative signal: its order.refunded webhook, delivered now
$sim->config({ webhookUrl => $wurl });
my $att = $sim->resend_webhook($r{'F-3'}, 'order.refunded');
is("$att->{status} $att->{responseBody}", '200 applied', 'refund declined2024: the order.refunded webhook is applied');
is(sq("SELECT o.refunded_cents || ' ' || o.status || ' ' || r.amount_cents FROM flexfactor.orders o
        JOIN flexfactor.refunds r ON r.order_ref = o.id WHERE o.order_id = 'F-3'"),
	'700 REFUNDED 700', 'refund declined2024: the webhook booked the refund');
$sim->config({ webhookUrl => '' });
$sim->refund_answer('current');

# ======================================================================
# 5. payout.* webhooks: no OrderId, acknowledged once, recorded
# ======================================================================
$sim->config({ webhookUrl => $wurl });
my $rejections = sq('SELECT count(*) FROM flexfactor.webhook_rejections');
my $pev = $sim->payout_webhook(event => 'payout.created', amount => 125050);
my $uev = $sim->payout_webhook(event => 'payout.updated', omit_order_id => 1);
my $w = $sim->wait_for_webhooks(sub {
	2 == grep { ($_->{event} // '') =~ /^payout\./ && defined $_->{status} } @{ $_[0]{attempts} } });
ok($w, 'payout: both deliveries were answered');
$sim->advance(7 * 3600);    # past the retry schedule's first hours
my @patt = grep { $_->{event} =~ /^payout\./ } @{ $sim->webhooks->{attempts} };
is(join(',', map { "$_->{event}:$_->{attempt}:$_->{status}:$_->{responseBody}" } sort { $a->{event} cmp $b->{event} } @patt),
	'payout.created:1:200:not_applicable,payout.updated:1:200:not_applicable',
	'payout: each delivered once, answered 200 not_applicable, never retried');
is(join(',', map { $_->{status} } grep { $_->{eventId} eq $pev->{eventId} || $_->{eventId} eq $uev->{eventId} }
		@{ $sim->webhooks->{events} }), 'delivered,delivered', 'payout: FlexFactor counts both delivered');
is(sq("SELECT string_agg(event || ' ' || coalesce(order_session_key::text, '-') || ' ' || apply_state || ' '
                         || (event_data->>'status') || ' ' || received_via, ', ' ORDER BY id)
         FROM flexfactor.webhook_events WHERE event LIKE 'payout.%'"),
	'payout.created - not_applicable pending listener, payout.updated - not_applicable completed listener',
	'payout: both stored as not_applicable, with their data');
like(sq("SELECT apply_error FROM flexfactor.webhook_events WHERE event = 'payout.created'"),
	qr/names no order/, 'payout: the reason is recorded');
is(sq('SELECT count(*) FROM flexfactor.webhook_rejections'), $rejections, 'payout: no rejection recorded');

$listen->quit;
$node->stop('fast');
$sim->stop;
done_testing();
