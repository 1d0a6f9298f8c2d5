# Transmit copies by SFTP (flexfactor.transmit_via = 'sftp'): processed
# payments queued with ff_transmit() leave in transmit_<mid>_<stamp>_<id>.jsonl
# files through the real OpenSSH server instead of POST /transmit; a
# rolled-back ff_transmit() is not sent; the lines carry the same
# idempotencyKey the API path would send; FlexFactor's result file gives each
# row its transmitId, once.
use strict;
use warnings;
use Digest::SHA ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;
use FFSim;
use FFSshd;

my $mid = '5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f';
my $tmp = PostgreSQL::Test::Utils::tempdir('fftransmit023');
my $sshd = FFSshd->start("$tmp/sshd");
my $sim = FFSim->start(name => 'ffsim_023', mid => $mid, sftp_root => "$tmp/sftp",
	args => [ '--scan-interval', '3600' ]);    # files are processed at /_admin/scan

my $node = ff_node('transmit023',
	$sim->node_settings('flexfactor.database' => 'ffdb', 'flexfactor.batch_interval' => '0'),
	$sshd->node_settings(inbound => $sim->inbound_dir, outbound => $sim->outbound_dir),
	'flexfactor.transmit_via' => 'sftp',
	'flexfactor.batch_max_rows' => '2');
ff_start_serving($node, 'ffdb');

sub sq { $node->safe_psql('ffdb', $_[0]) }

# five payments committed, one rolled back
sq("SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('PAY-' || i, 1000 + i, 'USD', 'ch-' || i,
      email => 'p' || i || '\@example.com', card_bin => '411111', card_last4 => '1111', "
	  . ff_payment_args(email => undef, card_bin => undef, card_last4 => undef) . ")))
    FROM generate_series(1, 5) i");
sq("BEGIN; SELECT flexfactor.ff_transmit(flexfactor.ff_payment('PAY-RB', 1000, 'USD', 'ch-rb', " . ff_payment_args() . ")); ROLLBACK;");
sleep 2;    # the worker would send API rows at once after the commit
is(scalar @{ $sim->transmits }, 0, 'nothing went to POST /transmit');
is(sq("SELECT string_agg(state, ',') FROM flexfactor.transmit_queue"), 'pending,pending,pending,pending,pending',
	'the five rows wait for a batch');

is(sq('SELECT flexfactor.ff_export_batch()'), '3', 'ff_export_batch(): three files (2 + 2 + 1 lines)');
my @names = grep { !/\.part$/ } @{ $sim->inbound_files };
is(scalar @names, 3, 'three files in inbound, no .part');

my %seen;
for my $name (@names)
{
	my ($id, $lc, $sha, $state) = split /\|/,
	  sq("SELECT id, line_count, sha256, state FROM flexfactor.batches WHERE file_name = '$name'");
	like($name, qr/^transmit_\Q$mid\E_\d{8}T\d{6}Z_\Q$id\E\.jsonl$/, "$name: transmit_<mid>_<stamp>_<batch id>.jsonl");
	is($state, 'uploaded', "$name: batch $id uploaded");
	my $bytes = FFSim::_slurp_bytes($sim->inbound_dir . "/$name");
	is(Digest::SHA::sha256_hex($bytes), $sha, "$name: SHA-256 recorded");
	is($bytes, join('', map { "$_\n" } split /\n/, sq("SELECT line FROM flexfactor.batch_file_lines($id)")),
		"$name: the bytes of batch_file_lines($id)");
	my @lines = map { FFSim->decode_json($_) } split /\n/, $bytes;
	is(scalar @lines, $lc, "$name: $lc lines");
	is_deeply([ map { $_->{sequenceNumber} } @lines ], [ 1 .. $lc ], "$name: sequenceNumber 1..$lc");
	for my $l (@lines)
	{
		my ($qid, $key) = split /\|/, sq("SELECT id, md5('flexfactor-transmit:$mid:' || id)::uuid
		    FROM flexfactor.transmit_queue WHERE payload->>'orderId' = '$l->{orderId}' AND batch_id = $id");
		ok(defined $qid, "$l->{orderId}: a row of batch $id");
		is($l->{idempotencyKey}, $key, "$l->{orderId}: the idempotencyKey the API path would send");
		is($l->{mid}, $mid, "$l->{orderId}: the mid");
		my %rest = %$l;
		delete @rest{qw(sequenceNumber idempotencyKey mid)};
		is_deeply(\%rest, FFSim->decode_json(sq("SELECT payload FROM flexfactor.transmit_queue WHERE id = $qid")),
			"$l->{orderId}: otherwise the queued ff_payment body, complete");
		$seen{ $l->{orderId} }++;
	}
}
is_deeply(\%seen, { map { ("PAY-$_" => 1) } 1 .. 5 }, 'each committed payment in exactly one line; not the rolled-back one');
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'delivered' AND batch_id IS NOT NULL"), '5',
	'the rows are delivered, each with its batch');

# FlexFactor processes the files; the next pass reads the result files
my $scan = $sim->scan;
is(scalar(grep { $_->{status} eq 'processed' } @$scan), 3, 'FlexFactor processed the three files');
is(scalar @{ $sim->transmits }, 5, 'FlexFactor recorded five transmits');
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'a pass with nothing to upload reads the results');
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE transmit_id IS NOT NULL"), '5',
	'each row has its transmitId');
is(sq("SELECT count(DISTINCT transmit_id) FROM flexfactor.transmit_queue"), '5', 'five distinct transmitIds');
is(sq("SELECT string_agg(DISTINCT state, ',') FROM flexfactor.batches"), 'answered', 'the batches are answered');
is(sq("SELECT count(*) FROM flexfactor.result_files"), '3', 'three result files applied, once each');
is(sq('SELECT flexfactor.ff_export_batch()'), '0', 'another pass');
is(sq("SELECT count(*) FROM flexfactor.result_files"), '3', 'changes nothing');

$node->stop;
$sim->stop;
$sshd->stop;
done_testing();
