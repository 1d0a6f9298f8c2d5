# SFTP batch export with ff_export_batch(), against the real OpenSSH server
# (test/sshd/ffsshd) and the FlexFactor simulator reading its inbound folder:
# files carry exactly the queued declines (every field, sequenceNumber 1..N,
# mid, idempotencyKey, token), their bytes match batches.sha256 and the name
# follows docs/batch-format.md; 5,000 declines make files of 2,000, 2,000 and
# 1,000 lines that the simulator accepts, each idempotency key once; a
# decline missing a field the real service requires is refused (FF023) and
# never queued; the trigger, completed by an enrich function, exports only
# committed declined recurring rows; two concurrent exports never put a
# decline in two batches.
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
# docs/reference.md's call, every field named: complete
sq(q{SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        order_id => 'INV-1001', amount_cents => 4950, currency => 'usd',
        card_token => 'd3e10716-6aac-4eb8-a74d-c1a3027f1d96', transaction_id => 'gw-7781',
        decline_code => '51', response_code_source => 'stripe', email => 'ana@example.com',
        first_name => 'Ana', last_name => 'Silva', address_line1 => '5 Rua Augusta', city => 'Lisboa',
        zip_code => '1100-048', country_code => 'pt',
        subscription_id => 'SUB-9', subscription_interval => 'monthly',
        expiry => now() + interval '14 days', declined_at => '2026-11-24 09:30:00+00'))});
sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'INV-1002', 2001, 'eur', 'tok-2', 'gw-7782', " . ff_decline_args() . "))");
sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
        'INV-Ünïcødé-€', 3302, 'gbp', 'tok-3', 'gw-7783', email => 'zoë\@example.com', is_recurring => false, "
	  . ff_decline_args(email => undef) . "))");
# the same attempt again is not queued twice
sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INV-1002', 2001, 'eur', 'tok-2', 'gw-7782', "
	  . ff_decline_args() . "))");
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
			responseCodeSource => 'stripe', avsResultCode => 'NA', cvvResultCode => 'NA', cavvResultCode => 'NA',
			responseStatus => 'DECLINED', timestampUtc => '2026-11-24T09:30:00Z', timezoneUtcOffset => 0,
			cardNotPresent => JSON::PP::true },
		paymentMethod => { cardNumber => 'd3e10716-6aac-4eb8-a74d-c1a3027f1d96', token => JSON::PP::true },
		payer => { email => 'ana@example.com' },
		billingInformation => { firstName => 'Ana', lastName => 'Silva', addressLine1 => '5 Rua Augusta',
			city => 'Lisboa', zipCode => '1100-048', countryCode => 'PT', country => 'PT' },
		subscription => { subscriptionId => 'SUB-9', interval => 'monthly', price => 4950, currency => 'USD' },
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
           expiry => now() + interval '14 days', email => 'c' || i || '\@example.com', "
	  . ff_decline_args(expiry => undef, email => undef) . ")))
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
# 3. Incomplete declines: FF023 naming the field, nothing queued
# ------------------------------------------------------------------
# A batch line lacking what the real FlexFactor requires (flexfactor-api.md
# 12a) would come back rejected in the result file: ff_enqueue_decline
# refuses it at once, naming the fields, and queues nothing.
sub queued_declines { sq('SELECT count(*) FROM flexfactor.declines') }

sub refused_locally
{
	my ($sql, $what, @fields) = @_;
	my $before = queued_declines();
	my $e = FFSim::sql_error($node, 'ffdb', $sql);
	ff_refused_ok($e, $what, @fields) if @fields;
	is(queued_declines(), $before, "$what: nothing queued");
	return $e;
}

my $complete = "flexfactor.ff_decline('INC-1', 1999, 'USD', 'tok-inc-1', 'tx-inc-1', " . ff_decline_args() . ")";
for my $field (@FF_EVALUATE_REQUIRED)
{
	my $path = '{' . join(',', split /\./, $field) . '}';
	refused_locally("SELECT flexfactor.ff_enqueue_decline($complete #- '$path')", "batch line without $field", $field);
}
refused_locally("SET flexfactor.mid = ''; SELECT flexfactor.ff_enqueue_decline($complete)",
	'batch line without a mid (flexfactor.mid empty)', 'mid');
# a batch line is managed MIT: expiryDateUtc even under mit_mode = 'sync'
refused_locally("SET flexfactor.mit_mode = 'sync'; SELECT flexfactor.ff_enqueue_decline($complete - 'expiryDateUtc')",
	"batch line without expiryDateUtc, mit_mode = 'sync'", 'expiryDateUtc');
my $e = refused_locally("SELECT flexfactor.ff_enqueue_decline($complete #- '{paymentMethod,token}')",
	'batch line whose card is not marked as a token');
is($e->{sqlstate}, 'FF023', 'a card not marked as a token: FF023');
like($e->{message} // '', qr/invalid paymentMethod\.token \(/, 'naming paymentMethod.token as invalid');
# several missing at once, from ff_decline() arguments left out: one error
$e = refused_locally("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('INC-1', 1999, 'USD', 'tok-inc-1',
	'tx-inc-1', " . ff_decline_args(map { $_ => undef } qw(email expiry subscription_interval)) . "))",
	'ff_decline() without email, expiry and subscription_interval',
	qw(payer.email expiryDateUtc subscription.interval));
like($e->{hint} // '', qr/^Pass email, subscription_interval, expiry to flexfactor\.ff_decline\(\)/,
	'the HINT names the three ff_decline() arguments');
is(sq("SELECT count(*) FROM flexfactor.declines WHERE order_id = 'INC-1'"), '0', 'nothing was queued for INC-1');
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'and an export has nothing to send');
is_deeply($sim->inbound_files, [], 'no file reached FlexFactor');

# ------------------------------------------------------------------
# 4. The trigger on billing.payments: only committed, declined, recurring
#    rows, completed from the customers table by an enrich function
# ------------------------------------------------------------------
sq(q{
CREATE SCHEMA billing;
CREATE TABLE billing.customers (
    id         bigint PRIMARY KEY,
    email      text NOT NULL,
    first_name text NOT NULL,
    last_name  text NOT NULL,
    street     text NOT NULL,
    city       text NOT NULL,
    region     text,
    postcode   text,
    country    char(2) NOT NULL);
INSERT INTO billing.customers VALUES
    (1, 'p1@example.com', 'Pat', 'One', '1 Elm St', 'Springfield', 'IL', '62701', 'us'),
    (2, 'p2@example.com', 'Pam', 'Two', '2 Elm St', 'Springfield', 'IL', '62701', 'US'),
    (3, 'p3@example.com', 'Pia', 'Three', '3 Elm St', 'Springfield', 'IL', '62701', 'US'),
    (4, 'p4@example.com', 'Per', 'Four', 'Storgatan 4', 'Stockholm', NULL, '111 22', 'SE');
CREATE TABLE billing.payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no      text NOT NULL,
    customer_id     bigint,
    amount          numeric(12,2) NOT NULL,
    currency        text NOT NULL DEFAULT 'USD',
    card_token      text,
    status          text NOT NULL,
    is_recurring    boolean NOT NULL,
    decline_code    text,
    avs_result      text,
    subscription_id text);
-- what lives in other tables: the payer and the billing address
CREATE FUNCTION billing.payment_details(p billing.payments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'payer', jsonb_build_object('email', c.email),
        'billingInformation', jsonb_build_object(
            'firstName', c.first_name, 'lastName', c.last_name, 'addressLine1', c.street,
            'city', c.city, 'state', c.region, 'zipCode', c.postcode,
            'countryCode', upper(c.country), 'country', upper(c.country)),
        'transaction', jsonb_build_object('avsResultCode', p.avs_result))
    FROM (SELECT) one LEFT JOIN billing.customers c ON c.id = p.customer_id
$$;
CREATE TRIGGER payments_to_flexfactor
    AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency', 'token=card_token',
        'transaction_id=id', 'decline_code=decline_code', 'subscription_id=subscription_id',
        'response_code_source=''stripe''', 'subscription_interval=''monthly''', 'expiry_days=14',
        'enrich=billing.payment_details', 'declined_if=status:declined', 'recurring_if=is_recurring');
INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, decline_code, avs_result, subscription_id)
VALUES ('P-1', 1, 49.50, 'tok-p1', 'declined', true,  '51', 'N', 'S-1'),
       ('P-2', 2, 19.01, 'tok-p2', 'declined', false, '05', NULL, NULL),
       ('P-3', 3, 29.02, 'tok-p3', 'paid',     true,  NULL, NULL, 'S-3'),
       ('P-4', 4, 39.50, 'tok-p4', 'paid',     true,  NULL, NULL, 'S-4');
});
sq(q{BEGIN;
     INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, subscription_id)
     VALUES ('P-5', 1, 12.50, 'tok-p5', 'declined', true, 'S-5');
     ROLLBACK;});
my ($ret) = $node->psql('ffdb', q{BEGIN;
     INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, subscription_id)
     VALUES ('P-6', 1, 12.50, 'tok-p6', 'declined', true, 'S-6');
     SELECT 1/0;
     COMMIT;});
isnt($ret, 0, 'a transaction that inserts a decline and then fails');
# paid, later declined: queued by the UPDATE, once
sq(q{UPDATE billing.payments SET status = 'declined', decline_code = '05' WHERE invoice_no = 'P-4'});
sq(q{UPDATE billing.payments SET avs_result = 'Y' WHERE invoice_no = 'P-4'});
# a non-recurring row that is declined later is still not exported, nor is
# an UPDATE of a row that was already a decline
sq(q{INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring)
     VALUES ('P-7', 2, 15.50, 'tok-p7', 'paid', false)});
sq(q{UPDATE billing.payments SET status = 'declined' WHERE invoice_no = 'P-7'});
sq(q{UPDATE billing.payments SET avs_result = 'Y' WHERE invoice_no = 'P-1'});
# a paid row whose customer is unknown: not a decline, so nothing is asked of it
sq(q{INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, subscription_id)
     VALUES ('P-9', 99, 12.50, 'tok-p9', 'paid', true, 'S-9')});
is(sq("SELECT count(*) FROM billing.payments WHERE invoice_no = 'P-9'"), '1', 'a paid row without its customer is written');
# a declined recurring row whose customer is unknown: its body would lack
# the payer and the billing address, so the INSERT fails, naming them
$e = refused_locally(q{INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, decline_code, subscription_id)
     VALUES ('P-8', 99, 12.50, 'tok-p8', 'declined', true, '05', 'S-8')},
	'trigger: a declined row without its customer',
	qw(payer.email billingInformation.firstName billingInformation.lastName billingInformation.addressLine1
	  billingInformation.city billingInformation.country billingInformation.countryCode));
is(sq("SELECT count(*) FROM billing.payments WHERE invoice_no = 'P-8'"), '0', 'trigger: and the INSERT failed');
# the trigger and its enrich function run with the rights of the role that
# writes the row: a billing application granted what docs/security.md's privileges
# section grants (USAGE on the schema), but not SELECT on the customers
# table, cannot have its declines enriched from it
sq(q{CREATE ROLE ff_billing_app LOGIN;
     GRANT USAGE ON SCHEMA billing TO ff_billing_app;
     GRANT INSERT, UPDATE ON billing.payments TO ff_billing_app;
     GRANT USAGE ON SCHEMA flexfactor TO ff_billing_app});
my $insert_p11 = q{INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring, decline_code, subscription_id)
     VALUES ('P-11', 3, 10.50, 'tok-p11', 'declined', true, '05', 'S-11')};
$e = FFSim::sql_error($node, 'ffdb', $insert_p11, extra_params => [ '-U', 'ff_billing_app' ]);
is($e->{sqlstate}, '42501', "trigger: the enrich function runs with the writer's rights (no SELECT on customers: 42501)")
  or diag $e->{stderr};
like($e->{message} // '', qr/customers/, 'trigger: denied on billing.customers');
is(sq("SELECT count(*) FROM billing.payments WHERE invoice_no = 'P-11'"), '0', 'trigger: the INSERT failed');
sq('GRANT SELECT ON billing.customers TO ff_billing_app');
$e = FFSim::sql_error($node, 'ffdb', $insert_p11, extra_params => [ '-U', 'ff_billing_app' ]);
is($e->{sqlstate}, undef, 'trigger: with SELECT on customers, the billing application writes its decline')
  or diag $e->{stderr};
# a role that writes billing rows but has no rights in the flexfactor
# schema: a paid row is none of the trigger's business
sq(q{CREATE ROLE ff_billing_job LOGIN;
     GRANT USAGE ON SCHEMA billing TO ff_billing_job;
     GRANT INSERT ON billing.payments TO ff_billing_job});
$e = FFSim::sql_error($node, 'ffdb', q{INSERT INTO billing.payments (invoice_no, customer_id, amount, card_token, status, is_recurring)
     VALUES ('P-12', 3, 10.50, 'tok-p12', 'paid', true)}, extra_params => [ '-U', 'ff_billing_job' ]);
is($e->{sqlstate}, undef, 'trigger: a writer without rights in the flexfactor schema can write a paid row')
  or diag $e->{stderr};

is(sq("SELECT string_agg(order_id, ',' ORDER BY id) FROM flexfactor.decline_status WHERE state = 'pending'"),
	'P-1,P-4,P-11', 'queued: the declined recurring rows and the one that became declined, once');

# the queued body carries what the columns, the constants and the enrich
# function gave
my $p1 = FFSim->decode_json(sq("SELECT payload FROM flexfactor.declines WHERE order_id = 'P-1'"));
is_deeply($p1->{payer}, { email => 'p1@example.com' }, 'trigger: payer.email from the customers table');
is_deeply($p1->{billingInformation}, { firstName => 'Pat', lastName => 'One', addressLine1 => '1 Elm St',
		city => 'Springfield', state => 'IL', zipCode => '62701', countryCode => 'US', country => 'US' },
	'trigger: the billing address from the customers table');
is_deeply([ @{ $p1->{transaction} }{qw(responseCode responseCodeSource avsResultCode cvvResultCode cavvResultCode)} ],
	[ '51', 'stripe', 'N', 'NA', 'NA' ],
	"trigger: the decline code (column), its source (constant), the AVS result (enrich), 'NA' for the others");
is_deeply($p1->{subscription}, { subscriptionId => 'S-1', interval => 'monthly', price => 4950, currency => 'USD' },
	'trigger: the subscription id (column) and interval (constant)');
like($p1->{transaction}{timestampUtc} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'trigger: declined_at defaults to now()');
ok(sq("SELECT (payload->>'expiryDateUtc')::timestamptz BETWEEN now() + interval '13 days' AND now() + interval '15 days'
	FROM flexfactor.declines WHERE order_id = 'P-1'"), 'trigger: expiryDateUtc is 14 days ahead (expiry_days)');
my $p4 = FFSim->decode_json(sq("SELECT payload FROM flexfactor.declines WHERE order_id = 'P-4'"));
is_deeply([ $p4->{billingInformation}{countryCode}, $p4->{billingInformation}{city}, $p4->{transaction}{avsResultCode},
		$p4->{transaction}{responseCode} ], [ 'SE', 'Stockholm', 'NA', '05' ],
	'trigger: P-4 as it was when it became a decline (the later UPDATE queued nothing)');
ok(!exists $p4->{billingInformation}{state}, 'trigger: a NULL from the enrich function is left out');

is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'exported in one file');
$names = $sim->inbound_files;
$files = check_inbound_files('trigger', $names);
my @tl = sort { $a->{sequenceNumber} <=> $b->{sequenceNumber} } map { @{ $_->{lines} } } values %$files;
is_deeply([ map { $_->{orderId} } @tl ], [ 'P-1', 'P-4', 'P-11' ],
	'the file holds P-1, P-4 and P-11 only: no non-recurring (P-2, P-7), paid (P-3, P-9, P-12), refused (P-8) or rolled-back (P-5, P-6) row');
is_deeply([ map { $_->{transaction}{amount} } @tl ], [ 4950, 3950, 1050 ], 'amounts converted to cents');
my $pid1 = sq("SELECT id FROM billing.payments WHERE invoice_no = 'P-1'");
is($tl[0]{transaction}{id}, $pid1, 'transaction.id is the payments row id');
is($tl[0]{subscription}{subscriptionId}, 'S-1', 'subscription id mapped');
is($tl[0]{payer}{email}, 'p1@example.com', 'email from the enrich function');
is($tl[0]{transaction}{responseCode}, '51', 'decline code mapped');
my $trig_keys = check_lines_match_declines('trigger', $files, "order_id LIKE 'P-%'");
check_accepted('trigger', $files, $trig_keys);

# ------------------------------------------------------------------
# 5. Two exporters at once: no decline in two batches
# ------------------------------------------------------------------
# (a) ff_export_batch() runs in the worker: declines the caller has not
# committed are not exported, a session meanwhile is not blocked, and the
# caller's ROLLBACK cannot undo an upload
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-A-' || i, " . cents_sql('i') . ", 'USD', 'tok-cca-' || i, 'tx-' || i, " . ff_decline_args() . ")))
    FROM generate_series(1, 2500) i");
my $bg = $node->background_psql('ffdb', timeout => 120);
$bg->query_safe('BEGIN');
$bg->query_safe("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-B-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccb-' || i, 'tx-' || i, " . ff_decline_args() . ")))
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
      'HELD-' || i, " . cents_sql('i') . ", 'USD', 'tok-held-' || i, 'tx-' || i, " . ff_decline_args() . ")))
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
      'CC-B-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccb-' || i, 'tx-' || i, " . ff_decline_args() . ")))
    FROM generate_series(1, 300) i");
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'the 300 declines queued again and committed: 1 file');
my $b_batch = sq("SELECT string_agg(DISTINCT batch_id::text, ',') FROM flexfactor.decline_status WHERE order_id LIKE 'CC-B-%'");
like($b_batch, qr/^\d+$/, "the 300 declines are all in one batch");
is(sq("SELECT count(*) FROM flexfactor.decline_status WHERE batch_id = $b_batch AND order_id NOT LIKE 'CC-B-%'"),
	'0', "and that batch holds none of the others");

# (b) two exports started together, racing for 6,000 declines in batches of 500
set_conf('flexfactor.batch_max_rows', '500');
sq("SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
      'CC-R-' || i, " . cents_sql('i') . ", 'USD', 'tok-ccr-' || i, 'tx-' || i, " . ff_decline_args() . ")))
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
# 6. The DBA's views after all this
# ------------------------------------------------------------------
is(sq("SELECT count(*) FROM flexfactor.batch_status
         WHERE state NOT IN ('uploaded', 'answered') OR attempts <> 1 OR last_error IS NOT NULL"),
	'0', 'batch_status: every batch delivered at the first attempt, no error');
is(sq("SELECT state || ':' || rows FROM flexfactor.queue_status WHERE queue = 'declines' ORDER BY state"),
	'batched:' . (3 + 5000 + 3 + 10 + 8800), 'queue_status: every decline batched, none pending');
is(sq("SELECT sum(line_count) FROM flexfactor.batches"), 3 + 5000 + 3 + 10 + 8800,
	'line counts add up to the declines');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();
