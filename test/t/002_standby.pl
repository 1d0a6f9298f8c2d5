# The workers run only on a primary: a standby starts none, and a promoted
# standby starts them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlexFactorTest;

my $primary = ff_node('primary', 'flexfactor.database' => 'ffdb',
	allows_streaming => 1);
$primary->start;
$primary->safe_psql('postgres', 'CREATE DATABASE ffdb');
$primary->safe_psql('ffdb', 'CREATE EXTENSION flexfactor');
ff_wait_for_worker($primary, 'ffdb');
pass('primary runs the worker');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# make sure the standby has replayed the database and the extension
$primary->safe_psql('ffdb', 'CREATE TABLE marker (x int)');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('ffdb', "SELECT to_regclass('marker') IS NOT NULL"),
	't', 'standby replayed the extension database');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'"),
	'0', 'no flexfactor process runs on a standby');
ok(!FlexFactorTest::ff_log_contains($standby, qr/flexfactor launcher started/),
	'the launcher never started on the standby');

$primary->stop('fast');
$standby->promote;
my $pid = ff_wait_for_worker($standby, 'ffdb');
ok($pid > 0, 'a promoted standby starts the worker');

$standby->stop('fast');
done_testing();
