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
  ff_reload_and_wait ff_batch_of);

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
	my $cond = "backend_type = 'flexfactor worker' AND datname = '$dbname'";
	$cond .= " AND pid <> $old_pid" if defined $old_pid;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE $cond")
	  or die "timed out waiting for a flexfactor worker in $dbname";
	return ff_worker_pid($node, $dbname);
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

1;
