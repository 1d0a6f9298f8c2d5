# Result files as the worker reads them (src/results.c), with a real SFTP
# server that logs every file it opens:
#
#  1. Bad files are refused once, and remembered in a table: an unreadable
#     file, one that answers no batch, one with more lines than its batch,
#     one that is not JSON Lines, sorted before a valid one; the valid one is
#     applied.  Each bad one gets one row in flexfactor.refused_result_files
#     (SQLSTATE, reason) and one WARNING; a late error file for the answered
#     batch is refused too and the batch stays answered.  Over further
#     passes, and after PostgreSQL is restarted, none of them is opened
#     again, but for the one the SFTP server refused to open (FF033: that
#     says nothing of its bytes): it is tried again at every pass, without
#     another WARNING, and applied once it is readable (it was kept refused
#     until its row was deleted).  A refused file that changes is read again
#     and applied (and loses its row); a row deleted by the DBA has its file
#     read again.
#  2. A 64 MB result file (a batch of 2,000 lines, each answer padded to 33
#     kB) is applied whole, once: its 2,000 lines stored, the orders made,
#     the file recorded with its SHA-256.  The worker holds one line while
#     downloading and one chunk (1 MB) while applying: its peak RSS (VmHWM,
#     reset through /proc/PID/clear_refs) grows by less than 12 MB, 12
#     chunks, shared buffers touched included (the old code read a file
#     whole, twice, and peaked at 3.3 GB on such a file; then refused any
#     file over 4 MB).
#  3. A 64 MB result file whose last line does not match its batch is
#     refused whole: nothing of it is stored, in the same bounded memory,
#     and the worker's memory contexts are where the first large file left
#     them.
use strict;
use warnings;
use Digest::SHA ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a80';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffres062');
my $sshd = FFSshd->start("$tmp/sshd", sftp_log => 'INFO');
my ($node, $inbound, $outbound) = ff_sftp_node('res062', $mid, $sshd, $tmp, 'log_error_verbosity' => 'verbose');

sub sq { $node->safe_psql('ffdb', $_[0]) }
sub export { ff_export($node, 'ffdb') }
sub enqueue_declines { ff_enqueue_declines($node, 'ffdb', @_) }


# a new batch of $n declines, uploaded: its id and file name
sub uploaded_batch
{
	my ($prefix, $n) = @_;
	enqueue_declines($prefix, $n);
	my $r = export();
	is($r->{stdout}, '1', "a batch of $n uploaded ($prefix)") or diag $r->{stderr};
	return split /\|/, sq("SELECT id, file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1");
}

# "<batch file>.result.jsonl" with one answer per line of the batch; $edit
# may change each answer (a hash) given its sequence number
sub write_result
{
	my ($batch, $file, $edit) = @_;
	(my $name = $file) =~ s/\.jsonl$/.result.jsonl/;
	open(my $f, '>', "$outbound/$name") or die "$outbound/$name: $!";
	for (ff_batch_line_orders($node, 'ffdb', $batch))
	{
		my ($seq, $order) = @$_;
		my %a = (sequenceNumber => $seq + 0, orderId => $order,
			orderSessionKey => sprintf('0b5e0000-0000-4000-8000-%012d', $batch * 10000 + $seq),
			status => 'SUBMITTED', success => \1, errors => []);
		$edit->($seq, \%a) if $edit;
		print $f FFSim->encode_json(\%a), "\n";
	}
	close $f;
	return $name;
}

# how many times the SFTP server was asked to open $name
sub opens
{
	my ($name) = @_;
	return scalar(() = $sshd->sftp_log_text =~ /open "[^"]*\/\Q$name\E" flags READ/g);
}

sub warnings_about
{
	my ($name, $off) = @_;
	return scalar(() = ff_log_since($node, $off) =~ /WARNING:  \S+: flexfactor worker could not apply result file "\Q$name\E"/g);
}

# ------------------------------------------------------------------
# 1. Bad files refused once, remembered across a restart
# ------------------------------------------------------------------
# batches whose answers are bad, made first so that their files sort first
my ($bu, $fu) = uploaded_batch('U', 1);    # its result file unreadable
my ($bm, $fm) = uploaded_batch('M', 1);    # two answers for one line
my ($bj, $fj) = uploaded_batch('J', 1);    # not JSON
my ($bv, $fv) = uploaded_batch('V', 3);    # valid
my $unknown = 'evaluate_00000000-0000-0000-0000-000000000000_20260101T000000Z_1.result.jsonl';
{
	open(my $f, '>', "$outbound/$unknown") or die;
	print $f qq({"sequenceNumber": 1, "status": "SUBMITTED"}\n);
	close $f;
}
my $ru = write_result($bu, $fu);
chmod 0000, "$outbound/$ru";
my $rm = write_result($bm, $fm);
{
	open(my $f, '>>', "$outbound/$rm") or die;
	print $f qq({"sequenceNumber": 1, "orderId": "M-1", "status": "SUBMITTED"}\n);
	close $f;
}
(my $rj = $fj) =~ s/\.jsonl$/.result.jsonl/;
{
	open(my $f, '>', "$outbound/$rj") or die;
	print $f qq({"sequenceNumber": 1, "orderId": "J-1", "status": "SUBMITTED"\n);
	close $f;
}
my $rv = write_result($bv, $fv);
my @bad = ($unknown, $ru, $rm, $rj);
is(join(' ', sort @bad, $rv), join(' ', @bad, $rv), 'the bad files sort before the valid one');

my $off = -s $node->logfile;
my $r = export();
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bv"), 'answered',
	'the valid file is applied although four bad ones sort before it');
ok(!-e "$outbound/$rv", 'and removed from the outbound folder');
is(sq("SELECT string_agg(file_name || ' ' || sqlstate, E'\\n' ORDER BY file_name) FROM flexfactor.refused_result_files"),
	join("\n", map { "$_ " . ($_ eq $ru ? 'FF033' : 'FF009') } sort @bad),
	'each bad file has one row in flexfactor.refused_result_files, with its SQLSTATE');
my %reason = (
	$unknown => qr/answers no known batch/,
	$ru => qr/could not open .*permission denied/i,
	$rm => qr/does not match batch $bm: It has more than the batch's 1 lines/,
	$rj => qr/is not JSON Lines: Line 1 is not JSON/);
for my $b (@bad)
{
	like(sq("SELECT reason FROM flexfactor.refused_result_files WHERE file_name = '$b'"), $reason{$b},
		"$b: the reason is recorded");
}
is(sq("SELECT count(*) FROM flexfactor.batch_lines WHERE batch_id IN ($bm, $bj)"), '0',
	'nothing of the refused files was stored');
is(sq("SELECT string_agg(state, ',' ORDER BY id) FROM flexfactor.batches WHERE id IN ($bu, $bm, $bj)"),
	'uploaded,uploaded,uploaded', 'their batches still wait for an answer');

# a late error file for the answered batch
(my $late = $fv) =~ s/\.jsonl$/.error.json/;
{
	open(my $f, '>', "$outbound/$late") or die;
	print $f qq({"error": "late"});
	close $f;
}
push @bad, $late;
export() for 1 .. 5;
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bv"), 'answered', 'a late error file does not undo the answer');
is(sq("SELECT count(*) FROM flexfactor.declines WHERE order_id LIKE 'V-%' AND set_aside_reason IS NOT NULL"), '0',
	'its declines are not set aside');
like(sq("SELECT sqlstate || ' ' || reason FROM flexfactor.refused_result_files WHERE file_name = '$late'"),
	qr/^FF009 error file \Q$late\E arrived after batch $bv was answered/, 'the late error file is refused and recorded');
for my $b (@bad)
{
	is(warnings_about($b, $off), 1, "$b: one WARNING over 6 passes");
}
my %opened = map { $_ => opens($_) } @bad;
is($opened{$unknown} + $opened{$late}, 0, 'the file that answers no batch and the late error file were never opened');
is(join(',', @opened{ $rm, $rj }), '1,1', 'the files refused for their bytes were opened once each');
cmp_ok($opened{$ru}, '>=', 6, 'the file the server would not open was tried at every pass (6)');

# a restart: the table, not the worker's memory, keeps them refused
my $refused_at = sq('SELECT string_agg(refused_at::text, \',\' ORDER BY file_name) FROM flexfactor.refused_result_files');
$node->restart;
ff_wait_for_worker($node, 'ffdb');
$off = -s $node->logfile;
export() for 1 .. 3;
is(join(',', map { opens($_) } grep { $_ ne $ru } @bad), join(',', map { $opened{$_} } grep { $_ ne $ru } @bad),
	'after a restart, no file refused for its bytes is opened again');
cmp_ok(opens($ru), '>=', $opened{$ru} + 3, 'the one the server would not open is tried again');
is(join(',', map { warnings_about($_, $off) } @bad), '0,0,0,0,0', 'none is warned about again');
is(sq('SELECT string_agg(refused_at::text, \',\' ORDER BY file_name) FROM flexfactor.refused_result_files'),
	$refused_at, 'their rows are as they were');

# a refused file that changes is read again; a row the DBA deletes lets its file be read again
$rj = write_result($bj, $fj);
chmod 0644, "$outbound/$ru";
$r = export();
is(sq("SELECT string_agg(state, ',' ORDER BY id) FROM flexfactor.batches WHERE id IN ($bu, $bj)"),
	'answered,answered', 'the corrected file is applied, and so is the one readable now, unchanged');
is(sq("SELECT count(*) FROM flexfactor.refused_result_files WHERE file_name IN ('$rj', '$ru')"), '0',
	'both lost their rows');
sq("DELETE FROM flexfactor.refused_result_files WHERE file_name = '$rm'");
$r = export();
is(opens($rm), 2, 'a row deleted by the DBA: its file is read again');
like(sq("SELECT sqlstate || ' ' || reason FROM flexfactor.refused_result_files WHERE file_name = '$rm'"),
	qr/^FF009 .*does not match batch $bm/, 'and, unchanged, refused again');
unlink map { "$outbound/$_" } $unknown, $rm, $late;

# ------------------------------------------------------------------
# 2. A 64 MB result file, applied in chunks
# ------------------------------------------------------------------
my $pad = 'x' x 33_500;
my ($bb, $fb) = uploaded_batch('BIG', 2000);
# warm-up: plans and caches of a result file applied by this worker
my ($bw, $fw) = uploaded_batch('W', 2);
write_result($bw, $fw, sub { $_[1]{status} = 'REJECTED' if $_[0] == 2 });
export();
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bw"), 'answered', 'warm-up: a small result file applied');
my $wpid = ff_worker_pid($node, 'ffdb');
my ($mem0, $top0) = ff_memory_of($node, 'ffdb', $wpid);
my $rb = write_result($bb, $fb, sub { $_[1]{pad} = $pad; $_[1]{status} = 'REJECTED' if $_[0] == 7 });
my $size = -s "$outbound/$rb";
cmp_ok($size, '>=', 64 * 1024 * 1024, "the result file has $size bytes (64 MB or more)");
my $sha = Digest::SHA->new(256)->addfile("$outbound/$rb")->hexdigest;

# peak RSS of the worker while it applies a file, from a reset high-water mark
sub peak_growth_kb
{
	my ($pid, $code) = @_;
	my $rss0 = ff_proc_kb($pid, 'VmRSS');
	diag sprintf('worker: VmRSS %d kB, RssAnon %d kB, RssShmem %d kB before', $rss0,
		map { ff_proc_kb($pid, $_) } qw(RssAnon RssShmem));
	open(my $c, '>', "/proc/$pid/clear_refs") or die "clear_refs: $!";
	print $c "5\n";
	close $c;
	my $t0 = Time::HiRes::time();
	my $res = $code->();
	diag sprintf('worker: VmRSS %d kB before; VmHWM %d kB, RssAnon %d kB, RssShmem %d kB after',
		$rss0, map { ff_proc_kb($pid, $_) } qw(VmHWM RssAnon RssShmem));
	return (ff_proc_kb($pid, 'VmHWM') - $rss0, Time::HiRes::time() - $t0, $res);
}
my ($peak, $secs);
($peak, $secs, $r) = peak_growth_kb($wpid, \&export);
is($r->{stderr}, '', 'the 64 MB file is applied without a warning') or diag $r->{stderr};
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bb"), 'answered', 'its batch is answered');
is(sq("SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'REJECTED') || ' ' || count(order_session_key)
         FROM flexfactor.batch_lines WHERE batch_id = $bb"), '2000 1 2000', 'its 2,000 lines are stored');
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'BIG-%' AND source = 'batch'"), '1999',
	'1,999 orders made; the rejected line set its decline aside')
  and is(sq("SELECT order_id FROM flexfactor.decline_status WHERE order_id LIKE 'BIG-%' AND state = 'set_aside'"),
	'BIG-7', '(BIG-7)');
is(sq("SELECT sha256 || ' ' || line_count FROM flexfactor.result_files WHERE file_name = '$rb'"), "$sha 2000",
	'the file is recorded once, with the SHA-256 of its bytes');
ok(!-e "$outbound/$rb", 'and removed from the outbound folder');
my ($mem1, $top1) = ff_memory_of($node, 'ffdb', $wpid);
diag sprintf('a %d-byte result file applied in %.1f s: peak RSS grew by %d kB; memory %d -> %d bytes '
	  . '(TopMemoryContext %d -> %d; plans cached once a statement ran five times)',
	$size, $secs, $peak, $mem0, $mem1, $top0, $top1);
cmp_ok($peak, '<', 12 * 1024,
	"applying it, the worker's peak RSS grew by less than 12 MB (12 chunks), shared buffers touched included");
cmp_ok($top1 - $top0, '<', 16384, 'TopMemoryContext grew by less than 16 kB');
is(ff_worker_pid($node, 'ffdb'), $wpid, 'the same worker throughout');

# ------------------------------------------------------------------
# 3. A 64 MB result file that does not match at its last line
# ------------------------------------------------------------------
my ($bx, $fx) = uploaded_batch('BAD', 2000);
my $rx = write_result($bx, $fx, sub { $_[1]{pad} = $pad; $_[1]{orderId} = 'NOT-IT' if $_[0] == 2000 });
($peak, $secs, $r) = peak_growth_kb($wpid, \&export);
like($r->{stderr}, qr/result file \Q$rx\E does not match batch $bx/, 'a 64 MB file wrong at its last line is refused')
  or diag $r->{stderr};
is(sq("SELECT state || ' ' || (SELECT count(*) FROM flexfactor.batch_lines WHERE batch_id = $bx)
         FROM flexfactor.batches WHERE id = $bx"), 'uploaded 0', 'nothing of it is stored');
is(sq("SELECT sqlstate FROM flexfactor.refused_result_files WHERE file_name = '$rx'"), 'FF009', 'it is recorded as refused');
my ($mem2, $top2) = ff_memory_of($node, 'ffdb', $wpid);
diag sprintf('a %d-byte result file refused at its last line in %.1f s: peak RSS grew by %d kB; '
	  . 'memory %d -> %d bytes (TopMemoryContext %d -> %d)', -s "$outbound/$rx", $secs, $peak, $mem1, $mem2, $top1, $top2);
cmp_ok($peak, '<', 12 * 1024, "refusing it, the worker's peak RSS grew by less than 12 MB");
cmp_ok($mem2 - $mem1, '<', 65536, 'the second large file left the memory contexts within 64 kB of the first');
unlink "$outbound/$rx";

$node->stop;
$sshd->stop;
done_testing();
