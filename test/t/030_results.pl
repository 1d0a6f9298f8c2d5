# Results come home through SFTP: after uploading, the worker reads
# FlexFactor's result files from the outbound folder.  Accepted lines become
# orders with their orderSessionKey and status (APPROVED, DECLINED,
# SUBMITTED per the simulator's amount rules), a rejected line sets its
# decline aside with FlexFactor's reason, the billing callback hears of each
# status, every file is applied once (a file seen again changes nothing) and
# is moved to the processed folder; a file rejected whole (error file) sets
# its rows aside until ff_requeue_batch() queues them again.
use strict;
use warnings;
use File::Copy ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffresults030');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_030', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);    # files are processed at /_admin/scan
my $processed = "$tmp/sftp/$mid/results-done";

my $node = ff_node('results030',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.sftp_processed_dir' => $processed,
	'flexfactor.on_order_status' => 'billing.on_flexfactor');
ff_start_serving($node, 'ffdb');

sub sq { $node->safe_psql('ffdb', $_[0]) }

sub outbound_files
{
	opendir(my $dh, $sim->outbound_dir) or return [];
	my @f = sort grep { !/^\./ } readdir $dh;
	closedir $dh;
	return \@f;
}

# the merchant's billing schema, told of every status change by the worker
sq(q{
	CREATE SCHEMA billing;
	CREATE TABLE billing.invoices (invoice_no text PRIMARY KEY, state text NOT NULL DEFAULT 'past_due');
	CREATE FUNCTION billing.on_flexfactor(o flexfactor.orders) RETURNS void LANGUAGE sql AS $$
		UPDATE billing.invoices
		   SET state = CASE o.status WHEN 'APPROVED' THEN 'paid' WHEN 'DECLINED' THEN 'failed'
		                             WHEN 'SUBMITTED' THEN 'pending_rescue' ELSE state END
		 WHERE invoice_no = o.order_id $$;
});

# amounts ending 01: APPROVED, 02: DECLINED, others: SUBMITTED (managed MIT);
# 5 cents breaks the sandbox's amount rule and is rejected on its line
my %amount = ('A-1' => 1501, 'A-2' => 1502, 'A-3' => 1503, 'A-4' => 1504, 'A-5' => 5);
for my $order (sort keys %amount)
{
	sq("INSERT INTO billing.invoices VALUES ('$order')");
	sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('$order', $amount{$order}, 'USD',
	      'tok-$order', 'tx-$order', expiry => now() + interval '14 days', " . ff_decline_args(expiry => undef) . "))");
}

is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'the declines leave in one file');
my $scan = $sim->scan;
is(scalar @$scan, 1, 'FlexFactor processed the file');
is($scan->[0]{accepted}, 4, '4 lines accepted');
is($scan->[0]{rejected}, 1, '1 line rejected');
my ($result_name) = grep { /\.result\.jsonl$/ } @{ outbound_files() };
ok($result_name, "the result file is in the outbound folder: $result_name");

is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'the next pass uploads nothing ...');
is_deeply(outbound_files(), [], '... and takes the result file from the outbound folder');
ok(-f "$processed/$result_name", 'which is now in the processed folder');

# what the file said is now in the order book
is(sq("SELECT string_agg(order_id || ' ' || status || ' ' || source, ', ' ORDER BY order_id)
         FROM flexfactor.orders"),
	'A-1 APPROVED batch, A-2 DECLINED batch, A-3 SUBMITTED batch, A-4 SUBMITTED batch',
	'accepted lines became orders with their status');
my $sim_orders = $sim->orders;
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_session_key IS NOT NULL"), '4',
	'each with its orderSessionKey');
my $a1_key = sq("SELECT order_session_key FROM flexfactor.orders WHERE order_id = 'A-1'");
ok(scalar(grep { ($_->{id} // '') eq $a1_key } @$sim_orders), "A-1's key is FlexFactor's id of that order");
like(sq("SELECT state || ': ' || set_aside_reason FROM flexfactor.decline_status WHERE order_id = 'A-5'"),
	qr/^set_aside: FlexFactor rejected line \d of evaluate_.*amount/i,
	'the rejected line set its decline aside with the reason');
is(sq("SELECT state FROM flexfactor.batches"), 'answered', 'the batch is answered');
is(sq("SELECT string_agg(invoice_no || '=' || state, ' ' ORDER BY invoice_no) FROM billing.invoices"),
	'A-1=paid A-2=failed A-3=pending_rescue A-4=pending_rescue A-5=past_due',
	'the billing callback heard of every status');

# the same result file seen again (e.g. after a crash between the commit and
# its removal) is recognised and removed without changing anything
my $events = sq('SELECT count(*) FROM flexfactor.order_events');
File::Copy::copy("$processed/$result_name", $sim->outbound_dir . "/$result_name") or die $!;
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'a pass with the old file back in outbound');
is_deeply(outbound_files(), [], 'the old file is taken away again');
is(sq('SELECT count(*) FROM flexfactor.order_events'), $events, 'and changed nothing');
is(sq('SELECT count(*) FROM flexfactor.result_files'), '1', 'it is recorded once');

# a file rejected whole: its rows are set aside, ff_requeue_batch() sends them again
$sim->admin('POST', '/_admin/batch-faults', { reject_next => 1 });
sq("SELECT flexfactor.ff_enqueue_decline(flexfactor.ff_decline('B-' || i, 1500 + i, 'USD', 'tok', 'tx-' || i,
      expiry => now() + interval '14 days', " . ff_decline_args(expiry => undef) . ")) FROM generate_series(3, 4) i");
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'two more declines leave in a file');
$scan = $sim->scan;
is($scan->[0]{status}, 'rejected', 'FlexFactor rejects that file whole');
sq('SELECT flexfactor.ff_export_batch()');
my $rejected = sq("SELECT id FROM flexfactor.batches WHERE state = 'rejected'");
like($rejected, qr/^\d+$/, 'the batch is marked rejected');
like(sq("SELECT last_error FROM flexfactor.batches WHERE id = $rejected"), qr/^rejected whole by FlexFactor: /,
	'with FlexFactor\'s reason');
is(sq("SELECT string_agg(state, ',') FROM flexfactor.decline_status WHERE order_id LIKE 'B-%'"), 'set_aside,set_aside',
	'its declines are set aside');
is(sq("SELECT flexfactor.ff_requeue_batch($rejected)"), '2', 'ff_requeue_batch() queues them again');
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'and they leave in a new file');
$scan = $sim->scan;
is($scan->[0]{accepted}, 2, 'which FlexFactor accepts');
sq('SELECT flexfactor.ff_export_batch()');
is(sq("SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM flexfactor.orders WHERE order_id LIKE 'B-%'"),
	'B-3 SUBMITTED, B-4 SUBMITTED', 'and they are orders now');
is(scalar @{ $sim->idempotency->{acceptedMoreThanOnce} }, 0, 'FlexFactor accepted no key twice');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();
