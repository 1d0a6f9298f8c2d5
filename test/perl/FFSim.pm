# FFSim: the FlexFactor simulator (test/ffsim) for flexfactor's TAP suites.
#
# Owns: starting test/ffsim/ffsim.py as a child process on a free loopback
# port (waiting, bounded, for its port file), calling its /_admin API,
# stopping it (SIGTERM, bounded wait, SIGKILL as a last resort), starting it
# again on the same port, and the flexfactor.* settings a test node needs to
# talk to it.  Core Perl modules only (HTTP::Tiny, JSON::PP, File::Temp).
#
#   my $sim = FFSim->start(mid => $mid, app_secret => $secret);
#   $node = ff_node('api', $sim->node_settings('flexfactor.database' => 'ffdb'));
#   $sim->admin('POST', '/_admin/faults', {endpoint => '/v1/evaluate', mode => '500'});
#   my $reqs = $sim->requests(path => '/v1/evaluate');   # list of hashes
#   $sim->stop;
package FFSim;

use strict;
use warnings;
use Carp;
use File::Temp ();
use HTTP::Tiny;
use JSON::PP ();
use POSIX ();
use Time::HiRes ();

# The simulator's own defaults, repeated so that tests can use them.
our %DEFAULTS = (
	mid => '00000000-0000-4000-8000-000000000001',
	app_key => 'test-app-key',
	app_secret => 'test-app-secret',
	tokenization_key => 'test-tok-key',
	mit_mode => 'managed',
);

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;
my $START_TIMEOUT = 30;    # seconds to wait for the port file
my $STOP_TIMEOUT = 15;     # seconds to wait after SIGTERM

my @running;               # every started simulator, stopped at END

sub _repo_root
{
	# test/perl/FFSim.pm -> the repository root
	my $dir = __FILE__;
	$dir =~ s{[^/]*$}{};
	$dir = '.' if $dir eq '';
	my $root = "$dir/../..";
	return Cwd::abs_path($root) if eval { require Cwd; 1 };
	return $root;
}

sub _log_dir
{
	# PostgreSQL::Test::Utils sets $log_path (tmp_check/log) when loaded
	no warnings 'once';
	my $dir = $PostgreSQL::Test::Utils::log_path;
	return $dir if defined $dir && -d $dir;
	return File::Temp::tempdir('ffsim-log-XXXXXX', TMPDIR => 1, CLEANUP => 1);
}

=pod

FFSim->start(%opts): start a simulator and wait until it listens.

Options: mid, app_key, app_secret, tokenization_key, mit_mode, error_shape,
sftp_root, webhook_url, webhook_key, token_ttl, clock, port (default 0 = any
free port), name (for the log file), args (array ref of extra arguments).
Dies if it does not listen within 30 s.

=cut

sub start
{
	my ($class, %opts) = @_;
	my $self = bless {
		%DEFAULTS,
		name => 'ffsim',
		port => 0,
		args => [],
		%opts,
	}, $class;
	$self->{http} = HTTP::Tiny->new(timeout => 60, keep_alive => 1,
		agent => 'flexfactor-tap/1');
	$self->{workdir} = File::Temp::tempdir('ffsim-XXXXXX', TMPDIR => 1, CLEANUP => 1);
	$self->{logfile} = _log_dir() . "/$self->{name}.log";
	$self->_spawn;
	push @running, $self;
	return $self;
}

sub _argv
{
	my ($self) = @_;
	my $root = _repo_root();
	my @argv = ('python3', "$root/test/ffsim/ffsim.py",
		'--listen', '127.0.0.1',
		'--port', $self->{port},
		'--port-file', "$self->{workdir}/port",
		'--mid', $self->{mid},
		'--app-key', $self->{app_key},
		'--app-secret', $self->{app_secret},
		'--tokenization-key', $self->{tokenization_key},
		'--mit-mode', $self->{mit_mode});
	push @argv, '--error-shape', $self->{error_shape} if $self->{error_shape};
	push @argv, '--sftp-root', $self->{sftp_root} if $self->{sftp_root};
	push @argv, '--webhook-url', $self->{webhook_url} if $self->{webhook_url};
	push @argv, '--webhook-key', $self->{webhook_key} if $self->{webhook_key};
	push @argv, '--token-ttl', $self->{token_ttl} if $self->{token_ttl};
	push @argv, '--clock', $self->{clock} if $self->{clock};
	push @argv, @{ $self->{args} };
	return @argv;
}

sub _spawn
{
	my ($self) = @_;
	my $portfile = "$self->{workdir}/port";
	unlink $portfile;
	my @argv = $self->_argv;

	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# child: own process group, output appended to the log file
		POSIX::setpgid(0, 0);
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $self->{logfile}) or POSIX::_exit(127);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(127);
		exec(@argv) or POSIX::_exit(127);
	}
	$self->{pid} = $pid;

	my $deadline = Time::HiRes::time() + $START_TIMEOUT;
	while (Time::HiRes::time() < $deadline)
	{
		if (-s $portfile)
		{
			open(my $fh, '<', $portfile) or croak "cannot read $portfile: $!";
			my $port = <$fh>;
			close $fh;
			if (defined $port && $port =~ /^\s*(\d+)\s*$/)
			{
				$self->{port} = $1;
				# admin health check: it answers
				my $h = eval { $self->admin('GET', '/_admin/health') };
				return $self if $h && $h->{ok};
			}
		}
		if (waitpid($pid, POSIX::WNOHANG()) == $pid)
		{
			delete $self->{pid};
			croak "ffsim exited during start-up (status $?); see $self->{logfile}";
		}
		Time::HiRes::sleep(0.05);
	}
	$self->_kill_and_reap;
	croak "ffsim did not listen within ${START_TIMEOUT}s; see $self->{logfile}";
}

# Port, URLs, credentials
sub port { $_[0]{port} }
sub pid { $_[0]{pid} }
sub base_url { "http://127.0.0.1:$_[0]{port}" }
sub url { "http://127.0.0.1:$_[0]{port}/v1/" }    # what flexfactor.api_url takes
sub mid { $_[0]{mid} }
sub app_key { $_[0]{app_key} }
sub app_secret { $_[0]{app_secret} }
sub tokenization_key { $_[0]{tokenization_key} }
sub logfile { $_[0]{logfile} }

=pod

$sim->admin($method, $path, $body_or_query, %opts): one admin call; returns
the decoded JSON answer.  For GET/DELETE a hash ref becomes the query
string; for POST it is the JSON body.  Dies on a non-2xx answer unless
allow_error => 1 is given (then returns {status, body}).

=cut

sub admin
{
	my ($self, $method, $path, $body, %opts) = @_;
	$method = uc $method;
	my $url = $self->base_url . $path;
	my %req = (headers => { Accept => 'application/json' });
	if (defined $body)
	{
		if ($method eq 'GET' || $method eq 'DELETE')
		{
			my $q = $self->{http}->www_form_urlencode($body);
			$url .= ($url =~ /\?/ ? '&' : '?') . $q if $q ne '';
		}
		else
		{
			$req{headers}{'Content-Type'} = 'application/json';
			$req{content} = $JSON->encode($body);
		}
	}
	elsif ($method eq 'POST')
	{
		$req{headers}{'Content-Type'} = 'application/json';
		$req{content} = '{}';
	}
	my $res = $self->{http}->request($method, $url, \%req);
	my $decoded = (defined $res->{content} && $res->{content} ne '')
	  ? eval { $JSON->decode($res->{content}) } : undef;
	if (!$res->{success})
	{
		return { status => $res->{status}, body => $decoded // $res->{content} }
		  if $opts{allow_error};
		croak "ffsim admin $method $path: HTTP $res->{status} "
		  . ($res->{content} // '');
	}
	return $decoded;
}

# A plain (non-admin) call to the simulator's API: returns
# {status, headers, content, json}.  Path is relative to /v1/.
sub api
{
	my ($self, $method, $path, $body, $headers) = @_;
	my %req = (headers => { 'Content-Type' => 'application/json', %{ $headers // {} } });
	$req{content} = ref $body ? $JSON->encode($body) : $body if defined $body;
	my $res = $self->{http}->request(uc $method, $self->url . $path, \%req);
	$res->{json} = eval { $JSON->decode($res->{content}) } if defined $res->{content};
	return $res;
}

# ---- convenience wrappers around the admin API

# /_admin/requests as a list (filters: path, path_prefix, method, since, limit)
sub requests
{
	my ($self, %q) = @_;
	return $self->admin('GET', '/_admin/requests', \%q);
}

# Number of /v1 requests seen (optionally filtered as requests()).
sub request_count
{
	my ($self, %q) = @_;
	return scalar @{ $self->requests(%q) };
}

# The sequence number of the newest logged request (0 if none): pass it as
# since => ... to see only later requests.
sub last_seq
{
	my ($self) = @_;
	my $r = $self->requests(limit => 1);
	return @$r ? $r->[-1]{seq} : 0;
}

sub fault
{
	my ($self, %rule) = @_;
	return $self->admin('POST', '/_admin/faults', \%rule);
}

sub clear_faults { $_[0]->admin('DELETE', '/_admin/faults') }
sub tokens { $_[0]->admin('GET', '/_admin/tokens') }
sub token_count { $_[0]->tokens->{count} }
sub revoke_tokens { $_[0]->admin('POST', '/_admin/tokens/revoke') }
sub set_token_ttl { $_[0]->admin('POST', '/_admin/token-ttl', { seconds => $_[1] }) }
sub config { $_[0]->admin('POST', '/_admin/config', $_[1]) }
sub advance { $_[0]->admin('POST', '/_admin/clock/advance', { seconds => $_[1] }) }
sub reset_state { $_[0]->admin('POST', '/_admin/reset', $_[1] // {}) }

sub orders
{
	my ($self, %q) = @_;
	return $self->admin('GET', '/_admin/orders', \%q)->{orders};
}

sub order { $_[0]->admin('GET', "/_admin/orders/$_[1]") }

sub idempotency
{
	my ($self, %q) = @_;
	return $self->admin('GET', '/_admin/idempotency', \%q);
}

sub transmits { $_[0]->admin('GET', '/_admin/transmits')->{transmits} }

# ---- SFTP batches (the simulator started with sftp_root => DIR)

# The merchant's folders under sftp_root: <root>/<mid>/inbound, .../outbound,
# .../inbound/processed (absolute when sftp_root is).
sub inbound_dir { "$_[0]{sftp_root}/$_[0]{mid}/inbound" }
sub outbound_dir { "$_[0]{sftp_root}/$_[0]{mid}/outbound" }
sub processed_dir { "$_[0]{sftp_root}/$_[0]{mid}/inbound/processed" }

# POST /_admin/scan: process every complete inbound file now; returns the
# list of {file, kind, status, lineCount, accepted, rejected, resultFile, ...}.
sub scan { $_[0]->admin('POST', '/_admin/scan')->{processed} }

# GET /_admin/batches (optionally ?file=NAME): the list of batch records.
sub batches
{
	my ($self, %q) = @_;
	return $self->admin('GET', '/_admin/batches', \%q)->{batches};
}

# Names of the plain files in the inbound folder (not processed/), sorted;
# *.part files included.
sub inbound_files
{
	my ($self) = @_;
	my $dir = $self->inbound_dir;
	opendir(my $dh, $dir) or return [];
	my @names = sort grep { !/^\.\.?$/ && -f "$dir/$_" } readdir $dh;
	closedir $dh;
	return \@names;
}

# /_admin/idempotency as a hash: idempotency key => its entry
# ({seen, accepted, replayed, conflicts, rejected, sources, ...}).
sub idempotency_by_key
{
	my ($self, %q) = @_;
	return { map { ($_->{key} => $_) } @{ $self->idempotency(%q)->{keys} } };
}

# Decode a JSON text (e.g. a logged request body); undef if it is not JSON.
sub decode_json
{
	my (undef, $text) = @_;
	return eval { $JSON->decode($text) };
}

sub encode_json
{
	my (undef, $value) = @_;
	return $JSON->encode($value);
}

=pod

$sim->node_settings(%extra): the flexfactor.* settings of a node that talks
to this simulator, as a list (key => value, ...) for ff_node(); %extra is
added (and wins).  http_timeout_ms defaults to 10 s, batch_interval to 1.

$sim->configure_node($node, %extra): append the same to the node's
postgresql.conf (restart or reload for them to apply).

=cut

sub node_settings
{
	my ($self, %extra) = @_;
	my %conf = (
		'flexfactor.api_url' => $self->url,
		'flexfactor.app_key' => $self->{app_key},
		'flexfactor.app_secret' => $self->{app_secret},
		'flexfactor.mid' => $self->{mid},
		'flexfactor.tokenization_key' => $self->{tokenization_key},
		'flexfactor.http_timeout_ms' => '10000',
		'flexfactor.batch_interval' => '1',
		%extra);
	return %conf;
}

sub configure_node
{
	my ($self, $node, %extra) = @_;
	my %conf = $self->node_settings(%extra);
	my $text = '';
	for my $k (sort keys %conf)
	{
		(my $v = $conf{$k}) =~ s/'/''/g;
		$text .= "$k = '$v'\n";
	}
	$node->append_conf('postgresql.conf', $text);
	return;
}

=pod

$sim->stop: SIGTERM, wait up to 15 s (then SIGKILL).  Returns the exit
status (0 for a clean stop).  $sim->restart: start again on the same port
(the simulator's state starts empty).

=cut

sub stop
{
	my ($self) = @_;
	return undef unless $self->{pid};
	my $pid = $self->{pid};
	kill 'TERM', $pid;
	my $deadline = Time::HiRes::time() + $STOP_TIMEOUT;
	while (Time::HiRes::time() < $deadline)
	{
		my $r = waitpid($pid, POSIX::WNOHANG());
		if ($r == $pid || $r == -1)
		{
			my $status = $?;
			delete $self->{pid};
			return $status;
		}
		Time::HiRes::sleep(0.05);
	}
	return $self->_kill_and_reap;
}

sub _kill_and_reap
{
	my ($self) = @_;
	my $pid = delete $self->{pid} or return undef;
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return $?;
}

sub restart
{
	my ($self) = @_;
	$self->stop;
	croak 'restart needs a known port' unless $self->{port};
	# the same port; the old socket may linger briefly, so retry a little
	my $tries = 0;
	while (1)
	{
		my $ok = eval { $self->_spawn; 1 };
		return $self if $ok;
		die $@ if ++$tries >= 5;
		Time::HiRes::sleep(0.5);
	}
}

sub is_running
{
	my ($self) = @_;
	return 0 unless $self->{pid};
	return waitpid($self->{pid}, POSIX::WNOHANG()) == 0 ? 1 : 0;
}

=pod

FFSim::sql_error($node, $dbname, $sql, %psql_opts): run $sql with psql
(VERBOSITY verbose, stop at the first error) and return what the client saw:
{ret, stdout, stderr, sqlstate, message, detail, hint, elapsed} (sqlstate
undef when there was no error).  %psql_opts go to $node->psql (e.g.
extra_params => ['-U', 'someone']).

=cut

sub sql_error
{
	my ($node, $dbname, $sql, %opts) = @_;
	my $t0 = Time::HiRes::time();
	my ($ret, $out, $err) = $node->psql($dbname,
		"\\set VERBOSITY verbose\n\\set ON_ERROR_STOP 1\n$sql", %opts);
	my %e = (ret => $ret, stdout => $out, stderr => $err // '',
		elapsed => Time::HiRes::time() - $t0);
	if ($e{stderr} =~ /(?:ERROR|FATAL):\s+([0-9A-Z]{5}): (.*)/)
	{
		$e{sqlstate} = $1;
		$e{message} = $2;
	}
	$e{detail} = $1 if $e{stderr} =~ /^DETAIL:\s+(.*)$/m;
	$e{hint} = $1 if $e{stderr} =~ /^HINT:\s+(.*)$/m;
	return \%e;
}

sub DESTROY
{
	my ($self) = @_;
	local ($?, $!, $@);
	$self->stop if $self->{pid};
}

END
{
	local $?;
	$_->stop for grep { $_ && $_->{pid} } @running;
}

1;
