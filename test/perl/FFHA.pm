# FFHA: a pg_auto_failover formation and HAProxy on loopback, for
# flexfactor's high-availability suite (test/ha/t).
#
# Owns: whether this machine can run the suite (pg_autoctl, the
# pgautofailover extension in this PostgreSQL, haproxy); a monitor and data
# nodes made and driven with pg_autoctl as the current account (its
# configuration, state and pid files under the test's own directory, never
# the account's home), flexfactor preloaded on every node; the node's
# state as the monitor sees it; killing a node the way a machine dies
# (pg_autoctl and the postmaster, kill -9, the postmaster's children left
# to notice by themselves); switchover and synchronous/asynchronous
# replication through pg_autoctl; HAProxy in front of the nodes' webhook
# listeners with the /healthz check; and a watcher that records every
# state of every file of a folder.  Everything it starts is stopped at END.
# Core Perl and the PostgreSQL TAP framework only.
#
#   my $ha = FFHA->new(common => \%settings, node_conf => sub { my ($name) = @_; ... });
#   $ha->start_monitor;
#   my $n1 = $ha->add_node('node1');     # a PostgreSQL::Test::Cluster
#   my $n2 = $ha->add_node('node2');
#   $ha->wait_states(node1 => 'primary', node2 => 'secondary');
#   my $pm = $ha->kill_node($n1);        # failover follows
#   my $lb = FFHA::HAProxy->start($dir, servers => [[node1 => $p1], [node2 => $p2]]);
package FFHA;

use strict;
use warnings;
use Carp;
use File::Basename ();
use File::Path ();
use IPC::Run ();
use JSON::PP ();
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes ();
use FFSim;
use FlexFactorTest ();

my @formations;    # stopped at END

# The pg_auto_failover monitor's timings: a node is unhealthy after about
# 2 s without answers, and a primary that cannot be reached is given 3 s to
# demote itself (defaults: 20 s and 30 s); a failover takes about 6 s.
our %MONITOR_TUNING = (
	'pgautofailover.health_check_period' => 1000,
	'pgautofailover.health_check_retry_delay' => 500,
	'pgautofailover.health_check_timeout' => 1000,
	'pgautofailover.health_check_max_retries' => 1,
	'pgautofailover.node_considered_unhealthy_timeout' => 2000,
	'pgautofailover.primary_demote_timeout' => 3000);

sub _which
{
	my ($prog) = @_;
	for my $d (split /:/, $ENV{PATH} // '')
	{
		return "$d/$prog" if -x "$d/$prog";
	}
	return undef;
}

sub _pg_config
{
	my ($what) = @_;
	my $out = `pg_config --$what`;
	chomp $out;
	return $out;
}

=pod

FFHA::unavailable(): '' when this machine can run the suite, else why not
(for plan skip_all).  Debian packages pg_auto_failover for its own
PostgreSQL 15 (postgresql-15-auto-failover); a PostgreSQL built elsewhere
(the project's private 18) has no pgautofailover extension.

=cut

sub unavailable
{
	my $version = _pg_config('version');
	return 'pg_autoctl is not installed (Debian: pg-auto-failover-cli; tools/install-deps.sh)'
	  unless _which('pg_autoctl');
	return "$version has no pgautofailover extension (Debian packages pg_auto_failover for its "
	  . 'own PostgreSQL 15 only: postgresql-15-auto-failover)'
	  unless -f _pg_config('sharedir') . '/extension/pgautofailover.control';
	return 'haproxy is not installed (Debian: haproxy; tools/install-deps.sh)'
	  unless _which('haproxy') || -x '/usr/sbin/haproxy';
	return '';
}

=pod

FFHA->new(common => \%settings, node_conf => sub { ($name) -> %settings }):
a formation under the test's temporary directory.  common: settings every
data node shares (written after pg_auto_failover's own, so they win;
copied by base backups and pg_rewind, so they must be the same on every
node).  node_conf: settings of one node (its webhook port, say), in
<node dir>/local.conf outside the data directory, which the shared
settings include as '../local.conf': a base backup or pg_rewind never
carries one node's settings to another.

=cut

sub new
{
	my ($class, %o) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir('ffha');
	my $self = bless { dir => $dir, common => $o{common} // {}, node_conf => $o{node_conf},
		nodes => {}, runs => {} }, $class;
	# pg_autoctl keeps its configuration, state and pid files here, not in
	# the account's home
	$ENV{XDG_CONFIG_HOME} = "$dir/xdg/config";
	$ENV{XDG_DATA_HOME} = "$dir/xdg/data";
	$ENV{XDG_RUNTIME_DIR} = "$dir/xdg/run";
	File::Path::make_path(map { "$dir/xdg/$_" } qw(config data run));
	$self->{bindir} = _pg_config('bindir');
	push @formations, $self;
	return $self;
}

sub dir { $_[0]{dir} }
sub monitor_port { $_[0]{monitor_port} }
sub monitor_uri { "postgres://autoctl_node\@127.0.0.1:$_[0]{monitor_port}/pg_auto_failover?sslmode=disable" }
sub node { $_[0]{nodes}{ $_[1] } }

# pg_autoctl with a bound wait; returns [exit status, stdout, stderr]; dies on
# a timeout, and when the command fails unless fail_ok.
sub autoctl
{
	my ($self, $args, %o) = @_;
	my ($out, $err) = ('', '');
	my $t = IPC::Run::timer($o{timeout} // 120);
	my $h = IPC::Run::start([ 'pg_autoctl', @$args ], '<', \undef, '>', \$out, '2>', \$err, $t);
	eval { $h->finish; 1 } or do {
		$h->kill_kill;
		croak "pg_autoctl @$args: no end within " . ($o{timeout} // 120) . " s: $@\n$err";
	};
	my $status = $h->result(0);
	$self->_note("pg_autoctl @$args", $status, $out, $err);
	croak "pg_autoctl @$args failed ($status):\n$err" if $status != 0 && !$o{fail_ok};
	return [ $status, $out, $err ];
}

sub _note
{
	my ($self, $what, $status, $out, $err) = @_;
	my $log = "$PostgreSQL::Test::Utils::log_path/" . File::Basename::basename($0, '.pl') . '_autoctl_cmds.log';
	if (open(my $fh, '>>', $log))
	{
		print $fh "### $what (exit $status)\n$out$err\n";
		close $fh;
	}
}

# `pg_autoctl run` for a monitor or a node, in the background, in its own
# session (so that kill_node can take it away at once), output to a log.
sub _run
{
	my ($self, $name, $pgdata) = @_;
	my $log = "$PostgreSQL::Test::Utils::log_path/" . File::Basename::basename($0, '.pl') . "_${name}_autoctl.log";
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setsid();
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log) or POSIX::_exit(127);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(127);
		exec('pg_autoctl', 'run', '--pgdata', $pgdata) or POSIX::_exit(127);
	}
	$self->{runs}{$name} = $pid;
	return $pid;
}

=pod

$ha->start_monitor: create the monitor (loopback only, trust from
127.0.0.0/8, no TLS), tune its timings (%MONITOR_TUNING), run it.

=cut

sub start_monitor
{
	my ($self) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $pgdata = "$self->{dir}/monitor";
	$self->{monitor_port} = $port;
	$self->{monitor_pgdata} = $pgdata;
	# made here so that its settings are there from the first start:
	# pg_auto_failover would listen on every address, put its socket in the
	# system's folder and size its memory for the whole machine (ours come
	# after its include, so they win)
	$self->_initdb($pgdata, "# test/perl/FFHA.pm\nshared_buffers = '32MB'\nfsync = off\n"
		  . join('', map { "$_ = $MONITOR_TUNING{$_}\n" } sort keys %MONITOR_TUNING));
	$self->autoctl([ 'create', 'monitor', '--pgctl', "$self->{bindir}/pg_ctl", '--pgdata', $pgdata,
		'--pgport', $port, '--hostname', '127.0.0.1', '--auth', 'trust', '--no-ssl' ]);
	$self->autoctl([ 'config', 'set', '--pgdata', $pgdata, 'postgresql.listen_addresses', '127.0.0.1' ]);
	_append("$pgdata/postgresql.conf", "listen_addresses = '127.0.0.1'\n");
	$self->_run('monitor', $pgdata);
	$self->_wait(sub { $self->monitor_sql('SELECT 1') eq '1' }, 60, 'the monitor to accept connections');
	return $self;
}

# initdb (as the TAP framework does), with $conf appended to postgresql.conf
# and the Unix socket in the test's socket folder ($PGHOST), where
# pg_autoctl, run with the test's environment, looks for it.
sub _initdb
{
	my ($self, $pgdata, $conf) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$self->{bindir}/initdb", '-D', $pgdata, '-A', 'trust', '-N', '--no-instructions' ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120))
	  or croak "initdb $pgdata failed: $err";
	_append("$pgdata/postgresql.conf", "\n$conf" . _conf_lines(unix_socket_directories => $ENV{PGHOST}));
	return;
}

sub monitor_sql
{
	my ($self, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$self->{bindir}/psql", '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', "host=127.0.0.1 port=$self->{monitor_port} dbname=pg_auto_failover user=autoctl_node",
			'-c', $sql ], '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(30));
	chomp $out;
	return $out;
}

sub _append
{
	my ($file, $text) = @_;
	open(my $fh, '>>', $file) or croak "cannot append to $file: $!";
	print $fh $text;
	close $fh;
}

sub _conf_lines
{
	my (%conf) = @_;
	my $t = '';
	for my $k (sort keys %conf)
	{
		(my $v = $conf{$k}) =~ s/'/''/g;
		$t .= "$k = '$v'\n";
	}
	return $t;
}

=pod

$ha->add_node($name): a data node (a PostgreSQL::Test::Cluster whose
server pg_autoctl runs): the first becomes the primary, the next its
standby (a base backup).  Its server log is $node->logfile; connections
go through the node's Unix socket, as for any test node.  Returns once
pg_autoctl runs it (wait_states for its role).

=cut

sub add_node
{
	my ($self, $name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $base = File::Basename::dirname($node->data_dir);
	my %local = (
		log_directory => File::Basename::dirname($node->logfile),
		log_filename => File::Basename::basename($node->logfile),
		$self->{node_conf} ? $self->{node_conf}->($name) : ());
	open(my $fh, '>', "$base/local.conf") or croak "local.conf: $!";
	print $fh "# this node's own settings (test/perl/FFHA.pm)\n" . _conf_lines(%local);
	close $fh;
	# the first node is made here with the shared settings, after
	# pg_auto_failover's include (line 1) so they win; the next ones are
	# base backups of it, which copy them
	$self->_initdb($node->data_dir, "# test/perl/FFHA.pm: every node's settings\n"
		  . _conf_lines(
			shared_preload_libraries => 'pg_stat_statements,flexfactor',
			shared_buffers => '64MB',
			fsync => 'off',
			logging_collector => 'on',
			log_rotation_age => '0',
			log_rotation_size => '0',
			log_line_prefix => '%m [%p] %q%a ',
			%{ $self->{common} })
		  . "include_if_exists = '../local.conf'\n")
	  unless %{ $self->{nodes} };
	$self->autoctl([ 'create', 'postgres', '--pgctl', "$self->{bindir}/pg_ctl",
		'--pgdata', $node->data_dir, '--pghost', $ENV{PGHOST}, '--pgport', $node->port,
		'--listen', '127.0.0.1', '--hostname', '127.0.0.1', '--name', $name,
		'--auth', 'trust', '--no-ssl', '--monitor', $self->monitor_uri ], timeout => 180);
	$self->{nodes}{$name} = $node;
	$self->_run($name, $node->data_dir);
	$self->_wait(sub { $self->_is_up($node) }, 120, "node $name to accept connections");
	return $node;
}

sub _is_up
{
	my ($self, $node) = @_;
	my ($ret, $out) = $node->psql('postgres', 'SELECT 1');
	return defined $ret && $ret == 0 && ($out // '') eq '1';
}

sub _wait
{
	my ($self, $cond, $secs, $what) = @_;
	my $deadline = Time::HiRes::time() + $secs;
	while (Time::HiRes::time() < $deadline)
	{
		my $v = eval { $cond->() };
		return $v if $v;
		Time::HiRes::sleep(0.1);
	}
	croak "timed out after $secs s waiting for $what";
}

=pod

FFHA->flexfactor_pair(common => \%settings): the suite's formation: a
monitor, node1 the primary and node2 its synchronous standby, flexfactor
preloaded on both with flexfactor.database = 'ffdb', a webhook listener on
127.0.0.1 (each node its own port: $ha->webhook_port($name)) with the
public test key, the database ffdb (UTF8, C) and the extension made on the
primary and replayed on the standby, the primary's worker running, and
HAProxy ($ha->lb) in front of both listeners, only node1 in service.

$ha->wait_replayed($primary, $standby): wait (bounded) until $standby has
replayed everything $primary had written when it was called.

=cut

sub flexfactor_pair
{
	my ($class, %o) = @_;
	my %wport = map { ($_ => PostgreSQL::Test::Cluster::get_free_port()) } qw(node1 node2);
	my $ha = $class->new(
		common => {
			'flexfactor.database' => 'ffdb',
			'flexfactor.webhook_listen_address' => '127.0.0.1',
			'flexfactor.webhook_key' => $FFSim::WEBHOOK_TEST_KEY,
			%{ $o{common} // {} } },
		node_conf => sub { ('flexfactor.webhook_port' => $wport{ $_[0] }) });
	$ha->{webhook_port} = \%wport;
	$ha->start_monitor;
	my $n1 = $ha->add_node('node1');
	$ha->wait_states(node1 => 'single');
	my $n2 = $ha->add_node('node2');
	$ha->wait_states(node1 => 'primary', node2 => 'secondary');
	$n1->safe_psql('postgres', "CREATE DATABASE ffdb ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0");
	$n1->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
	FlexFactorTest::ff_wait_for_worker($n1, 'ffdb');
	$ha->wait_replayed($n1, $n2);
	$ha->{lb} = FFHA::HAProxy->start("$ha->{dir}/haproxy",
		servers => [ [ node1 => $wport{node1} ], [ node2 => $wport{node2} ] ]);
	$ha->{lb}->wait_only_up('node1', 60);
	return $ha;
}

sub lb { $_[0]{lb} }
sub webhook_port { $_[0]{webhook_port}{ $_[1] } }

sub wait_replayed
{
	my ($self, $primary, $standby) = @_;
	my $lsn = $primary->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
	$standby->poll_query_until('postgres', "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")
	  or croak $standby->name . " did not replay $lsn";
	return;
}

=pod

$ha->states: {name => {reported => ..., assigned => ..., health => ...}} as
the monitor sees them.  $ha->wait_states(name => 'primary|wait_primary',
...; timeout => s): wait (bounded, default 120 s) until each named node
reports and is assigned a state matching the pattern (whole word);
returns the seconds waited.  $ha->primary_name: the node whose reported
and assigned state is primary or wait_primary, or undef.

=cut

sub states
{
	my ($self) = @_;
	my $json = $self->monitor_sql(
		"SELECT coalesce(json_agg(json_build_object('name', nodename, 'reported', reportedstate,
		        'assigned', goalstate, 'health', health, 'lsn', reportedlsn::text)), '[]')
		   FROM pgautofailover.node");
	my $list = JSON::PP->new->decode($json || '[]');
	return { map { ($_->{name} => $_) } @$list };
}

sub wait_states
{
	my ($self, %want) = @_;
	my $timeout = delete $want{timeout} // 120;
	my $t0 = Time::HiRes::time();
	my $last;
	my $ok = eval {
		$self->_wait(sub {
				$last = $self->states;
				for my $n (keys %want)
				{
					my $s = $last->{$n} or return 0;
					return 0 unless $s->{reported} =~ /^(?:$want{$n})$/ && $s->{assigned} =~ /^(?:$want{$n})$/;
				}
				return 1;
			}, $timeout, 'states');
		1;
	};
	croak 'timed out after ' . $timeout . ' s waiting for states '
	  . join(', ', map { "$_ = $want{$_}" } sort keys %want) . '; the monitor says: '
	  . join(', ', map { "$_ $last->{$_}{reported}/$last->{$_}{assigned}" } sort keys %{ $last // {} })
	  unless $ok;
	return Time::HiRes::time() - $t0;
}

sub primary_name
{
	my ($self) = @_;
	my $s = $self->states;
	my ($p) = grep { $s->{$_}{reported} =~ /^(primary|wait_primary)$/ && $s->{$_}{assigned} eq $s->{$_}{reported} }
	  sort keys %$s;
	return $p;
}

sub _children
{
	my ($pid) = @_;
	my @kids;
	opendir(my $dh, '/proc') or return ();
	for my $p (grep { /^\d+$/ } readdir $dh)
	{
		open(my $fh, '<', "/proc/$p/stat") or next;
		my $stat = <$fh> // '';
		close $fh;
		push @kids, $p if $stat =~ /^\d+ \(.*\) \S (\d+)/ && $1 == $pid;
	}
	closedir $dh;
	return @kids;
}

sub _comm
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/comm") or return '';
	my $c = <$fh> // '';
	close $fh;
	chomp $c;
	return $c;
}

=pod

$ha->kill_node($node): the node's machine dies: kill -9 of its pg_autoctl
processes (so nothing restarts the server), then of its postmaster.  The
postmaster's children are not signalled: each must notice the death by
itself, as after a real postmaster crash.  Returns the postmaster's pid.

=cut

sub kill_node
{
	my ($self, $node) = @_;
	my $name = $node->name;
	my $top = delete $self->{runs}{$name} or croak "pg_autoctl does not run $name";
	my @autoctl = ($top);
	my @todo = ($top);
	while (my $p = shift @todo)
	{
		for my $k (_children($p))
		{
			next unless _comm($k) eq 'pg_autoctl';
			push @autoctl, $k;
			push @todo, $k;
		}
	}
	my $pm = _postmaster_pid($node) or croak "$name has no postmaster.pid";
	kill 'KILL', @autoctl;
	waitpid($top, 0);
	kill 'KILL', $pm;
	$self->_wait(sub { !kill(0, $pm) || _comm($pm) eq '' || _zombie($pm) }, 30, "postmaster $pm to die");
	return $pm;
}

sub _zombie
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 1;
	my $stat = <$fh> // '';
	close $fh;
	return $stat =~ /^\d+ \(.*\) Z /;
}

sub _postmaster_pid
{
	my ($node) = @_;
	open(my $fh, '<', $node->data_dir . '/postmaster.pid') or return undef;
	my $pid = <$fh>;
	close $fh;
	chomp $pid if defined $pid;
	return $pid;
}

# Is process $pid alive (not a zombie)?
sub alive
{
	my ($pid) = @_;
	return kill(0, $pid) && !_zombie($pid) ? 1 : 0;
}

=pod

$ha->restart_node($node): run pg_autoctl for a killed node again; it
rejoins (wait_states for its role).

$ha->switchover: pg_autoctl perform switchover (bounded); returns seconds.

$ha->set_replication_quorum($node, 0|1): whether the standby $node counts
for synchronous replication (pg_autoctl set node replication-quorum); with
0 and one standby the primary commits without waiting for it
(synchronous_standby_names empty).

=cut

sub restart_node
{
	my ($self, $node) = @_;
	$self->_run($node->name, $node->data_dir);
	return;
}

sub switchover
{
	my ($self) = @_;
	my $t0 = Time::HiRes::time();
	$self->autoctl([ 'perform', 'switchover', '--pgdata', $self->{monitor_pgdata}, '--formation', 'default' ],
		timeout => 120);
	return Time::HiRes::time() - $t0;
}

sub set_replication_quorum
{
	my ($self, $node, $on) = @_;
	$self->autoctl([ 'set', 'node', 'replication-quorum', '--pgdata', $node->data_dir, $on ? 'true' : 'false' ]);
	return;
}

=pod

$ha->stop: stop every pg_autoctl (SIGTERM: it stops its server), bounded,
then SIGKILL what is left, servers included.

=cut

sub stop
{
	my ($self) = @_;
	$self->{lb}->stop if $self->{lb};
	my %runs = %{ $self->{runs} };
	return unless %runs;
	# the data nodes before the monitor
	my @order = ((grep { $_ ne 'monitor' } sort keys %runs), grep { $_ eq 'monitor' } keys %runs);
	for my $name (@order)
	{
		my $pid = $runs{$name};
		kill 'TERM', $pid;
		my $deadline = Time::HiRes::time() + 30;
		while (Time::HiRes::time() < $deadline && waitpid($pid, POSIX::WNOHANG()) == 0)
		{
			Time::HiRes::sleep(0.05);
		}
		if (waitpid($pid, POSIX::WNOHANG()) == 0)
		{
			kill 'KILL', -$pid;    # its session: pg_autoctl and the server it started
			waitpid($pid, 0);
		}
		delete $self->{runs}{$name};
	}
	for my $node (values %{ $self->{nodes} })
	{
		my $pm = _postmaster_pid($node);
		kill 'KILL', $pm if $pm && alive($pm) && _comm($pm) =~ /^postgres/;
	}
	return;
}

END
{
	local $?;
	for my $f (@formations)
	{
		eval { $f->stop };
	}
}

# ======================================================================
# FFHA::HAProxy: HAProxy on a free loopback port in front of the nodes'
# webhook listeners.  A server is in service while its GET /healthz answers
# 200 (flexfactor's listener: a writable primary); checked every 200 ms,
# out after one failure, in after one success.  It runs in the foreground
# (-db) as a child of the test, with its configuration, stats socket and log
# in the test's directory.
package FFHA::HAProxy;

use strict;
use warnings;
use Carp;
use IO::Socket::UNIX;
use POSIX ();
use PostgreSQL::Test::Cluster;
use Time::HiRes ();

my @proxies;

sub start
{
	my ($class, $dir, %o) = @_;
	File::Path::make_path($dir);
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $self = bless { dir => $dir, port => $port, servers => $o{servers} }, $class;
	my $servers = join '', map { "    server $_->[0] 127.0.0.1:$_->[1] check\n" } @{ $o{servers} };
	open(my $fh, '>', "$dir/haproxy.cfg") or croak "haproxy.cfg: $!";
	print $fh <<"EOF";
# flexfactor HA suite (test/perl/FFHA.pm): FlexFactor posts to this one URL;
# only the node whose listener says it is a writable primary gets the delivery
global
    maxconn 512
    stats socket $dir/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch

frontend webhooks
    bind 127.0.0.1:$port
    default_backend listeners

backend listeners
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1
$servers
EOF
	close $fh;
	my $bin = FFHA::_which('haproxy') // '/usr/sbin/haproxy';
	my $log = "$PostgreSQL::Test::Utils::log_path/" . File::Basename::basename($0, '.pl') . '_haproxy.log';
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setpgid(0, 0);
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log) or POSIX::_exit(127);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(127);
		exec($bin, '-db', '-f', "$dir/haproxy.cfg") or POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	push @proxies, $self;
	my $deadline = Time::HiRes::time() + 30;
	while (Time::HiRes::time() < $deadline)
	{
		return $self if eval { $self->server_states; 1 };
		croak "haproxy exited at start; see $log" if waitpid($pid, POSIX::WNOHANG()) == $pid;
		Time::HiRes::sleep(0.05);
	}
	croak "haproxy did not start within 30 s; see $log";
}

sub port { $_[0]{port} }
sub url { "http://127.0.0.1:$_[0]{port}$_[1]" }

sub _command
{
	my ($self, $cmd) = @_;
	my $s = IO::Socket::UNIX->new(Peer => "$self->{dir}/admin.sock", Type => SOCK_STREAM)
	  or die "haproxy stats socket: $!";
	print $s "$cmd\n";
	local $/;
	my $out = <$s>;
	close $s;
	return $out // '';
}

# {server name => 'UP' | 'DOWN' | ...} from HAProxy's own view.
sub server_states
{
	my ($self) = @_;
	my %st;
	for my $line (split /\n/, $self->_command('show stat'))
	{
		my @f = split /,/, $line;
		next unless @f > 17 && $f[0] eq 'listeners' && $f[1] !~ /^(FRONTEND|BACKEND)$/;
		$st{ $f[1] } = $f[17];
	}
	die 'no server in the stats' unless %st;
	return \%st;
}

# Wait (bounded) until exactly the server $name is UP; returns the seconds.
sub wait_only_up
{
	my ($self, $name, $secs) = @_;
	my $t0 = Time::HiRes::time();
	my $deadline = $t0 + ($secs // 60);
	my $st;
	while (Time::HiRes::time() < $deadline)
	{
		$st = $self->server_states;
		return Time::HiRes::time() - $t0
		  if ($st->{$name} // '') eq 'UP' && !grep { $_ ne $name && $st->{$_} eq 'UP' } keys %$st;
		Time::HiRes::sleep(0.05);
	}
	croak "HAProxy: $name is not the only server UP after " . ($secs // 60) . ' s: '
	  . join(', ', map { "$_ $st->{$_}" } sort keys %$st);
}

sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{pid} or return;
	kill 'TERM', $pid;
	my $deadline = Time::HiRes::time() + 10;
	while (Time::HiRes::time() < $deadline && waitpid($pid, POSIX::WNOHANG()) == 0)
	{
		Time::HiRes::sleep(0.05);
	}
	if (waitpid($pid, POSIX::WNOHANG()) == 0)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	return;
}

END
{
	local $?;
	$_->stop for grep { $_->{pid} } @proxies;
}

# ======================================================================
# FFHA::Watcher: a child process that looks at a folder every few
# milliseconds and writes one line for every new state of every file in it
# (not in subfolders): "<epoch> <name> <size> <sha256> <inode>" (a file
# renamed into place is a new inode).  A file seen under
# its final name while it was incomplete or different, even for a moment,
# is in the record.
package FFHA::Watcher;

use strict;
use warnings;
use Carp;
use Digest::SHA ();
use POSIX ();
use Time::HiRes ();

my @watchers;

sub start
{
	my ($class, $dir, $record) = @_;
	my $self = bless { dir => $dir, record => $record }, $class;
	my $parent = $$;
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setpgid(0, 0);
		my $stop = 0;
		local $SIG{TERM} = sub { $stop = 1 };
		open(my $out, '>>', $record) or POSIX::_exit(1);
		$out->autoflush(1);
		my %seen;    # name -> "ino size mtime"
		while (!$stop && getppid() == $parent)
		{
			if (opendir(my $dh, $dir))
			{
				for my $name (readdir $dh)
				{
					next if $name =~ /^\.\.?$/;
					my @st = Time::HiRes::stat("$dir/$name") or next;
					next unless -f "$dir/$name";
					my $sig = "$st[1] $st[7] $st[9]";
					next if ($seen{$name} // '') eq $sig;
					open(my $fh, '<:raw', "$dir/$name") or next;
					my $sha = Digest::SHA->new(256)->addfile($fh)->hexdigest;
					my $size = -s $fh;
					close $fh;
					$seen{$name} = $sig;
					printf $out "%.3f %s %d %s %d\n", Time::HiRes::time(), $name, $size, $sha, $st[1];
				}
				closedir $dh;
			}
			Time::HiRes::sleep(0.003);
		}
		POSIX::_exit(0);
	}
	$self->{pid} = $pid;
	push @watchers, $self;
	return $self;
}

# Stop it; returns its records as [{at, name, size, sha256, inode}].
sub stop
{
	my ($self) = @_;
	if (my $pid = delete $self->{pid})
	{
		kill 'TERM', $pid;
		waitpid($pid, 0);
	}
	my @r;
	open(my $fh, '<', $self->{record}) or return \@r;
	while (<$fh>)
	{
		chomp;
		my ($at, $name, $size, $sha, $ino) = split / /;
		push @r, { at => $at, name => $name, size => $size, sha256 => $sha, inode => $ino };
	}
	close $fh;
	return \@r;
}

END
{
	local $?;
	for my $w (grep { $_->{pid} } @watchers)
	{
		kill 'TERM', $w->{pid};
		waitpid($w->{pid}, 0);
	}
}

1;
