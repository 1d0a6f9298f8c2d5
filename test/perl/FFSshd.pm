# FFSshd: the real OpenSSH server (test/sshd/ffsshd) for flexfactor's TAP
# suites, and a pausable TCP relay in front of it.
#
# Owns: running `ffsshd start|stop|rekey DIR` (bounded: ffsshd itself waits
# at most 10 s), reading the FFSSHD_* lines it prints, the flexfactor.sftp_*
# settings of a node that uploads to it, known_hosts files for other ports
# or keys, extra client keys, and FFSshd::Relay: a loopback TCP relay whose
# connections can be frozen or cut after N bytes sent by the client, so a
# test can stop an upload in the middle, deterministically.  Core Perl only.
#
#   my $sshd = FFSshd->start("$tmp/sshd");
#   $sshd->stop; $sshd->start_again;           # same DIR, keys and port
#   $sshd->start_again(file_size_limit_kb => 128);  # files it writes stop there (EFBIG)
#   $sshd->rekey;                               # new host key, known_hosts kept
#   my %conf = $sshd->node_settings(inbound => $dir, outbound => $dir2);
#   my $relay = FFSshd::Relay->start(target_port => $sshd->port);
#   $relay->freeze_after(100_000); $relay->wait_frozen(30); $relay->pass;
#   $relay->hold;                               # new connections pass, frozen ones wait
#   $relay->thaw;                               # frozen connections move again
package FFSshd;

use strict;
use warnings;
use Carp;
use Cwd ();
use File::Path ();
use POSIX ();
use Time::HiRes ();

my @running;    # stopped at END

sub _repo_root
{
	my $dir = __FILE__;
	$dir =~ s{[^/]*$}{};
	$dir = '.' if $dir eq '';
	return Cwd::abs_path("$dir/../..");
}

sub _ffsshd { _repo_root() . '/test/sshd/ffsshd' }

# Run ffsshd with a command; returns its stdout, dies (with stderr) on failure.
sub _run
{
	my ($self, $cmd, %env) = @_;
	my $out = "$self->{dir}/.ffsshd-$cmd.out";
	my $err = "$self->{dir}/.ffsshd-$cmd.err";
	File::Path::make_path($self->{dir});
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		$ENV{$_} = $env{$_} for keys %env;
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out) or POSIX::_exit(127);
		open(STDERR, '>', $err) or POSIX::_exit(127);
		# a file size limit for sshd (a full disk): writes past it fail with
		# EFBIG, which the SFTP server answers with status 4 (failure)
		exec('bash', '-c', 'trap "" XFSZ; ulimit -f "$1"; shift; exec bash "$@"', 'ffsshd',
			$self->{limit_kb}, _ffsshd(), $cmd, $self->{dir}) or POSIX::_exit(127)
		  if $self->{limit_kb} && $cmd eq 'start';
		exec('bash', _ffsshd(), $cmd, $self->{dir}) or POSIX::_exit(127);
	}
	# ffsshd bounds its own waits (10 s start, 10 s stop); 60 s is a backstop
	my $deadline = Time::HiRes::time() + 60;
	my $r;
	while (($r = waitpid($pid, POSIX::WNOHANG())) == 0)
	{
		if (Time::HiRes::time() > $deadline)
		{
			kill 'KILL', $pid;
			waitpid($pid, 0);
			croak "ffsshd $cmd $self->{dir} did not finish within 60 s";
		}
		Time::HiRes::sleep(0.02);
	}
	my $status = $?;
	my $stdout = _slurp($out);
	croak "ffsshd $cmd $self->{dir} failed (status $status): " . _slurp($err)
	  if $status != 0;
	return $stdout;
}

sub _slurp
{
	my ($file) = @_;
	open(my $fh, '<', $file) or return '';
	local $/;
	my $t = <$fh>;
	close $fh;
	return $t // '';
}

sub _parse_env
{
	my ($self, $text) = @_;
	my %env;
	for (split /\n/, $text)
	{
		$env{$1} = $2 if /^(FFSSHD_\w+)=(.*)$/;
	}
	croak "ffsshd printed no FFSSHD_PORT" unless $env{FFSSHD_PORT};
	$self->{env} = \%env;
	return $self;
}

=pod

FFSshd->start($dir, %opts): start sshd with keys and config in $dir (made
if missing).  Options: port (a fixed port), passphrase (also make
client_key_pp), sftp_log (log SFTP requests at this level, e.g. INFO: every
file opened is in sftp_log_text).  Dies if it does not accept connections within 10 s.

=cut

sub start
{
	my ($class, $dir, %opts) = @_;
	File::Path::make_path($dir);
	my $self = bless { dir => Cwd::abs_path($dir), opts => \%opts }, $class;
	my %env;
	$env{FFSSHD_PORT} = $opts{port} if $opts{port};
	$env{FFSSHD_PASSPHRASE} = $opts{passphrase} if defined $opts{passphrase};
	$env{FFSSHD_SFTP_LOG} = $opts{sftp_log} if defined $opts{sftp_log};
	$self->_parse_env($self->_run('start', %env));
	$self->{running} = 1;
	push @running, $self;
	return $self;
}

# Start again after stop(): same DIR, keys and port.  With
# file_size_limit_kb => N, every file the server writes stops at N kB (its
# own log too), as on a full disk; without, no limit.
sub start_again
{
	my ($self, %o) = @_;
	$self->{limit_kb} = $o{file_size_limit_kb};
	my %env = (FFSSHD_PORT => $self->port);
	$env{FFSSHD_PASSPHRASE} = $self->{opts}{passphrase} if defined $self->{opts}{passphrase};
	$env{FFSSHD_SFTP_LOG} = $self->{opts}{sftp_log} if defined $self->{opts}{sftp_log};
	# the port was ours a moment ago; retry briefly if the kernel still holds it
	my $tries = 0;
	while (1)
	{
		my $out = eval { $self->_run('start', %env) };
		if (defined $out)
		{
			$self->_parse_env($out);
			$self->{running} = 1;
			return $self;
		}
		croak $@ if ++$tries >= 5;
		Time::HiRes::sleep(0.5);
	}
}

sub stop
{
	my ($self) = @_;
	$self->_run('stop');
	$self->{running} = 0;
	return;
}

# New host key, same port; known_hosts (pinned to the old key) is kept.
sub rekey
{
	my ($self) = @_;
	$self->_parse_env($self->_run('rekey'));
	$self->{running} = 1;
	return $self;
}

sub env { $_[0]{env}{ $_[1] } }
sub dir { $_[0]{dir} }
sub port { $_[0]{env}{FFSSHD_PORT} }
sub user { $_[0]{env}{FFSSHD_USER} }
sub known_hosts { $_[0]{env}{FFSSHD_KNOWN_HOSTS} }
sub client_key { $_[0]{env}{FFSSHD_CLIENT_KEY} }
sub client_pubkey { $_[0]{env}{FFSSHD_CLIENT_PUBKEY} }
sub logfile { $_[0]{env}{FFSSHD_LOG} }
sub log_text { _slurp($_[0]->logfile) }
sub sftp_log_text { _slurp("$_[0]{dir}/sftp.log") }

# The server's current host public key, "type base64".
sub host_key
{
	my ($self) = @_;
	my $line = _slurp("$self->{dir}/ssh_host_ed25519_key.pub");
	my ($type, $b64) = split ' ', $line;
	return "$type $b64";
}

=pod

$sshd->write_known_hosts($file, %opts): write a known_hosts file pinning the
server's current host key for 127.0.0.1 at each of the ports in
$opts{ports} (default: the server's port); returns $file.  With
key => "type base64", pin that key instead.

=cut

sub write_known_hosts
{
	my ($self, $file, %opts) = @_;
	my $key = $opts{key} // $self->host_key;
	my @ports = @{ $opts{ports} // [ $self->port ] };
	open(my $fh, '>', "$file.tmp") or croak "cannot write $file: $!";
	print $fh "[127.0.0.1]:$_ $key\n" for @ports;
	close $fh;
	rename("$file.tmp", $file) or croak "cannot rename $file.tmp: $!";
	return $file;
}

# A new ed25519 key pair that the server does not know; returns the private
# key's path.
sub new_client_key
{
	my ($self, $name) = @_;
	my $path = "$self->{dir}/$name";
	unlink $path, "$path.pub";
	system('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', "ffsshd-$name", '-f', $path) == 0
	  or croak "ssh-keygen failed for $path";
	chmod 0600, $path;
	return $path;
}

=pod

$sshd->node_settings(inbound => DIR, outbound => DIR, port => P,
known_hosts => FILE, %extra): the flexfactor.sftp_* settings of a node that
uploads to this server (as a key => value list for ff_node or
configure_node); %extra is added and wins.

=cut

sub node_settings
{
	my ($self, %o) = @_;
	my %extra = %o;
	delete @extra{qw(inbound outbound port known_hosts)};
	return (
		'flexfactor.sftp_host' => '127.0.0.1',
		'flexfactor.sftp_port' => $o{port} // $self->port,
		'flexfactor.sftp_user' => $self->user,
		'flexfactor.sftp_private_key_file' => $self->client_key,
		'flexfactor.sftp_known_hosts_file' => $o{known_hosts} // $self->known_hosts,
		'flexfactor.sftp_inbound_dir' => $o{inbound},
		'flexfactor.sftp_outbound_dir' => $o{outbound},
		'flexfactor.sftp_timeout_ms' => '10000',
		%extra);
}

sub DESTROY
{
	my ($self) = @_;
	local ($?, $!, $@);
	eval { $self->stop } if $self->{running};
}

END
{
	local $?;
	for my $s (grep { $_ && $_->{running} } @running)
	{
		eval { $s->stop };
	}
}

# ======================================================================
# FFSshd::Relay: a TCP relay on 127.0.0.1 in front of a local port.
#
# Modes (set at any time; the relay child reads its control file within
# ~20 ms, and the setter waits until the relay has acknowledged it):
#   pass               forward everything
#   freeze_after N     a connection whose client has sent N bytes stops being
#                      forwarded (both ways); "frozen" counts such connections
#   drop_after N       such a connection is closed at once (both sides)
#   hold               new connections pass; frozen ones stay frozen
#   thaw               forward everything, frozen connections included: what
#                      their clients had sent meanwhile goes through (a
#                      thawed connection is never frozen again); "thawed"
#                      counts them
# Leaving freeze_after or hold for another mode than these closes the frozen
# connections, except by thaw.
package FFSshd::Relay;

use strict;
use warnings;
use Carp;
use File::Path ();
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes ();

my @relays;

sub start
{
	my ($class, %o) = @_;
	croak 'target_port is required' unless $o{target_port};
	# removed by stop() once the relay process is gone (it writes there)
	my $dir = File::Temp::tempdir('ffrelay-XXXXXX', TMPDIR => 1, CLEANUP => 0);
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 64,
		ReuseAddr => 1, Proto => 'tcp') or croak "relay listen: $!";
	my $self = bless { dir => $dir, port => $listen->sockport,
		target_port => $o{target_port}, gen => 0 }, $class;
	$self->_write_control('pass');
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setpgid(0, 0);
		my $ok = eval { _loop($listen, $self->{target_port}, $dir); 1 };
		POSIX::_exit($ok ? 0 : 1);
	}
	close $listen;
	$self->{pid} = $pid;
	push @relays, $self;
	$self->_wait_ack;
	return $self;
}

sub port { $_[0]{port} }
sub pid { $_[0]{pid} }

sub _write_control
{
	my ($self, $mode) = @_;
	$self->{gen}++;
	my $f = "$self->{dir}/control";
	open(my $fh, '>', "$f.tmp") or croak "relay control: $!";
	print $fh "$self->{gen} $mode\n";
	close $fh;
	rename("$f.tmp", $f) or croak "relay control rename: $!";
}

sub _read_file
{
	my ($f) = @_;
	open(my $fh, '<', $f) or return '';
	local $/;
	my $t = <$fh> // '';
	close $fh;
	$t =~ s/\s+\z//;
	return $t;
}

sub _wait_ack
{
	my ($self) = @_;
	my $deadline = Time::HiRes::time() + 10;
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if _read_file("$self->{dir}/ack") eq $self->{gen};
		croak 'relay exited' if waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid};
		Time::HiRes::sleep(0.01);
	}
	croak 'relay did not acknowledge its mode within 10 s';
}

sub pass { $_[0]->_write_control('pass'); $_[0]->_wait_ack; }
sub freeze_after
{
	my ($self, $n) = @_;
	$self->{frozen_base} = $self->stats->{frozen} // 0;
	$self->_write_control("freeze_after $n");
	$self->_wait_ack;
}
sub drop_after { $_[0]->_write_control("drop_after $_[1]"); $_[0]->_wait_ack; }
sub hold { $_[0]->_write_control('hold'); $_[0]->_wait_ack; }
sub thaw { $_[0]->_write_control('thaw'); $_[0]->_wait_ack; }

# Counters kept by the relay: connections, frozen, dropped, thawed.
sub stats
{
	my ($self) = @_;
	my %s = map { split /=/, $_, 2 } split ' ', _read_file("$self->{dir}/stats");
	return \%s;
}

# Wait (at most $secs) until at least $n connections (default 1) were
# frozen since the last freeze_after().
sub wait_frozen
{
	my ($self, $secs, $n) = @_;
	$n = ($n // 1) + ($self->{frozen_base} // 0);
	my $deadline = Time::HiRes::time() + ($secs // 30);
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if ($self->stats->{frozen} // 0) >= $n;
		Time::HiRes::sleep(0.02);
	}
	return 0;
}

sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{pid} or return;
	kill 'TERM', $pid;
	my $deadline = Time::HiRes::time() + 5;
	my $gone = 0;
	while (!$gone && Time::HiRes::time() < $deadline)
	{
		$gone = waitpid($pid, POSIX::WNOHANG()) != 0;
		Time::HiRes::sleep(0.02) unless $gone;
	}
	if (!$gone)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	File::Path::remove_tree($self->{dir}) if $self->{dir};
	return;
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
	$_->stop for grep { $_ && $_->{pid} } @relays;
}

# ---- the relay child

sub _loop
{
	my ($listen, $target_port, $dir) = @_;
	my $parent = getppid();
	my $stop = 0;
	local $SIG{TERM} = sub { $stop = 1 };
	local $SIG{PIPE} = 'IGNORE';
	my $sel = IO::Select->new($listen);
	my %side;    # fileno -> { conn, up (client side?) }
	my @conns;
	my ($mode, $limit, $gen) = ('pass', 0, -1);
	my %stats = (connections => 0, frozen => 0, dropped => 0, thawed => 0);
	my $write_stats = sub {
		my $f = "$dir/stats";
		if (open(my $fh, '>', "$f.tmp"))
		{
			print $fh join(' ', map { "$_=$stats{$_}" } sort keys %stats), "\n";
			close $fh;
			rename("$f.tmp", $f);
		}
	};
	my $close = sub {
		my ($c) = @_;
		return if $c->{closed};
		for my $s ($c->{client}, $c->{server})
		{
			next unless $s;
			delete $side{ fileno($s) // -1 };
			$sel->remove($s);
			close $s;
		}
		$c->{closed} = 1;
	};
	my $write_all = sub {
		my ($s, $buf) = @_;
		my $off = 0;
		while ($off < length $buf)
		{
			my $w = syswrite($s, $buf, length($buf) - $off, $off);
			return 0 unless defined $w && $w > 0;
			$off += $w;
		}
		return 1;
	};
	$write_stats->();

	while (!$stop)
	{
		POSIX::_exit(0) if getppid() != $parent;    # the test is gone
		# the control file: "generation mode [N]"
		my ($g, $m, $n) = split ' ', _read_file("$dir/control");
		if (defined $g && $g != $gen)
		{
			if (($m // '') eq 'thaw')
			{
				for my $c (grep { $_->{frozen} && !$_->{closed} } @conns)
				{
					$c->{frozen} = 0;
					$c->{thawed} = 1;
					$sel->add($c->{client}, $c->{server});
					$stats{thawed}++;
				}
				$write_stats->();
				$m = 'pass';
			}
			elsif (($mode eq 'freeze_after' || $mode eq 'hold') && ($m // '') !~ /^(freeze_after|hold)$/)
			{
				$close->($_) for grep { $_->{frozen} } @conns;
			}
			($gen, $mode, $limit) = ($g, $m // 'pass', $n // 0);
			if (open(my $fh, '>', "$dir/ack.tmp"))
			{
				print $fh "$gen\n";
				close $fh;
				rename("$dir/ack.tmp", "$dir/ack");
			}
		}
		@conns = grep { !$_->{closed} } @conns;

		my @ready = $sel->can_read(0.02);
		for my $fh (@ready)
		{
			if ($fh == $listen)
			{
				my $client = $listen->accept or next;
				my $server = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
					PeerPort => $target_port, Proto => 'tcp', Timeout => 5);
				$stats{connections}++;
				if (!$server)
				{
					close $client;
					$write_stats->();
					next;
				}
				my $c = { client => $client, server => $server, up => 0 };
				push @conns, $c;
				$side{ fileno($client) } = { conn => $c, up => 1 };
				$side{ fileno($server) } = { conn => $c, up => 0 };
				$sel->add($client, $server);
				$write_stats->();
				next;
			}
			my $s = $side{ fileno($fh) // -1 } or next;
			my $c = $s->{conn};
			next if $c->{closed} || $c->{frozen};
			my $buf;
			my $r = sysread($fh, $buf, 65536);
			if (!$r)
			{
				$close->($c);
				next;
			}
			my $to = $s->{up} ? $c->{server} : $c->{client};
			if ($s->{up})
			{
				$c->{up} += $r;
				if ($mode eq 'drop_after' && $c->{up} >= $limit)
				{
					$stats{dropped}++;
					$close->($c);
					$write_stats->();
					next;
				}
				if ($mode eq 'freeze_after' && !$c->{thawed} && $c->{up} >= $limit)
				{
					$write_all->($to, $buf);
					$c->{frozen} = 1;
					$sel->remove($c->{client}, $c->{server});
					$stats{frozen}++;
					$write_stats->();
					next;
				}
			}
			$close->($c) unless $write_all->($to, $buf);
		}
	}
	$close->($_) for @conns;
	return;
}

1;
