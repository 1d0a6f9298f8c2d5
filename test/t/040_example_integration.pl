# The example integration (examples/) on a real cluster that preloads
# pg_cron and flexfactor: its postgresql.conf settings, install.sql (billing
# schema, trigger, callback, GRANTs, pg_cron jobs), then a renewal run written
# by the application role.  Nothing in this test calls ff_export_batch(): the
# pg_cron job exports the declines over the real OpenSSH server to the
# FlexFactor simulator and, on its next run, reads the result files; the
# simulator's clock then moves on, and its signed webhooks reach the listener.
# Checked: the files and lines the simulator received (names, line counts,
# SHA-256), every order's final status, the callback's work in the billing
# schema (exactly the approved invoices paid and their money recorded, the
# expired orders' subscriptions cancelled, the declined ones flagged,
# customer-initiated declines never sent), cron.job_run_details, and the
# housekeeping job's command under the job role's privileges.
use strict;
use warnings;
use Cwd ();
use File::Basename ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

# pg_cron comes from Debian's postgresql-15-cron on 15; on a PostgreSQL built
# from source (tools/pg18.sh) only when Debian's registry served its source
chomp(my $pkglibdir = `pg_config --pkglibdir`);
if (!-f "$pkglibdir/pg_cron.so")
{
	my $why = -f "$pkglibdir/pg_cron.unavailable" ? slurp_file("$pkglibdir/pg_cron.unavailable") : '';
	chomp $why;
	plan skip_all => "pg_cron is not installed for this PostgreSQL ($pkglibdir)" . ($why ? ": $why" : '');
}

my $root = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../..');
my $examples = "$root/examples";
my $mid = '4c5d6e7f-8091-4a2b-9c3d-4e5f60718293';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffexample040');
my $wport = PostgreSQL::Test::Cluster::get_free_port();
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_040', mid => $mid, sftp_root => "$tmp/sftp",
	webhook_url => "http://127.0.0.1:$wport/flexfactor/webhook",
	args => [ '--scan-interval', '0.5' ]);    # FlexFactor answers each file on its own

# The renewal run: 240 subscriptions on six plans, the charges of 96 declined
# by the processor (i % 5 in 1, 3: 16 per plan), plus 6 declined
# customer-initiated charges that are not FlexFactor's business.  The
# simulator decides by amount: cents 01 APPROVED at once, 02 DECLINED at
# once, 14 EXPIRED at expiryDateUtc, others APPROVED a minute later.
my @plans = ([ 'starter', 999 ], [ 'standard', 1999 ], [ 'plus', 2914 ],
	[ 'pro', 4999 ], [ 'team', 8901 ], [ 'annual', 11902 ]);
my $subscriptions = 240;
my $batch_rows = 40;
my (%final, %first, $declines, $recovered_cents);
for my $i (1 .. $subscriptions)
{
	next unless $i % 5 == 1 || $i % 5 == 3;
	my ($plan, $cents) = @{ $plans[ $i % 6 ] };
	$declines++;
	my $c = $cents % 100;
	$first{ $c == 1 ? 'APPROVED' : $c == 2 ? 'DECLINED' : 'SUBMITTED' }++;
	my $f = $c == 2 ? 'DECLINED' : $c == 14 ? 'EXPIRED' : 'APPROVED';
	$final{$f}++;
	$recovered_cents += $cents if $f eq 'APPROVED';
}
my @expected_lines = map { $_ * $batch_rows < $declines ? $batch_rows : $declines - ($_ - 1) * $batch_rows }
  1 .. int(($declines + $batch_rows - 1) / $batch_rows);

# the billing database exists before pg_cron is preloaded (its launcher
# connects to cron.database_name at start)
my $node = ff_node('example040');
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE billing');
$node->stop;

# examples/postgresql.conf as a DBA would append it, then what this machine
# fills in: the simulator, the SSH server and the listener
my %conf = ($sim->node_settings,
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.sftp_processed_dir' => "$tmp/sftp/$mid/outbound/done",
	'flexfactor.batch_max_rows' => $batch_rows,
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY);
delete $conf{'flexfactor.batch_interval'};    # the example's 0 stands: pg_cron exports
$node->append_conf('postgresql.conf', slurp_file("$examples/postgresql.conf"));
$node->append_conf('postgresql.conf', join('', map { "$_ = '$conf{$_}'\n" } sort keys %conf));
$node->start;

sub sq { $node->safe_psql('billing', $_[0]) }

is(sq('SHOW shared_preload_libraries') . ' / ' . sq('SHOW cron.database_name') . ' / '
	  . sq('SHOW flexfactor.batch_interval'),
	'pg_cron,flexfactor / billing / 0', "the server runs with examples/postgresql.conf");

# --- install.sql, as its README says
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('billing'),
		'-f', "$examples/install.sql" ], 'examples/install.sql loads');
is(sq("SELECT string_agg(jobname || ' ' || schedule || ' ' || database || ' ' || username || ' ' || active,
                         ' | ' ORDER BY jobname) FROM cron.job"),
	'flexfactor-export * * * * * billing billing_jobs true | '
	  . 'flexfactor-housekeeping 17 3 * * * billing billing_jobs true',
	'two pg_cron jobs, run by billing_jobs in billing');
is(sq("SELECT command FROM cron.job WHERE jobname = 'flexfactor-export'"),
	'SELECT flexfactor.ff_export_batch()', 'the export job calls ff_export_batch()');
$node->poll_query_until('billing',
	"SELECT count(*) = 2 FROM flexfactor.ff_worker_status()
	  WHERE role IN ('worker', 'listener') AND pid IS NOT NULL")
  or die 'the flexfactor worker and listener did not start';
FFSim::wait_for_listener($node, $wport);
is(sq('SHOW flexfactor.on_order_status'), 'billing.on_flexfactor_order',
	'ALTER SYSTEM set the callback');

# --- the renewal run, written by the application role
my $run = $node->psql('billing', qq{
	SET ROLE billing_app;
	INSERT INTO billing.customers (email, first_name, last_name, card_token)
	SELECT 'customer' || i || '\@example.com', 'Given' || i, 'Family' || i, 'tok-' || md5(i::text)
	  FROM generate_series(1, $subscriptions) i;
	INSERT INTO billing.addresses (customer_id, line1, city, region, postal_code, country_code)
	SELECT c.id, c.id || ' Main St', 'Springfield', CASE WHEN c.id % 7 = 0 THEN NULL ELSE 'IL' END,
	       '62701', CASE WHEN c.id % 7 = 0 THEN 'DE' ELSE 'US' END
	  FROM billing.customers c;
	INSERT INTO billing.subscriptions (customer_id, plan, price_cents)
	SELECT c.id, p.plan, p.price
	  FROM generate_series(1, $subscriptions) i
	  JOIN billing.customers c ON c.email = 'customer' || i || '\@example.com'
	  JOIN (VALUES } . join(', ', map { "($_, '$plans[$_][0]', $plans[$_][1])" } 0 .. $#plans) . qq{)
	       AS p(k, plan, price) ON p.k = i % 6;
	INSERT INTO billing.invoices (invoice_no, subscription_id, amount_cents)
	SELECT 'INV-' || lpad(c.id::text, 5, '0'), s.id, s.price_cents
	  FROM billing.subscriptions s JOIN billing.customers c ON c.id = s.customer_id;
	INSERT INTO billing.payments (invoice_no, subscription_id, amount, card_token, customer_email,
	                              is_recurring, status, decline_code, processor, avs_result, cvv_result)
	SELECT i.invoice_no, s.id, i.amount_cents / 100.0, c.card_token, c.email, true,
	       CASE WHEN c.id % 5 IN (1, 3) THEN 'declined' ELSE 'approved' END,
	       CASE WHEN c.id % 5 IN (1, 3) THEN (ARRAY['51', '05', '61', '54'])[1 + c.id % 4] END,
	       'stripe', CASE WHEN c.id % 2 = 0 THEN 'Y' END, CASE WHEN c.id % 2 = 0 THEN 'M' END
	  FROM billing.invoices i JOIN billing.subscriptions s ON s.id = i.subscription_id
	  JOIN billing.customers c ON c.id = s.customer_id
	 ORDER BY i.invoice_no;
	-- customers paying by hand (customer-initiated): declined, but not recurring
	INSERT INTO billing.invoices (invoice_no, subscription_id, amount_cents)
	SELECT 'CIT-' || s.id, s.id, 1501 FROM billing.subscriptions s WHERE s.id <= 6;
	INSERT INTO billing.payments (invoice_no, subscription_id, amount, card_token, is_recurring, status, decline_code)
	SELECT 'CIT-' || s.id, s.id, 15.01, 'tok-cit', false, 'declined', '51'
	  FROM billing.subscriptions s WHERE s.id <= 6;
}, on_error_stop => 1);
is($run, 0, 'billing_app records the renewal run with the GRANTs of the example');
is(sq("SELECT count(*) FROM billing.payments WHERE status = 'declined' AND is_recurring"), $declines,
	"$declines recurring charges declined");
# every queued line is complete by the real service's rules, its payer and
# address brought in by the example's enrich function, the processor's codes
# mapped from the payment ('NA' where it gave none)
is(sq(q{SELECT count(*) FROM flexfactor.declines d
	  JOIN billing.payments p ON p.invoice_no = d.order_id AND p.is_recurring
	  JOIN billing.subscriptions s ON s.id = p.subscription_id
	  JOIN billing.customers c ON c.id = s.customer_id
	  JOIN billing.addresses a ON a.customer_id = c.id
	 WHERE d.payload #>> '{payer,email}' = c.email
	   AND d.payload #>> '{billingInformation,firstName}' = c.first_name
	   AND d.payload #>> '{billingInformation,lastName}' = c.last_name
	   AND d.payload #>> '{billingInformation,addressLine1}' = a.line1
	   AND d.payload #>> '{billingInformation,countryCode}' = a.country_code
	   AND d.payload #>> '{transaction,responseCodeSource}' = 'stripe'
	   AND d.payload #>> '{transaction,avsResultCode}' = coalesce(p.avs_result, 'NA')
	   AND d.payload #>> '{transaction,cvvResultCode}' = coalesce(p.cvv_result, 'NA')
	   AND d.payload #>> '{transaction,cavvResultCode}' = 'NA'
	   AND d.payload #>> '{transaction,responseCode}' = p.decline_code
	   AND d.payload #>> '{subscription,interval}' = 'monthly'
	   AND d.payload #>> '{subscription,subscriptionId}' = s.id::text
	   AND d.payload ? 'expiryDateUtc'}), $declines,
	'every queued decline carries the payer, the billing address, the codes and the subscription');
is(sq('SELECT count(*) FROM flexfactor.declines'), $declines,
	'the trigger queued exactly the declined recurring charges');
is(sq("SELECT count(*) FROM flexfactor.declines WHERE order_id LIKE 'CIT-%'"), '0',
	'customer-initiated declines are not queued');

# --- the pg_cron job exports (the worker's own timer is off)
my $export_runs = "FROM cron.job_run_details r JOIN cron.job j USING (jobid)
                   WHERE j.jobname = 'flexfactor-export'";
$node->poll_query_until('billing',
	"SELECT coalesce(sum(line_count), 0) = $declines FROM flexfactor.batches
	  WHERE state IN ('uploaded', 'answered')")
  or die 'the pg_cron job did not upload the declines in time: '
  . sq("SELECT string_agg(status || ' ' || coalesce(return_message, ''), '; ') $export_runs")
  . ' / ' . sq("SELECT string_agg(state || ' ' || coalesce(last_error, ''), '; ') FROM flexfactor.batches");
is(sq("SELECT count(*) FROM flexfactor.batches b WHERE NOT EXISTS (SELECT 1 $export_runs
         AND b.uploaded_at BETWEEN r.start_time AND coalesce(r.end_time, now()))"),
	'0', 'every batch was uploaded during a run of the pg_cron job');
is(sq("SELECT string_agg(line_count::text, ',' ORDER BY id) FROM flexfactor.batches"),
	join(',', @expected_lines), "batches of at most $batch_rows lines: @expected_lines");

# what reached FlexFactor, from the simulator's records
my %db_files = map { my ($n, $l, $s) = split /\|/; ($n => "$l $s") } split /\n/,
  sq('SELECT file_name, line_count, sha256 FROM flexfactor.batches');
my $received;
for (1 .. 100)
{
	$received = $sim->batches;
	last if scalar(grep { ($_->{status} // '') eq 'processed' } @$received) >= keys %db_files;
	select(undef, undef, undef, 0.1);
}
is_deeply({ map { ($_->{file} => "$_->{lineCount} $_->{sha256}") } @$received }, \%db_files,
	'the simulator received each file: same names, line counts and SHA-256');
is($sim->admin('GET', '/_admin/batches')->{linesReceived}, $declines, "it received $declines lines");
is(scalar(grep { $_->{status} eq 'processed' && $_->{accepted} == $_->{lineCount} } @$received),
	scalar(@expected_lines), 'and accepted every line of every file');

# the job's next run reads the result files
$node->poll_query_until('billing', "SELECT count(*) = $declines FROM flexfactor.orders")
  or die 'the result files were not read: ' . sq('SELECT count(*) FROM flexfactor.orders') . ' orders';
is(sq("SELECT string_agg(status || '=' || n, ' ' ORDER BY status)
         FROM (SELECT status, count(*) n FROM flexfactor.orders WHERE source = 'batch' GROUP BY 1) s"),
	join(' ', map { "$_=$first{$_}" } sort keys %first), 'the result files made the orders');
is(sq("SELECT count(*) FROM flexfactor.batches WHERE state <> 'answered'"), '0', 'every batch answered');

# --- a minute later FlexFactor has rescued the managed ones, two weeks later
# the rest expire: signed webhooks to the listener
$sim->advance(61);
$node->poll_query_until('billing',
	"SELECT count(*) = $final{APPROVED} FROM flexfactor.orders WHERE status = 'APPROVED'")
  or die 'order.completed webhooks were not applied';
$sim->advance(15 * 86400);
$node->poll_query_until('billing',
	"SELECT count(*) = $final{EXPIRED} FROM flexfactor.orders WHERE status = 'EXPIRED'")
  or die 'order.expired webhooks were not applied';

is(sq("SELECT string_agg(status || '=' || n, ' ' ORDER BY status)
         FROM (SELECT status, count(*) n FROM flexfactor.orders GROUP BY 1) s"),
	join(' ', map { "$_=$final{$_}" } sort keys %final), 'final statuses: ' . join(' ', %final));
my $hooks = $sim->webhooks;
my %delivered;
$delivered{ $_->{event} }++ for grep { $_->{status} eq 'delivered' } @{ $hooks->{events} };
# (an order decided at once is announced when its file is processed, before
# the worker has read the result file: that event waits for its order)
is_deeply(\%delivered, { 'order.completed' => $final{APPROVED}, 'order.cancelled' => $final{DECLINED},
		'order.expired' => $final{EXPIRED} }, 'the simulator delivered each webhook event');
is(scalar(grep { ($_->{status} // 0) != 200 } @{ $hooks->{attempts} }), 0,
	'every delivery was answered 200 at the first attempt');
is(sq('SELECT count(*) FROM flexfactor.webhook_events'), scalar @{ $hooks->{events} },
	'and stored once each');

# --- the callback's work in the billing schema
is(sq("SELECT count(*) FROM billing.invoices WHERE paid_via = 'flexfactor'"), $final{APPROVED},
	"$final{APPROVED} invoices paid through FlexFactor");
is(sq("SELECT count(*) FROM ((SELECT invoice_no FROM billing.invoices WHERE paid_via = 'flexfactor'
                              EXCEPT SELECT order_id FROM flexfactor.orders WHERE status = 'APPROVED')
                             UNION ALL
                             (SELECT order_id FROM flexfactor.orders WHERE status = 'APPROVED'
                              EXCEPT SELECT invoice_no FROM billing.invoices
                                      WHERE paid_via = 'flexfactor' AND status = 'paid')) d"),
	'0', 'exactly the invoices of approved orders are paid, by the callback');
is(sq("SELECT count(*) || ' ' || sum(p.amount * 100)::bigint FROM billing.payments p
         JOIN flexfactor.orders o ON o.order_session_key = p.flexfactor_order
        WHERE p.status = 'recovered' AND o.status = 'APPROVED' AND o.order_id = p.invoice_no
          AND p.amount * 100 = o.amount_cents"),
	"$final{APPROVED} $recovered_cents", 'each rescued charge recorded once as a payment with its amount');
is(sq('SELECT recovered_cents FROM flexfactor.recovery_stats'), $recovered_cents,
	'recovery_stats agrees on the amount recovered');
is(sq("SELECT count(*) FROM billing.subscriptions s
         JOIN billing.invoices i ON i.subscription_id = s.id
         JOIN flexfactor.orders o ON o.order_id = i.invoice_no AND o.status = 'EXPIRED'
        WHERE s.status = 'cancelled' AND i.status = 'uncollectible'
          AND s.cancel_reason = 'invoice ' || i.invoice_no || ' not recovered: FlexFactor order expired'"),
	$final{EXPIRED}, 'the subscription of each expired order is cancelled, its invoice uncollectible');
is(sq("SELECT count(*) FROM billing.subscriptions WHERE status = 'cancelled'"), $final{EXPIRED},
	'and no other subscription');
is(sq("SELECT count(*) FROM billing.subscriptions s JOIN billing.invoices i ON i.subscription_id = s.id
         JOIN flexfactor.orders o ON o.order_id = i.invoice_no AND o.status = 'DECLINED'
        WHERE s.status = 'past_due' AND s.needs_attention = 'FlexFactor declined the rescue of invoice ' || i.invoice_no"),
	$final{DECLINED}, 'the subscription of each declined order is flagged for a person');
is(sq("SELECT string_agg(status || '=' || n, ' ' ORDER BY status)
         FROM (SELECT status, count(*) n FROM billing.subscriptions GROUP BY 1) s"),
	"active=" . ($subscriptions - $final{EXPIRED} - $final{DECLINED}) . " cancelled=$final{EXPIRED}"
	  . " past_due=$final{DECLINED}", 'rescued subscriptions are active again');
is(sq("SELECT string_agg(status, ',') FROM (SELECT DISTINCT status FROM billing.invoices WHERE invoice_no LIKE 'CIT-%') s"),
	'past_due', 'customer-initiated declines stay past due');
is(sq("SELECT string_agg(callback_state || '=' || n, ' ')
         FROM (SELECT callback_state, count(*) n FROM flexfactor.order_events GROUP BY 1) s"),
	'done=' . ($declines + $final{APPROVED} - $first{APPROVED} + $final{EXPIRED}),
	'the callback returned for every status change');
is(scalar @{ $sim->idempotency->{acceptedMoreThanOnce} }, 0, 'FlexFactor accepted no decline twice');

# --- the jobs themselves
my ($runs, $ok) = split /\|/, sq("SELECT count(*), count(*) FILTER (WHERE status = 'succeeded'
                                   AND return_message = 'SELECT 1') $export_runs AND r.end_time IS NOT NULL");
cmp_ok($runs, '>=', 2, "the export job ran $runs times");
is($ok, $runs, "each run succeeded (cron.job_run_details: 'succeeded', 'SELECT 1')");
is(sq("SELECT count(*) FROM cron.job_run_details WHERE username <> 'billing_jobs' OR database <> 'billing'"), '0',
	'every run was billing_jobs in billing');
my $housekeeping = sq("SELECT command FROM cron.job WHERE jobname = 'flexfactor-housekeeping'");
my $old = sq("SELECT min(runid) $export_runs AND r.end_time IS NOT NULL");
sq("UPDATE cron.job_run_details SET end_time = end_time - interval '15 days' WHERE runid = $old");
my ($ret, $out, $err) = $node->psql('billing', "SET ROLE billing_jobs;\n$housekeeping",
	on_error_stop => 1);
is("$ret $err", '0 ', 'the housekeeping command runs with the job role\'s privileges');
is(sq("SELECT count(*) FROM cron.job_run_details WHERE runid = $old"), '0',
	'and removes a run that ended 15 days ago');
cmp_ok(sq("SELECT count(*) $export_runs"), '>=', $runs - 1, 'but not the recent ones');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();

