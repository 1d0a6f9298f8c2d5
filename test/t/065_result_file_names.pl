# Result file names as the SFTP server lists them are bytes chosen by the
# other side: a name that is not valid in the database's encoding, or that
# holds a newline or a quote, is refused (it answers no batch) and recorded
# like any other refused file, but never stored or logged as it is: the
# refused_result_files row and the WARNING carry an escaped form (\xNN for
# such bytes), so the table stays dumpable and a name cannot forge a log line.
# A download stopped by temp_file_limit fails that file only, and leaves no
# temporary file behind (a BufFile raised the error again when closed).  A
# line nested deeper than the JSON parser's stack allows is refused with its
# file, once, like a line that is not JSON.  The 1 MB line limit is the
# same for CRLF and LF files.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a80';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffres065');
my $sshd = FFSshd->start("$tmp/sshd");
my ($node, $inbound, $outbound) = ff_sftp_node('res065', $mid, $sshd, $tmp);

sub sq { $node->safe_psql('ffdb', $_[0]) }
sub export { ff_export($node, 'ffdb') }
sub enqueue_declines { ff_enqueue_declines($node, 'ffdb', @_) }

my %names = (
	latin1 => "caf\xe9.result.jsonl",                         # not UTF-8
	newline => "x\nLOG:  forged by a file name.result.jsonl",   # a line of its own in the log
	quote => "it's.result.jsonl");
for my $n (values %names)
{
	open(my $f, '>', "$outbound/$n") or die "$outbound/$n: $!";
	print $f qq({"sequenceNumber": 1, "status": "SUBMITTED"}\n);
	close $f;
}

my $off = -s $node->logfile;
export() for 1 .. 3;
is(sq('SELECT count(*) FROM flexfactor.refused_result_files'), '3', 'the three files are refused and recorded');
is(sq("SELECT count(*) FROM flexfactor.refused_result_files
        WHERE convert(convert_to(file_name, 'UTF8'), 'UTF8', 'UTF8') IS NOT NULL
          AND convert(convert_to(reason, 'UTF8'), 'UTF8', 'UTF8') IS NOT NULL"),
	'3', 'their rows are valid text in the database encoding');
is(sq("SELECT count(*) FROM flexfactor.refused_result_files WHERE file_name ~ '[\\n\\r]' OR reason ~ '[\\n\\r]'"),
	'0', 'no row holds a newline');
is(sq("SELECT file_name FROM flexfactor.refused_result_files WHERE file_name LIKE 'caf%'"),
	'caf\xe9.result.jsonl', 'the bytes that are not text are shown escaped');
is(sq("SELECT file_name FROM flexfactor.refused_result_files WHERE file_name LIKE 'it%'"),
	"it's.result.jsonl", 'a quote is kept');
my $log = ff_log_since($node, $off);
unlike($log, qr/^LOG:  forged/m, 'a file name forges no log line');
is(scalar(() = $log =~ /flexfactor worker could not apply result file/g), 3, "one worker WARNING per file over 3 passes");
ok(-e "$outbound/$_", 'the file is left where it is') for values %names;

# the table can be dumped and restored
my $dump = "$tmp/refused.sql";
$node->command_ok([ 'pg_dump', '-d', $node->connstr('ffdb'), '--data-only', '-t', 'flexfactor.refused_result_files',
	'-f', $dump ], 'pg_dump of refused_result_files');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->safe_psql('restored', "CREATE SCHEMA flexfactor; CREATE TABLE flexfactor.refused_result_files AS
	SELECT * FROM (VALUES (''::text, 0::bigint, now(), ''::text, ''::text, now())) v(file_name, byte_count, modified_at, sqlstate, reason, refused_at) WHERE false");
my ($ret, $out, $err) = $node->psql('restored', undef, extra_params => [ '-v', 'ON_ERROR_STOP=1', '-f', $dump ]);
is($ret, 0, 'and restored') or diag $err;


# ------------------------------------------------------------------
# 2. A download that temp_file_limit stops leaves no temporary file
# ------------------------------------------------------------------
enqueue_declines('T', 3);
is(export()->{stdout}, '1', 'a batch of 3 uploaded');
my ($bt, $ft) = split /\|/, sq('SELECT id, file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1');
(my $rt = $ft) =~ s/\.jsonl$/.result.jsonl/;
{
	open(my $f, '>', "$outbound/$rt") or die;
	for (ff_batch_line_orders($node, 'ffdb', $bt))
	{
		my ($seq, $order) = @$_;
		print $f FFSim->encode_json({ sequenceNumber => $seq + 0, orderId => $order,
			orderSessionKey => sprintf('0b5e0000-0000-4000-8000-%012d', $seq), status => 'SUBMITTED',
			success => \1, errors => [], pad => 'x' x 600_000 }), "\n";
	}
	close $f;
}
ff_reload_and_wait($node, 'ffdb', "ALTER SYSTEM SET temp_file_limit = '1MB'");
$off = -s $node->logfile;
export();
# (PostgreSQL 18 quotes the setting's name in that message)
like(ff_log_since($node, $off), qr/flexfactor worker could not apply result file "\Q$rt\E": temporary file size exceeds "?temp_file_limit"?/,
	'temp_file_limit stops the download of a 1.8 MB result file');
unlike(ff_log_since($node, $off), qr/could not run the SFTP export/,
	'the file is the only failure: the pass goes on (the error did not escape again from closing its temporary file)');
is(sq("SELECT count(*) FROM pg_ls_tmpdir()"), '0', 'and its temporary file is gone');
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bt"), 'uploaded', 'nothing was applied');
ff_reload_and_wait($node, 'ffdb', 'ALTER SYSTEM RESET temp_file_limit');
export();
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bt"), 'answered', 'without the limit the file is applied');
is(sq("SELECT count(*) FROM pg_ls_tmpdir()"), '0', 'and no temporary file is left');


# ------------------------------------------------------------------
# 3. A line nested too deep for the JSON parser is the file's fault
# ------------------------------------------------------------------
enqueue_declines('D', 1);
is(export()->{stdout}, '1', 'a batch of 1 uploaded');
my ($bd, $fd) = split /\|/, sq('SELECT id, file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1');
(my $rd = $fd) =~ s/\.jsonl$/.result.jsonl/;
{
	open(my $f, '>', "$outbound/$rd") or die;
	print $f '[' x 500_000, "\n";
	close $f;
}
$off = -s $node->logfile;
export() for 1 .. 3;
is(sq("SELECT sqlstate FROM flexfactor.refused_result_files WHERE file_name = '$rd'"), '54001',
	'a line too deep to parse refuses its file, recorded');
is(scalar(() = ff_log_since($node, $off) =~ /flexfactor worker could not apply result file "\Q$rd\E"/g), 1,
	'one WARNING over 3 passes, not one a pass');
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bd"), 'uploaded', 'nothing was applied');


# ------------------------------------------------------------------
# 4. The line limit (1 MB) counts a line's content, not its end: a CRLF
#    file is held to the same limit as an LF one (a line of exactly 1 MB
#    was refused with CRLF and taken with LF)
# ------------------------------------------------------------------
# an answer file for the newest batch, CRLF: its first line exactly
# $content bytes before its end, the others 200
sub crlf_answers
{
	my ($first) = @_;
	my ($b, $f) = split /\|/, sq('SELECT id, file_name FROM flexfactor.batches ORDER BY id DESC LIMIT 1');
	(my $r = $f) =~ s/\.jsonl$/.result.jsonl/;
	open(my $fh, '>', "$outbound/$r") or die;
	for (ff_batch_line_orders($node, 'ffdb', $b))
	{
		my ($seq, $order) = @$_;
		my $content = $seq == 1 ? $first : 200;
		my %answer = (sequenceNumber => $seq + 0, orderId => $order,
			orderSessionKey => sprintf('0c5e0000-0000-4000-8000-%012d', $b * 100 + $seq),
			status => 'SUBMITTED', success => \1, errors => [], pad => '');
		$answer{pad} = 'x' x ($content - length(FFSim->encode_json(\%answer)));
		my $line = FFSim->encode_json(\%answer);
		die 'line of ' . length($line) . " bytes, not $content" unless length($line) == $content;
		print $fh $line, "\r\n";
	}
	close $fh;
	return ($b, $r);
}

enqueue_declines('C', 2);
is(export()->{stdout}, '1', 'a batch of 2 uploaded');
my ($bc, $rc) = crlf_answers(1024 * 1024);
export();
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bc"), 'answered',
	'a CRLF result file with a line of exactly 1 MB is applied');
is(sq("SELECT count(*) FROM flexfactor.refused_result_files WHERE file_name = '$rc'"), '0', 'and not refused');
is(sq("SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE 'C-%' AND status = 'SUBMITTED'"), '2',
	'both its answers are recorded');

enqueue_declines('O', 2);
is(export()->{stdout}, '1', 'a batch of 2 uploaded');
my ($bo, $ro) = crlf_answers(1024 * 1024 + 1);
$off = -s $node->logfile;
export();
like(ff_log_since($node, $off), qr/result file \Q$ro\E has a line longer than 1048576 bytes/,
	'a CRLF line of 1 MB and a byte is refused');
is(sq("SELECT state FROM flexfactor.batches WHERE id = $bo"), 'uploaded', 'nothing of it was applied');

$node->stop;
$sshd->stop;
done_testing();
