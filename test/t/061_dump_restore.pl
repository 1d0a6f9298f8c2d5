# Nothing lost in a backup: pg_dump of a billing database carries every
# flexfactor table (pg_extension_config_dump) and the position of each
# identity sequence, and a restore into a fresh cluster gives back the same
# rows without the extension's triggers acting on them.
#
# Node A holds state in every table: orders in several states, captures,
# refunds, queued declines (batched, rejected, still pending), an evaluate
# batch answered by its result file, one uploaded and waiting for its
# answer, a transmit batch still to upload, a refused result file, webhook
# events with their nonces (applied, waiting, not applicable), rejections,
# order events with the billing callback's record.  It is dumped (custom
# format) and restored with `pg_restore --single-transaction` into node B,
# as docs/operations.md says; B's worker serves another database during the
# restore, then is pointed at the restored one with a real SFTP server: it
# uploads the batch that was still to upload and nothing that was
# delivered, the declines pending at the dump and those queued on B once
# each, although A's transaction ids run ahead of B's.  Then A goes through
# pg_upgrade into node C: the queue goes on there too.
use strict;
use warnings;
use Digest::SHA ();
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d';
my $key = $FFSim::WEBHOOK_TEST_KEY;
my $tmp = PostgreSQL::Test::Utils::tempdir('ffdump061');
my %common = (
	'flexfactor.mid' => $mid,
	'flexfactor.webhook_key' => $key,
	'flexfactor.on_order_status' => 'billing.on_flexfactor');

# ---------------------------------------------------------------- node A
# its worker serves the database postgres: nothing changes ffdb behind the test
my $na = ff_node('dumpA', %common);
$na->start;
$na->safe_psql('postgres', 'CREATE DATABASE ffdb');
sub qa { $na->safe_psql('ffdb', $_[0]) }

qa(q{CREATE EXTENSION flexfactor;
     CREATE SCHEMA billing;
     CREATE TABLE billing.calls (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                 order_id text, status text);
     CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql
         AS $$ INSERT INTO billing.calls (order_id, status) VALUES (o.order_id, o.status) $$;});

# A's transaction ids run ahead of B's: the declines queued on B after the
# restore have lower ids than those restored (queue positions lead with the
# installation's era, not the transaction id)
$na->safe_psql('ffdb', 'DO $$ BEGIN FOR i IN 1..1000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$');

# queues $n complete declines "$prefix-1".."$prefix-$n" in one transaction
sub enqueue_declines
{
	my ($node, $prefix, $n) = @_;
	$node->safe_psql('ffdb', "SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
	      '$prefix-' || i, 1000 + i, 'USD', 'tok-' || i, 'tx-' || i,
	      email => 'c' || i || '\@example.com', expiry => now() + interval '14 days',
	      declined_at => '2026-01-01Z', subscription_id => 'sub-' || i, subscription_interval => 'monthly',
	      first_name => 'Ann', last_name => 'Lee', address_line1 => '1 Main St', city => 'Springfield',
	      state => 'IL', zip_code => '62701', country_code => 'US')))
	    FROM generate_series(1, $n) i");
}

# six declines; the first three become an evaluate batch, answered
enqueue_declines($na, 'DEC', 6);
my $b1 = qa('SELECT flexfactor._create_evaluate_batch(3)');
sub mark_uploaded
{
	my ($batch) = @_;
	qa("UPDATE flexfactor.batches b SET state = 'uploaded', attempts = 1, uploaded_at = now(),
	           byte_count = octet_length(f.bytes), sha256 = encode(sha256(f.bytes), 'hex')
	      FROM (SELECT convert_to(string_agg(line || E'\\n', '' ORDER BY sequence_number), 'UTF8') AS bytes
	              FROM flexfactor.batch_file_lines($batch)) f
	     WHERE b.id = $batch");
}
mark_uploaded($b1);
my $b1name = qa("SELECT file_name FROM flexfactor.batches WHERE id = $b1");
(my $b1result = $b1name) =~ s/\.jsonl$/.result.jsonl/;
my $result = join "\n",
  '{"sequenceNumber": 1, "orderId": "DEC-1", "orderSessionKey": "d0000000-0000-4000-8000-000000000001", "status": "SUBMITTED"}',
  '{"sequenceNumber": 2, "orderId": "DEC-2", "orderSessionKey": "d0000000-0000-4000-8000-000000000002", "status": "SUBMITTED"}',
  '{"sequenceNumber": 3, "orderId": "DEC-3", "status": "REJECTED", "errors": [{"item1": "bad token", "item2": "E1"}]}';
like(qa("SELECT flexfactor._apply_result_file('$b1result', \$r\$$result\$r\$)"), qr/^applied 3 lines/,
	"A: the result file of batch $b1 is applied");

# the fourth decline in a batch uploaded and not answered yet; two still pending
my $b2 = qa('SELECT flexfactor._create_evaluate_batch(1)');
mark_uploaded($b2);
my $b2name = qa("SELECT file_name FROM flexfactor.batches WHERE id = $b2");

# transmit copies: two in a batch still to upload, one delivered by the API path
qa(q{SELECT flexfactor.ff_transmit(flexfactor.ff_payment('PAY-' || i, 1000 + i, 'USD', 'ch-' || i,
        email => 'p' || i || '@example.com', paid_at => '2026-01-01Z', card_bin => '411111',
        card_last4 => '1111', subscription_id => 'sub-' || i, subscription_interval => 'monthly',
        holder_name => 'Ann Lee', card_type => 'credit', card_brand => 'visa', card_country => 'US',
        expiration_month => 12, expiration_year => 2030))
       FROM generate_series(1, 3) i});
my $b3 = qa('SELECT flexfactor._create_transmit_batch(2)');
my $b3name = qa("SELECT file_name FROM flexfactor.batches WHERE id = $b3");
qa(q{UPDATE flexfactor.transmit_queue SET state = 'delivered', delivered_at = now(), attempts = 1,
            transmit_id = 'tr-3' WHERE state = 'pending'});

# orders of the API path: pending, captured and partly refunded, approved
qa(q{INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source, amount_cents, currency, status)
     VALUES ('API-1', NULL, gen_random_uuid(), 'api', 1500, 'USD', 'PENDING'),
            ('API-2', 'a0000000-0000-4000-8000-000000000002', gen_random_uuid(), 'api', 2500, 'EUR', 'CAPTUREREQUIRED'),
            ('API-3', 'a0000000-0000-4000-8000-000000000003', gen_random_uuid(), 'api', 3500, 'USD', 'SUBMITTED');
     INSERT INTO flexfactor.captures (order_ref, amount_cents, idempotency_key, response)
     SELECT id, 2000, gen_random_uuid(), '{"success": true}' FROM flexfactor.orders WHERE order_id = 'API-2';
     UPDATE flexfactor.orders SET status = 'APPROVED' WHERE order_id = 'API-2';
     INSERT INTO flexfactor.refunds (order_ref, amount_cents, idempotency_key, transaction_id, response)
     SELECT id, 500, gen_random_uuid(), 'rf-1', '{"success": true}' FROM flexfactor.orders WHERE order_id = 'API-2';
     UPDATE flexfactor.orders SET refunded_cents = 500, status = 'REFUNDED' WHERE order_id = 'API-2';});

# webhook deliveries through the SQL path (verified as the listener does)
my $nonce_n = 0;
sub ingest
{
	my ($node, $nonce, %f) = @_;
	my $body = FFSim::webhook_body(%f);
	my %h = FFSim::webhook_headers($key, $nonce, FFSim::http_date(), 'billing.example.com', $body);
	$h{host} = 'billing.example.com';
	my $headers = FFSim->encode_json(\%h);
	return ff_run_sql($node, 'ffdb',
		"SELECT flexfactor.ff_ingest_webhook(\$h\$$headers\$h\$, \$nb\$$body\$nb\$)");
}
my @nonces = map { FFSim::webhook_nonce() } 1 .. 5;
my @deliveries = (
	[ $nonces[0], Event => 'order.completed', OrderId => 'd0000000-0000-4000-8000-000000000001',
		ExternalOrderId => 'DEC-1' ],
	[ $nonces[1], Event => 'order.completed', OrderId => 'a0000000-0000-4000-8000-000000000003',
		ExternalOrderId => 'API-3', ConfirmationId => 'C3' ],
	[ $nonces[2], Event => 'order.refunded', OrderId => 'a0000000-0000-4000-8000-000000000003',
		ExternalOrderId => 'API-3', ConfirmationId => 'R3',
		EventData => { amount => 10.00, refundTransactionId => 'rt-3' } ],
	[ $nonces[3], Event => 'order.completed', OrderId => 'e0000000-0000-4000-8000-00000000000e',
		ExternalOrderId => 'LATER-1' ],
	[ $nonces[4], Event => 'payout.created', OrderId => undef, ExternalOrderId => undef,
		EventData => { amount => 12.34 } ]);
my @expect = qw(applied applied applied waiting_order not_applicable);
for my $i (0 .. $#deliveries)
{
	my $r = ingest($na, @{ $deliveries[$i] });
	is($r->{stdout}, $expect[$i], "A: webhook $i ($deliveries[$i][2]) is $expect[$i]") or diag $r->{stderr};
}
qa(q{INSERT INTO flexfactor.webhook_rejections (remote_addr, http_status, reason)
     VALUES ('127.0.0.1', 401, 'bad signature'), ('127.0.0.1', 400, 'stale x-fc-date')});
# a result file refused by the worker (recorded so that it is not read again)
qa(q{SELECT flexfactor._refuse_result_file('evaluate_x_20260101T000000Z_99.result.jsonl', 123, 1767225600,
        'FF009', 'result file evaluate_x_20260101T000000Z_99.result.jsonl answers no known batch')});
qa(q{INSERT INTO flexfactor.webhook_refusal_counts (minute, reason, http_status, refusals)
     VALUES (date_trunc('minute', now()), 'bad signature', 401, 3)});

# ------------------------------------------------- everything is registered
my @tables = split /\n/, qa(q{SELECT c.relname FROM pg_class c
     WHERE c.relnamespace = 'flexfactor'::regnamespace AND c.relkind = 'r' ORDER BY 1});
is(qa(q{SELECT coalesce(string_agg(c.oid::regclass::text, ', '), 'none')
          FROM pg_class c, pg_extension x
         WHERE x.extname = 'flexfactor' AND c.relnamespace = 'flexfactor'::regnamespace
           AND c.relkind IN ('r', 'S') AND c.oid <> ALL (x.extconfig)}), 'none',
	'every table of schema flexfactor, and every sequence, is registered with pg_extension_config_dump');
cmp_ok(scalar @tables, '>=', 11, scalar(@tables) . ' tables');

# the state of a database: each table's rows (text of the row, in key order),
# each sequence's position, the billing callback's record
sub state_of
{
	my ($node) = @_;
	my %s;
	for my $t (@tables)
	{
		$s{$t} = $node->safe_psql('ffdb',
			"SELECT count(*) || E'\\n' || coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')
			   FROM flexfactor.$t t");
	}
	$s{'(sequences)'} = $node->safe_psql('ffdb', q{SELECT string_agg(sequencename || ' ' || last_value, ', ' ORDER BY 1)
	    FROM pg_sequences WHERE schemaname = 'flexfactor'});
	$s{'(billing.calls)'} = $node->safe_psql('ffdb', 'SELECT string_agg(c::text, E\'\n\' ORDER BY id) FROM billing.calls c');
	return \%s;
}
my $before = state_of($na);
for my $t (@tables)
{
	my ($n) = split /\n/, $before->{$t};
	cmp_ok($n, '>', 0, "A: flexfactor.$t holds $n rows");
}
like($before->{'(billing.calls)'}, qr/APPROVED/, 'A: the billing callback ran');

# ------------------------------------------------------------------ dump
my $dump = "$tmp/ffdb.dump";
my ($stdout, $stderr);
ok(IPC::Run::run([ 'pg_dump', '-Fc', '-f', $dump, '-d', $na->connstr('ffdb') ], '>', \$stdout, '2>', \$stderr),
	'pg_dump -Fc of A') or diag $stderr;

# ---------------------------------------------------------------- node B
my $sshd = FFSshd->start("$tmp/sshd");
my ($inbound, $outbound) = ("$tmp/inbound", "$tmp/outbound");
mkdir $_ or die "mkdir $_: $!" for $inbound, $outbound;
my $nb = ff_node('dumpB', %common, 'flexfactor.batch_interval' => '0',
	$sshd->node_settings(inbound => $inbound, outbound => $outbound));
$nb->start;
$nb->safe_psql('postgres', 'CREATE DATABASE ffdb');
sub qb { $nb->safe_psql('ffdb', $_[0]) }

ok(IPC::Run::run([ 'pg_restore', '--single-transaction', '--exit-on-error', '-d', $nb->connstr('ffdb'), $dump ],
		'>', \$stdout, '2>', \$stderr),
	'pg_restore --single-transaction into a fresh cluster') or diag $stderr;

my $after = state_of($nb);
for my $k (sort keys %$before)
{
	is($after->{$k}, $before->{$k}, "B: $k identical after the restore");
}

# new rows continue after the restored ids
for my $t (grep { !/^(batch_lines|result_files|refused_result_files|webhook_refusal_counts)$/ } @tables)
{
	is(qb("SELECT nextval(pg_get_serial_sequence('flexfactor.$t', 'id')) > max(id) FROM flexfactor.$t"), 't',
		"B: the next id of flexfactor.$t comes after the restored ones");
}
my $max_order = qb('SELECT max(id) FROM flexfactor.orders');
cmp_ok(qb(q{INSERT INTO flexfactor.orders (order_id, idempotency_key, source, amount_cents, currency, status)
        VALUES ('NEW-1', gen_random_uuid(), 'api', 100, 'USD', 'SUBMITTED') RETURNING id}), '>', $max_order,
	'B: a new order takes a new id');
is(qb(q{SELECT count(*) FROM flexfactor.order_events e JOIN flexfactor.orders o ON o.id = e.order_ref
         WHERE o.order_id = 'NEW-1'}), '1', 'B: and its status change is logged (the triggers act on new rows)');

# replayed nonces are still refused; a fresh one is taken
for my $i (0, 4)
{
	my $r = ingest($nb, @{ $deliveries[$i] });
	like($r->{stderr}, qr/FF042: webhook delivery refused: its nonce was already used/,
		"B: webhook $i replayed with its stored nonce is refused");
}
is(qb('SELECT count(*) FROM flexfactor.webhook_events'), '5', 'B: nothing stored for the replays');
my $fresh = ingest($nb, FFSim::webhook_nonce(), Event => 'order.completed',
	OrderId => 'd0000000-0000-4000-8000-000000000002', ExternalOrderId => 'DEC-2');
is($fresh->{stdout}, 'applied', 'B: a new delivery is applied') or diag $fresh->{stderr};

# a decline queued on B before its worker ever looks at the restored queue
# (its transaction id is far below those of A's rows)
enqueue_declines($nb, 'DECB', 1);
is(qb("SELECT enqueue_xid < (SELECT max(enqueue_xid) FROM flexfactor.declines WHERE order_id LIKE 'DEC-%')
         FROM flexfactor.declines WHERE order_id = 'DECB-1'"), 't',
	"B: a decline queued after the restore has a transaction id below A's (A's ids run ahead)");
is(qb("SELECT count(DISTINCT enqueue_era) FROM flexfactor.declines"), '2',
	'B: restored declines keep their era, a new one takes B\'s');
cmp_ok(qb("SELECT max(enqueue_era) FROM flexfactor.declines WHERE order_id LIKE 'DEC-%'"), '<',
	qb('SELECT flexfactor._queue_era()'), "B: A's era is before B's");

# ---------------------------------------- B's worker on the restored data
$nb->append_conf('postgresql.conf', "flexfactor.database = 'ffdb'\n");
$nb->restart;
ff_wait_for_worker($nb, 'ffdb');
my $delivered = qb("SELECT string_agg(b::text, E'\\n' ORDER BY id) FROM flexfactor.batches b WHERE id IN ($b1, $b2)");
my $n = qb('SELECT flexfactor.ff_export_batch()');
is($n, 3, "B: an export pass uploads 3 files: the transmit batch still to upload, "
	  . "the declines pending at the dump, the one queued after the restore");

# the evaluate lines uploaded by B, by orderId
sub uploaded_orders
{
	my %seen;
	opendir(my $dh, $inbound) or die "opendir $inbound: $!";
	for my $f (grep { /^evaluate_.*\.jsonl$/ } readdir $dh)
	{
		$seen{ FFSim->decode_json($_)->{orderId} }++ for split /\n/, slurp_file("$inbound/$f");
	}
	closedir $dh;
	return join ', ', map { "$_ x$seen{$_}" } sort keys %seen;
}
opendir(my $dh, $inbound) or die "opendir $inbound: $!";
my @files = sort grep { !/^\./ } readdir $dh;
closedir $dh;
ok((grep { $_ eq $b3name } @files), "B: the transmit batch still to upload ($b3name) is uploaded");
is(Digest::SHA::sha256_hex(slurp_file("$inbound/$b3name")), qb("SELECT sha256 FROM flexfactor.batches WHERE id = $b3"),
	'B: its SHA-256 is recorded');
ok(!(grep { $_ eq $b1name || $_ eq $b2name } @files),
	'B: the answered and the uploaded batches are not uploaded again') or diag "inbound: @files";
is(qb("SELECT string_agg(b::text, E'\\n' ORDER BY id) FROM flexfactor.batches b WHERE id IN ($b1, $b2)"), $delivered,
	'B: the delivered batches are unchanged');
is(uploaded_orders(), 'DEC-5 x1, DEC-6 x1, DECB-1 x1',
	'B: the declines pending at the dump, and the one queued after the restore, are uploaded once each');
is(qb(q{SELECT string_agg(order_id || ' ' || state, ', ' ORDER BY order_id) FROM flexfactor.decline_status
         WHERE order_id LIKE 'DEC%'}),
	'DEC-1 batched, DEC-2 batched, DEC-3 set_aside, DEC-4 batched, DEC-5 batched, DEC-6 batched, DECB-1 batched',
	'B: every decline is batched (or set aside by its answer)');
is(qb(q{SELECT count(DISTINCT batch_id) FROM flexfactor.decline_status WHERE order_id IN ('DEC-5', 'DEC-6', 'DECB-1')}),
	'2', "B: A's pending declines and B's new one leave in two batches (a batch never spans two eras)");

# later declines on B leave too, and nothing leaves twice
enqueue_declines($nb, 'DECB2', 2);
is(qb('SELECT flexfactor.ff_export_batch()'), '1', 'B: a later decline leaves in the next pass');
is(qb('SELECT flexfactor.ff_export_batch()'), '0', 'B: and then nothing is left to upload');
is(uploaded_orders(), 'DEC-5 x1, DEC-6 x1, DECB-1 x1, DECB2-1 x1, DECB2-2 x1',
	'B: each decline uploaded once');

# ------------------------------------------------ pg_upgrade of A (same major version)
# pg_upgrade keeps the catalog (the era of the installation) and the
# transaction counter: the queue goes on where it was, and A's pending
# declines and new ones leave once each.
my ($inbound_c, $outbound_c) = ("$tmp/inbound_c", "$tmp/outbound_c");
mkdir $_ or die "mkdir $_: $!" for $inbound_c, $outbound_c;
my $era_a = qa('SELECT flexfactor._queue_era()');
my $xid_a = qa('SELECT pg_current_xact_id()');
$na->stop;
# the new cluster's worker serves postgres while pg_upgrade works
my $nc = ff_node('upgC', %common, 'flexfactor.batch_interval' => '0',
	$sshd->node_settings(inbound => $inbound_c, outbound => $outbound_c));
my $bindir = $nc->config_data('--bindir');
ok(IPC::Run::run([ 'pg_upgrade', '--no-sync', '-b', $bindir, '-B', $bindir,
			'-d', $na->data_dir, '-D', $nc->data_dir, '-p', $na->port, '-P', $nc->port,
			'-s', $na->host ],
		'>', \$stdout, '2>', \$stderr, init => sub { chdir $tmp }),
	'pg_upgrade of A into C') or diag "$stdout\n$stderr";
$nc->append_conf('postgresql.conf', "flexfactor.database = 'ffdb'\n");
$nc->start;
ff_wait_for_worker($nc, 'ffdb');
sub qc { $nc->safe_psql('ffdb', $_[0]) }
is(qc('SELECT flexfactor._queue_era()'), $era_a, 'C: the era of the installation is kept');
cmp_ok(qc('SELECT pg_current_xact_id()::text::numeric'), '>', $xid_a, 'C: transaction ids go on after A\'s');
enqueue_declines($nc, 'DECC', 1);
$n = qc('SELECT flexfactor.ff_export_batch()');
opendir($dh, $inbound_c) or die "opendir $inbound_c: $!";
my %c_orders;
for my $f (grep { /^evaluate_.*\.jsonl$/ } readdir $dh)
{
	$c_orders{ FFSim->decode_json($_)->{orderId} }++ for split /\n/, slurp_file("$inbound_c/$f");
}
closedir $dh;
is(join(', ', map { "$_ x$c_orders{$_}" } sort keys %c_orders), 'DEC-5 x1, DEC-6 x1, DECC-1 x1',
	"C: A's pending declines and a new one are uploaded once each, in one batch");
is(qc(q{SELECT string_agg(order_id || ' ' || state, ', ' ORDER BY order_id) FROM flexfactor.decline_status
         WHERE order_id IN ('DEC-5', 'DEC-6', 'DECC-1')}), 'DEC-5 batched, DEC-6 batched, DECC-1 batched',
	'C: all three batched');

$sshd->stop;
$nc->stop;
$nb->stop;
done_testing();
