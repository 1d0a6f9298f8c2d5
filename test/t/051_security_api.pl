# Attacks through the API client's remote server, each asserting that
# nothing was stored or leaked:
#
# - 13.8, a server that echoes the request back in its 400 error body (the
#   simulator's fault mode "echo": the Authorization header and the body):
#   the token request's body (app key, app secret), the bearer JWT of an
#   order look-up, a 16-digit run of an /evaluate and a /transmit body, and
#   the bearer JWT echoed in the message of a refused refund or capture
#   (FF012, as a role with the README's grants; nothing booked).  No
#   secret, token or digit run reaches the error's message or DETAIL,
#   transmit_queue.last_error or the server log.
# - 13.12, an API answer with bytes that are not UTF-8 (fault mode
#   "badutf8"): the call fails cleanly with FF009 and nothing invalid is
#   stored.
# - 13.10, the cached bearer token: moving flexfactor.api_url to another
#   server (postgresql.conf and a reload) fetches a token there and never
#   sends the first server's; an absurd `expires` (1e999, 2^63-1) is
#   trusted for at most 10 minutes, without an error.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;

my $mid = '7b2f4d3e-0c8e-4f32-9d4b-1e6f8a0b2c35';
my $secret = 'tap-sec-secret-5e1d7c9a-never-log';
my $tokkey = 'tap-sec-tokkey-2a4c6e80-never-log';
my $sim = FFSim->start(name => 'ffsim_051', mid => $mid, app_key => 'tap-sec-app-key',
	app_secret => $secret, tokenization_key => $tokkey);
my $sim2 = FFSim->start(name => 'ffsim_051b', mid => $mid, app_key => 'tap-sec-app-key',
	app_secret => $secret, tokenization_key => $tokkey);

my $node = ff_node('security051', $sim->node_settings(
		'flexfactor.database' => 'ffdb',
		'flexfactor.http_timeout_ms' => '10000'));
ff_start_serving($node, 'ffdb');

sub sq { $node->safe_psql('ffdb', $_[0]) }

my $seen = '';    # every error text a client saw
sub err
{
	my ($sql) = @_;
	my $e = FFSim::sql_error($node, 'ffdb', $sql);
	$seen .= $e->{stderr};
	return $e;
}

sub payment
{
	my ($order) = @_;
	return "flexfactor.ff_payment('$order', 1999, 'USD', 'tx-" . lc($order) . "', " . ff_payment_args() . ")";
}

my $log0 = -s $node->logfile;

# ===================================================== 13.8: echoing servers
# the app secret and key, echoed from the first token request
$sim->fault(endpoint => '/v1/oauth2/token', mode => 'echo');
my $e = err("SELECT flexfactor.ff_order('00000000-0000-4000-8000-00000000000a')");
ok($e->{sqlstate}, "echo, token request: fails ($e->{sqlstate})");
$sim->clear_faults;

# a token, and the order the look-ups ask for
my $ev = FFSim->decode_json(sq("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('SEC-1', 1501, 'USD', 'tok-sec1',
    'tx-sec1', " . ff_decline_args() . "))"));
my $osk = $ev->{orderSessionKey};
ok($osk, 'setup: an order evaluated');
my @jwts = map { $_->{accessToken} } @{ $sim->tokens->{tokens} // [] };
ok(@jwts, 'setup: the simulator issued a bearer token (' . scalar(@jwts) . ')');

# the bearer token, echoed from an order look-up
$sim->fault(endpoint => '/v1/orders/*', mode => 'echo');
$e = err("SELECT flexfactor.ff_order('$osk')");
ok($e->{sqlstate}, "echo, order look-up: fails ($e->{sqlstate})");
my ($fault_log) = grep { ($_->{fault} // '') eq 'echo' } @{ $sim->requests(path => "/v1/orders/$osk") };
like($fault_log ? $fault_log->{status} : '', qr/^400$/, 'echo: the simulator answered 400 with the echo');

# a 16-digit run (not a card number) echoed from /evaluate's body
$sim->fault(endpoint => '/v1/evaluate', mode => 'echo');
$e = err("SELECT flexfactor.ff_evaluate(flexfactor.ff_decline('SEC-2', 1502, 'USD', 'tok-sec2',
    'tx-9876543210987654', " . ff_decline_args() . "))");
ok($e->{sqlstate}, "echo, /evaluate: fails ($e->{sqlstate})");
like($e->{detail} // $e->{message} // '', qr/\S/, 'echo, /evaluate: the error says something');


# a /transmit row set aside by an echoed 400
$sim->clear_faults;
$sim->fault(endpoint => '/v1/transmit', mode => 'echo', count => 100);
sq('SELECT flexfactor.ff_transmit(' . payment('EC-9876543210987654') . ')');
ok($node->poll_query_until('ffdb', "SELECT count(*) = 1 FROM flexfactor.transmit_queue
      WHERE payload->>'orderId' = 'EC-9876543210987654' AND state = 'set_aside' AND last_error IS NOT NULL"),
	'echo, /transmit: the row is set aside with its last_error');
my $last_error = sq("SELECT last_error FROM flexfactor.transmit_queue WHERE payload->>'orderId' = 'EC-9876543210987654'");
$sim->clear_faults;
@jwts = (@jwts, map { $_->{accessToken} } @{ $sim->tokens->{tokens} // [] });

# refused refunds and captures: FlexFactor's business answer is read, and its
# message shown in DETAIL (FF012) to a role with the README's grants; a server
# that echoes the request there (the bearer token) leaks nothing, and nothing
# is booked
sq("CREATE ROLE sec_app LOGIN;
    GRANT USAGE ON SCHEMA flexfactor TO sec_app;
    GRANT EXECUTE ON FUNCTION flexfactor.ff_refund(text, bigint), flexfactor.ff_capture(text, bigint) TO sec_app;
    UPDATE flexfactor.orders SET status = 'APPROVED' WHERE order_session_key = '$osk'");
my $cap = sq("INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents,
                                            currency, status)
              VALUES ('SEC-CAP', gen_random_uuid(), gen_random_uuid(), 'api', 1500, 'USD', 'CAPTUREREQUIRED')
              RETURNING order_session_key");
my $booked0 = sq("SELECT (SELECT count(*) FROM flexfactor.refunds) + (SELECT count(*) FROM flexfactor.captures)");
for my $case ([ 'echo_refusal', "/v1/orders/$osk/refund", "flexfactor.ff_refund('$osk', 100)", 'refund' ],
	[ 'echo_declined', "/v1/orders/$osk/refund", "flexfactor.ff_refund('$osk', 100)", 'refund' ],
	[ 'echo_refusal', '/v1/capture', "flexfactor.ff_capture('$cap')", 'capture' ])
{
	my ($mode, $endpoint, $call, $what) = @$case;
	$sim->fault(endpoint => $endpoint, mode => $mode);
	$e = err("SET ROLE sec_app;\nSELECT $call");
	is($e->{sqlstate}, 'FF012', "$mode, $what: refused with FF012");
	like($e->{detail} // '', qr/\[token removed\]/, "$mode, $what: the echoed bearer token is removed from DETAIL")
	  or diag $e->{stderr};
	$sim->clear_faults;
}
is(sq("SELECT (SELECT count(*) FROM flexfactor.refunds) + (SELECT count(*) FROM flexfactor.captures)"), $booked0,
	'echoed refusals: no refund or capture booked');
@jwts = (@jwts, map { $_->{accessToken} } @{ $sim->tokens->{tokens} // [] });

# A successful answer that echoes the bearer token and the request, with a
# card number as text and as a number (fault mode echo_answer): the answer
# is kept (the order and its key are recorded) but what must never be
# stored is taken out of what ff_evaluate() returns and of
# orders.last_response, both readable by a role with the README's grants
# (it was stored as it came)
sq("GRANT EXECUTE ON FUNCTION flexfactor.ff_evaluate(jsonb) TO sec_app; GRANT SELECT ON flexfactor.orders TO sec_app");
my $echo_body = sq("SELECT flexfactor.ff_decline('SEC-ECHO', 1503, 'USD', 'tok-sececho', 'tx-sececho', "
	  . ff_decline_args() . ")");
$sim->fault(endpoint => '/v1/evaluate', mode => 'echo_answer');
my $answer = $node->safe_psql('ffdb', "SET ROLE sec_app; SELECT flexfactor.ff_evaluate(\$b\$$echo_body\$b\$)");
$sim->clear_faults;
my $stored = $node->safe_psql('ffdb', "SET ROLE sec_app; SELECT order_session_key || ' ' || last_response::text
    FROM flexfactor.orders WHERE order_id = 'SEC-ECHO'");
my $echo_osk = FFSim->decode_json($answer)->{orderSessionKey} // '';
like($echo_osk, qr/^[0-9a-f]{8}-/, 'echo_answer: the answer is kept (its orderSessionKey)');
like($stored, qr/^\Q$echo_osk\E /, 'echo_answer: the order is recorded with its key');
like($answer, qr/"authorization": "Bearer \[token removed\]"/, 'echo_answer: the echoed bearer token is taken out');
@jwts = (@jwts, map { $_->{accessToken} } @{ $sim->tokens->{tokens} // [] });
for my $where ([ 'what ff_evaluate returned', $answer ], [ 'orders.last_response', $stored ])
{
	my ($what, $text) = @$where;
	is(scalar(grep { index($text, $_) >= 0 } @jwts), 0, "echo_answer: no bearer token in $what");
	unlike($text, qr/4111 ?1111 ?1111 ?1111/, "echo_answer: no card number in $what");
}

# what the server wrote, less the test's own statements that log_statement echoes
my $log = join "\n", grep { !/LOG:  statement:|STATEMENT:|^\s/ } split /\n/, ff_log_since($node, $log0);
for my $where ([ 'the errors the client saw', $seen ], [ 'transmit_queue.last_error', $last_error ],
	[ 'the server log', $log ])
{
	my ($what, $text) = @$where;
	unlike($text, qr/\Q$secret\E/, "echo: no app secret in $what");
	unlike($text, qr/\Q$tokkey\E/, "echo: no tokenization key in $what");
	is(scalar(grep { index($text, $_) >= 0 } @jwts), 0, "echo: no bearer token in $what");
	unlike($text, qr/eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}/, "echo: nothing shaped like a JWT in $what");
	unlike($text, qr/\d{12}/, "echo: no run of 12 digits in $what");
}

# ===================================================== 13.12: invalid UTF-8
$sim->fault(endpoint => '/v1/orders/*', mode => 'badutf8');
my $orders_before = sq("SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM flexfactor.orders o");
$e = err("SELECT flexfactor.ff_order('$osk')");
is($e->{sqlstate}, 'FF009', 'an API answer that is not UTF-8: fails cleanly with FF009');
is(sq("SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM flexfactor.orders o"), $orders_before,
	'not UTF-8: the order is unchanged');
$sim->clear_faults;
for my $table (qw(orders transmit_queue webhook_rejections webhook_events))
{
	my ($ret, $out, $err) = $node->psql('ffdb', "COPY flexfactor.$table TO STDOUT");
	is($ret, 0, "not UTF-8: COPY flexfactor.$table TO STDOUT succeeds") or diag $err;
}

# ============================================ 13.10: the bearer token's server
sq("SELECT flexfactor.ff_order('$osk')");    # a token from the first server
my $first = [ map { $_->{accessToken} } @{ $sim->tokens->{tokens} // [] } ];
my $issued1 = $sim->token_count;
$node->append_conf('postgresql.conf', "flexfactor.api_url = '" . $sim2->url . "'\n");
$node->reload;
$node->poll_query_until('ffdb', "SELECT current_setting('flexfactor.api_url') = '" . $sim2->url . "'");
$e = err("SELECT flexfactor.ff_order('$osk')");    # unknown there: 404, but after a token
is($sim2->token_count, 1, 'new api_url: the second server issued its own token');
my @auths = map { $_->{headers}{Authorization} // $_->{headers}{authorization} // '' }
  @{ $sim2->requests() };
is(scalar(grep { my $a = $_; grep { index($a, $_) >= 0 } @$first } @auths), 0,
	"new api_url: the second server never received the first one's token");
is($sim->token_count, $issued1, 'new api_url: the first server was not asked again');

# an absurd `expires`
for my $expires ('1e999', '9223372036854775807')
{
	$sim2->config({ tokenExpires => $expires });
	$sim2->revoke_tokens;
	sq("SELECT pg_reload_conf()");
	my ($ret, $out, $stderr) = $node->psql('ffdb', "SELECT flexfactor.ff_order('$osk')");
	my $status = sq("SELECT has_token || ' ' || (expires_at <= now() + interval '10 minutes 5 seconds')
	                   FROM flexfactor.ff_token_status()");
	is($status, 'true true', "expires $expires: the token is trusted for at most 10 minutes")
	  or diag $stderr;
}

# an `expires` already past (0, or seconds where milliseconds are meant): the
# token is kept, not fetched again for every request
for my $expires ('0', '1712237948')
{
	$sim2->config({ tokenExpires => $expires });
	$sim2->revoke_tokens;
	my $before = $sim2->token_count;
	$node->psql('ffdb', "SELECT flexfactor.ff_order('$osk')") for 1 .. 3;
	is($sim2->token_count - $before, 1, "expires $expires: one token fetched for three calls");
	is(sq("SELECT has_token || ' ' || (expires_at > now() + interval '9 minutes')
	         FROM flexfactor.ff_token_status()"),
		'true true', "expires $expires: the token is kept for the documented 10 minutes");
}
$sim2->config({ tokenExpires => '' });

done_testing();
