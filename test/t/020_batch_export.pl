# SFTP batch export with ff_export_batch(), against the real OpenSSH server
# (test/sshd/ffsshd) and the FlexFactor simulator reading its inbound folder:
# files carry exactly the queued declines (every field, sequenceNumber 1..N,
# mid, idempotencyKey, token), their bytes match batches.sha256 and the name
# follows docs/batch-format.md; 5,000 declines make files of 2,000, 2,000 and
# 1,000 lines that the simulator accepts, each idempotency key once; the
# trigger exports only committed declined recurring rows; two concurrent
# exports never put a decline in two batches.
#
# The worker serves the test database with batch_interval = 0, so every
# upload here happens because ff_export_batch() asked the worker for a pass
# and waited for it.  Failures (host key, keys, server down, crashes) are in
# 021_batch_faults.pl.
use strict;
use warnings;
use Digest::SHA ();
use Encode ();
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '5b1e7c3a-2f4d-4e6b-9a8c-0d1e2f3a4b5c';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffbatch020');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_020', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);    # files stay until /_admin/scan
my $inbound = $sim->inbound_dir;

my $node = ff_node('export020',
	# the worker serves ffdb but exports only when ff_export_batch() asks
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $inbound, outbound => $sim->outbound_dir));
ff_start_serving($node, 'ffdb', "ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");


sub sq { $node->safe_psql('ffdb', $_[0]) }

sub run_sql { ff_run_sql($node, 'ffdb', $_[0]) }

sub slurp_bytes { FFSim::_slurp_bytes(@_) }
sub cents_sql { FFSim::batch_cents_sql(@_) }
sub check_inbound_files { $sim->check_batch_files($node, 'ffdb', @_) }
sub check_lines_match_declines { $sim->check_lines_match_declines($node, 'ffdb', @_) }
sub check_accepted { $sim->check_accepted(@_) }

sub set_conf { ff_set_conf($node, 'ffdb', @_) }

# ------------------------------------------------------------------
# 1. A few declines: the file, byte for byte and field by field
# ------------------------------------------------------------------
sq(q{SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'INV-1001', 4950, 'usd', 'd3e10716-6aac-4eb8-a74d-c1a3027f1d96', 'gw-7781',
        decline_code => '51', email => 'ana@example.com', expiry => now() + interval '14 days',
        subscription_id => 'SUB-9', declined_at => '2026-11-24 09:30:00+00'))});
sq(q{SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'INV-1002', 2001, 'eur', 'tok-2', 'gw-7782'))});
sq(q{SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'INV-Ünïcødé-€', 3302, 'gbp', 'tok-3', 'gw-7783', email => 'zoë@example.com', is_recurring => false))});
# the same attempt again is not queued twice
sq(q{SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-1002', 2001, 'eur', 'tok-2', 'gw-7782'))});
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE state = 'pending'"), '3', 'three declines queued');
is_deeply($sim->inbound_files, [], 'nothing in inbound before the export');

my $r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{stdout}, '1', 'ff_export_batch() returns 1 (one file uploaded)');
is_deeply($r->{warnings}, [], 'no warning');
my $names = $sim->inbound_files;
is(scalar @$names, 1, 'exactly one file in inbound, no .part left') or diag explain $names;
my $files = check_inbound_files('small batch', $names);
my ($small) = values %$files;
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE state = 'batched' AND batch_id = $small->{batch_id}"),
	'3', 'the three declines are batched in it');
is(sq("SELECT attempts, last_error IS NULL, uploaded_at IS NOT NULL FROM flexfactor.batches WHERE id = $small->{batch_id}"),
	'1|t|t', 'batch: 1 attempt, no error, uploaded_at set');

# every field as enqueued, checked against the values given above
my %by_order = map { ($_->{orderId} => $_) } @{ $small->{lines} };
my $l1 = $by_order{'INV-1001'};
is_deeply($l1, {
		orderId => 'INV-1001', isMIT => JSON::PP::true, isDeclined => JSON::PP::true,
		isRecurring => JSON::PP::true, expiryDateUtc => $l1->{expiryDateUtc},
		transaction => { id => 'gw-7781', amount => 4950, currency => 'USD', responseCode => '51',
			responseStatus => 'DECLINED', timestampUtc => '2026-11-24T09:30:00Z', cardNotPresent => JSON::PP::true },
		paymentMethod => { cardNumber => 'd3e10716-6aac-4eb8-a74d-c1a3027f1d96', token => JSON::PP::true },
		payer => { email => 'ana@example.com' },
		subscription => { subscriptionId => 'SUB-9', price => 4950, currency => 'USD' },
		sequenceNumber => $l1->{sequenceNumber}, mid => $mid,
		idempotencyKey => sq("SELECT flexfactor.ff_attempt_key('evaluate', '$mid', 'INV-1001', 'gw-7781')") },
	'INV-1001: every field as enqueued');
like($l1->{expiryDateUtc}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'expiryDateUtc is an ISO UTC time');
my $l3 = $by_order{ Encode::decode('UTF-8', 'INV-Ünïcødé-€') };
ok($l3, 'the non-ASCII orderId survives as UTF-8');
is($l3 && $l3->{payer}{email}, Encode::decode('UTF-8', 'zoë@example.com'), 'and so does the e-mail');
ok($l3 && JSON::PP::is_bool($l3->{isRecurring}) && !$l3->{isRecurring}, 'isRecurring false is kept');
is_deeply([ map { $_->{orderId} } sort { $a->{sequenceNumber} <=> $b->{sequenceNumber} } @{ $small->{lines} } ],
	[ 'INV-1001', 'INV-1002', Encode::decode('UTF-8', 'INV-Ünïcødé-€') ], 'lines in queue order');
my $small_keys = check_lines_match_declines('small batch', $files, "order_id LIKE 'INV-%'");

# the same bytes through SFTP itself (OpenSSH's client)
{
	my $name = $names->[0];
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[ 'sftp', '-q', '-b', '-', '-i', $sshd->client_key,
		  '-o', 'UserKnownHostsFile=' . $sshd->known_hosts, '-o', 'StrictHostKeyChecking=yes',
		  '-o', 'BatchMode=yes', '-P', $sshd->port, $sshd->user . '@127.0.0.1' ],
		'<', \"get $inbound/$name $tmp/downloaded.jsonl\n", '>', \$out, '2>', \$err,
		IPC::Run::timeout(60));
	ok($ok, 'downloaded the file with sftp') or diag $err;
	is(Digest::SHA::sha256_hex(slurp_bytes("$tmp/downloaded.jsonl")), $small->{sha256},
		'the downloaded file has the recorded SHA-256');
}

check_accepted('small batch', $files, $small_keys);
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'a second export has nothing to send');
is_deeply($sim->inbound_files, [], 'and uploads nothing');

# ------------------------------------------------------------------
# 2. 5,000 declines: files of 2,000, 2,000 and 1,000 lines
# ------------------------------------------------------------------
my $t0 = Time::HiRes::time();
is(sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
           'BULK-' || i, " . cents_sql('i') . ", 'USD', 'tok-bulk-' || i, 'tx-' || i,
           expiry => now() + interval '14 days', email => 'c' || i || '\@example.com')))
         FROM generate_series(1, 5000) i"), '5000', '5,000 declines queued in one statement');
$r = run_sql('SELECT flexfactor.ff_export_batch()');
is($r->{stdout}, '3', 'ff_export_batch() uploads 3 files');
is_deeply($r->{warnings}, [], 'no warning');
note sprintf('5,000 declines exported in %.2f s', Time::HiRes::time() - $t0);
$names = $sim->inbound_files;
is(scalar @$names, 3, 'three files in inbound, no .part') or diag explain $names;
$files = check_inbound_files('5,000', $names);
is_deeply([ map { scalar @{ $files->{$_}{lines} } } sort { $files->{$a}{batch_id} <=> $files->{$b}{batch_id} } keys %$files ],
	[ 2000, 2000, 1000 ], 'files of 2,000, 2,000 and 1,000 lines, in batch order');
my $bulk_keys = check_lines_match_declines('5,000', $files, "order_id LIKE 'BULK-%'");
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'BULK-%' AND state = 'batched'"),
	'5000', 'all 5,000 declines batched');
check_accepted('5,000', $files, $bulk_keys);
my $orders = $sim->orders;
is(scalar(grep { ($_->{externalOrderId} // '') =~ /^BULK-/ } @$orders), 5000,
	'the simulator created 5,000 orders');

# ------------------------------------------------------------------
# 3. The trigger on billing.payments: only committed, declined, recurring rows
# ------------------------------------------------------------------
sq(q{
CREATE SCHEMA billing;
CREATE TABLE billing.payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no      text NOT NULL,
    amount          numeric(12,2) NOT NULL,
    currency        text NOT NULL DEFAULT 'USD',
    card_token      text,
    status          text NOT NULL,
    is_recurring    boolean NOT NULL,
    decline_code    text,
    customer_email  text,
    subscription_id text);
CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token',
        'transaction_id=id', 'decline_code=decline_code', 'email=customer_email',
        'subscription_id=subscription_id', 'expiry_days=14',
        'declined_if=status:declined', 'recurring_if=is_recurring');
INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring, decline_code, customer_email, subscription_id)
VALUES ('P-1', 49.50, 'tok-p1', 'declined', true,  '51', 'p1@example.com', 'S-1'),
       ('P-2', 19.01, 'tok-p2', 'declined', false, '05', 'p2@example.com', NULL),
       ('P-3', 29.02, 'tok-p3', 'paid',     true,  NULL, 'p3@example.com', 'S-3'),
       ('P-4', 39.50, 'tok-p4', 'paid',     true,  NULL, 'p4@example.com', 'S-4');
});
sq(q{BEGIN;
     INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring)
     VALUES ('P-5', 12.50, 'tok-p5', 'declined', true);
     ROLLBACK;});
my ($ret) = $node->psql('ffdb', q{BEGIN;
     INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring)
     VALUES ('P-6', 12.50, 'tok-p6', 'declined', true);
     SELECT 1/0;
     COMMIT;});
isnt($ret, 0, 'a transaction that inserts a decline and then fails');
# paid, later declined: queued by the UPDATE
sq(q{UPDATE billing.payments SET status = 'declined', decline_code = '05' WHERE invoice_no = 'P-4'});
# a non-recurring row that is declined later is still not exported, nor is
# an UPDATE of a row that was already a decline
sq(q{INSERT INTO billing.payments (invoice_no, amount, card_token, status, is_recurring)
     VALUES ('P-7', 15.50, 'tok-p7', 'paid', false)});
sq(q{UPDATE billing.payments SET status = 'declined' WHERE invoice_no = 'P-7'});
sq(q{UPDATE billing.payments SET customer_email = 'new@example.com' WHERE invoice_no = 'P-1'});
is(sq("SELECT string_agg(order_id, ',' ORDER BY id) FROM flexfactor.decline_status WHERE state = 'pending'"),
	'P-1,P-4', 'queued: the declined recurring row and the one that became declined');

is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'exported in one file');
$names = $sim->inbound_files;
$files = check_inbound_files('trigger', $names);
my @tl = sort { $a->{sequenceNumber} <=> $b->{sequenceNumber} } map { @{ $_->{lines} } } values %$files;
is_deeply([ map { $_->{orderId} } @tl ], [ 'P-1', 'P-4' ],
	'the file holds P-1 and P-4 only: no non-recurring (P-2, P-7), paid (P-3) or rolled-back (P-5, P-6) row');
is_deeply([ map { $_->{transaction}{amount} } @tl ], [ 4950, 3950 ], 'amounts converted to cents');
my $pid1 = sq("SELECT id FROM billing.payments WHERE invoice_no = 'P-1'");
is($tl[0]{transaction}{id}, $pid1, 'transaction.id is the payments row id');
is($tl[0]{subscription}{subscriptionId}, 'S-1', 'subscription id mapped');
is($tl[0]{payer}{email}, 'p1@example.com', 'email mapped');
is($tl[0]{transaction}{responseCode}, '51', 'decline code mapped');
my $trig_keys = check_lines_match_declines('trigger', $files, "order_id LIKE 'P-%'");
check_accepted('trigger', $files, $trig_keys);

# ------------------------------------------------------------------
# 4. Two exporters at once: no decline in two batches
# ------------------------------------------------------------------
# (a) ff_export_batch() runs in the worker: declines the caller has not
# committed are not exported, a session meanwhile is not blocked, and the
# caller's ROLLBACK cannot undo an upload
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-A-' || i, " . cents_sql('i') . ", 'USD', 'tok-cca-' || i, 'tx-' || i)))
    FROM generate_series(1, 2500) i");
my $bg = $node->background_psql('ffdb', timeout => 120);
$bg->query_safe('BEGIN');
$bg->query_safe("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-B-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccb-' || i, 'tx-' || i)))
    FROM generate_series(1, 300) i");
is($bg->query_safe('SELECT flexfactor.ff_export_batch()'), '2',
	"session A, in an open transaction that queued 300 more: 2 files, the 2,500 committed declines");
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE order_id LIKE 'CC-B-%'"), '0',
	"A's uncommitted declines are invisible to the export");
my $t1 = Time::HiRes::time();
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'session B meanwhile: nothing to export');
ok(Time::HiRes::time() - $t1 < 10, 'and it did not wait for session A');
# a decline committed while A's transaction is open waits for A to end: A
# could still commit a decline in front of it, inside the batch's range
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'HELD-' || i, " . cents_sql('i') . ", 'USD', 'tok-held-' || i, 'tx-' || i)))
    FROM generate_series(1, 10) i");
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'ten declines committed after A began: not exported while A is open');
is(sq("SELECT string_agg(DISTINCT state, ',') FROM flexfactor.decline_status WHERE order_id LIKE 'HELD-%'"),
	'pending', 'they are pending');
is(sq("SELECT rows FROM flexfactor.queue_status WHERE queue = 'declines' AND state = 'pending'"), '10',
	'queue_status shows them pending');
$bg->query_safe('ROLLBACK');
$bg->quit;
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'A ended: the ten leave in one file');
is(sq("SELECT count(*) FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
         WHERE d.order_id LIKE 'HELD-%' AND b.state = 'uploaded' AND b.line_count = 10"), '10',
	'all ten in that uploaded batch, and nothing else in it');
is(sq("SELECT count(*) FROM flexfactor.batches b WHERE state IN ('uploaded', 'answered')
         AND EXISTS (SELECT FROM flexfactor.decline_status d WHERE d.batch_id = b.id AND d.order_id LIKE 'CC-A-%')"),
	'2', "A's ROLLBACK did not undo the uploads: both batches stay uploaded");
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-B-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccb-' || i, 'tx-' || i)))
    FROM generate_series(1, 300) i");
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'the 300 declines queued again and committed: 1 file');
my $b_batch = sq("SELECT string_agg(DISTINCT batch_id::text, ',') FROM flexfactor.decline_status WHERE order_id LIKE 'CC-B-%'");
like($b_batch, qr/^\d+$/, "the 300 declines are all in one batch");
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE batch_id = $b_batch AND order_id NOT LIKE 'CC-B-%'"),
	'0', "and that batch holds none of the others");

# (b) two exports started together, racing for 6,000 declines in batches of 500
set_conf('flexfactor.batch_max_rows', '500');
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-R-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccr-' || i, 'tx-' || i)))
    FROM generate_series(1, 6000) i");
my @h;
for my $s (0, 1)
{
	my %io = (out => '', err => '');
	my $h = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('ffdb'),
		  '-c', 'SELECT flexfactor.ff_export_batch()' ],
		'<', \undef, '>', \$io{out}, '2>', \$io{err}, IPC::Run::timeout(180));
	push @h, [ $h, \%io ];
}
my @n;
for my $i (0, 1)
{
	my ($h, $io) = @{ $h[$i] };
	ok($h->finish, "racing export $i succeeded") or diag $io->{err};
	chomp(my $n = $io->{out});
	note "racing export $i: ff_export_batch() returned $n";
	push @n, $n || 0;
	is($io->{err}, '', "racing export $i: no warning");
}
# both wait for the worker: served by one pass (12 and 12) or by two (12 and 0)
ok((grep { $_ == 12 } @n) && !(grep { $_ != 12 && $_ != 0 } @n),
	"the two calls report the worker's pass of 12 files of 500 (got @n)");
is(sq("SELECT count(*) FROM flexfactor.batches WHERE state IN ('uploaded', 'answered')
          AND id IN (SELECT batch_id FROM flexfactor.decline_status WHERE order_id LIKE 'CC-R-%')"),
	'12', 'twelve uploaded batches hold them');
$names = $sim->inbound_files;
is(scalar @$names, 16, 'inbound: 2 + 1 + 1 + 12 files, no .part') or diag explain $names;
$files = check_inbound_files('concurrent', $names);
is(sq("SELECT count(*) FROM (SELECT f.decline_id FROM flexfactor.batches b
         CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) f
         WHERE b.requeued_as IS NULL GROUP BY f.decline_id HAVING count(*) > 1) d"),
	'0', 'no decline is a line of two batch files');
my $cc_keys = check_lines_match_declines('concurrent', $files, "order_id LIKE 'CC-%' OR order_id LIKE 'HELD-%'");
is(scalar @$cc_keys, 8810, 'all 8,800 concurrent-test declines and the 10 held ones are in a file');
check_accepted('concurrent', $files, $cc_keys);

# ------------------------------------------------------------------
# 5. The DBA's views after all this
# ------------------------------------------------------------------
is(sq("SELECT count(*) FROM flexfactor.batch_status
         WHERE state NOT IN ('uploaded', 'answered') OR attempts <> 1 OR last_error IS NOT NULL"),
	'0', 'batch_status: every batch delivered at the first attempt, no error');
is(sq("SELECT state || ':' || rows FROM flexfactor.queue_status WHERE queue = 'declines' ORDER BY state"),
	'batched:' . (3 + 5000 + 2 + 10 + 8800), 'queue_status: every decline batched, none pending');
is(sq("SELECT sum(line_count) FROM flexfactor.batches"), 3 + 5000 + 2 + 10 + 8800,
	'line counts add up to the declines');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();
