# FlexFactorTest: helpers shared by flexfactor's TAP suites.
#
# Owns: making a PostgreSQL::Test::Cluster node that preloads flexfactor,
# waiting for the workers, and reading the server log.  Servers other than
# PostgreSQL (sshd, the simulator) are started by their own helpers.
package FlexFactorTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

our @EXPORT = qw(ff_node ff_start_serving ff_worker_pid ff_wait_for_worker
  ff_log_contains ff_log_since ff_wait_until ff_run_sql ff_set_conf
  ff_reload_and_wait ff_batch_of ff_create_batch ff_memory_of ff_proc_kb
  $FF_DECLINE_ARGS $FF_DECLINE_TIMES $FF_PAYMENT_ARGS $FF_PAYMENT_CARD_ARGS
  @FF_EVALUATE_REQUIRED ff_decline_args ff_payment_args ff_missing_fields ff_refused_ok
  ff_sftp_node ff_export ff_enqueue_declines ff_batch_line_orders);

# ---- complete request bodies (flexfactor-api.md 12a)
#
# The real FlexFactor (and the simulator, strict by default) answers 400 to
# an /evaluate body, a batch line or a /transmit body without the payer, the
# billing address, the subscription's interval, timestamps ...; the
# extension refuses such a body locally (FF023).  Every suite builds its
# bodies with ff_decline(...) / ff_payment(...) plus these arguments, kept
# here and nowhere else.  Values are SQL expressions.

# ff_decline(): the payer, the billing address and the subscription
my @DECLINE_ORDER = qw(email first_name last_name address_line1 city state zip_code
  country_code subscription_id subscription_interval declined_at expiry);
our %FF_DECLINE_DEFAULTS = (
	email => q{'jane@example.com'},
	first_name => q{'Jane'},
	last_name => q{'Roe'},
	address_line1 => q{'1 Main St'},
	city => q{'Springfield'},
	state => q{'IL'},
	zip_code => q{'62701'},
	country_code => q{'US'},
	subscription_id => q{'sub-9'},
	subscription_interval => q{'monthly'},
	# when the charge failed: fixed, so that rebuilding a body for a retry
	# gives the same bytes (the simulator answers 409 to the same key with
	# another body)
	declined_at => q{'2026-11-20 10:00:00+00'},
	# the managed-MIT rescue window (the simulator takes at most 21 days
	# ahead): whole days, the same bytes all day
	expiry => q{date_trunc('day', now()) + interval '14 days'});

# ff_payment(): the payer, when it was paid, the subscription; the card's
# details separately (all of them or none)
my @PAYMENT_ORDER = qw(email paid_at subscription_id subscription_interval
  holder_name card_type card_brand card_country expiration_month expiration_year
  card_bin card_last4);
my @PAYMENT_CARD = qw(holder_name card_type card_brand card_country expiration_month
  expiration_year card_bin card_last4);
our %FF_PAYMENT_DEFAULTS = (
	email => q{'jane@example.com'},
	paid_at => q{'2026-11-20 10:00:00+00'},
	subscription_id => q{'sub-9'},
	subscription_interval => q{'monthly'},
	holder_name => q{'Jane Roe'},
	card_type => q{'credit'},
	card_brand => q{'visa'},
	card_country => q{'US'},
	expiration_month => q{3},
	expiration_year => q{2030},
	card_bin => q{'424242'},
	card_last4 => q{'4242'});

sub _named_args
{
	my ($order, $defaults, %o) = @_;
	my %v = (%$defaults, %o);
	my @keys = ((grep { exists $v{$_} } @$order), (sort grep { my $k = $_; !grep { $_ eq $k } @$order } keys %o));
	return join ', ', map { "$_ => $v{$_}" } grep { defined $v{$_} } @keys;
}

# "email => 'jane@example.com', ... subscription_interval => 'monthly'"
our $FF_DECLINE_ARGS = join ', ',
  map { "$_ => $FF_DECLINE_DEFAULTS{$_}" } grep { !/^(declined_at|expiry)$/ } @DECLINE_ORDER;
# "declined_at => ..., expiry => ..." for calls that pass neither
our $FF_DECLINE_TIMES = join ', ', map { "$_ => $FF_DECLINE_DEFAULTS{$_}" } qw(declined_at expiry);
our $FF_PAYMENT_CARD_ARGS = join ', ', map { "$_ => $FF_PAYMENT_DEFAULTS{$_}" } @PAYMENT_CARD;
our $FF_PAYMENT_ARGS = join ', ', map { "$_ => $FF_PAYMENT_DEFAULTS{$_}" } @PAYMENT_ORDER;

# every field of an /evaluate body (and so of a batch line) that the real
# service requires, as dot paths: removed in turn, each is refused locally
our @FF_EVALUATE_REQUIRED = qw(orderId isMIT isRecurring
  transaction.id transaction.amount transaction.currency transaction.timestampUtc
  transaction.responseCode transaction.responseCodeSource transaction.avsResultCode
  transaction.cvvResultCode transaction.cavvResultCode
  payer.email billingInformation.firstName billingInformation.lastName
  billingInformation.addressLine1 billingInformation.city billingInformation.country
  billingInformation.countryCode paymentMethod.cardNumber
  subscription.subscriptionId subscription.interval expiryDateUtc);

# The named arguments that complete an ff_decline(order_id, amount_cents,
# currency, card_token, transaction_id) call: $FF_DECLINE_ARGS and
# $FF_DECLINE_TIMES.  %o replaces some (SQL expressions), adds others, and
# leaves out those given as undef (a call that passes them itself):
#   ff_decline_args(email => undef, expiry => "now() + interval '1 day'")
sub ff_decline_args { return _named_args(\@DECLINE_ORDER, \%FF_DECLINE_DEFAULTS, @_); }

# The same for ff_payment(order_id, amount_cents, currency, transaction_id):
# $FF_PAYMENT_ARGS, with the same overrides.
sub ff_payment_args { return _named_args(\@PAYMENT_ORDER, \%FF_PAYMENT_DEFAULTS, @_); }

# The fields an FF023 refusal names as missing (from its message
# "... that FlexFactor would refuse: missing a, b; invalid c (why)"), sorted.
sub ff_missing_fields
{
	my ($message) = @_;
	return [] unless ($message // '') =~ /would refuse: missing (.*?)(?:; invalid .*)?$/;
	return [ sort split /, /, $1 ];
}

# Test that $e (FFSim::sql_error's answer) is a local FF023 refusal naming
# exactly the fields @fields as missing.
sub ff_refused_ok
{
	my ($e, $what, @fields) = @_;
	my $ok = is($e->{sqlstate}, 'FF023', "$what: refused locally with FF023");
	$ok &&= is_deeply(ff_missing_fields($e->{message}), [ sort @fields ],
		"$what: the error names " . join(', ', @fields));
	diag $e->{stderr} unless $ok;
	return $ok;
}

# A new, not yet started node that preloads flexfactor.  %conf is written
# to postgresql.conf as "key = 'value'".
sub ff_node
{
	my ($name, %conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => delete $conf{allows_streaming});
	# the framework turns restart_after_crash off; crash tests need it on
	my $extra = "shared_preload_libraries = 'flexfactor'\nrestart_after_crash = on\n";
	$extra .= "$_ = '$conf{$_}'\n" for sort keys %conf;
	$node->append_conf('postgresql.conf', $extra);
	return $node;
}

# Start $node, create database $dbname (with $create_options, if given) and
# the extension in it, and wait for the worker to serve it; returns its pid.
sub ff_start_serving
{
	my ($node, $dbname, $create_options) = @_;
	$node->start;
	$node->safe_psql('postgres', "CREATE DATABASE $dbname" . ($create_options ? " $create_options" : ''));
	$node->safe_psql($dbname, 'CREATE EXTENSION flexfactor');
	return ff_wait_for_worker($node, $dbname);
}

# A node serving database "ffdb" for merchant $mid whose worker uploads to
# "$dir/inbound" and reads answers from "$dir/outbound" on $sshd (an FFSshd),
# exporting only when asked (batch_interval 0); %conf: more settings.
# Returns the node and the two folders.
sub ff_sftp_node
{
	my ($name, $mid, $sshd, $dir, %conf) = @_;
	my ($inbound, $outbound) = ("$dir/inbound", "$dir/outbound");
	mkdir $_ or die "mkdir $_: $!" for $inbound, $outbound;
	my $node = ff_node($name,
		'flexfactor.database' => 'ffdb',
		'flexfactor.mid' => $mid,
		'flexfactor.batch_interval' => '0',
		'flexfactor.batch_retry_base' => '1',
		%conf,
		$sshd->node_settings(inbound => $inbound, outbound => $outbound));
	ff_start_serving($node, 'ffdb');
	return ($node, $inbound, $outbound);
}

# SELECT flexfactor.ff_export_batch() in $dbname (ff_run_sql's result).
sub ff_export
{
	my ($node, $dbname) = @_;
	return ff_run_sql($node, $dbname, "SET statement_timeout = '120s'; SELECT flexfactor.ff_export_batch()");
}

# Queue $n complete declines "$prefix-1" .. "$prefix-$n" with ff_enqueue_decline().
sub ff_enqueue_declines
{
	my ($node, $dbname, $prefix, $n) = @_;
	return $node->safe_psql($dbname,
		"SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline('$prefix-' || i, 1999, 'USD',
		   'tok-' || i, 'tx-$prefix-' || i, " . ff_decline_args() . ")))
		 FROM generate_series(1, $n) i");
}

# The lines of batch $batch as [sequence number, orderId], in order: what an
# answer file must answer.
sub ff_batch_line_orders
{
	my ($node, $dbname, $batch) = @_;
	return map { [ split / /, $_, 2 ] } split /\n/,
	  $node->safe_psql($dbname, "SELECT sequence_number || ' ' || (line::jsonb->>'orderId')
	                             FROM flexfactor.batch_file_lines($batch) ORDER BY 1");
}

# pid of the running flexfactor worker connected to $dbname, or '' if none.
sub ff_worker_pid
{
	my ($node, $dbname) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity
		  WHERE backend_type = 'flexfactor worker' AND datname = '$dbname'");
}

# Wait until a worker is connected to $dbname (and, if given, its pid is
# not $old_pid); returns the pid.
sub ff_wait_for_worker
{
	my ($node, $dbname, $old_pid) = @_;
	# one query per try, errors included: after a kill -9 the server restarts
	# every process, and a connection may fail (or a second query find the
	# server restarting) just after the new worker was seen
	my $err = '';
	my $pid = ff_wait_until(sub {
			my $p = eval { ff_worker_pid($node, $dbname) };
			$err = $@ if $@;
			return (defined $p && $p =~ /^\d+$/ && (!defined $old_pid || $p != $old_pid)) ? $p : undef;
		}, 180);
	die "timed out waiting for a flexfactor worker in $dbname" . ($err ? " (last error: $err)" : '') unless $pid;
	return $pid;
}

# Poll $cond (a code ref) every 50 ms for at most $secs seconds (60);
# returns its last value.
sub ff_wait_until
{
	my ($cond, $secs) = @_;
	my $until = Time::HiRes::time() + ($secs // 60);
	while (Time::HiRes::time() < $until)
	{
		my $v = $cond->();
		return $v if $v;
		Time::HiRes::sleep(0.05);
	}
	return $cond->();
}

# psql with verbose messages: {ret, stdout, stderr, warnings => [[sqlstate, message]]}
sub ff_run_sql
{
	my ($node, $dbname, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($dbname, "\\set VERBOSITY verbose\n$sql");
	my @w;
	push @w, [ $1, $2 ] while ($err // '') =~ /^(?:psql:\S+ )?WARNING:\s+([0-9A-Z]{5}): (.*)$/mg;
	return { ret => $ret, stdout => $out, stderr => $err // '', warnings => \@w };
}

# ALTER SYSTEM SET $name = '$value', reload, and wait until a new session sees it.
sub ff_set_conf
{
	my ($node, $dbname, $name, $value) = @_;
	$node->safe_psql($dbname, "ALTER SYSTEM SET $name = '$value'; SELECT pg_reload_conf()");
	$node->poll_query_until($dbname, "SELECT current_setting('$name') = '$value'")
	  or die "$name did not become $value";
}

# Run $sql (ALTER SYSTEM ...), reload, and wait until the worker has reloaded.
sub ff_reload_and_wait
{
	my ($node, $dbname, $sql) = @_;
	my $status = "FROM flexfactor.ff_worker_status() WHERE role = 'worker'";
	my $reloads = $node->safe_psql($dbname, "SELECT config_reloads $status");
	$node->safe_psql($dbname, "$sql; SELECT pg_reload_conf()");
	$node->poll_query_until($dbname, "SELECT config_reloads > $reloads $status")
	  or die 'worker did not reload its configuration';
}

# The batch ids (comma-separated) of the declines whose order id starts "$prefix-".
sub ff_batch_of
{
	my ($node, $dbname, $prefix) = @_;
	return $node->safe_psql($dbname, "SELECT string_agg(DISTINCT batch_id::text, ',')
	    FROM flexfactor.decline_status WHERE order_id LIKE '$prefix-%'");
}

# Fix a batch the way the worker does ($call: "_create_evaluate_batch(2000)",
# say) and return its id.  The call returns NULL while a transaction older
# than the queued rows is still running (the worker storing a result file,
# say) or while an exporter holds the queue; it is retried for up to $secs
# seconds (default 120), then the test dies naming the transactions that
# held the horizon, instead of going on with an empty id.
sub ff_create_batch
{
	my ($node, $dbname, $call, $secs) = @_;
	my $id = ff_wait_until(sub { $node->safe_psql($dbname, "SELECT flexfactor.$call") }, $secs // 120);
	return $id if $id;
	die "flexfactor.$call made no batch within " . ($secs // 120) . " s; transactions with an xid:\n"
	  . $node->safe_psql($dbname, "SELECT pid, backend_type, backend_xid, xact_start, state, left(query, 80)
	      FROM pg_stat_activity WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL");
}

# Server log text written after byte offset $offset.
sub ff_log_since
{
	my ($node, $offset) = @_;
	return substr(slurp_file($node->logfile), $offset // 0);
}

sub ff_log_contains
{
	my ($node, $pattern, $offset) = @_;
	return ff_log_since($node, $offset) =~ $pattern;
}

# A field of /proc/$pid/status in kB (VmRSS, VmHWM, RssAnon ...).
sub ff_proc_kb
{
	my ($pid, $field) = @_;
	my ($kb) = slurp_file("/proc/$pid/status") =~ /^\Q$field\E:\s+(\d+)/m;
	return $kb;
}

# Grand total and TopMemoryContext's own total (bytes) of the server
# process $pid, from pg_log_backend_memory_contexts(), taken while it is
# idle (queried through $dbname).
sub ff_memory_of
{
	my ($node, $dbname, $pid) = @_;
	$node->poll_query_until($dbname, "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid");
	my $off = -s $node->logfile;
	$node->safe_psql($dbname, "SELECT pg_log_backend_memory_contexts($pid)");
	my ($grand, $top);
	ff_wait_until(sub {
		my $t = ff_log_since($node, $off);
		($top) = $t =~ /\[$pid\] [^\n]*?LOG:  (?:00000: )?level: [01]; TopMemoryContext: (\d+) total/;
		($grand) = $t =~ /\[$pid\] [^\n]*?LOG:  (?:00000: )?Grand total: (\d+) bytes/;
		defined $grand;
	}, 30);
	return ($grand // -1, $top // -1);
}

1;
