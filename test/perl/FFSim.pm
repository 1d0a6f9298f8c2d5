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

=pod

---- Batch assertions (Test::More) shared by the 02x suites.  $node/$db:
the PostgreSQL::Test::Cluster node and database that exported the files.

FFSim::batch_expected_status($cents): the simulator's status for an
evaluate line with an unknown (test) token under managed MIT: cents ending
01 APPROVED, 02 DECLINED, otherwise SUBMITTED.

FFSim::batch_cents_sql($i): an SQL expression of cents for line $i mixing
the three outcomes (1001..9950).

$sim->check_batch_files($node, $db, $what, \@names): every named file in
inbound against flexfactor.batches: name evaluate_<mid>_<UTC stamp>_<id>.jsonl
with the stamp of created_at, state uploaded, byte_count, SHA-256,
line_count, UTF-8 JSON Lines ending in \n, sequenceNumber 1..N (JSON
integers), mid, paymentMethod.token true.  Returns {name => {batch_id,
lines => [decoded], raw => [text], sha256}}.

$sim->check_lines_match_declines($node, $db, $what, $files, $where): the
lines of these files against flexfactor.declines WHERE $where: each line is
the queued payload plus sequenceNumber, mid and idempotencyKey (=
ff_attempt_key('evaluate', mid, orderId, transaction.id)), in the file of the
decline's batch, each decline in exactly one line.  Returns the keys.

$sim->check_accepted($what, $files, $keys): POST /_admin/scan, then: each
file processed with every line accepted and the SHA-256 the database fixed,
results (the simulator's record of the result file) line for line per
batch_expected_status, inbound empty, each key accepted once and seen once.
A delivered batch is 'uploaded' or, once its result file was applied,
'answered'.

FFSim::enqueue_declines($node, $db, $prefix, $n): queues declines
"$prefix-1" .. "$prefix-$n" with ff_enqueue_decline() in one statement,
amounts per batch_cents_sql, complete bodies (FlexFactorTest's
ff_decline_args); returns how many.  FFSim::enqueue_declines_sql($prefix,
$n): the same as an expression to SELECT, for a script of several
statements.

$sim->check_delivered($node, $db, $what, $prefix, $n): the complete files in
inbound (not *.part) are exactly those of the $n declines "$prefix-*":
check_batch_files, check_lines_match_declines, then check_accepted.
Returns the files.

=cut

sub enqueue_declines
{
	my ($node, $db, $prefix, $n) = @_;
	return $node->safe_psql($db, 'SELECT ' . enqueue_declines_sql($prefix, $n));
}

# The expression enqueue_declines() selects (to run with other statements).
sub enqueue_declines_sql
{
	my ($prefix, $n) = @_;
	require FlexFactorTest;    # the complete arguments (flexfactor-api.md 12a)
	return "count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
	             '$prefix-' || i, " . batch_cents_sql('i') . ", 'USD', 'tok-' || i, 'tx-' || i,
	             " . FlexFactorTest::ff_decline_args(expiry => "now() + interval '14 days'") . ")))
	           FROM generate_series(1, $n) i";
}

sub check_delivered
{
	my ($self, $node, $db, $what, $prefix, $n) = @_;
	require Test::More;
	my $finals = [ grep { !/\.part$/ } @{ $self->inbound_files } ];
	my $files = $self->check_batch_files($node, $db, $what, $finals);
	my $keys = $self->check_lines_match_declines($node, $db, $what, $files, "order_id LIKE '$prefix-%'");
	Test::More::is(scalar @$keys, $n, "$what: the $n declines are in the files");
	$self->check_accepted($what, $files, $keys);
	return $files;
}

sub batch_expected_status
{
	my ($cents) = @_;
	return $cents % 100 == 1 ? 'APPROVED' : $cents % 100 == 2 ? 'DECLINED' : 'SUBMITTED';
}

sub batch_cents_sql
{
	my ($i) = @_;
	return "(1000 + 100 * ($i % 90) + CASE $i % 3 WHEN 0 THEN 1 WHEN 1 THEN 2 ELSE 50 END)";
}

sub _slurp_bytes
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or croak "cannot read $path: $!";
	local $/;
	my $t = <$fh>;
	close $fh;
	return $t // '';
}

sub check_batch_files
{
	my ($self, $node, $db, $what, $names) = @_;
	require Digest::SHA;
	require Test::More;
	my $mid = $self->{mid};
	my $inbound = $self->inbound_dir;
	my %files;
	for my $name (@$names)
	{
		my $bytes = _slurp_bytes("$inbound/$name");
		(my $qname = $name) =~ s/'/''/g;
		my ($id, $lc, $bc, $sha, $state, $stamp) = split /\|/, $node->safe_psql($db,
			"SELECT id, line_count, byte_count, sha256, state,
			        to_char(created_at AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS\"Z\"')
			   FROM flexfactor.batches WHERE file_name = '$qname'");
		Test::More::ok(defined $id, "$what: $name is a batch of the database") or next;
		Test::More::like($name, qr/^evaluate_\Q$mid\E_\d{8}T\d{6}Z_\Q$id\E\.jsonl$/,
			"$what: $name is evaluate_<mid>_<UTC stamp>_<batch id>.jsonl");
		my ($file_stamp) = $name =~ /_(\d{8}T\d{6}Z)_/;
		Test::More::is($file_stamp, $stamp, "$what: the stamp is when batch $id was fixed (UTC)");
		Test::More::like($state, qr/^(uploaded|answered)$/, "$what: batch $id is uploaded ($state)");
		Test::More::is(length($bytes), $bc, "$what: $name has byte_count bytes");
		Test::More::is(Digest::SHA::sha256_hex($bytes), $sha,
			"$what: SHA-256 of $name equals batches.sha256");
		Test::More::ok(utf8::decode(my $copy = $bytes), "$what: $name is UTF-8");
		Test::More::like($bytes, qr/\n\z/, "$what: the last line ends with \\n");
		Test::More::unlike($bytes, qr/\r|\n\n|^\n/, "$what: no CR, no blank line");
		my @raw = split /\n/, $bytes;
		Test::More::is(scalar @raw, $lc, "$what: $name has line_count ($lc) lines");
		my @lines = map { $JSON->decode($_) } @raw;
		Test::More::is_deeply([ map { $_->{sequenceNumber} } @lines ], [ 1 .. $lc ],
			"$what: sequenceNumber runs 1..$lc");
		Test::More::is(scalar(grep { !/"sequenceNumber":\s*\d+[,}]/ } @raw), 0,
			"$what: sequenceNumber is a JSON integer");
		Test::More::is(scalar(grep { ($_->{mid} // '') ne $mid } @lines), 0,
			"$what: every line has the mid");
		Test::More::is(scalar(grep {
					!(JSON::PP::is_bool($_->{paymentMethod}{token}) && $_->{paymentMethod}{token}) } @lines),
			0, "$what: every line has paymentMethod.token = true");
		$files{$name} = { batch_id => $id, lines => \@lines, raw => \@raw, sha256 => $sha };
	}
	return \%files;
}

sub check_lines_match_declines
{
	my ($self, $node, $db, $what, $files, $where) = @_;
	require Test::More;
	my $mid = $self->{mid};
	my %decl;
	for my $row (split /\n/, $node->safe_psql($db,
			"SELECT id, batch_id, idempotency_key,
			        flexfactor.ff_attempt_key('evaluate', '$mid', order_id, transaction_id), payload::text
			   FROM flexfactor.decline_status WHERE $where ORDER BY id"))
	{
		my ($id, $batch, $key, $api_key, $payload) = split /\|/, $row, 5;
		$decl{$key} = { id => $id, batch => $batch, api_key => $api_key,
			payload => $JSON->decode($payload), seen => 0 };
	}
	my ($bad_payload, $bad_batch, $bad_key, $unknown) = (0, 0, 0, 0);
	for my $f (values %$files)
	{
		for my $l (@{ $f->{lines} })
		{
			my %rest = %$l;
			my $key = delete $rest{idempotencyKey} // '';
			delete @rest{qw(sequenceNumber mid)};
			my $d = $decl{$key};
			if (!$d) { $unknown++; next; }
			$d->{seen}++;
			$bad_key++ if $key ne $d->{api_key};
			$bad_batch++ if ($d->{batch} // '') ne $f->{batch_id};
			$bad_payload++ if $JSON->encode(\%rest) ne $JSON->encode($d->{payload});
		}
	}
	Test::More::is($unknown, 0, "$what: every line is a queued decline");
	Test::More::is(scalar(grep { $_->{seen} != 1 } values %decl), 0,
		"$what: each of the " . scalar(keys %decl) . " declines is in exactly one line");
	Test::More::is($bad_payload, 0,
		"$what: every line is the queued payload plus sequenceNumber, mid, idempotencyKey");
	Test::More::is($bad_batch, 0, "$what: every line is in the file of the decline's batch_id");
	Test::More::is($bad_key, 0,
		"$what: idempotencyKey = ff_attempt_key('evaluate', mid, orderId, transaction.id)");
	return [ keys %decl ];
}

sub check_accepted
{
	my ($self, $what, $files, $keys) = @_;
	require Test::More;
	my $processed = $self->scan;
	my %by_file = map { ($_->{file} => $_) } @$processed;
	for my $name (sort keys %$files)
	{
		my $p = $by_file{$name};
		my $n = scalar @{ $files->{$name}{lines} };
		Test::More::is($p && $p->{status}, 'processed', "$what: the simulator processed $name");
		Test::More::is($p && $p->{accepted}, $n, "$what: all $n lines of $name accepted")
		  or Test::More::diag(Test::More::explain($p));
		Test::More::is($p && $p->{sha256}, $files->{$name}{sha256},
			"$what: it read the bytes the database fixed");
		# what the result file said, from the simulator's record (the
		# worker may already have read and removed the file itself)
		my ($rec) = grep { ($_->{status} // '') eq 'processed' } @{ $self->batches(file => $name) };
		Test::More::ok($rec && $rec->{resultFile}, "$what: a result file was written for $name") or next;
		my @res = @{ $rec->{results} // [] };
		my @lines = @{ $files->{$name}{lines} };
		Test::More::is(scalar @res, $n, "$what: one result line per input line");
		my ($bad_status, $bad_seq) = (0, 0);
		for my $i (0 .. $#res)
		{
			$bad_seq++ if $res[$i]{sequenceNumber} != $i + 1
			  || ($res[$i]{orderId} // '') ne ($lines[$i]{orderId} // '');
			$bad_status++
			  if $res[$i]{status} ne batch_expected_status($lines[$i]{transaction}{amount})
			  || !$res[$i]{success};
		}
		Test::More::is($bad_seq, 0, "$what: result lines follow the input order");
		Test::More::is($bad_status, 0,
			"$what: each result is SUBMITTED/APPROVED/DECLINED per the amount rules");
	}
	Test::More::is_deeply([ grep { !/\.part$/ } @{ $self->inbound_files } ], [],
		"$what: inbound is empty after the scan");
	$self->check_keys_once($what, $keys);
	return $processed;
}

# How many batch lines FlexFactor accepted (a result line with success) for
# each decline, by "orderId transaction.id", over every file it processed
# (replays of a key included; the idempotency record tells them apart).
sub accepted_line_counts
{
	my ($self) = @_;
	my %n;
	for my $b (@{ $self->batches })
	{
		next unless ($b->{status} // '') eq 'processed';
		my @lines = @{ $b->{lines} // [] };
		my @res = @{ $b->{results} // [] };
		for my $i (0 .. $#lines)
		{
			next unless $res[$i] && $res[$i]{success};
			$n{ ($lines[$i]{orderId} // '') . ' ' . ($lines[$i]{transaction}{id} // '') }++;
		}
	}
	return \%n;
}

# Each key accepted exactly once and seen exactly once by the simulator.
sub check_keys_once
{
	my ($self, $what, $keys) = @_;
	require Test::More;
	my $idem = $self->idempotency_by_key(kind => 'evaluate');
	my @not_once = grep { !$idem->{$_} || $idem->{$_}{accepted} != 1 } @$keys;
	Test::More::is(scalar @not_once, 0,
		"$what: the simulator accepted each of the " . scalar(@$keys) . " keys exactly once")
	  or Test::More::diag(Test::More::explain([ map { $idem->{$_} // $_ } @not_once[0 .. 1] ]));
	my @seen_more = grep { $idem->{$_} && $idem->{$_}{seen} != 1 } @$keys;
	Test::More::is(scalar @seen_more, 0, "$what: and received each key exactly once")
	  or Test::More::diag(Test::More::explain([ map { $idem->{$_} } @seen_more[0 .. 1] ]));
	return;
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

=pod

---- Webhook deliveries (the 03x suites).  The simulator signs its own
deliveries; these helpers let a test sign, send and inspect deliveries by
hand, byte for byte (a Host of its choosing, half a request, a wrong method).

$FFSim::WEBHOOK_TEST_KEY: the public subscriber key of flexfactor-api.md
section 7.4 (the simulator's default --webhook-key).

FFSim::http_date($epoch): RFC 1123 date ("Mon, 20 Mar 2023 17:16:40 GMT").

FFSim::webhook_nonce(): 32 new random hex digits.

FFSim::webhook_headers($key_b64, $nonce, $date, $host, $body): the x-fc-*
headers of a delivery as a list of (name => value) pairs, in the order
nonce, date, content-sha512, authorization, signature.

FFSim::http_request(%o): one HTTP/1.1 request over a new TCP connection,
"Connection: close", bounded by timeout (default 15 s).  Options: port,
address (default 127.0.0.1), local_address (bind the client side, e.g.
127.0.0.2), method (POST), path, host (default "address:port"; undef
value = no Host header), headers (array ref of pairs), body, chunked (send
the body chunked instead of with Content-Length), raw (the exact bytes to
send instead).  Returns {status, reason, headers => {lower-case name =>
value}, body, raw, error, elapsed}; status undef when no answer came.

FFSim::post_webhook(%o): a signed delivery.  Options of http_request plus
key (base64; default the test key), sign_key (sign with another key),
body (bytes), nonce, date (text) or age (seconds before now), sign_host
(the Host the signature covers; default the Host sent), sign_body (the
body the signatures cover; default the body sent), drop (array ref of
x-fc-* header names to leave out), extra_headers (more pairs).  Returns
the http_request answer plus {nonce, date, sent_headers => [pairs]}.

FFSim::webhook_body(%fields): a compact PascalCase body in the simulator's
key order (Event, TimeStamp, EventData, ExternalOrderId, OrderId,
ConfirmationId, IsTestMode, IsResent); a field given as undef is left out.

$sim->webhooks(%query): GET /_admin/webhooks ({count, attempts, events,
pendingDeliveries, mode}); query orderId, event.

$sim->webhook_mode(%mode): POST /_admin/webhooks/mode (missing keys off).

$sim->resend_webhook($order_id[, $event]): POST /_admin/webhooks/resend;
returns the attempt.

$sim->chargeback($order_id, $cents, $reason): POST
/_admin/orders/{id}/chargeback; returns the event.

$sim->wait_for_webhooks($cond, $timeout): poll /_admin/webhooks every 50 ms
until $cond->($webhooks) is true; returns that answer, or undef after
$timeout seconds (default 20).

FFSim::attempt_nonce($attempt): the x-fc-nonce the attempt carried.

=cut

our $WEBHOOK_TEST_KEY =
  'XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw==';

my @HTTP_DAYS = qw(Sun Mon Tue Wed Thu Fri Sat);
my @HTTP_MONTHS = qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec);

sub http_date
{
	my ($epoch) = @_;
	my @t = gmtime(int($epoch // time));
	return sprintf('%s, %02d %s %04d %02d:%02d:%02d GMT',
		$HTTP_DAYS[ $t[6] ], $t[3], $HTTP_MONTHS[ $t[4] ], $t[5] + 1900, $t[2], $t[1], $t[0]);
}

my $nonce_counter = 0;

sub webhook_nonce
{
	require Digest::SHA;
	return substr(Digest::SHA::sha256_hex(join ':', $$, Time::HiRes::time(), rand(), ++$nonce_counter),
		0, 32);
}

sub webhook_headers
{
	my ($key_b64, $nonce, $date, $host, $body) = @_;
	require Digest::SHA;
	require MIME::Base64;
	my $key = MIME::Base64::decode_base64($key_b64);
	my $hash = MIME::Base64::encode_base64(Digest::SHA::sha512($body), '');
	my $auth = MIME::Base64::encode_base64(
		Digest::SHA::hmac_sha512("POST\n$nonce;$date;$host;$hash", $key), '');
	my $sig = MIME::Base64::encode_base64(Digest::SHA::hmac_sha512($body, $key), '');
	return (
		'x-fc-nonce' => $nonce,
		'x-fc-date' => $date,
		'x-fc-content-sha512' => $hash,
		'x-fc-authorization' =>
		  "HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512&Signature=$auth",
		'x-fc-signature' => $sig);
}

sub webhook_body
{
	my (%f) = @_;
	my @order = qw(Event TimeStamp EventData ExternalOrderId OrderId ConfirmationId IsTestMode IsResent);
	my %defaults = (TimeStamp => '2026-01-01T00:00:00Z', EventData => undef,
		ConfirmationId => 'C0FFEE01', IsTestMode => JSON::PP::true, IsResent => JSON::PP::false);
	my @parts;
	for my $k (@order)
	{
		my $v = exists $f{$k} ? $f{$k} : $defaults{$k};
		next if exists $f{$k} && !defined $f{$k};
		push @parts, $JSON->encode($k) . ':' . $JSON->encode($v);
	}
	return '{' . join(',', @parts) . '}';
}

sub http_request
{
	my (%o) = @_;
	require IO::Socket::INET;
	require IO::Select;
	my $address = $o{address} // '127.0.0.1';
	my $timeout = $o{timeout} // 15;
	my $t0 = Time::HiRes::time();
	my %res = (status => undef, headers => {}, body => '', raw => '');
	my $sock = IO::Socket::INET->new(PeerAddr => $address, PeerPort => $o{port}, Proto => 'tcp',
		Timeout => $timeout, ($o{local_address} ? (LocalAddr => $o{local_address}) : ()));
	if (!$sock)
	{
		$res{error} = "connect: $!";
		$res{elapsed} = Time::HiRes::time() - $t0;
		return \%res;
	}
	my $req = $o{raw};
	if (!defined $req)
	{
		my $body = $o{body} // '';
		my $host = exists $o{host} ? $o{host} : "$address:$o{port}";
		$req = ($o{method} // 'POST') . ' ' . ($o{path} // '/') . " HTTP/1.1\r\n";
		$req .= "Host: $host\r\n" if defined $host;
		my @h = @{ $o{headers} // [] };
		while (my ($k, $v) = splice(@h, 0, 2)) { $req .= "$k: $v\r\n"; }
		if ($o{chunked})
		{
			$req .= "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
			for (my $i = 0; $i < length $body; $i += 4096)
			{
				my $piece = substr($body, $i, 4096);
				$req .= sprintf("%x\r\n%s\r\n", length $piece, $piece);
			}
			$req .= "0\r\n\r\n";
		}
		else
		{
			$req .= 'Content-Length: ' . length($body) . "\r\nConnection: close\r\n\r\n" . $body;
		}
	}
	# write what the server takes (it may answer early and close), then read
	local $SIG{PIPE} = 'IGNORE';
	my $sel = IO::Select->new($sock);
	my $deadline = $t0 + $timeout;
	my $off = 0;
	while ($off < length $req)
	{
		last unless $sel->can_write(Time::HiRes::time() < $deadline ? $deadline - Time::HiRes::time() : 0);
		my $n = syswrite($sock, $req, 65536, $off);
		last unless defined $n && $n > 0;
		$off += $n;
		# an early answer (413, 404 ...) ends the upload
		last if $sel->can_read(0) && $off < length $req;
	}
	my $raw = '';
	while (Time::HiRes::time() < $deadline)
	{
		last unless $sel->can_read($deadline - Time::HiRes::time());
		my $n = sysread($sock, my $buf, 65536);
		last unless $n;    # EOF or error (a reset after an early answer)
		$raw .= $buf;
		if ($raw =~ /\r\n\r\n/ && $raw =~ /^content-length:\s*(\d+)\r$/mi)
		{
			my $len = $1;
			my $hdr_end = index($raw, "\r\n\r\n") + 4;
			last if length($raw) >= $hdr_end + $len;
		}
	}
	close $sock;
	$res{raw} = $raw;
	$res{elapsed} = Time::HiRes::time() - $t0;
	if ($raw =~ m{^HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n(.*?)\r\n\r\n(.*)\z}s)
	{
		@res{qw(status reason body)} = ($1, $2 // '', $4);
		for my $line (split /\r\n/, $3)
		{
			my ($k, $v) = $line =~ /^([^:]+):\s*(.*)$/ or next;
			$res{headers}{ lc $k } = $v;
		}
	}
	else
	{
		$res{error} //= $raw eq '' ? 'no answer' : 'unparsable answer';
	}
	return \%res;
}

sub post_webhook
{
	my (%o) = @_;
	my $address = $o{address} // '127.0.0.1';
	my $host = exists $o{host} ? $o{host} : "$address:$o{port}";
	my $body = $o{body} // '';
	my $nonce = $o{nonce} // webhook_nonce();
	my $date = $o{date} // http_date(time - ($o{age} // 0));
	my @h = webhook_headers($o{sign_key} // $o{key} // $WEBHOOK_TEST_KEY, $nonce, $date,
		exists $o{sign_host} ? $o{sign_host} : $host // '',
		exists $o{sign_body} ? $o{sign_body} : $body);
	my %drop = map { (lc $_ => 1) } @{ $o{drop} // [] };
	my @sent;
	while (my ($k, $v) = splice(@h, 0, 2)) { push @sent, $k, $v unless $drop{$k}; }
	push @sent, @{ $o{extra_headers} // [] };
	my %req = %o;
	delete @req{qw(key sign_key nonce date age sign_host sign_body drop extra_headers)};
	my $res = http_request(%req, host => $host, headers => \@sent, body => $body,
		path => $o{path} // '/flexfactor/webhook');
	@$res{qw(nonce date sent_headers)} = ($nonce, $date, \@sent);
	return $res;
}

sub webhooks
{
	my ($self, %q) = @_;
	return $self->admin('GET', '/_admin/webhooks', \%q);
}

sub webhook_mode
{
	my ($self, %mode) = @_;
	return $self->admin('POST', '/_admin/webhooks/mode', \%mode);
}

sub resend_webhook
{
	my ($self, $order_id, $event) = @_;
	return $self->admin('POST', '/_admin/webhooks/resend',
		{ orderId => $order_id, (defined $event ? (event => $event) : ()) })->{attempt};
}

=pod

---- Order life cycle of the real service (the 012 suite).

$sim->refund_answer($mode): how /orders/{id}/refund answers from now on:
current (success, responseMessage "APPROVED"), declined2024 (the refund
happens, answered success with responseMessage "DECLINED"), refused200,
refused400, refused409, refused422 (every refund refused with the recorded
2001 body, served with that HTTP status).

$sim->rescue($order_id, notify => 0|1): a DECLINED sync-MIT order is rescued
in the background; the next /evaluate of its orderId answers APPROVED.
notify (default 1) also sends order.completed.  Returns the order.

$sim->payout_webhook(event => 'payout.created', amount => $cents,
omit_order_id => 0|1): a signed payout delivery without an order (OrderId
null, or left out); returns the event.

=cut

sub refund_answer { $_[0]->config({ refundAnswer => $_[1] }) }

sub rescue
{
	my ($self, $order_id, %o) = @_;
	return $self->admin('POST', "/_admin/orders/$order_id/rescue",
		{ notify => ($o{notify} // 1) ? JSON::PP::true : JSON::PP::false });
}

sub payout_webhook
{
	my ($self, %o) = @_;
	return $self->admin('POST', '/_admin/webhooks/payout',
		{ event => $o{event} // 'payout.created', amount => $o{amount} // 125000,
		  omitOrderId => $o{omit_order_id} ? JSON::PP::true : JSON::PP::false })->{event};
}

sub chargeback
{
	my ($self, $order_id, $cents, $reason) = @_;
	return $self->admin('POST', "/_admin/orders/$order_id/chargeback",
		{ amount => $cents // 1000, reasonCode => $reason // '10.4' })->{event};
}

sub wait_for_webhooks
{
	my ($self, $cond, $timeout) = @_;
	my $deadline = Time::HiRes::time() + ($timeout // 20);
	while (1)
	{
		my $w = $self->webhooks;
		return $w if $cond->($w);
		return undef if Time::HiRes::time() > $deadline;
		Time::HiRes::sleep(0.05);
	}
}

sub attempt_nonce
{
	my ($attempt) = @_;
	my $h = $attempt->{headers} // {};
	my ($k) = grep { lc $_ eq 'x-fc-nonce' } keys %$h;
	return defined $k ? $h->{$k} : undef;
}

=pod

$sim->advance_in_background($seconds): POST /_admin/clock/advance from a
child process (its own HTTP connection), so the test can act while the
simulator's deliveries are under way; returns the child's pid.
FFSim::wait_child($pid, $timeout): wait (bounded, default 60 s) for such a
child; returns its exit status, or undef on timeout (the child is killed).

=cut

sub advance_in_background
{
	my ($self, $seconds) = @_;
	my $url = $self->base_url . '/_admin/clock/advance';
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $res = HTTP::Tiny->new(timeout => 120)->request('POST', $url,
			{ headers => { 'Content-Type' => 'application/json' },
			  content => $JSON->encode({ seconds => $seconds }) });
		# no END blocks of the test in the child
		POSIX::_exit($res->{success} ? 0 : 1);
	}
	return $pid;
}

sub wait_child
{
	my ($pid, $timeout) = @_;
	my $deadline = Time::HiRes::time() + ($timeout // 60);
	while (Time::HiRes::time() < $deadline)
	{
		return $? if waitpid($pid, POSIX::WNOHANG()) == $pid;
		Time::HiRes::sleep(0.05);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return undef;
}

=pod

---- The node's webhook listener ($node: a PostgreSQL::Test::Cluster).

FFSim::listener_pid($node): pid(s) of the running 'flexfactor webhook
listener' backends, comma-separated, or ''.

FFSim::wait_for_listener($node, $port, $old_pid): wait (bounded) until one
listener runs, other than $old_pid if given, and port $port on 127.0.0.1
accepts connections; returns its pid.  Dies on timeout.

FFSim::reload_listener($node, $db, @sql): run each statement (ALTER SYSTEM
...) in postgres, reload, and wait (bounded) until the listener re-read its
configuration (ff_worker_status().config_reloads grew, in database $db).

=cut

sub listener_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity
		  WHERE backend_type = 'flexfactor webhook listener'");
}

sub wait_for_listener
{
	my ($node, $port, $old) = @_;
	require IO::Socket::INET;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'flexfactor webhook listener'"
		  . ($old ? " AND pid <> $old" : ''))
	  or croak 'timed out waiting for the webhook listener';
	my $deadline = Time::HiRes::time() + 30;
	while (Time::HiRes::time() < $deadline)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
			Timeout => 2);
		if ($s) { close $s; return listener_pid($node); }
		Time::HiRes::sleep(0.05);
	}
	croak "the webhook listener does not accept connections on port $port";
}

sub reload_listener
{
	my ($node, $db, @sql) = @_;
	my $q = "SELECT config_reloads FROM flexfactor.ff_worker_status() WHERE role = 'listener'";
	my $reloads = $node->safe_psql($db, $q);
	$node->safe_psql('postgres', $_) for @sql;
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	$node->poll_query_until($db, "SELECT ($q) > $reloads")
	  or croak "the webhook listener did not reload after: @sql";
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
	$_->stop for grep { $_ && $_->{pid} } @running;
}

1;
