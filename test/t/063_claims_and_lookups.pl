# Issue 12, items 10 and 11, where a test can tell right from wrong:
#
#  1. Fixing many transmit batches in one pass is linear: each claim reads
#     only the rows it takes.  1,000 queued transmit copies leave as 20
#     batches of 50 in one transaction; the rows the worker read from
#     flexfactor.transmit_queue meanwhile (pg_stat_user_tables: seq_tup_read
#     + idx_tup_fetch, flushed after each unit of work) stay under 4 per row
#     (measured: about 3).  Each claim reading every row still pending (a
#     read-only SPI snapshot after a write, or a plan that sorts the pending
#     rows, as the planner picks for a backlog without statistics) read 12
#     per row here; finding where a claim ended by a scan of the table, 22.
#  2. The SFTP host name lookup is interruptible: with a resolver that never
#     answers (a preloaded shim makes getaddrinfo_a() stay in progress, and
#     getaddrinfo() sleep, for one name), the worker waiting on it still
#     takes part in DROP DATABASE's ProcSignalBarrier (the DROP of another
#     database returns at once), logs its memory contexts when asked, and
#     leaves in a fast shutdown within seconds; the lookup ends at
#     flexfactor.sftp_timeout_ms with FF030.
use strict;
use warnings;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FlexFactorTest;

my $mid = '6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c90';
my $tmp = PostgreSQL::Test::Utils::tempdir('ffclaim063');

# ------------------------------------------------------------------
# the resolver that never answers, for one name
# ------------------------------------------------------------------
my $hang_host = 'hang.flexfactor.test';
my $shim_c = "$tmp/hang_resolver.c";
{
	open(my $f, '>', $shim_c) or die "$shim_c: $!";
	print $f <<"EOC";
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

/* lookups of $hang_host never end; every other name goes to libc */
static int
hangs(const char *name)
{
	return name != NULL && strcmp(name, "$hang_host") == 0;
}

int
getaddrinfo_a(int mode, struct gaicb *list[], int n, struct sigevent *sev)
{
	int			(*real) (int, struct gaicb **, int, struct sigevent *) = dlsym(RTLD_NEXT, "getaddrinfo_a");

	if (n == 1 && hangs(list[0]->ar_name))
		return 0;
	return real(mode, list, n, sev);
}

int
gai_error(struct gaicb *req)
{
	int			(*real) (struct gaicb *) = dlsym(RTLD_NEXT, "gai_error");

	return hangs(req->ar_name) ? EAI_INPROGRESS : real(req);
}

int
gai_cancel(struct gaicb *req)
{
	int			(*real) (struct gaicb *) = dlsym(RTLD_NEXT, "gai_cancel");

	return hangs(req->ar_name) ? EAI_CANCELED : real(req);
}

int
getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
	int			(*real) (const char *, const char *, const struct addrinfo *, struct addrinfo **) =
		dlsym(RTLD_NEXT, "getaddrinfo");

	if (hangs(node))
	{
		sleep(120);
		return EAI_AGAIN;
	}
	return real(node, service, hints, res);
}
EOC
	close $f;
}
my $shim = "$tmp/hang_resolver.so";
my ($out, $err);
IPC::Run::run([ 'cc', '-shared', '-fPIC', '-o', $shim, $shim_c, '-ldl' ], '>', \$out, '2>', \$err)
  or BAIL_OUT("cannot build the resolver shim: $err");

my $node = ff_node('claim063',
	'flexfactor.database' => 'ffdb',
	'flexfactor.mid' => $mid,
	'flexfactor.batch_interval' => '0',
	'flexfactor.transmit_via' => 'sftp',
	'flexfactor.batch_max_rows' => '50',
	'flexfactor.batch_retry_base' => '3600',
	'log_error_verbosity' => 'verbose');
{
	local $ENV{LD_PRELOAD} = $shim;
	ff_start_serving($node, 'ffdb');
}
sub sq { $node->safe_psql('ffdb', $_[0]) }
sub export { ff_run_sql($node, 'ffdb', "SET statement_timeout = '60s'; SELECT flexfactor.ff_export_batch()") }

# ------------------------------------------------------------------
# 1. Transmit batches are claimed in linear time
# ------------------------------------------------------------------
my $rows = 1000;
sq("SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('P-' || i, 2500, 'USD', 'ptx-' || i, "
	  . ff_payment_args() . "))) FROM generate_series(1, $rows) i");
my $read_sql = q{SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
                   FROM pg_stat_user_tables WHERE relid = 'flexfactor.transmit_queue'::regclass};
my $read0 = sq($read_sql);
my $r = export();    # no SFTP host: batches are fixed, the first upload fails (FF013) and waits an hour
like($r->{stderr}, qr/FF013/, 'the pass fixed its batches, then could not upload (no SFTP host)') or diag $r->{stderr};
is(sq("SELECT count(*) || ' ' || min(line_count) || ' ' || max(line_count) FROM flexfactor.batches WHERE kind = 'transmit'"),
	'20 50 50', "$rows transmit copies fixed into 20 batches of 50 in one pass");
is(sq("SELECT count(*) FROM flexfactor.transmit_queue WHERE state = 'batched'"), $rows, 'every row batched once');
my $read = sq($read_sql) - $read0;
diag "fixing 20 transmit batches of 50 read $read rows of flexfactor.transmit_queue";
cmp_ok($read, '<', 4 * $rows, "the claims read fewer than 4 rows per row claimed ($read for $rows)");

# ------------------------------------------------------------------
# 2. A host name lookup that never ends
# ------------------------------------------------------------------
# key files that pass the local checks (the lookup comes after them)
IPC::Run::run([ 'ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'ff063', '-f', "$tmp/client_key" ],
	'>', \$out, '2>', \$err)
  or BAIL_OUT("ssh-keygen: $err");
{
	open(my $f, '>', "$tmp/known_hosts") or die;
	print $f "$hang_host " . join(" ", (split / /, slurp_file("$tmp/client_key.pub"))[0, 1]) . "\n";
	close $f;
}
my $wpid = ff_worker_pid($node, 'ffdb');
ff_reload_and_wait($node, 'ffdb', join('; ',
	"ALTER SYSTEM SET flexfactor.sftp_host = '$hang_host'",
	"ALTER SYSTEM SET flexfactor.sftp_user = 'nobody'",
	"ALTER SYSTEM SET flexfactor.sftp_private_key_file = '$tmp/client_key'",
	"ALTER SYSTEM SET flexfactor.sftp_known_hosts_file = '$tmp/known_hosts'",
	"ALTER SYSTEM SET flexfactor.sftp_timeout_ms = 20000",
	"ALTER SYSTEM SET flexfactor.batch_interval = 1"));
ok(ff_wait_until(sub { sq("SELECT wait_event IS NOT NULL AND query LIKE '%connecting to the SFTP server%'
                             FROM pg_stat_activity WHERE pid = $wpid") eq 't' }, 30),
	'the worker waits for the lookup of the SFTP host');
Time::HiRes::sleep(0.5);
my $started = sq('SELECT pg_postmaster_start_time()');
my $off = -s $node->logfile;

$node->safe_psql('postgres', 'CREATE DATABASE ff063_other');
my $t0 = Time::HiRes::time();
$node->safe_psql('postgres', 'DROP DATABASE ff063_other');
my $drop_secs = Time::HiRes::time() - $t0;
cmp_ok($drop_secs, '<', 5, sprintf('DROP DATABASE of another database returns at once (%.1f s): '
	  . 'the waiting worker took part in its barrier', $drop_secs));

$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($wpid)");
ok(ff_wait_until(sub { ff_log_contains($node, qr/\[$wpid\] [^\n]*?LOG:  (?:00000: )?Grand total:/, $off) }, 5),
	'it logs its memory contexts within 5 s when asked');
is(sq("SELECT query LIKE '%connecting to the SFTP server%' FROM pg_stat_activity WHERE pid = $wpid"), 't',
	'and goes on waiting for the lookup');

ok(ff_wait_until(sub { ff_log_contains($node, qr/FF030: [^\n]*could not resolve the SFTP host/, $off) }, 40),
	'the lookup ends at flexfactor.sftp_timeout_ms (FF030)')
  or diag ff_log_since($node, $off);
is(ff_worker_pid($node, 'ffdb'), $wpid, 'the same worker, alive');
is(sq('SELECT pg_postmaster_start_time()'), $started, 'the postmaster did not reinitialise');

# a fast shutdown while the worker waits for the lookup
ok(ff_wait_until(sub { sq("SELECT query LIKE '%connecting to the SFTP server%' FROM pg_stat_activity WHERE pid = $wpid") eq 't' }, 30),
	'the worker waits for the lookup again');
$t0 = Time::HiRes::time();
$node->stop('fast');
my $stop_secs = Time::HiRes::time() - $t0;
cmp_ok($stop_secs, '<', 10, sprintf('a fast shutdown takes %.1f s, the lookup notwithstanding', $stop_secs));
unlike(ff_log_since($node, $off), qr/terminated by signal|reinitializing/, 'no process was terminated by a signal');

done_testing();
