# FFInbound: watches FlexFactor's inbound folder from a child process, the
# way FlexFactor's pick-up would see it, for the fencing and failover suites.
#
# Owns: sampling the folder every few milliseconds; for every final-named
# file (evaluate_*.jsonl, transmit_*.jsonl) recording when it was first
# seen, and, for the names the test told it to expect, whether every sample
# of it had exactly the expected size and SHA-256 (a file with a hole of NUL
# bytes, a short one or a long one is recorded as bad, with its size and the
# offset of its first NUL byte).  Each (name, inode, size, mtime) is hashed
# once.  Core Perl only; bounded (it stops by itself after 15 minutes, or
# when the test is gone).
#
#   my $w = FFInbound->watch($inbound);
#   $w->expect($name, $bytes, $sha256);
#   $w->expect($name, 'ignore');   # not checked until expected again
#   my $r = $w->report;   # {seen => {name => epoch}, bad => [...], samples => N}
#   $w->stop;
package FFInbound;

use strict;
use warnings;
use Carp;
use Digest::SHA ();
use File::Path ();
use File::Temp ();
use POSIX ();
use Time::HiRes ();

my @watchers;

sub watch
{
	my ($class, $dir, %o) = @_;
	my $state = File::Temp::tempdir('ffinbound-XXXXXX', TMPDIR => 1, CLEANUP => 0);
	mkdir "$state/expect" or croak "mkdir: $!";
	my $self = bless { dir => $dir, state => $state }, $class;
	my $parent = $$;
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# never run the test's END blocks from here
		my $ok = eval { _loop($dir, $state, $parent, $o{interval} // 0.005); 1 };
		POSIX::_exit($ok ? 0 : 1);
	}
	$self->{pid} = $pid;
	push @watchers, $self;
	# wait for the first sample, so that nothing before watch() returns is missed
	my $deadline = Time::HiRes::time() + 10;
	Time::HiRes::sleep(0.01) until -e "$state/started" || Time::HiRes::time() > $deadline;
	croak 'the inbound watcher did not start' unless -e "$state/started";
	return $self;
}

# A final-named file $name must always hold these bytes (size, SHA-256 hex);
# with 'ignore' for $size, it is not checked until expected again.
sub expect
{
	my ($self, $name, $size, $sha) = @_;
	my $f = "$self->{state}/expect/$name";
	open(my $fh, '>', "$f.tmp") or croak "expect: $!";
	print $fh $size eq 'ignore' ? "ignore -\n" : "$size $sha\n";
	close $fh;
	rename("$f.tmp", $f) or croak "expect: $!";
	# the sampler reads expectations every turn: wait for one turn
	my $n = $self->_samples;
	Time::HiRes::sleep(0.005) while $self->_samples < $n + 2 && $self->alive;
	return;
}

sub alive { my ($self) = @_; return $self->{pid} && kill(0, $self->{pid}); }

sub _read
{
	my ($f) = @_;
	open(my $fh, '<', $f) or return '';
	local $/;
	my $t = <$fh> // '';
	close $fh;
	return $t;
}

sub _samples { return (_read("$_[0]{state}/samples") =~ /(\d+)/)[0] // 0 }

=pod

$w->report: {seen => {name => first epoch seen}, bad => ["name size=N
firstnul=K at=epoch", ...] (each distinct bad state once), samples => N}.

=cut

sub report
{
	my ($self) = @_;
	my (%seen, @bad);
	for (split /\n/, _read("$self->{state}/events"))
	{
		if (/^seen (\S+) ([\d.]+)$/) { $seen{$1} //= $2; }
		elsif (/^bad (.*)$/) { push @bad, $1; }
	}
	return { seen => \%seen, bad => \@bad, samples => $self->_samples };
}

sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{pid} or return;
	kill 'TERM', $pid;
	my $deadline = Time::HiRes::time() + 5;
	Time::HiRes::sleep(0.01) while waitpid($pid, POSIX::WNOHANG()) == 0 && Time::HiRes::time() < $deadline;
	if (kill 0, $pid) { kill 'KILL', $pid; waitpid($pid, 0); }
	File::Path::remove_tree($self->{state});
	return;
}

sub DESTROY { my ($self) = @_; local ($?, $!, $@); $self->stop if $self->{pid}; }

END { local $?; $_->stop for grep { $_ && $_->{pid} } @watchers; }

# ---- the sampler

sub _loop
{
	my ($dir, $state, $parent, $interval) = @_;
	my $stop = 0;
	local $SIG{TERM} = sub { $stop = 1 };
	my (%hashed, %seen, %bad);
	my $samples = 0;
	my $until = Time::HiRes::time() + 900;
	open(my $ev, '>>', "$state/events") or die "events: $!";
	$ev->autoflush(1);
	while (!$stop && getppid() == $parent && Time::HiRes::time() < $until)
	{
		my %expect;
		if (opendir(my $e, "$state/expect"))
		{
			for my $n (grep { !/^\./ && !/\.tmp$/ } readdir $e)
			{
				my ($size, $sha) = split ' ', _read("$state/expect/$n");
				$expect{$n} = [ $size, $sha ] if defined $sha;
			}
			closedir $e;
		}
		if (opendir(my $d, $dir))
		{
			for my $n (readdir $d)
			{
				next unless $n =~ /^(?:evaluate|transmit)_.+\.jsonl$/;
				my @st = Time::HiRes::stat("$dir/$n") or next;
				my $now = Time::HiRes::time();
				print $ev "seen $n $now\n" unless $seen{$n}++;
				my $want = $expect{$n} or next;
				next if $want->[0] eq 'ignore';
				my $key = join ':', $n, @$want, @st[ 1, 7, 9, 10 ];    # inode, size, mtime, ctime
				next if $hashed{$key}++;
				open(my $fh, '<:raw', "$dir/$n") or next;
				local $/;
				my $bytes = <$fh> // '';
				close $fh;
				next if length($bytes) == $want->[0] && Digest::SHA::sha256_hex($bytes) eq $want->[1];
				my $nul = index($bytes, "\0");
				my $what = sprintf('%s size=%d want=%d firstnul=%d', $n, length($bytes), $want->[0], $nul);
				print $ev "bad $what at=$now\n" unless $bad{$what}++;
			}
			closedir $d;
		}
		$samples++;
		if (open(my $s, '>', "$state/samples.tmp")) { print $s "$samples\n"; close $s; rename("$state/samples.tmp", "$state/samples"); }
		if ($samples == 1) { open(my $s, '>', "$state/started"); close $s; }
		Time::HiRes::sleep($interval);
	}
	close $ev;
	return;
}

1;
