# ALTER EXTENSION flexfactor UPDATE from the previous release (docs/upgrading.md).
#
# The previous release's install script (sql/flexfactor--0.1.0.sql, frozen)
# is installed with this release's library, as after a package upgrade and
# a restart: the worker waits, saying once what to run; a merchant's decline
# trigger of that release keeps queueing.  Every table gets rows.  Then
# ALTER EXTENSION flexfactor UPDATE, and:
#  - pg_dump --schema-only --binary-upgrade (which, unlike a plain dump,
#    writes every member of the extension, its privileges and initial
#    privileges) of the updated database equals that of a fresh CREATE
#    EXTENSION, as do the configuration tables of pg_dump
#    (extconfig/extcondition) and the members (\dx+): a change to
#    sql/install/*.sql that is not also in the upgrade script fails here with
#    the diff;
#  - every row and every sequence position is kept;
#  - the merchant's trigger now runs the 0.2.0 function (C), and the
#    documented re-creation with the new arguments queues complete declines;
#  - the worker starts by itself, without a restart, and exports what was
#    queued before and after the update; the webhook listener answers 503
#    before the update (FlexFactor delivers again) and stores deliveries
#    after it; and again after DROP EXTENSION and CREATE EXTENSION at the
#    previous version.
use strict;
use warnings;
use File::Temp ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $previous = '0.1.0';
my $mid = '3f4e5d6c-7b8a-4c9d-8e0f-a1b2c3d4e5f6';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffupgrade070');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_070', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);
my $known_hosts = $sshd->write_known_hosts("$tmp/known_hosts");
my $wport = PostgreSQL::Test::Cluster::get_free_port();

my $node = ff_node('upgrade070',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '1'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir,
		known_hosts => $known_hosts),
	'flexfactor.webhook_listen_address' => '127.0.0.1',
	'flexfactor.webhook_port' => $wport,
	'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
	'log_error_verbosity' => 'verbose');
$node->start;
my $current = $node->safe_psql('postgres', "SELECT default_version FROM pg_available_extensions WHERE name = 'flexfactor'");
isnt($current, $previous, "this release ($current) is not the previous one ($previous)");
like($node->safe_psql('postgres', "SELECT string_agg(version, ' ' ORDER BY version) FROM pg_available_extension_versions WHERE name = 'flexfactor'"),
	qr/\b\Q$previous\E\b/, "$previous is installed beside $current");

sub sq { $node->safe_psql('ffdb', $_[0]) }

# ------------------------------------------------------------------
# 1. The previous release with this release's library
# ------------------------------------------------------------------
my $offset = -s $node->logfile;
$node->safe_psql('postgres', "CREATE DATABASE ffdb; CREATE DATABASE fresh; CREATE ROLE billing_app");
sq("CREATE EXTENSION flexfactor VERSION '$previous'");
is(sq("SELECT extversion FROM pg_extension WHERE extname = 'flexfactor'"), $previous,
	"CREATE EXTENSION flexfactor VERSION '$previous' works with the $current library");
my $wait_msg = qr/LOG:  00000: flexfactor worker is waiting for the extension in database "ffdb" to be updated from version \Q$previous\E to \Q$current\E\n.*DETAIL:  The flexfactor library is version \Q$current\E; the extension's SQL objects in that database are version \Q$previous\E\.\n.*HINT:  Run ALTER EXTENSION flexfactor UPDATE in that database; the worker starts by itself\./;
my $t_wait = Time::HiRes::time();
$node->wait_for_log($wait_msg, $offset);
pass('the worker logs that it waits for ALTER EXTENSION flexfactor UPDATE, with the versions');
my $wpid = ff_wait_for_worker($node, 'ffdb');
is(sq("SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'worker'"), 'waiting for extension update',
	'ff_worker_status: waiting for extension update');

# the listener: a genuine delivery is not taken by the previous release's objects
my $lpid = FFSim::wait_for_listener($node, $wport);
sub deliver_completed
{
	return FFSim::post_webhook(port => $wport, body => FFSim::webhook_body(Event => 'order.completed',
			OrderId => '11111111-1111-4111-8111-111111111111', ExternalOrderId => 'API-1'));
}
is(deliver_completed()->{status}, 503, 'the listener answers a signed delivery 503 before the update');
is(deliver_completed()->{status}, 503, '... every time');
$node->wait_for_log(qr/LOG:  00000: flexfactor webhook listener answers 503 until the extension in its database is updated from version \Q$previous\E to \Q$current\E\n.*\n.*HINT:  Run ALTER EXTENSION flexfactor UPDATE/, $offset);
pass('the listener logs why, with the hint');

# The merchant's billing table and decline trigger, as the previous
# release's README showed them; EXECUTE on ff_decline for the application.
sq(q{
CREATE SCHEMA billing;
CREATE TABLE billing.payments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_no  text NOT NULL,
    amount      numeric(12,2) NOT NULL,
    currency    text NOT NULL,
    card_token  text,
    email       text,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now());
CREATE TRIGGER payments_flexfactor AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency',
        'token=card_token', 'email=email', 'transaction_id=id', 'declined_at=created_at',
        'expiry_days=14', 'declined_if=status:declined');
GRANT EXECUTE ON FUNCTION flexfactor.ff_decline(text, bigint, text, text, text, text, text,
    timestamptz, text, boolean, timestamptz) TO billing_app;
INSERT INTO billing.payments (invoice_no, amount, currency, card_token, email, status) VALUES
    ('OLD-1', 19.99, 'usd', 'tok-1', 'a@example.com', 'declined'),
    ('OLD-2', 5.00, 'USD', 'tok-2', 'b@example.com', 'paid'),
    ('OLD-3', 42.00, 'EUR', 'tok-3', 'c@example.com', 'declined');
UPDATE billing.payments SET status = 'declined' WHERE invoice_no = 'OLD-2';
});
is(sq("SELECT string_agg(order_id, ',' ORDER BY id) FROM flexfactor.declines"), 'OLD-1,OLD-3,OLD-2',
	"the $previous trigger queues declines with the $current library (before the update)");
my $r = ff_run_sql($node, 'ffdb', "INSERT INTO billing.payments (invoice_no, amount, currency, card_token, status)
                                   VALUES ('OLD-BAD', 1.00, 'US', 'tok-9', 'declined')");
like($r->{stderr}, qr/ERROR:  22023: ff_enqueue_decline\(\) payload has an invalid transaction\.currency/,
	"... refusing what $previous refused, as it did");

# a batch fixed by the previous release, waiting for its upload
like(sq('SELECT flexfactor._create_evaluate_batch(2000)'), qr/^\d+$/, "a batch fixed by $previous (ready)");

# rows in every other table
sq(q{
INSERT INTO flexfactor.orders (order_id, order_session_key, transaction_id, idempotency_key, source,
                               amount_cents, currency, status, confirmation_id, last_response)
VALUES ('API-1', '11111111-1111-4111-8111-111111111111', 'tx-a1', '21111111-1111-4111-8111-111111111111',
        'api', 2500, 'USD', 'APPROVED', 'conf-1', '{"status": "APPROVED"}'),
       ('API-2', NULL, 'tx-a2', '31111111-1111-4111-8111-111111111111', 'api', 700, 'USD', 'PENDING', NULL, NULL);
INSERT INTO flexfactor.refunds (order_ref, amount_cents, idempotency_key, transaction_id, response)
SELECT id, 500, '41111111-1111-4111-8111-111111111111', 'rf-1', '{"success": true}'
  FROM flexfactor.orders WHERE order_id = 'API-1';
WITH b AS (INSERT INTO flexfactor.batches (kind, file_name, line_count, mid, state, attempts, uploaded_at, result_at)
           VALUES ('transmit', 'transmit_old.jsonl', 1, current_setting('flexfactor.mid'), 'answered', 1, now(), now())
           RETURNING id),
     q AS (INSERT INTO flexfactor.transmit_queue (payload, state, batch_id)
           SELECT '{"orderId": "T-1"}', 'batched', id FROM b RETURNING id, batch_id),
     l AS (INSERT INTO flexfactor.batch_lines (batch_id, sequence_number, transmit_queue_id, status)
           SELECT batch_id, 1, id, 'APPROVED' FROM q)
INSERT INTO flexfactor.result_files (file_name, kind, batch_id, sha256, line_count)
SELECT 'transmit_old.result.jsonl', 'result', id, repeat('ab', 32), 1 FROM b;
INSERT INTO flexfactor.webhook_events (event, order_session_key, external_order_id, body, received_via,
                                       apply_state, applied_at, nonce)
VALUES ('order.completed', '11111111-1111-4111-8111-111111111111', 'API-1', '{"x": 1}', 'sql',
        'applied', now(), 'nonce-old-1');
INSERT INTO flexfactor.webhook_rejections (remote_addr, http_status, reason)
VALUES ('127.0.0.1', 401, 'signature does not match');
});

# every table of the previous release has rows: their content and sequences, to compare after
my @tables = split /\n/, sq("SELECT c.relname FROM pg_class c JOIN pg_depend d ON d.objid = c.oid
    AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
    WHERE c.relkind = 'r' ORDER BY 1");
cmp_ok(scalar @tables, '>=', 10, scalar(@tables) . " tables in $previous");
my %columns;
for my $t (@tables)
{
	$columns{$t} = sq("SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
	                    WHERE attrelid = 'flexfactor.$t'::regclass AND attnum > 0 AND NOT attisdropped");
}
# count and digest of each table's rows (the columns it had before), one line
# a table; read after the update in the update's own transaction, before the
# worker, which starts at its commit, changes anything
my $rows_sql = join("\nUNION ALL ", map {
		"SELECT '$_ ' || count(*) || ' ' || md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), ''))
		   FROM (SELECT $columns{$_} FROM flexfactor.$_) r" } @tables) . ";\n";
my %before = map { (split / /, $_, 2) } split /\n/, sq($rows_sql);
for my $t (@tables)
{
	unlike($before{$t}, qr/^0 /, "$previous: $t has rows");
}
my $seqs_before = sq("SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ' ' ORDER BY sequencename)
                        FROM pg_sequences WHERE schemaname = 'flexfactor'");
my $seqs_sql = "SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ' ' ORDER BY sequencename)
                  FROM pg_sequences WHERE schemaname = 'flexfactor'
                   AND sequencename = ANY ('{" . join(',', map { (split /=/)[0] } split / /, $seqs_before) . "}')";

# at least two passes of the worker while waiting (one every 10 s): one message
my $left = 11 - (Time::HiRes::time() - $t_wait);
Time::HiRes::sleep($left) if $left > 0;
my @said = ff_log_since($node, $offset) =~ /waiting for the extension in database "ffdb" to be updated/g;
is(scalar @said, 1, 'the worker said it once, over several passes');
@said = ff_log_since($node, $offset) =~ /listener answers 503 until/g;
is(scalar @said, 1, 'the listener said it once, for two deliveries');
is(sq('SELECT count(*) FROM flexfactor.webhook_events WHERE received_via = \'listener\''), '0', 'no delivery stored');
is_deeply($sim->inbound_files, [], 'and exported nothing while waiting');

# ------------------------------------------------------------------
# 2. ALTER EXTENSION flexfactor UPDATE
# ------------------------------------------------------------------
$offset = -s $node->logfile;
# refused while a 0.1.0 decline trigger exists: it would make every declined
# payment written through it fail after the update
$r = ff_run_sql($node, 'ffdb', 'ALTER EXTENSION flexfactor UPDATE');
like($r->{stderr}, qr/ERROR:  55000: flexfactor 0\.2\.0 cannot be installed over decline triggers created with 0\.1\.0\nDETAIL:  Triggers: payments_flexfactor on billing\.payments\./,
	"the update is refused while a $previous decline trigger exists, naming it (55000)");
like($r->{stderr}, qr/HINT:  In one transaction: DROP TRIGGER each of them, ALTER EXTENSION flexfactor UPDATE, CREATE TRIGGER each again/,
	'... with the way through in its hint');
is(sq("SELECT extversion FROM pg_extension WHERE extname = 'flexfactor'"), $previous, "... still at $previous");
$r = ff_run_sql($node, 'ffdb', "INSERT INTO billing.payments (invoice_no, amount, currency, card_token, email, status)
                               VALUES ('OLD-AFTER-REFUSAL', 3.00, 'USD', 'tok-0', 'd\@example.com', 'declined')");
is($r->{ret}, 0, '... and the trigger still queues declines (no billing write fails)') or diag $r->{stderr};
is(sq("SELECT count(*) FROM flexfactor.declines WHERE order_id = 'OLD-AFTER-REFUSAL'"), '1', '... queued');
%before = map { (split / /, $_, 2) } split /\n/, sq($rows_sql);
$seqs_before = sq($seqs_sql);

# the way docs/upgrading.md gives: drop, update, create again, in one transaction
my $new_trigger = q{
CREATE TRIGGER payments_flexfactor AFTER INSERT OR UPDATE ON billing.payments
    FOR EACH ROW EXECUTE FUNCTION flexfactor.ff_decline_trigger(
        'order_id=invoice_no', 'amount_dollars=amount', 'currency=currency',
        'token=card_token', 'email=email', 'transaction_id=id', 'declined_at=created_at',
        'first_name=''Jane''', 'last_name=''Roe''', 'address_line1=''1 Main St''', 'city=''Springfield''',
        'country_code=''US''', 'subscription_id=invoice_no', 'subscription_interval=''monthly''',
        'expiry_days=14', 'declined_if=status:declined');
};
$r = ff_run_sql($node, 'ffdb', "BEGIN;\nDROP TRIGGER payments_flexfactor ON billing.payments;\nALTER EXTENSION flexfactor UPDATE;\n$new_trigger\n$rows_sql $seqs_sql;\nCOMMIT;");
is($r->{ret}, 0, "ALTER EXTENSION flexfactor UPDATE from $previous to $current") or diag $r->{stderr};
is(sq("SELECT extversion FROM pg_extension WHERE extname = 'flexfactor'"), $current, "now at $current");
like($r->{stderr}, qr/WARNING:  01000: EXECUTE on flexfactor\.ff_decline\(text,bigint,[^)]*\) granted to billing_app is dropped with the function\n.*\n.*HINT:  After the update: GRANT EXECUTE ON FUNCTION flexfactor\.ff_decline TO billing_app;/,
	'a WARNING names the grant on a replaced function and how to grant it again');

# the same schema as a fresh install
$node->safe_psql('fresh', 'CREATE EXTENSION flexfactor');

# pg_dump --binary-upgrade writes the extension's members; only what differs
# between any two databases is removed (object ids, relfrozenxid, the
# dump's own key), and the merchant's objects (schema billing) are left out.
sub schema_dump
{
	my ($db) = @_;
	my ($out, $err) = run_command([ 'pg_dump', '--schema-only', '--binary-upgrade', '-d', $node->connstr($db) ]);
	die "pg_dump $db: $err" unless defined $out && $out =~ /CREATE/;
	my @parts = split /\n--\n-- (Name: .*?)\n--\n/, $out;
	my $text = '';
	for (my $i = 1; $i < @parts; $i += 2)
	{
		next if $parts[$i] =~ /; Schema: billing;|^Name: billing; Type: SCHEMA;/;
		$text .= "-- $parts[$i]\n$parts[$i + 1]\n";
	}
	$text =~ s/^SELECT pg_catalog\.binary_upgrade_set_next_\w+\(.*\n//mg;
	$text =~ s/^SELECT pg_catalog\.binary_upgrade_create_empty_extension\(.*\n//mg;
	$text =~ s/^(?:SET relfrozenxid = |WHERE oid = ).*\n//mg;
	$text =~ s/^\\(?:un)?restrict .*\n//mg;
	# sequence positions are data (compared below, before and after)
	$text =~ s/^SELECT pg_catalog\.setval\(.*\n//mg;
	# the era of an installation is the time its CREATE EXTENSION (or, for
	# the updated one, its update) ran: one constant in one function's body
	$text =~ s/(FUNCTION flexfactor\._queue_era\(\)[^;]*?RETURN )'\d+'/${1}<era>/s;
	return $text;
}

sub same_text
{
	my ($got, $want, $name) = @_;
	return pass($name) if $got eq $want;
	my $a = File::Temp->new(SUFFIX => '.updated');
	my $b = File::Temp->new(SUFFIX => '.fresh');
	print $a $got;
	print $b $want;
	close $a;
	close $b;
	my ($diff) = run_command([ 'diff', '-u', $b->filename, $a->filename ]);
	fail($name);
	diag "--- fresh install, +++ updated:\n$diff";
}

my $updated_dump = schema_dump('ffdb');
my $fresh_dump = schema_dump('fresh');
cmp_ok(length $fresh_dump, '>', 50000, 'the fresh dump has the extension\'s objects');
same_text($updated_dump, $fresh_dump, "pg_dump --schema-only --binary-upgrade: updated from $previous = fresh $current");

my $config_sql = "SELECT string_agg(c.extconfig::regclass || ' ' || quote_literal(c.extcondition), E'\\n' ORDER BY c.extconfig::regclass::text)
                    FROM pg_extension e, unnest(e.extconfig, e.extcondition) c(extconfig, extcondition)
                   WHERE e.extname = 'flexfactor'";
same_text(sq($config_sql), $node->safe_psql('fresh', $config_sql),
	'the same tables and sequences registered for pg_dump (extconfig, extcondition)');
like(sq($config_sql), qr/flexfactor\.declines_id_seq/, '... sequences included');
my (undef, $members_updated) = $node->psql('ffdb', '\dx+ flexfactor');
my (undef, $members_fresh) = $node->psql('fresh', '\dx+ flexfactor');
same_text($members_updated, $members_fresh, 'the same members (\dx+ flexfactor)');

# every row and sequence position kept
my @after_lines = split /\n/, $r->{stdout};
my $seqs_after = pop @after_lines;
my %after = map { (split / /, $_, 2) } @after_lines;
is($after{$_}, $before{$_}, "$_: every row kept") for @tables;
is($seqs_after, $seqs_before, 'every sequence kept its position');

# ------------------------------------------------------------------
# 3. The merchant's trigger after the update
# ------------------------------------------------------------------
is(sq("SELECT p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') AND NOT p.prosecdef
         FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgname = 'payments_flexfactor'"), 't',
	"the merchant's trigger, created again in the update's transaction, calls ${current}'s ff_decline_trigger (C, the writer's rights)");
is(sq("INSERT INTO billing.payments (invoice_no, amount, currency, card_token, status)
       VALUES ('NEW-PAID', 3.00, 'USD', 'tok-0', 'paid') RETURNING invoice_no"), 'NEW-PAID',
	'a row that is not a decline is written as before');
sq(q{
INSERT INTO billing.payments (invoice_no, amount, currency, card_token, email, status)
VALUES ('NEW-1', 3.00, 'USD', 'tok-n1', 'd@example.com', 'declined');
});
is(sq("SELECT payload #>> '{billingInformation,city}' FROM flexfactor.declines WHERE order_id = 'NEW-1'"), 'Springfield',
	'with the new arguments it queues complete declines');
sq("GRANT EXECUTE ON FUNCTION flexfactor.ff_decline TO billing_app");
is(sq("SELECT has_function_privilege('billing_app', 'flexfactor.ff_decline(text,bigint,text,text,text,text,text,timestamptz,text,boolean,timestamptz,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,integer,integer)', 'EXECUTE')"),
	't', 'the GRANT the warning gave works');

# ------------------------------------------------------------------
# 4. The worker, without a restart
# ------------------------------------------------------------------
sq('SELECT flexfactor.ff_export_batch()');    # wakes it now rather than at its next check
$node->wait_for_log(qr/flexfactor worker found the extension at version \Q$current\E and is running/, $offset);
pass('the worker says it found the extension updated and is running');
is(ff_worker_pid($node, 'ffdb'), $wpid, 'the same worker process (no restart)');
ok($node->poll_query_until('ffdb',
		"SELECT count(*) = 5 FROM flexfactor.decline_status d JOIN flexfactor.batches b ON b.id = d.batch_id
		  WHERE b.state = 'uploaded'"),
	"the worker uploaded the $previous batch, the decline queued while the update was refused and the one queued after it");
my @files = grep { /^evaluate_.*\.jsonl$/ } @{ $sim->inbound_files };
is(scalar @files, sq("SELECT count(*) FROM flexfactor.batches WHERE kind = 'evaluate' AND state = 'uploaded'"),
	'one evaluate file in the inbound folder per uploaded batch') or diag explain \@files;
is(sq("SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'worker'"), 'idle', 'ff_worker_status: idle');
is(sq("SELECT count(*) FROM flexfactor.batches WHERE last_error IS NOT NULL"), '0', 'no batch has an error');

my $late = deliver_completed();
is($late->{status}, 200, 'after the update the listener takes deliveries (same process, no restart)');
is(FFSim::listener_pid($node), $lpid, '... the same listener process');
like(sq("SELECT apply_state FROM flexfactor.webhook_events WHERE nonce = '$late->{nonce}'"), qr/^(?:applied|duplicate)$/,
	'... stored and applied');

# ------------------------------------------------------------------
# 5. DROP EXTENSION, then CREATE EXTENSION at the previous version: the
#    listener, which had found the version right, checks it again (it went
#    on taking deliveries with whatever objects were there)
# ------------------------------------------------------------------
$offset = -s $node->logfile;
sq("DROP EXTENSION flexfactor CASCADE");
sq("CREATE EXTENSION flexfactor VERSION '$previous'");
my @answers = map { deliver_completed()->{status} } 1 .. 3;
is_deeply(\@answers, [ 503, 503, 503 ], "after DROP and CREATE EXTENSION VERSION '$previous' the listener answers 503");
is(sq("SELECT count(*) FROM flexfactor.webhook_events"), '0', 'and stores nothing in the older objects');
$node->wait_for_log(qr/LOG:  00000: flexfactor webhook listener answers 503 until the extension in its database is updated from version \Q$previous\E to \Q$current\E/, $offset);
pass('it says why once more');
@said = ff_log_since($node, $offset) =~ /listener answers 503 until/g;
is(scalar @said, 1, 'once for three deliveries');
is(FFSim::listener_pid($node), $lpid, 'the same listener process');
sq("DROP TRIGGER IF EXISTS payments_flexfactor ON billing.payments");
sq("ALTER EXTENSION flexfactor UPDATE");
my $again = deliver_completed();
is($again->{status}, 200, 'after ALTER EXTENSION flexfactor UPDATE it takes deliveries again');
is(sq("SELECT count(*) FROM flexfactor.webhook_events WHERE nonce = '$again->{nonce}'"), '1', '... stored');

$sim->stop;
$sshd->stop;
done_testing();
