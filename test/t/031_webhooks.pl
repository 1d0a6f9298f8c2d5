# Webhooks come home through the listener: the FlexFactor simulator POSTs
# signed deliveries to flexfactor's webhook listener over HTTP.
#
# The full loop (declines -> SFTP batch -> result file -> webhooks -> orders
# APPROVED and EXPIRED, billing callback, NOTIFY flexfactor_order); the
# public signature test vector; every refusal with its HTTP status, its row
# in webhook_rejections and no change of state; duplicates, resends,
# out-of-order delivery and late events; refusals the simulator retries;
# the key rotation; an event racing the transaction that stores its order.
# Verification and application without HTTP are in test/sql/results_local.sql;
# crashes, restarts and slow clients are in 032_webhook_faults.pl.
use strict;
use warnings;
use Digest::SHA ();
use JSON::PP ();
use MIME::Base64 ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d';
my $key = $FFSim::WEBHOOK_TEST_KEY;
my $tmp = PostgreSQL::Test::Utils::tempdir('ffwebhooks031');
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $path = '/flexfactor/webhook';
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_031', mid => $mid, sftp_root => "$tmp/sftp",
	webhook_url => "http://127.0.0.1:$wport$path",
	args => [ '--scan-interval', '3600' ]);    # files are processed at /_admin/scan

my $node = ff_node('webhooks031',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $key,
	'flexfactor.on_order_status' => 'billing.on_flexfactor');
$node->start;

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub wait_listener { FFSim::wait_for_listener($node, $wport, @_) }
sub set_and_reload { FFSim::reload_listener($node, 'ffdb', @_) }

sub deliver { return FFSim::post_webhook(port => $wport, @_) }

# what must not change when a delivery is refused
sub snapshot
{
	return sq("SELECT (SELECT coalesce(md5(string_agg(o::text, '|' ORDER BY id)), '') FROM flexfactor.orders o)
	               || ' events=' || (SELECT count(*) FROM flexfactor.webhook_events)
	               || ' changes=' || (SELECT count(*) FROM flexfactor.order_events)");
}

sub last_rejection_id { sq('SELECT coalesce(max(id), 0) FROM flexfactor.webhook_rejections') }

# every attempt the simulator saw answered 2xx has its row, by nonce
sub check_acknowledged_stored
{
	my ($what) = @_;
	my @ok = grep { defined $_->{status} && $_->{status} >= 200 && $_->{status} < 300 }
	  @{ $sim->webhooks->{attempts} };
	my %stored = map { ($_ => 1) } split /\n/,
	  sq("SELECT nonce FROM flexfactor.webhook_events WHERE received_via = 'listener'");
	my @missing = grep { !$stored{ FFSim::attempt_nonce($_) // '' } } @ok;
	is(scalar @missing, 0, "$what: each of the " . scalar(@ok)
		  . ' deliveries the simulator saw answered 2xx is stored (by nonce)')
	  or diag explain [ map { { event => $_->{event}, orderId => $_->{orderId}, status => $_->{status} } } @missing ];
}

# --- before CREATE EXTENSION the database cannot take a delivery: 503
$node->safe_psql('postgres', 'CREATE DATABASE ffdb');
my $lpid = wait_listener();
ok($lpid, "the launcher started the webhook listener (pid $lpid)");
my $early = deliver(body => FFSim::webhook_body(Event => 'order.completed',
		OrderId => 'a0000000-0000-4000-8000-000000000001'));
is($early->{status}, 503, 'without the extension a valid delivery is answered 503 (FlexFactor retries)')
  or diag explain $early;

$node->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
ff_wait_for_worker($node, 'ffdb');
is(sq("SELECT pid || ' ' || state FROM flexfactor.ff_worker_status() WHERE role = 'listener'"),
	"$lpid listening", "ff_worker_status() shows the listener 'listening'");

# the merchant's billing schema, told of every status change
sq(q{
	CREATE SCHEMA billing;
	CREATE TABLE billing.invoices (invoice_no text PRIMARY KEY, state text NOT NULL DEFAULT 'past_due',
	                               history text[] NOT NULL DEFAULT '{}');
	CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
		UPDATE billing.invoices
		   SET state = CASE o.status WHEN 'APPROVED' THEN 'paid' WHEN 'DECLINED' THEN 'failed'
		                             WHEN 'EXPIRED' THEN 'written_off' WHEN 'REFUNDED' THEN 'refunded'
		                             WHEN 'SUBMITTED' THEN 'pending_rescue' ELSE state END,
		       history = history || o.status::text
		 WHERE invoice_no = o.order_id $$;
});

my $listen = $node->background_psql('ffdb');
$listen->query_safe('LISTEN flexfactor_order');

# ============================================================ the full loop
# 01: APPROVED at once (order.completed now), 02: DECLINED (order.cancelled
# now), 03: SUBMITTED then order.completed after 1 virtual minute, 14:
# SUBMITTED then order.expired at expiryDateUtc (2 hours)
my %amount = ('W-1' => 1501, 'W-2' => 1502, 'W-3' => 1503, 'W-4' => 1514);
for my $order (sort keys %amount)
{
	my $expiry = $order eq 'W-4' ? "now() + interval '2 hours'" : "now() + interval '14 days'";
	sq("INSERT INTO billing.invoices VALUES ('$order')");
	sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('$order', $amount{$order}, 'USD',
	      'tok-$order', 'tx-$order', expiry => $expiry, " . ff_decline_args(expiry => undef) . "))");
}
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'loop: the declines leave in one batch file');
my $scan = $sim->scan;
is($scan->[0]{accepted}, 4, 'loop: FlexFactor accepted the 4 lines');
my %osk = map { ($_->{externalOrderId} => $_->{id}) } @{ $sim->orders };

# the instant events go out before the result file is read: they wait
my $w = $sim->wait_for_webhooks(sub { 2 == grep { ($_->{status} // 0) == 200 } @{ $_[0]{attempts} } });
ok($w, 'loop: order.completed (W-1) and order.cancelled (W-2) delivered and answered 200');
is(join(',', sort map { "$_->{externalOrderId}:$_->{event}:$_->{responseBody}" } @{ $w->{attempts} }),
	'W-1:order.completed:waiting_order,W-2:order.cancelled:waiting_order',
	'loop: the listener answered that they wait for their orders');
is(sq("SELECT string_agg(event || ' ' || apply_state || ' ' || received_via, ', ' ORDER BY event)
         FROM flexfactor.webhook_events"),
	'order.cancelled waiting_order listener, order.completed waiting_order listener',
	'loop: both stored, received_via listener, waiting_order');
is(sq('SELECT count(*) FROM flexfactor.orders'), '0', 'loop: no order yet');

is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'loop: the next pass reads the result file');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders"),
	'W-1 APPROVED, W-2 DECLINED, W-3 SUBMITTED, W-4 SUBMITTED', 'loop: the result file made the orders');
is(sq("SELECT string_agg(apply_state, ',') FROM flexfactor.webhook_events"), 'applied,applied',
	'loop: the waiting events were applied when their orders appeared');

# one virtual minute: W-3 completes; two hours: W-4 expires
my $adv = $sim->advance(61);
is($adv->{deliveries}, 1, 'loop: one minute later FlexFactor sends order.completed for W-3');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'W-3'"), 'APPROVED', 'loop: W-3 is APPROVED');
$adv = $sim->advance(7200);
is($adv->{deliveries}, 1, 'loop: at expiryDateUtc FlexFactor sends order.expired for W-4');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'W-4'"), 'EXPIRED', 'loop: W-4 is EXPIRED');
$w = $sim->webhooks;
is(join(',', map { "$_->{externalOrderId}:$_->{status}:$_->{responseBody}" }
		  sort { $a->{externalOrderId} cmp $b->{externalOrderId} } @{ $w->{attempts} }),
	'W-1:200:waiting_order,W-2:200:waiting_order,W-3:200:applied,W-4:200:applied',
	'loop: every delivery answered 200 with the fate of its event');
is(join(',', map { $_->{status} } @{ $w->{events} }), 'delivered,delivered,delivered,delivered',
	'loop: FlexFactor counts every event delivered');
check_acknowledged_stored('loop');
is(sq("SELECT string_agg(invoice_no || '=' || state || ' ' || array_to_string(history, '>'), ', ' ORDER BY invoice_no)
         FROM billing.invoices"),
	'W-1=paid APPROVED, W-2=failed DECLINED, W-3=paid SUBMITTED>APPROVED, W-4=written_off SUBMITTED>EXPIRED',
	'loop: the billing callback heard each status change once, in order');
is(sq("SELECT string_agg(o.order_id || ':' || coalesce(e.old_status, '-') || '>' || e.new_status || ':' || e.callback_state,
                         ', ' ORDER BY o.order_id, e.id)
         FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref"),
	'W-1:->APPROVED:done, W-2:->DECLINED:done, W-3:->SUBMITTED:done, W-3:SUBMITTED>APPROVED:done, '
	  . 'W-4:->SUBMITTED:done, W-4:SUBMITTED>EXPIRED:done',
	'loop: order_events has every change with its callback done');
is(sq("SELECT string_agg(o.order_id || '=' || o.confirmation_id, ',' ORDER BY o.order_id) FROM flexfactor.orders o
        WHERE o.order_id IN ('W-3', 'W-4')"),
	join(',', map { "$_=" . $sim->order($osk{$_})->{confirmationId} } qw(W-3 W-4)),
	"loop: the orders carry FlexFactor's ConfirmationId");

# NOTIFY flexfactor_order, sent by the listener's transactions
my ($notes, @payloads) = ('');
my ($w3id, $w4id) = map { 0 + sq("SELECT id FROM flexfactor.orders WHERE order_id = '$_'") } qw(W-3 W-4);
my $deadline = time + 20;
while (time < $deadline)
{
	$notes .= $listen->query_safe('SELECT 1');
	@payloads = map { FFSim->decode_json($_) }
	  $notes =~ /Asynchronous notification "flexfactor_order" with payload "(.*?)" received from server process/g;
	last if grep { $_->{id} == $w4id && $_->{status} eq 'EXPIRED' } @payloads;
	Time::HiRes::sleep(0.1);
}
my ($n3) = grep { $_->{id} == $w3id && $_->{status} eq 'APPROVED' } @payloads;
is_deeply($n3, { id => $w3id, status => 'APPROVED' },
	'notify: a LISTENing session heard W-3 become APPROVED: its row id and status, nothing more (LISTEN needs no grant)');
ok((grep { $_->{id} == $w4id && $_->{status} eq 'EXPIRED' } @payloads), 'notify: and W-4 become EXPIRED');
like($notes, qr/"id" : $w3id, "status" : "APPROVED".*received from server process with PID $lpid\./,
	'notify: sent by the webhook listener process');
$listen->quit;

# ==================================================== the public test vector
my $vector_body = '{"Event":"order.completed","TimeStamp":"2023-03-20T17:16:40.898703Z","EventData":null,'
  . '"ExternalOrderId":"a9735210-1349-49bf-bfde-b737dd07872a","OrderId":"ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429",'
  . '"ConfirmationId":"22ACD1D9","IsTestMode":true,"IsResent":false}';
my @vector_headers = (
	'x-fc-nonce' => '5f1c2de28a76457c9cb79d1740f2260a',
	'x-fc-date' => 'Mon, 20 Mar 2023 17:16:40 GMT',
	'x-fc-content-sha512' =>
	  'pLs0Op5VWqQM3ZIumqC2NP6MDqcnwFN1znp/oCuw9LcYd8PtvLC8ProyPg8ZDadsRc36NskT3QGKn/PkNqwWfg==',
	'x-fc-authorization' => 'HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512'
	  . '&Signature=+HXN8ZewgINLk+uC/UI92HSWmLK7gZOECPxOGEM91ATyfyzScMF/+osEK5B0UjO7OFqahDvesSo8jmUWMZtQnA==',
	'x-fc-signature' =>
	  'SbzcEwAKsViWqrB8+suZMjOdadswbUjLHtIKjDQJYle31xbB8Vr0pVTDaNP28/y+NDynpyFyKKnXmWZy8uJVig==');
my %vector = (port => $wport, method => 'POST', path => $path, host => 'fctestwebhook.free.beeceptor.com',
	headers => \@vector_headers, body => $vector_body);
is(length $vector_body, 255, 'vector: the body is the 255 bytes of the sample');
is_deeply([ FFSim::webhook_headers($key, '5f1c2de28a76457c9cb79d1740f2260a', 'Mon, 20 Mar 2023 17:16:40 GMT',
			'fctestwebhook.free.beeceptor.com', $vector_body) ],
	\@vector_headers, "vector: this suite's signer reproduces the published values");
my $stale = FFSim::http_request(%vector);
is($stale->{status}, 401, 'vector: with webhook_max_skew 300 its 2023 date is refused (401)');
set_and_reload('ALTER SYSTEM SET flexfactor.webhook_max_skew = 0');
my $before = snapshot();
my $r = FFSim::http_request(%vector);
is("$r->{status} $r->{body}", '200 waiting_order',
	'vector: with the date check off (max_skew 0) the published delivery is accepted (its order is unknown)');
is(sq("SELECT event || ' ' || order_session_key || ' ' || confirmation_id || ' ' || apply_state || ' ' || received_via
         || ' ' || (body = \$b\$$vector_body\$b\$)
         FROM flexfactor.webhook_events WHERE nonce = '5f1c2de28a76457c9cb79d1740f2260a'"),
	'order.completed ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429 22ACD1D9 waiting_order listener true',
	'vector: stored with its exact body');
my $rej = last_rejection_id();
$before = snapshot();
$r = FFSim::http_request(%vector);
is($r->{status}, 401, 'vector: the same delivery again is a replayed nonce: 401');
is(sq("SELECT http_status || ' ' || remote_addr || ' ' || (reason ~* 'nonce') FROM flexfactor.webhook_rejections
        WHERE id > $rej"), '401 127.0.0.1 true', 'vector: the replay is recorded with its reason');
is(snapshot(), $before, 'vector: the replay changed nothing');
set_and_reload('ALTER SYSTEM RESET flexfactor.webhook_max_skew');

# ================================================================= refusals
# an order waiting for its rescue: a refused order.completed must not touch it
my $r1 = sq("INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents,
                                             currency, status)
             VALUES ('R-1', gen_random_uuid(), gen_random_uuid(), 'batch', 2500, 'USD', 'SUBMITTED')
             RETURNING order_session_key");
my $r1_body = FFSim::webhook_body(Event => 'order.completed', OrderId => $r1, ExternalOrderId => 'R-1',
	ConfirmationId => 'AB12CD34');
my $other_key = 'c2VjcmV0LWJ1dC1ub3QtdGhlLXN1YnNjcmliZXIta2V5LW9mLXRoaXMtbWVyY2hhbnQtMDEyMzQ1Njc4OQ==';
my $big = FFSim::webhook_body(Event => 'order.completed', OrderId => $r1,
	EventData => { padding => 'x' x (70 * 1024) });
my @refusals = (
	[ 'signed with another key', 401, qr/signatures do not match/,
		body => $r1_body, sign_key => $other_key ],
	[ 'x-fc-date 10 minutes old', 401, qr/max_skew/, body => $r1_body, age => 600 ],
	[ 'x-fc-date 10 minutes ahead', 401, qr/max_skew/, body => $r1_body, age => -600 ],
	[ 'x-fc-date not a date', 401, qr/RFC 1123/, body => $r1_body, date => 'yesterday' ],
	[ 'body tampered (signed another body)', 401, qr/content-sha512 does not match/,
		body => $r1_body =~ s/order\.completed/order.expired/r, sign_body => $r1_body ],
	[ 'body tampered, content hash recomputed', 401, qr/signatures do not match/,
		body => $r1_body, _recompute => 1 ],
	[ 'signed for another Host', 401, qr/signatures do not match/,
		body => $r1_body, sign_host => 'billing.example.com' ],
	[ 'no x-fc-signature', 401, qr/missing x-fc-signature/, body => $r1_body, drop => ['x-fc-signature'] ],
	[ 'no x-fc-authorization', 401, qr/missing x-fc-authorization/, body => $r1_body,
		drop => ['x-fc-authorization'] ],
	[ 'no signature headers at all', 401, qr/missing x-fc-nonce/, body => $r1_body,
		drop => [qw(x-fc-nonce x-fc-date x-fc-content-sha512 x-fc-authorization x-fc-signature)] ],
	[ 'malformed JSON', 400, qr/not a JSON object/, body => '{"Event":"order.completed","OrderId":' ],
	[ 'a JSON array', 400, qr/not a JSON object/, body => '[1,2,3]' ],
	[ 'no Event', 400, qr/no "Event"/, body => FFSim::webhook_body(Event => undef, OrderId => $r1) ],
	[ 'OrderId not a GUID', 400, qr/GUID/, body => FFSim::webhook_body(Event => 'order.completed',
			OrderId => 'R-1') ],
	[ 'a body over 64 kB', 413, qr/64 kB/, body => $big ],
	[ 'a body over 64 kB, chunked', 413, qr/64 kB/, body => $big, chunked => 1 ],
	[ 'GET', 405, qr/method GET/, body => '', method => 'GET' ],
	[ 'PUT', 405, qr/method PUT/, body => $r1_body, method => 'PUT' ],
	[ 'another path', 404, qr/unknown path/, body => $r1_body, path => '/flexfactor/other' ],
	[ 'a longer path', 404, qr/unknown path/, body => $r1_body, path => "$path/x" ],
	[ 'the root path', 404, qr/unknown path/, body => $r1_body, path => '/' ],
);
my @secrets = ($key, $other_key);
for my $case (@refusals)
{
	my ($what, $status, $reason, %o) = @$case;
	$before = snapshot();
	$rej = last_rejection_id();
	if (delete $o{_recompute})
	{
		# an attacker recomputes the content hash of a changed body but
		# cannot sign it: a correctly signed delivery with another body and
		# that body's x-fc-content-sha512
		my $changed = $o{body} =~ s/order\.completed/order.expired/r;
		my @h = FFSim::webhook_headers($key, FFSim::webhook_nonce(), FFSim::http_date(time),
			"127.0.0.1:$wport", $o{body});
		$h[5] = MIME::Base64::encode_base64(Digest::SHA::sha512($changed), '');
		$r = FFSim::http_request(port => $wport, path => $path, headers => \@h, body => $changed);
		$r->{sent_headers} = \@h;
	}
	else
	{
		$r = deliver(%o);
	}
	my %sent = @{ $r->{sent_headers} };
	push @secrets, grep { defined } $sent{'x-fc-signature'},
	  (($sent{'x-fc-authorization'} // '') =~ /Signature=(.*)$/);
	is($r->{status}, $status, "refusal: $what is answered $status") or diag explain $r;
	my $rows = sq("SELECT http_status || ' ' || remote_addr || ' ' || reason FROM flexfactor.webhook_rejections
	                WHERE id > $rej ORDER BY id");
	like($rows, qr/^$status 127\.0\.0\.1 .*$reason/, "refusal: $what is recorded in webhook_rejections");
	is(scalar(split /\n/, $rows), 1, "refusal: $what is recorded once");
	is(snapshot(), $before, "refusal: $what changed no order and stored no event");
	is($r->{headers}{allow}, 'POST', 'refusal: 405 says Allow: POST') if $status == 405;
}
my $all_reasons = sq('SELECT string_agg(reason, E\'\n\') FROM flexfactor.webhook_rejections');
is(scalar(grep { index($all_reasons, $_) >= 0 } @secrets), 0,
	'refusals: no key and no signature in webhook_rejections');

# an event that names no order (OrderId null, or absent): acknowledged, kept
# as not applicable, never refused (FlexFactor would retry a refusal for good)
for my $case ([ 'OrderId null', '{"Event":"payout.created","TimeStamp":"2026-01-01T00:00:00Z",'
		. '"EventData":{"payoutId":"po-9","status":"pending"},"ExternalOrderId":null,"OrderId":null,'
		. '"ConfirmationId":"PO000001","IsTestMode":true,"IsResent":false}' ],
	[ 'no OrderId', FFSim::webhook_body(Event => 'order.completed', OrderId => undef, ConfirmationId => 'PO000002') ])
{
	my ($what, $body) = @$case;
	my $orders = sq("SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM flexfactor.orders o");
	$rej = last_rejection_id();
	$r = deliver(body => $body);
	is("$r->{status} $r->{body}", '200 not_applicable', "no order ($what): answered 200 not_applicable");
	is(sq("SELECT apply_state || ' ' || (order_session_key IS NULL) FROM flexfactor.webhook_events
	        WHERE nonce = '$r->{nonce}'"), 'not_applicable true', "no order ($what): stored as not_applicable");
	is(last_rejection_id(), $rej, "no order ($what): not a rejection");
	is(sq("SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM flexfactor.orders o"), $orders,
		"no order ($what): no order changed");
}

# a delivery the simulator made, captured and sent again: a replay
my ($captured) = grep { $_->{externalOrderId} eq 'W-4' } @{ $sim->webhooks->{attempts} };
my %ch = %{ $captured->{headers} };
$before = snapshot();
$rej = last_rejection_id();
$r = FFSim::http_request(port => $wport, path => $path, host => $ch{Host},
	headers => [ map { ($_ => $ch{$_}) } grep { /^x-fc-/i } sort keys %ch ], body => $captured->{body});
is($r->{status}, 401, 'replay: a captured simulator delivery sent again is refused 401');
like(sq("SELECT http_status || ' ' || reason FROM flexfactor.webhook_rejections WHERE id > $rej"),
	qr/^401 .*nonce/, 'replay: recorded as a replayed nonce');
is(snapshot(), $before, 'replay: nothing changed');

# content type is not checked; R-1 is rescued
$r = deliver(body => $r1_body, extra_headers => [ 'Content-Type' => 'application/json' ]);
is("$r->{status} $r->{body}", '200 applied', 'a delivery labelled application/json is taken as well');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'R-1'"), 'APPROVED', 'R-1 is APPROVED');
# a late order.expired after order.completed keeps APPROVED
$before = sq("SELECT count(*) FROM flexfactor.order_events");
$r = deliver(body => FFSim::webhook_body(Event => 'order.expired', OrderId => $r1, ExternalOrderId => 'R-1',
		ConfirmationId => 'AB12CD34'));
is($r->{status}, 200, 'late: an order.expired after order.completed is acknowledged');
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'R-1'"), 'APPROVED', 'late: R-1 stays APPROVED');
is(sq("SELECT count(*) FROM flexfactor.order_events"), $before, 'late: no status change was recorded');

# ===================================== duplicates and resends (simulator modes)
$sim->webhook_mode(duplicate => JSON::PP::true);
my %damount = ('D-1' => 1601, 'D-2' => 1603);
for my $order (sort keys %damount)
{
	sq("INSERT INTO billing.invoices VALUES ('$order')");
	sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('$order', $damount{$order}, 'USD',
	      'tok-$order', 'tx-$order', expiry => now() + interval '14 days', " . ff_decline_args(expiry => undef) . "))");
}
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'duplicate: two more declines leave');
$sim->scan;
%osk = (%osk, map { ($_->{externalOrderId} => $_->{id}) } @{ $sim->orders });
ok($sim->wait_for_webhooks(sub { 2 == grep { $_->{externalOrderId} eq 'D-1' && ($_->{status} // 0) == 200 }
			@{ $_[0]{attempts} } }), 'duplicate: D-1\'s order.completed was sent twice, both answered 200');
sq('SELECT flexfactor.ff_export_batch()');
$sim->advance(61);
$w = $sim->webhooks;
is(join(',', map { "$_->{externalOrderId}:$_->{status}:$_->{responseBody}" }
		  sort { $a->{externalOrderId} cmp $b->{externalOrderId} || $a->{attemptId} =~ s/\D//gr <=> $b->{attemptId} =~ s/\D//gr }
		  grep { $_->{externalOrderId} =~ /^D-/ } @{ $w->{attempts} }),
	'D-1:200:waiting_order,D-1:200:duplicate,D-2:200:applied,D-2:200:duplicate',
	'duplicate: each event sent twice: the second is a duplicate');
$r = $sim->resend_webhook($osk{'D-2'});
is("$r->{status} $r->{responseBody} " . ($r->{isResent} ? 'resent' : 'not resent'), '200 duplicate resent',
	'resend: a manual resend (IsResent) is acknowledged as a duplicate');
is(sq("SELECT string_agg(apply_state || ':' || is_resent, ',' ORDER BY id) FROM flexfactor.webhook_events
        WHERE order_session_key = '$osk{'D-2'}'"),
	'applied:false,duplicate:false,duplicate:true', 'resend: stored with is_resent, changed nothing');
is(sq("SELECT string_agg(invoice_no || '=' || array_to_string(history, '>'), ', ' ORDER BY invoice_no)
         FROM billing.invoices WHERE invoice_no LIKE 'D-%'"),
	'D-1=APPROVED, D-2=SUBMITTED>APPROVED', 'duplicate: the callback ran once per change');
$sim->webhook_mode();
check_acknowledged_stored('duplicate');

# ============================ out of order: refunded before completed (reorder)
# an authorisation waits for its capture; FlexFactor's portal captures it and
# refunds $5.00; the simulator sends the three events in reverse order
$sim->webhook_mode(reorder => JSON::PP::true);
sq("INSERT INTO billing.invoices VALUES ('C-1')");
my $ev = FFSim->decode_json(sq(q{SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('C-1', 2500, 'USD', 'tok-C-1',
	'tx-C-1', expiry => now() + interval '14 days', } . ff_decline_args(expiry => undef)
	  . q{) || '{"transactionType":"AUTHORIZATION"}')}));
is($ev->{status}, 'CAPTUREREQUIRED', 'reorder: C-1 is an authorisation waiting for its capture');
my $c1 = $ev->{orderSessionKey};
my $tok = $sim->api('POST', 'oauth2/token', { AppKey => $sim->app_key, AppSecret => $sim->app_secret });
my $bearer = { Authorization => 'Bearer ' . ($tok->{json}{accessToken} // $tok->{json}{result}{accessToken} // '') };
my $cap = $sim->api('POST', 'capture', { idempotencyKey => '7b1f0c9e-2d1a-4c55-9a0e-0c1d2e3f4a5b',
		orderId => $c1, amount => 2500, currency => 'USD' }, $bearer);
is($cap->{status}, 200, 'reorder: captured at FlexFactor');
my $ref = $sim->api('POST', "orders/$c1/refund", { amountToRefund => '5.00', refundMessage => 'goodwill' }, $bearer);
is($ref->{status}, 200, 'reorder: and $5.00 refunded there');
is($sim->webhooks(orderId => $c1)->{count}, 0, 'reorder: the simulator held the three events');
$sim->advance(0);
$w = $sim->webhooks(orderId => $c1);
is(join(',', map { "$_->{event}:$_->{status}" } @{ $w->{attempts} }),
	'order.refunded:200,order.completed:200,order.capturerequired:200',
	'reorder: delivered newest first, each answered 200');
is(sq("SELECT status || ' ' || refunded_cents FROM flexfactor.orders WHERE order_id = 'C-1'"), 'REFUNDED 500',
	'reorder: C-1 ends REFUNDED with $5.00 refunded, as in-order delivery would leave it');
$sim->webhook_mode();
check_acknowledged_stored('reorder');

# ========================== refusals the simulator retries until they are stored
# wrong signature, then a stale date: 401, recorded; the retry (IsResent,
# fresh nonce, date and signature) after the mode is off is applied
$rej = last_rejection_id();
# (advance(0) sends what is due from this call, before the mode changes: the
# simulator's own 50 ms ticker could otherwise send it after the change)
$sim->webhook_mode(wrong_signature => JSON::PP::true);
$sim->chargeback($osk{'W-1'}, 2500, '10.4');
$sim->advance(0);
$sim->webhook_mode(stale_date => JSON::PP::true);
$sim->chargeback($osk{'W-3'}, 1503, '13.1');
$sim->advance(0);
$w = $sim->wait_for_webhooks(sub { 2 == grep { $_->{event} eq 'payment.chargeback.received' && defined $_->{status} }
		  @{ $_[0]{attempts} } });
is(join(',', map { ($_->{wrongSignature} ? 'wrong_signature' : 'stale_date') . ":$_->{status}" }
		  grep { $_->{event} eq 'payment.chargeback.received' } @{ $w->{attempts} }),
	'wrong_signature:401,stale_date:401', 'retry: a wrong signature and a stale date are answered 401');
like(sq("SELECT string_agg(http_status || ' ' || reason, E'\n' ORDER BY id) FROM flexfactor.webhook_rejections
          WHERE id > $rej"), qr/^401 .*signatures do not match.*\n401 .*max_skew[^\n]*$/s,
	'retry: both refusals recorded with their reasons');
is(sq("SELECT count(*) FROM flexfactor.orders WHERE chargeback_at IS NOT NULL"), '0', 'retry: no chargeback recorded yet');
$sim->webhook_mode();
$sim->advance(61);
$w = $sim->webhooks(event => 'payment.chargeback.received');
is(join(',', map { "$_->{attempt}:" . ($_->{isResent} ? 'resent' : 'first') . ":$_->{status}" } @{ $w->{attempts} }),
	'1:first:401,1:first:401,2:resent:200,2:resent:200', 'retry: one minute later both are resent and taken');
is(sq("SELECT string_agg(o.order_id || ' ' || (o.chargeback_at IS NOT NULL) || ' ' || e.apply_state || ' ' || e.is_resent,
                         ',' ORDER BY o.order_id)
         FROM flexfactor.orders o JOIN flexfactor.webhook_events e ON e.order_session_key = o.order_session_key
        WHERE e.event = 'payment.chargeback.received'"),
	'W-1 true applied true,W-3 true applied true',
	'retry: the resent events are applied (a resend of an event never stored is not a duplicate)');

# =============================================================== key rotation
my $new_key = MIME::Base64::encode_base64(Digest::SHA::sha512('flexfactor 031 rotated key'), '');
set_and_reload("ALTER SYSTEM SET flexfactor.webhook_key = '$new_key'");
set_and_reload("ALTER SYSTEM SET flexfactor.webhook_key_previous = '$key'");
$r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'W-3'}, ConfirmationId => 'R0T1'),
	key => $key);
is("$r->{status} $r->{body}", '200 applied', 'rotation: a delivery signed with the previous key is accepted');
$sim->chargeback($osk{'W-2'}, 1502, '10.4');    # the simulator still signs with the old key
ok($sim->wait_for_webhooks(sub { grep { $_->{orderId} eq $osk{'W-2'} && ($_->{status} // 0) == 200 }
			@{ $_[0]{attempts} } }), 'rotation: the simulator, still on the old key, is accepted');
$sim->config({ webhookKey => $new_key });
$sim->chargeback($osk{'W-4'}, 1514, '10.4');
ok($sim->wait_for_webhooks(sub { grep { $_->{orderId} eq $osk{'W-4'} && ($_->{status} // 0) == 200 }
			@{ $_[0]{attempts} } }), 'rotation: and, switched to the new key, too');
set_and_reload('ALTER SYSTEM RESET flexfactor.webhook_key_previous');
$before = snapshot();
$r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'W-3'}, ConfirmationId => 'R0T2'),
	key => $key);
is($r->{status}, 401, 'rotation: once webhook_key_previous is cleared, the old key is refused');
is(snapshot(), $before, 'rotation: and nothing changes');
$r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{'W-3'}, ConfirmationId => 'R0T3'),
	key => $new_key);
is($r->{status}, 200, 'rotation: the new key is accepted');
check_acknowledged_stored('rotation');

# ============== an event arriving while its order's key is being stored
# the worker stores a result file's orders in a transaction; a webhook for
# one of them that arrives before that commits waits for its order (the
# order's own trigger cannot see the event), and must still be applied once
# the order is there (the worker looks for such events every few seconds)
my $q1 = '5a1f0c9e-2d1a-4c55-9a0e-0c1d2e3f4a5b';
my $tx = $node->background_psql('ffdb');
$tx->query_safe("BEGIN; INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source,
                  amount_cents, currency, status)
                 VALUES ('Q-1', '$q1', gen_random_uuid(), 'batch', 1503, 'USD', 'SUBMITTED')");
$r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $q1, ExternalOrderId => 'Q-1',
		ConfirmationId => '0A0B0C0D'), key => $new_key, timeout => 12);
is("$r->{status} $r->{body}", '200 waiting_order',
	'race: a delivery for an order whose row is not committed yet waits for it');
$tx->query_safe('COMMIT');
$tx->quit;
my $applied = 0;
for (1 .. 200)    # up to 20 s
{
	last if ($applied = sq("SELECT status = 'APPROVED' FROM flexfactor.orders WHERE order_id = 'Q-1'") eq 't');
	Time::HiRes::sleep(0.1);
}
ok($applied, 'race: once the order is committed, the waiting order.completed is applied (Q-1 APPROVED)')
  or diag 'Q-1: ' . sq("SELECT o.status || ', event ' || e.apply_state FROM flexfactor.orders o
                         JOIN flexfactor.webhook_events e USING (order_session_key) WHERE o.order_id = 'Q-1'");

# ============================================================ the end state
$w = $sim->webhooks;
is(scalar(grep { $_->{status} ne 'delivered' } @{ $w->{events} }), 0,
	'end: every event the simulator emitted is delivered');
check_acknowledged_stored('end');
is(sq("SELECT count(*) FROM flexfactor.webhook_events WHERE apply_state = 'pending'"), '0',
	'end: no stored event left unapplied');

# ====================================== a billing callback that waits too long
# The callback runs in the listener's transaction.  One that waits (here on
# an invoice row another session holds locked) is cancelled after
# flexfactor.callback_timeout with FF025: the delivery is stored and
# acknowledged, the status change stays, the failed call is recorded and
# retried with backoff.  (It held the listener, and every delivery behind it,
# for as long as the lock was held; a plain cancel would have undone the
# status change.)
set_and_reload("ALTER SYSTEM SET flexfactor.callback_timeout = '1s'");
my $t1 = 'c0000000-0000-4000-8000-000000000071';
sq("INSERT INTO billing.invoices VALUES ('T-1')");
sq("INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
    VALUES ('T-1', '$t1', gen_random_uuid(), 'batch', 1503, 'USD', 'SUBMITTED')");
my $locker = $node->background_psql('ffdb');
$locker->query_safe("BEGIN; SELECT 1 FROM billing.invoices WHERE invoice_no = 'T-1' FOR UPDATE");
$r = deliver(body => FFSim::webhook_body(Event => 'order.completed', OrderId => $t1, ExternalOrderId => 'T-1',
		ConfirmationId => '0A0B0C0E'), key => $new_key, timeout => 30);
is($r->{status}, 200, 'slow callback: the delivery is acknowledged while the invoice stays locked')
  or diag explain $r;
is(sq("SELECT status FROM flexfactor.orders WHERE order_id = 'T-1'"), 'APPROVED', 'slow callback: the status change stays');
like(sq("SELECT e.callback_state || ': ' || e.callback_error FROM flexfactor.order_events e
           JOIN flexfactor.orders o ON o.id = e.order_ref WHERE o.order_id = 'T-1' AND e.new_status = 'APPROVED'"),
	qr/^failed: callback billing\.on_flexfactor\(flexfactor\.orders\) ran longer than flexfactor\.callback_timeout \(1000 ms\) and was cancelled/,
	'slow callback: the call is recorded as failed, with why');
is(sq("SELECT state FROM billing.invoices WHERE invoice_no = 'T-1'"), 'pending_rescue',
	'slow callback: nothing of the cancelled call stayed (the invoice as the SUBMITTED order left it)');
$locker->query_safe('ROLLBACK');
$locker->quit;
sq("SELECT flexfactor.ff_export_batch(retry_now => true)");
ok(ff_wait_until(sub { sq("SELECT state FROM billing.invoices WHERE invoice_no = 'T-1'") eq 'paid' }, 30),
	'slow callback: retried once the lock is gone, the invoice is paid');
set_and_reload("ALTER SYSTEM RESET flexfactor.callback_timeout");

# A callback that ends just as callback_timeout fires: the timeout's cancel
# arrives after the callback's last check for interrupts and is still
# pending when the call returns (or raises an error of its own).  It must
# not surface at the caller's next check as a plain cancel (57014, "due to
# user request"), which PL/pgSQL's WHEN OTHERS in _run_callback does not
# catch and which undoes the status change (the listener answers 503, the
# worker's phase fails): every call is recorded as done or failed.  Here in
# a session without statement_timeout, where the same timeout applies:
# 2,000 calls of a callback that spins for about the timeout, every other
# one then raising an error of its own.
sq(q{
CREATE FUNCTION billing.spin_cb(o flexfactor.orders) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE t timestamptz := clock_timestamp();
BEGIN
    WHILE clock_timestamp() < t + interval '990 microseconds' LOOP END LOOP;
    IF o.order_id = 'raise' THEN RAISE EXCEPTION 'the callback failed'; END IF;
END $f$;
CREATE FUNCTION billing.callback_race() RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    r flexfactor.orders := jsonb_populate_record(null::flexfactor.orders, '{}');
    outcome text;
    done int := 0; failed int := 0; cancelled int := 0;
BEGIN
    FOR i IN 1..2000 LOOP
        r.order_id := CASE WHEN i % 2 = 0 THEN 'raise' ELSE 'ok' END;
        BEGIN
            outcome := flexfactor._run_callback(0, r);
            PERFORM pg_sleep(0);    -- checks for interrupts, as the caller's next statement would
            IF outcome = 'done' THEN done := done + 1; ELSE failed := failed + 1; END IF;
        EXCEPTION WHEN query_canceled THEN
            cancelled := cancelled + 1;
        END;
    END LOOP;
    RETURN format('%s calls, %s plain cancels', done + failed, cancelled);
END $f$;
});
is($node->safe_psql('ffdb', q{
SET flexfactor.on_order_status = 'billing.spin_cb';
SET flexfactor.callback_timeout = '1ms';
SET statement_timeout = 0;
SET client_min_messages = error;
SELECT billing.callback_race();
}), '2000 calls, 0 plain cancels',
	'callback timeout firing as the callback ends: no plain cancel left pending for the caller');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();
