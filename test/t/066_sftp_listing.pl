# A folder listing is the SFTP server's to make as long as it likes: the
# worker keeps only the names it wants (answers in the outbound folder,
# temporary upload files in the inbound folder), reads at most 200,000 names
# and keeps at most 10,000 per listing, so its memory does not grow with the
# folder and a listing without end cannot hold a pass.  A cut listing is
# warned about once (per folder, every 10 minutes at most).  Measured with
# the real OpenSSH server: 100,000 other files in each folder cost the
# worker's peak RSS 19 MB before (every name was kept), about 1 MB after.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes;
use FlexFactorTest;
use FFSshd;

my $mid = '5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a81';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffres066');
my $sshd = FFSshd->start("$tmp/sshd");
my ($node, $inbound, $outbound) = ff_sftp_node('res066', $mid, $sshd, $tmp);

sub sq { $node->safe_psql('ffdb', $_[0]) }
sub export { ff_export($node, 'ffdb') }
sub touch { for my $p (@_) { open(my $f, '>', $p) or die "$p: $!"; close $f; } }

# ---------------------------------------------------------------
# 1. 100,000 files that are no answers: no memory, the answer found
# ---------------------------------------------------------------
export() for 1 .. 2;		# the worker's peak after ordinary passes
my $pid = ff_worker_pid($node, 'ffdb');
my $hwm0 = ff_proc_kb($pid, 'VmHWM');
touch(map { "$outbound/junk_$_.txt" } 1 .. 100_000);
touch(map { "$inbound/junk_$_.txt" } 1 .. 100_000);
open(my $f, '>', "$outbound/nobatch.result.jsonl") or die;
print $f qq({"sequenceNumber": 1, "status": "SUBMITTED"}\n);
close $f;

my $off = -s $node->logfile;
my $t0 = Time::HiRes::time();
export() for 1 .. 2;
my $secs = Time::HiRes::time() - $t0;
my $grew = ff_proc_kb($pid, 'VmHWM') - $hwm0;
diag sprintf('two passes over 2 x 100,000 files: %.1f s, worker peak RSS +%d kB', $secs, $grew);
is(ff_worker_pid($node, 'ffdb'), $pid, 'the same worker');
cmp_ok($grew, '<', 4096, 'its peak RSS grew by less than 4 MB');
is(sq("SELECT count(*) FROM flexfactor.refused_result_files WHERE file_name = 'nobatch.result.jsonl'"),
	'1', 'the one answer among them was still found (and refused: it answers no batch)');
unlike(ff_log_since($node, $off), qr/lists too many files/, 'no warning: the listings were not cut');

# ---------------------------------------------------------------
# 2. more names than a listing reads: cut, warned about once
# ---------------------------------------------------------------
touch(map { "$outbound/junk_$_.txt" } 100_001 .. 200_100);
$off = -s $node->logfile;
$t0 = Time::HiRes::time();
export() for 1 .. 2;
$secs = Time::HiRes::time() - $t0;
diag sprintf('two passes over 200,101 files: %.1f s', $secs);
my $log = ff_log_since($node, $off);
is(scalar(() = $log =~ /WARNING:  the SFTP folder of flexfactor.sftp_outbound_dir lists too many files/g), 1,
	'the outbound listing was cut at 200,000 names, and that was warned about once in two passes');
like($log, qr/read up to 200000 names/, 'the warning says where it stopped');
cmp_ok(ff_proc_kb($pid, 'VmHWM') - $hwm0, '<', 4096, 'the peak RSS still grew by less than 4 MB');
unlink map { "$outbound/junk_$_.txt" } 1 .. 200_100;
unlink map { "$inbound/junk_$_.txt" } 1 .. 100_000;

# ---------------------------------------------------------------
# 3. more wanted names than a listing keeps
# ---------------------------------------------------------------
# recent temporary upload files: wanted by the inbound listing, not stale
touch(map { sprintf('%s/evaluate_%d.jsonl.12345-%016x.part', $inbound, $_, $_) } 1 .. 10_001);
$off = -s $node->logfile;
export();
$log = ff_log_since($node, $off);
like($log, qr/WARNING:  the SFTP folder of flexfactor.sftp_inbound_dir lists too many files/,
	'the inbound listing kept 10,000 temporary files and was cut');
like($log, qr/10000 files of interest/, 'the warning says so');
is(scalar(grep { /\.part$/ } glob("$inbound/*")), 10_001, 'none of them was removed (they are not stale)');
cmp_ok(ff_proc_kb($pid, 'VmHWM') - $hwm0, '<', 4096, 'the peak RSS still grew by less than 4 MB');

$sshd->stop;
done_testing();
