# The webhook listener's group commit: deliveries that arrive together are
# taken in one transaction, each in a subtransaction of its own, and
# answered after the one commit.
#
# A group is made deterministic: the listener is held inside the
# transaction of one delivery (its order row locked by the test) while 24
# more arrive on connections it has already accepted; when the lock goes,
# those 24 are taken as the next group.  In it, a replayed nonce (of a
# delivery earlier in the same group), malformed JSON, a wrong signature and
# a delivery whose application fails (a trigger of the test) each get their
# own status, while the others are committed and answered 200, with rows =
# 2xx answers and all in one transaction.  A group whose commit fails (a
# deferred trigger of the test raises at commit) is answered 503 throughout
# and leaves nothing behind; the same deliveries sent again without the
# poisoned one are taken.  A delivery on an idle listener does not wait for
# a group to fill.
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
my $host = "127.0.0.1:$wport";

my $node = ff_node('webhooks033',
	'flexfactor.database' => 'ffdb',
	'flexfactor.batch_interval' => '0',
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $key);
ff_start_serving($node, 'ffdb');
FFSim::wait_for_listener($node, $wport);

sub sq { $node->safe_psql('ffdb', $_[0]) }

# orders waiting for their rescue, order id => FlexFactor order id
my %osk = map { split /\|/ } split /\n/, sq(q{
	INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents,
	                               currency, status)
	SELECT o, gen_random_uuid(), gen_random_uuid(), 'batch', 1503, 'USD', 'SUBMITTED'
	  FROM unnest(ARRAY['G-BAD', 'L-1', 'L-2', 'L-3']
	              || ARRAY(SELECT 'G-' || i FROM generate_series(1, 30) i)) o
	RETURNING order_id || '|' || order_session_key});

# a delivery whose application fails: the test's trigger refuses G-BAD's change
sq(q{
	CREATE FUNCTION public.refuse_g_bad() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.order_id = 'G-BAD' THEN
			RAISE EXCEPTION 'test: G-BAD cannot change';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_g_bad BEFORE UPDATE ON flexfactor.orders
		FOR EACH ROW EXECUTE FUNCTION public.refuse_g_bad();
});

# An HTTP request for a signed order.completed (or %o{body}); returns the
# request text and its nonce.
sub delivery
{
	my ($order, %o) = @_;
	my $body = $o{body} // FFSim::webhook_body(Event => 'order.completed', OrderId => $osk{$order},
		ExternalOrderId => $order, ConfirmationId => $o{confirmation} // 'C0FFEE01');
	my $nonce = $o{nonce} // FFSim::webhook_nonce();
	my @h = FFSim::webhook_headers($o{key} // $key, $nonce, FFSim::http_date(time), $host, $body);
	my $req = "POST $path HTTP/1.1\r\nHost: $host\r\n";
	while (my ($k, $v) = splice(@h, 0, 2)) { $req .= "$k: $v\r\n"; }
	$req .= 'Content-Length: ' . length($body) . "\r\nConnection: close\r\n\r\n" . $body;
	return { request => $req, nonce => $nonce, order => $order };
}

sub connect_listener
{
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wport, Proto => 'tcp', Timeout => 5)
	  or die "connect: $!";
	return $s;
}

# the answer on $sock (the listener closes after it): "status body"
sub answer
{
	my ($sock) = @_;
	my $raw = '';
	my $sel = IO::Select->new($sock);
	my $deadline = Time::HiRes::time() + 30;
	while (Time::HiRes::time() < $deadline && $sel->can_read($deadline - Time::HiRes::time()))
	{
		my $n = sysread($sock, my $buf, 65536);
		last unless $n;
		$raw .= $buf;
	}
	close $sock;
	return $raw =~ m{^HTTP/1\.[01] (\d{3})[^\r\n]*\r\n.*?\r\n\r\n(.*)\z}s ? "$1 $2" : 'no answer';
}

sub listener_waits_for_lock
{
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'flexfactor webhook listener'
		    AND wait_event_type = 'Lock'");
}

# Send @deliveries so that the listener takes them as one group: their
# connections are opened (and accepted) first; the listener is then held in
# the transaction of a delivery for $lock_order while they are all sent.
# Returns the held delivery's answer and theirs, in order.
sub in_one_group
{
	my ($lock_order, @deliveries) = @_;
	my @socks = map { connect_listener() } @deliveries;
	Time::HiRes::sleep(0.3);    # the idle listener accepts them
	my $hold = $node->background_psql('ffdb');
	$hold->query_safe("BEGIN; SELECT 1 FROM flexfactor.orders WHERE order_id = '$lock_order' FOR UPDATE");
	my $held = connect_listener();
	syswrite($held, delivery($lock_order)->{request});
	ok(listener_waits_for_lock(), "group: the listener is inside the transaction of $lock_order\'s delivery");
	syswrite($socks[$_], $deliveries[$_]{request}) for 0 .. $#socks;
	Time::HiRes::sleep(0.5);    # every request is in the listener's socket buffers
	$hold->query_safe('COMMIT');
	$hold->quit;
	return (answer($held), map { answer($_) } @socks);
}

sub nonces_stored
{
	my ($nonces) = @_;
	return sq("SELECT count(*) FROM flexfactor.webhook_events
	            WHERE nonce IN (" . join(',', map { "'$_'" } @$nonces) . ')');
}

# ====================== one group, four bad deliveries among twenty good ones
my $first = delivery('G-1');
my @group = (
	[ $first, '200 applied' ],
	(map { [ delivery("G-$_"), '200 applied' ] } 2 .. 8),
	[ delivery('G-9', nonce => $first->{nonce}), '401 unauthorized' ],    # replays G-1's nonce
	(map { [ delivery("G-$_"), '200 applied' ] } 10 .. 13),
	[ delivery('G-14', body => '{"Event":"order.completed","OrderId":'), '400 bad request' ],
	(map { [ delivery("G-$_"), '200 applied' ] } 15 .. 18),
	[ delivery('G-BAD'), '503 try again later' ],
	[ delivery('G-19', key => 'c2VjcmV0LWJ1dC1ub3QtdGhlLXN1YnNjcmliZXIta2V5LW9mLXRoaXM='), '401 unauthorized' ],
	(map { [ delivery("G-$_"), '200 applied' ] } 20 .. 22),
	[ delivery('G-1', confirmation => 'C0FFEE01'), '200 duplicate' ],    # G-1's event again, new nonce
);
my $log_offset = -s $node->logfile;
my $rej = sq('SELECT coalesce(max(id), 0) FROM flexfactor.webhook_rejections');
my ($held, @answers) = in_one_group('L-1', map { $_->[0] } @group);
is($held, '200 applied', 'group: the held delivery (L-1) is answered once its lock is released');
is_deeply(\@answers, [ map { $_->[1] } @group ],
	'group: each of the 24 deliveries has its own answer: 20 stored (200), a replayed nonce and a wrong '
	  . 'signature 401, malformed JSON 400, a failed application 503');
my @ok = map { $group[$_][0]{nonce} } grep { $answers[$_] =~ /^2/ } 0 .. $#group;
my @all = map { $_->[0]{nonce} } @group;
is(nonces_stored(\@all), scalar @ok, 'group: rows in webhook_events = 2xx answers (' . scalar(@ok) . ')');
is(nonces_stored(\@ok), scalar @ok, 'group: each delivery answered 200 has its row (by nonce)');
is(sq("SELECT count(DISTINCT received_at) || ' ' || count(DISTINCT xmin::text) FROM flexfactor.webhook_events
        WHERE nonce IN (" . join(',', map { "'$_'" } @ok) . ')'), '1 20',
	'group: all 20 stored in one transaction (one received_at), each in a subtransaction of its own (20 xids)');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders
        WHERE status <> 'APPROVED'"),
	'G-14 SUBMITTED, G-19 SUBMITTED, G-23 SUBMITTED, G-24 SUBMITTED, G-25 SUBMITTED, G-26 SUBMITTED, '
	  . 'G-27 SUBMITTED, G-28 SUBMITTED, G-29 SUBMITTED, G-30 SUBMITTED, G-9 SUBMITTED, G-BAD SUBMITTED, '
	  . 'L-2 SUBMITTED, L-3 SUBMITTED',
	'group: the orders of the refused deliveries are unchanged, the others APPROVED');
is(sq("SELECT count(*) FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
        WHERE o.order_id = 'G-BAD' AND e.new_status <> 'SUBMITTED'"), '0',
	'group: the failed application recorded no change of G-BAD');
is(sq("SELECT string_agg(http_status::text, ',' ORDER BY id) FROM flexfactor.webhook_rejections WHERE id > $rej"),
	'401,401,400', 'group: the three 4xx are recorded in webhook_rejections (the wrong signature first, '
	  . 'refused before the group\'s transaction began); the 503 is not');
is(sq("SELECT count(DISTINCT received_at) FROM flexfactor.webhook_rejections WHERE id > $rej AND http_status = 400
          OR id > $rej AND reason ~ 'nonce'"), '1',
	'group: the replay and the malformed body are recorded in the group\'s transaction');
like(sq("SELECT string_agg(reason, ' | ' ORDER BY id) FROM flexfactor.webhook_rejections WHERE id > $rej"),
	qr/signatures do not match.* \| .*nonce.* \| .*not a JSON object/,
	'group: with their reasons');
ok(ff_log_contains($node, qr/refused a delivery with HTTP 503: test: G-BAD cannot change/, $log_offset),
	"group: the failed application's error is in the server log");

# ============== a commit that fails: the whole group 503, nothing half-stored
sq(q{
	CREATE FUNCTION public.fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.external_order_id = 'G-25' THEN
			RAISE EXCEPTION 'test: G-25 cannot be committed';
		END IF;
		RETURN NULL;
	END $$;
	CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON flexfactor.webhook_events
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.fail_at_commit();
});
$rej = sq('SELECT max(id) FROM flexfactor.webhook_rejections');
my @doomed = (delivery('G-23'), delivery('G-24', body => '[1,2,3]'), delivery('G-25'), delivery('G-26'));
$log_offset = -s $node->logfile;
($held, @answers) = in_one_group('L-2', @doomed);
is($held, '200 applied', 'commit fails: the held delivery (L-2, a group of its own) is taken');
is(join(', ', @answers), join(', ', ('503 try again later') x 4),
	'commit fails: every delivery of the group is answered 503, the malformed one too');
is(nonces_stored([ map { $_->{nonce} } @doomed ]), '0', 'commit fails: none of them left a row');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders
        WHERE order_id IN ('G-23', 'G-25', 'G-26')"), 'G-23 SUBMITTED, G-25 SUBMITTED, G-26 SUBMITTED',
	'commit fails: and changed no order');
is(sq("SELECT count(*) FROM flexfactor.webhook_rejections WHERE id > $rej"), '0',
	'commit fails: not even the malformed one is recorded (its record was in the same transaction)');
ok(ff_log_contains($node, qr/could not commit 4 deliveries: test: G-25 cannot be committed/, $log_offset),
	'commit fails: the server log says why');
($held, @answers) = in_one_group('L-3', delivery('G-23'), delivery('G-26'));
is(join(', ', @answers), '200 applied, 200 applied',
	'commit fails: delivered again without the poisoned one, the others are taken');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders
        WHERE order_id IN ('G-23', 'G-25', 'G-26')"), 'G-23 APPROVED, G-25 SUBMITTED, G-26 APPROVED',
	'commit fails: G-23 and G-26 APPROVED now');

# ============================= an idle listener answers a single delivery at once
my @elapsed;
for my $i (27 .. 30)
{
	my $r = FFSim::post_webhook(port => $wport, body => FFSim::webhook_body(Event => 'order.completed',
			OrderId => $osk{"G-$i"}, ExternalOrderId => "G-$i"));
	push @elapsed, $r->{status} == 200 ? $r->{elapsed} : 99;
}
@elapsed = sort { $a <=> $b } @elapsed;
cmp_ok($elapsed[1], '<', 0.5,
	sprintf('idle: a single delivery is answered without waiting for a group (%s s)',
		join(', ', map { sprintf '%.3f', $_ } @elapsed)));
is(sq("SELECT count(*) FROM flexfactor.orders WHERE status = 'APPROVED'"), '28',
	'end: 28 orders APPROVED (L-1..L-3, G-1..G-30 but G-9, G-14, G-19, G-24, G-25; not G-BAD)');
is(sq("SELECT count(*) FROM flexfactor.webhook_events WHERE apply_state NOT IN ('applied', 'duplicate')"), '0',
	'end: every stored event applied');

$node->stop;
done_testing();
