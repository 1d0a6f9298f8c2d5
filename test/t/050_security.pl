# Attacks on the webhook listener, run as an anonymous client (or with a
# genuine signature but a poisonous body), each asserting that nothing was
# gained, changed, stored or leaked.
#
# - Unprocessable but signed deliveries (a body nested 20,000 levels deep, an
#   amount of 1e999, a \u0000 escape) are never answered 503, which
#   FlexFactor would retry for good: the too-deep body and the \u0000 are
#   refused 400, the amount is kept as 'rejected' and acknowledged 200;
#   their orders do not change; a replay is refused.
# The API client's attacks (echoing servers, tokens, invalid text) are in
# 051_security_api.pl.
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

done_testing();
