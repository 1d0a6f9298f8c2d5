# The local files of the SFTP connection, as the DBA meets their faults:
# a private key the server account cannot read (mode 000), one in a folder
# it cannot enter, a missing one, a public key given as the private key, a
# known_hosts file it cannot read, a key locked by a passphrase that is not
# set or is wrong, and a key the server does not know.  Each is reported as
# what it is (SQLSTATE, message, detail naming the operating-system user and
# the file's owner and mode, hint saying what to change) in the WARNING of
# ff_export_batch(), in batch_status.last_error, in ff_worker_status()'s
# last_error and in the server log; never with the file's path or the
# passphrase; no connection is made for a local fault.  With the right
# passphrase the batch is uploaded.
use strict;
use POSIX ();
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Copy ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b';
my $passphrase = 'pp-7f3e9c21-never-show-me';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffkeys024');
my $sshd = FFSshd->start("$tmp/sshd", passphrase => $passphrase);
my $sim = FFSim->start(name => 'ffsim_024', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);

my $node = ff_node('keys024',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.batch_retry_base' => '1');
ff_start_serving($node, 'ffdb');

sub sq { $node->safe_psql('ffdb', $_[0]) }

my $user = getpwuid($>);
my $uid = $>;

# Point a setting at $value (ALTER SYSTEM) and wait for the worker to reload.
sub set_conf
{
	my ($name, $value) = @_;
	ff_reload_and_wait($node, 'ffdb', "ALTER SYSTEM SET $name = '$value'");
}

# Every secret this test knows: none may appear in what the DBA sees.
my @secrets = ($passphrase, $tmp);

my $case = 0;

# Queue declines, run ff_export_batch() and check what the DBA sees:
# %o: what (the case), sqlstate, message (regex of the WARNING's message,
# after "batch N (file) was not uploaded: "), detail, hint (regexes).
sub fails_ok
{
	my (%o) = @_;
	my $what = $o{what};
	$case++;
	FFSim::enqueue_declines($node, 'ffdb', "C$case", 2);
	my $log_offset = -s $node->logfile;
	my $sshd_log = length $sshd->log_text;
	my $r = ff_run_sql($node, 'ffdb', 'SELECT flexfactor.ff_export_batch()');
	is($r->{stdout}, '0', "$what: nothing uploaded");
	is(scalar @{ $r->{warnings} }, 1, "$what: one WARNING") or diag $r->{stderr};
	is($r->{warnings}[0][0], $o{sqlstate}, "$what: SQLSTATE $o{sqlstate}");
	like($r->{warnings}[0][1], qr/^batch \d+ \(evaluate_\S+\.jsonl\) was not uploaded: $o{message}/,
		"$what: the message says what is wrong");
	like($r->{stderr}, qr/^DETAIL:\s+$o{detail}/m, "$what: the detail gives the facts") if $o{detail};
	like($r->{stderr}, qr/^HINT:\s+$o{hint}/m, "$what: the hint says what to change") if $o{hint};

	my $batch = ff_batch_of($node, 'ffdb', "C$case");
	my $last_error = sq("SELECT last_error FROM flexfactor.batch_status WHERE id = $batch");
	like($last_error, qr/^$o{message}/, "$what: batch_status.last_error has the message");
	like($last_error, qr/$o{detail}/, "$what: and the detail") if $o{detail};
	like(sq("SELECT last_error FROM flexfactor.ff_worker_status() WHERE role = 'worker'"),
		qr/^$o{message}/, "$what: ff_worker_status().last_error has it too");
	my $log = ff_log_since($node, $log_offset);
	like($log, qr/WARNING:\s+flexfactor worker could not upload batch $batch \(\S+\): $o{message}/,
		"$what: the server log has it");
	like($log, qr/HINT:\s+$o{hint}/, "$what: with the hint") if $o{hint};

	# (the log's "parameter ... changed to" lines of the reload carry paths)
	my $seen = join "\n", $r->{stderr}, $last_error,
	  grep { /WARNING:|DETAIL:|HINT:/ } split /\n/, $log;
	ok(!grep({ index($seen, $_) >= 0 } @secrets), "$what: no path or passphrase is shown");
	if ($o{local})
	{
		unlike(substr($sshd->log_text, $sshd_log), qr/Connection from|publickey/,
			"$what: no connection was made");
	}
	# out of the way of the next cases
	sq("UPDATE flexfactor.batches SET next_attempt_at = now() + interval '1 day' WHERE id = $batch");
	return $r;
}

my $key = $sshd->client_key;

# --- a key file the server account cannot read
my $locked = "$tmp/locked_key";
File::Copy::copy($key, $locked);
chmod 0000, $locked;
set_conf('flexfactor.sftp_private_key_file', $locked);
fails_ok(what => 'key mode 000', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key file \(flexfactor\.sftp_private_key_file\) cannot be read by the operating-system user "\Q$user\E" that PostgreSQL runs as/,
	detail => qr/The file is owned by "\Q$user\E" \(uid $uid\) with mode 0000; PostgreSQL runs as "\Q$user\E" \(uid $uid\)\./,
	hint => qr/Make "\Q$user\E" the file's owner and let it read the file: chown \Q$user\E FILE; chmod 600 FILE, where FILE is the value of flexfactor\.sftp_private_key_file\./);

# --- a key file in a folder the server account cannot enter
mkdir "$tmp/closed";
File::Copy::copy($key, "$tmp/closed/key");
chmod 0600, "$tmp/closed/key";
chmod 0000, "$tmp/closed";
set_conf('flexfactor.sftp_private_key_file', "$tmp/closed/key");
fails_ok(what => 'key in a closed folder', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key file \(flexfactor\.sftp_private_key_file\) cannot be read by the operating-system user "\Q$user\E"/,
	detail => qr/A folder on the file's path does not let "\Q$user\E" \(uid $uid\) through \(no search permission\)\./,
	hint => qr/Give "\Q$user\E" search permission \(x\) on every folder of the path/);
chmod 0700, "$tmp/closed";

# --- a key file that does not exist
set_conf('flexfactor.sftp_private_key_file', "$tmp/no_such_key");
fails_ok(what => 'missing key', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key file \(flexfactor\.sftp_private_key_file\) does not exist/,
	detail => qr/No file of that name exists on the database server\./,
	hint => qr/Set flexfactor\.sftp_private_key_file to the absolute path of the private key whose public key FlexFactor holds/);

# --- the public key given as the private key
set_conf('flexfactor.sftp_private_key_file', $sshd->client_pubkey);
fails_ok(what => 'public key as private key', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key file \(flexfactor\.sftp_private_key_file\) holds a public key/,
	hint => qr/Set flexfactor\.sftp_private_key_file to the private key/);
# --- a FIFO named as the key: refused at once, the worker not stuck in open()
POSIX::mkfifo("$tmp/fifo_key", 0600) or die "mkfifo: $!";
set_conf('flexfactor.sftp_private_key_file', "$tmp/fifo_key");
fails_ok(what => 'a FIFO as the key', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key file \(flexfactor\.sftp_private_key_file\) is not a regular file/,
	hint => qr/Set flexfactor\.sftp_private_key_file to the absolute path of/);
set_conf('flexfactor.sftp_private_key_file', $key);

# --- a known_hosts file the server account cannot read
my $kh = $sshd->write_known_hosts("$tmp/known_hosts_locked");
chmod 0000, $kh;
set_conf('flexfactor.sftp_known_hosts_file', $kh);
fails_ok(what => 'known_hosts mode 000', sqlstate => 'FF031', local => 1,
	message => qr/the SFTP known_hosts file \(flexfactor\.sftp_known_hosts_file\) cannot be read by the operating-system user "\Q$user\E" that PostgreSQL runs as/,
	detail => qr/The file is owned by "\Q$user\E" \(uid $uid\) with mode 0000/,
	hint => qr/Make "\Q$user\E" the file's owner and let it read the file: chown \Q$user\E FILE; chmod 644 FILE, where FILE is the value of flexfactor\.sftp_known_hosts_file\./);
set_conf('flexfactor.sftp_known_hosts_file', $sshd->known_hosts);

# --- a key locked by a passphrase: not set, then wrong, then right
my $pp_key = $sshd->env('FFSSHD_CLIENT_KEY_PP');
ok(-f $pp_key, 'sshd made a passphrase-protected client key');
set_conf('flexfactor.sftp_private_key_file', $pp_key);
fails_ok(what => 'passphrase not set', sqlstate => 'FF032', local => 1,
	message => qr/the SFTP private key is protected by a passphrase, and flexfactor\.sftp_passphrase is not set/,
	hint => qr/Set flexfactor\.sftp_passphrase in a configuration file only the server account can read/);

my $wrong = 'wrong-0d8e2b5a-never-show-me';
push @secrets, $wrong;
set_conf('flexfactor.sftp_passphrase', $wrong);
fails_ok(what => 'wrong passphrase', sqlstate => 'FF032',
	message => qr/flexfactor\.sftp_passphrase does not unlock the SFTP private key/,
	detail => qr/The key in flexfactor\.sftp_private_key_file is encrypted, and libssh2 could not decrypt it/,
	hint => qr/Set flexfactor\.sftp_passphrase to the key's passphrase/);

set_conf('flexfactor.sftp_passphrase', $passphrase);
$case++;
FFSim::enqueue_declines($node, 'ffdb', "C$case", 2);
is(sq('SELECT flexfactor.ff_export_batch()'), '1', 'right passphrase: the batch is uploaded');
is(sq("SELECT state FROM flexfactor.batch_status WHERE id = " . ff_batch_of($node, 'ffdb', "C$case")),
	'uploaded', 'and recorded as uploaded');

# --- a key the server does not know: the server refused it
set_conf('flexfactor.sftp_passphrase', '');
set_conf('flexfactor.sftp_private_key_file', $sshd->new_client_key('stranger'));
fails_ok(what => 'unknown key', sqlstate => 'FF032',
	message => qr/SFTP authentication failed for user "\Q${\ $sshd->user }\E": the server refused the key/,
	hint => qr/FlexFactor must hold the public key of flexfactor\.sftp_private_key_file/);

done_testing();
