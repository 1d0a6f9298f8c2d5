# flexfactor: PGXS build.  The version lives only in flexfactor.control.
EXTENSION = flexfactor
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = flexfactor
OBJS = \
	src/flexfactor.o \
	src/settings.o \
	src/shmem.o \
	src/dbguard.o \
	src/ext_version.o \
	src/fence.o \
	src/work.o \
	src/worker.o \
	src/worker_status.o \
	src/http.o \
	src/token.o \
	src/api.o \
	src/saved_plan.o \
	src/body_check.o \
	src/evaluate.o \
	src/transmit.o \
	src/sftp.o \
	src/sftp_files.o \
	src/batch.o \
	src/results.o \
	src/decline_body.o \
	src/decline_queue.o \
	src/decline_trigger.o \
	src/order_events.o \
	src/callback.o \
	src/scrub.o \
	src/webhook_verify.o \
	src/webhook.o \
	src/refusals.o \
	src/listener.o

DATA_built = $(EXTENSION)--$(EXTVERSION).sql
# The install scripts of past releases, frozen (CREATE EXTENSION ... VERSION
# and the upgrade test install them), and one upgrade script per release:
# sql/flexfactor--A--B.sql (docs/upgrading.md).
DATA = $(patsubst $(srcdir)/%,%,$(wildcard $(srcdir)/sql/$(EXTENSION)--*.sql))

# pg_regress suites (test/sql/*.sql + test/expected/*.out) on a throwaway
# instance that preloads the library.
REGRESS = settings secrets schema drop_extension privileges security api_local batch_local results_local
REGRESS_OPTS = --inputdir=$(srcdir)/test --temp-instance=tmp_check_regress \
	--temp-config=$(srcdir)/test/regress.conf

# TAP suites (PostgreSQL::Test::Cluster) under test/t; our helpers in test/perl.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CPPFLAGS = -I$(srcdir)/src -DFLEXFACTOR_VERSION=\"$(EXTVERSION)\"
PG_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter \
	-Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK = -lcurl -lssh2 -lssl -lcrypto -lmicrohttpd

EXTRA_CLEAN = $(DATA_built) tmp_check_regress results regression.diffs \
	regression.out tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after the include: Makefile.global resets it
PROVE_FLAGS += -I $(srcdir)/test/perl

# PGXS does not track header dependencies: rebuild every object when any of
# our headers changes (a struct layout seen differently by two files is a
# silent memory bug).
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# The install script is built from the files of sql/install, by concern,
# concatenated in name order (00_header.sql first).
INSTALL_SQL = $(sort $(wildcard $(srcdir)/sql/install/*.sql))
$(EXTENSION)--$(EXTVERSION).sql: $(INSTALL_SQL) $(EXTENSION).control
	cat $(INSTALL_SQL) > $@

.PHONY: print-version check-version
print-version:
	@echo $(EXTVERSION)

# META.json (for PGXN) and debian/changelog (the Debian package, whose first
# entry is <version>-<Debian revision>) repeat the version; this keeps them
# equal to the control file's.
check-version:
	@grep -q '"version": "$(EXTVERSION)"' META.json || \
		{ echo "META.json does not carry version $(EXTVERSION) of flexfactor.control" >&2; exit 1; }
	@head -n 1 debian/changelog | grep -qF ' ($(EXTVERSION)-' || \
		{ echo "debian/changelog's first entry is not version $(EXTVERSION)-N of flexfactor.control: add an entry for $(EXTVERSION)-1 at its top" >&2; exit 1; }

# The high-availability suite (test/ha/t): pg_auto_failover (a monitor and
# two nodes) and HAProxy on loopback, driven as the postgres account; it
# needs Debian's postgresql-15-auto-failover, pg-auto-failover-cli and
# haproxy (tools/install-deps.sh), so PostgreSQL 15 only.
.PHONY: prove_ha
prove_ha:
	$(MAKE) prove_installcheck PROVE_TESTS='test/ha/t/*.pl'

# `make installcheck` runs pg_regress and then the TAP suites; this runs the
# TAP suites alone (PROVE_TESTS=test/t/001_worker_lifecycle.pl for one).
.PHONY: prove_installcheck
prove_installcheck:
	$(prove_installcheck)
