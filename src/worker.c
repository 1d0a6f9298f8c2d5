/*
 * worker.c
 *		The launcher and the database worker: their start-up, signal
 *		handling and main loops.
 *
 * The launcher is a static background worker connected to no database, so it
 * can wait calmly while flexfactor.database does not exist: it looks the
 * database up in the shared catalog and starts the worker and, when
 * flexfactor.webhook_listen_address is set, the webhook listener (listener.c),
 * both dynamic background workers, once it is there, and again whenever one
 * exits, with a growing delay if it keeps failing.  All start only once
 * recovery has finished, so nothing runs on a standby.
 *
 * The worker connects to the database, waits while the extension is not
 * installed, and then runs one pass per wake-up: on its interval, or when a
 * backend sets its latch.  Each pass runs in a memory context that is reset
 * every loop, in three phases, each behind its own error boundary and with
 * its own backoff (work.c): it drains the /transmit queue (transmit.c), runs
 * the SFTP export when due or asked (batch.c), and applies webhook events
 * whose order appeared late and retries failed billing callbacks.  A failing
 * phase is logged, recorded in the status slot and backs off; the others go
 * on.  While the export waits for a slow SFTP server, the other two phases
 * get their turn (ff_worker_yield), and a request to leave the database is
 * honoured there too.
 *
 * Fencing (fence.c): the launcher and the worker end at once when the
 * postmaster is gone, in their waits and between the units of a pass; and
 * while the server is read-only (default_transaction_read_only, set around
 * a switchover) or in recovery, the worker pauses: no phase runs, one LOG
 * line says so when it starts and one when it ends, ff_worker_status() shows
 * it, and ff_export_batch() callers are answered at once.
 *
 * Not here: the per-pass work itself, status reporting (worker_status.c),
 * and the DROP DATABASE handshake (dbguard.c).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/backend_status.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "dbguard.h"
#include "ext_version.h"
#include "batch.h"
#include "fence.h"
#include "work.h"
#include "settings.h"
#include "sftp.h"
#include "shmem.h"
#include "transmit.h"
#include "worker.h"
#include "worker_status.h"

#define LAUNCHER_TICK_MS		1000
#define RELEASED_TICK_MS		500
#define EXTENSION_WAIT_MS		10000
#define HOUSEKEEPING_TICK_MS	5000
#define RELAUNCH_MIN_MS			1000
#define RELAUNCH_MAX_MS			60000
#define WORKER_STABLE_MS		60000
#define YIELD_INTERVAL_MS		1000
#define PAUSED_TICK_MS			1000

static void
fill_worker_entry(BackgroundWorker *bgw, const char *function, const char *name)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	strlcpy(bgw->bgw_library_name, "flexfactor", BGW_MAXLEN);
	strlcpy(bgw->bgw_function_name, function, BGW_MAXLEN);
	strlcpy(bgw->bgw_name, name, BGW_MAXLEN);
	strlcpy(bgw->bgw_type, name, BGW_MAXLEN);
}

void
ff_register_launcher(void)
{
	BackgroundWorker bgw;

	fill_worker_entry(&bgw, "ff_launcher_main", "flexfactor launcher");
	bgw.bgw_restart_time = 5;
	RegisterBackgroundWorker(&bgw);
}

static void
setup_signals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
}

/* Re-read the configuration file after SIGHUP. */
static void
reload_settings_if_asked(void)
{
	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	ff_status_config_reloaded();
}

static void
wait_for_wakeup(long timeout_ms)
{
	(void) ff_fence_wait(WL_TIMEOUT, PGINVALID_SOCKET, timeout_ms, ff_wait_event(FF_WAIT_WORKER));
}

/* ---------------------------------------------------------------- launcher */

/*
 * The OID of a connectable database, or InvalidOid.  A sequential scan of the
 * shared catalog, as the autovacuum launcher does: a process connected to no
 * database cannot rely on catalog indexes.
 */
static Oid
lookup_database(const char *name)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			dboid = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), name) == 0 &&
			db->datallowconn && !database_is_invalid_form(db))
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return dboid;
}

/* A dynamic worker the launcher keeps running in the database. */
typedef struct Supervised
{
	FFWorkerRole role;
	const char *function;
	const char *name;
	BackgroundWorkerHandle *handle;
	TimestampTz launched_at;
	TimestampTz next_launch_at;
	long		relaunch_delay_ms;
} Supervised;

static Supervised supervised[] = {
	{FF_ROLE_WORKER, "ff_worker_main", "flexfactor worker"},
	{FF_ROLE_LISTENER, "ff_listener_main", "flexfactor webhook listener"},
};

static bool
wanted(const Supervised *s)
{
	return s->role != FF_ROLE_LISTENER || ff_webhook_listen_address[0] != '\0';
}

static BackgroundWorkerHandle *
launch(Supervised *s, Oid dboid)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;

	fill_worker_entry(&bgw, s->function, s->name);
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	bgw.bgw_notify_pid = MyProcPid;
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);

	if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("flexfactor launcher could not start the %s", s->name),
				 errdetail("No background worker slot is free."),
				 errhint("Raise max_worker_processes and restart PostgreSQL.")));
		ff_status_error("no free background worker slot (raise max_worker_processes)");
		return NULL;
	}
	ff_status_count_launch(s->role);
	return handle;
}

static bool
alive(const Supervised *s)
{
	pid_t		pid;

	if (ff_status_pid(s->role) != 0)
		return true;
	return s->handle != NULL && GetBackgroundWorkerPid(s->handle, &pid) != BGWH_STOPPED;
}

/*
 * Start what should run and does not, each with a growing delay if it keeps
 * stopping; returns how long the launcher may sleep.
 */
static long
supervise(Oid dboid, TimestampTz now)
{
	long		timeout_ms = LAUNCHER_TICK_MS;

	for (int i = 0; i < lengthof(supervised); i++)
	{
		Supervised *s = &supervised[i];

		if (s->relaunch_delay_ms == 0)
			s->relaunch_delay_ms = RELAUNCH_MIN_MS;
		if (alive(s))
		{
			if (TimestampDifferenceExceeds(s->launched_at, now, WORKER_STABLE_MS))
				s->relaunch_delay_ms = RELAUNCH_MIN_MS;
		}
		else if (!wanted(s))
			continue;
		else if (now < s->next_launch_at)
			timeout_ms = Min(timeout_ms, Max(1, (long) ((s->next_launch_at - now) / 1000)));
		else
		{
			s->handle = launch(s, dboid);
			s->launched_at = now;
			s->next_launch_at = TimestampTzPlusMilliseconds(now, s->relaunch_delay_ms);
			s->relaunch_delay_ms = Min(s->relaunch_delay_ms * 2, RELAUNCH_MAX_MS);
		}
	}
	return timeout_ms;
}

void
ff_launcher_main(Datum main_arg)
{
	MemoryContext loop_cxt;
	bool		reported_missing_db = false;

	setup_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	if (!ff_status_claim(FF_ROLE_LAUNCHER, InvalidOid))
	{
		ereport(LOG, (errmsg("flexfactor launcher is already running; this copy exits")));
		proc_exit(0);
	}
	pgstat_report_appname("flexfactor launcher");
	ereport(LOG, (errmsg("flexfactor launcher started for database \"%s\"", ff_database)));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor launcher loop",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		long		timeout_ms = LAUNCHER_TICK_MS;
		Oid			dboid;

		CHECK_FOR_INTERRUPTS();
		ff_fence_check();
		reload_settings_if_asked();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		dboid = lookup_database(ff_database);
		if (!OidIsValid(dboid))
		{
			ff_status_set("waiting for database");
			if (!reported_missing_db)
				ereport(LOG,
						(errmsg("flexfactor is waiting for database \"%s\" to be created", ff_database),
						 errhint("Create the database, or set flexfactor.database and restart PostgreSQL.")));
			reported_missing_db = true;
		}
		else if (ff_database_released(dboid))
		{
			ff_status_set("database released");
			timeout_ms = RELEASED_TICK_MS;
		}
		else
		{
			reported_missing_db = false;
			timeout_ms = supervise(dboid, GetCurrentTimestamp());
			ff_status_set("supervising workers");
		}

		MemoryContextSwitchTo(TopMemoryContext);
		ff_status_pass_done();
		wait_for_wakeup(timeout_ms);
	}
}

/* ------------------------------------------------------------------ worker */

/*
 * What the worker last logged about the extension, so that "waiting for the
 * extension" (not created, or not updated to the library's version) is
 * logged once, not every pass.
 */
static FFExtensionState reported_extension_state = FF_EXTENSION_READY;

/* name of the worker's database, for messages (read once, in a transaction) */
static char my_database_name[NAMEDATALEN];

static void
remember_database_name(void)
{
	char	   *name;

	StartTransactionCommand();
	name = get_database_name(MyDatabaseId);
	strlcpy(my_database_name, name ? name : "?", NAMEDATALEN);
	CommitTransactionCommand();
}

/*
 * Whether the extension is installed here at the library's version.  Until
 * it is, the worker does nothing: its SQL objects may be missing, or be an
 * older release's (the package was upgraded, ALTER EXTENSION flexfactor
 * UPDATE not run yet), which this library's queries do not fit.  Each
 * change of state is logged once; the update is seen at the next pass, with
 * no restart.
 */
static bool
extension_ready(void)
{
	char	   *version;
	FFExtensionState state = ff_extension_state(&version, NULL);

	if (state == FF_EXTENSION_MISSING)
		ff_status_set("waiting for extension");
	else if (state == FF_EXTENSION_OTHER_VERSION)
		ff_status_set("waiting for extension update");
	if (state == reported_extension_state)
		return state == FF_EXTENSION_READY;
	reported_extension_state = state;
	switch (state)
	{
		case FF_EXTENSION_MISSING:
			ereport(LOG,
					(errmsg("flexfactor worker is waiting for the extension to be created in database \"%s\"",
							my_database_name),
					 errhint("Run CREATE EXTENSION flexfactor in that database.")));
			return false;
		case FF_EXTENSION_OTHER_VERSION:
			ereport(LOG,
					(errmsg("flexfactor worker is waiting for the extension in database \"%s\" to be updated from version %s to %s",
							my_database_name, version, FLEXFACTOR_VERSION),
					 errdetail("The flexfactor library is version %s; the extension's SQL objects in that database are version %s.",
							   FLEXFACTOR_VERSION, version),
					 errhint("Run ALTER EXTENSION flexfactor UPDATE in that database; the worker starts by itself.")));
			return false;
		case FF_EXTENSION_READY:
			ereport(LOG, (errmsg("flexfactor worker found the extension at version %s and is running",
								 FLEXFACTOR_VERSION)));
			return true;
	}
	return false;
}

/*
 * Webhook events whose order appeared after them (in a transaction they could
 * not see), and billing callbacks that failed and are due again.
 */
static bool
apply_late_results(void *arg)
{
	ff_work_begin("flexfactor: applying late events and retrying callbacks");
	if (SPI_execute("SELECT flexfactor._apply_waiting_events(), flexfactor._retry_callbacks()",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not apply late events");
	ff_work_commit();
	return true;
}

static bool
transmit_phase(void *arg)
{
	ff_transmit_pass((long *) arg);
	return true;
}

static bool
export_phase(void *arg)
{
	return ff_export_if_due();
}

/*
 * The phases of a pass, each behind its own error boundary and with its own
 * backoff (work.c): a failing API, SFTP server or callback stops only its own
 * phase.
 */
static FFPhase transmit_ph = {"send queued transmits"};
static FFPhase export_ph = {"run the SFTP export"};
static FFPhase late_ph = {"apply late events and retry callbacks"};

/*
 * ff_export_batch(retry_now => true), from the export phase: the other
 * phases' backoff is cleared too, and the next pass follows at once, so the
 * transmits and callbacks that the export made due go out now.
 */
void
ff_worker_retry_now(void)
{
	FFPhase    *phases[] = {&transmit_ph, &late_ph};

	for (int i = 0; i < lengthof(phases); i++)
	{
		phases[i]->not_before = 0;
		phases[i]->backoff_ms = 0;
	}
	SetLatch(MyLatch);
}

/* Leave at once when a backend needs the database to itself. */
static void
leave_if_released(void)
{
	if (ff_database_released(MyDatabaseId))
	{
		ereport(LOG,
				(errmsg("flexfactor worker is leaving database \"%s\" so that it can be dropped, renamed or copied",
						my_database_name)));
		proc_exit(0);
	}
}

/*
 * Called by the SFTP export between files and between chunks of a file, with
 * no transaction open: a slow SFTP server must not delay the transmit queue
 * or late webhook events, so they get their turn here at least every second.
 * Their activity shows in pg_stat_activity meanwhile; the caller's ("uploading
 * a batch") is shown again after them.
 */
void
ff_worker_yield(void)
{
	static TimestampTz last_turn = 0;
	long		next_due_ms = -1;
	char		activity[128];

	CHECK_FOR_INTERRUPTS();
	ff_fence_check();
	leave_if_released();
	if (!TimestampDifferenceExceeds(last_turn, GetCurrentTimestamp(), YIELD_INTERVAL_MS))
		return;
	strlcpy(activity, MyBEEntry != NULL ? MyBEEntry->st_activity_raw : "", sizeof(activity));
	(void) ff_work_run_phase(&transmit_ph, false, transmit_phase, &next_due_ms);
	(void) ff_work_run_phase(&late_ph, false, apply_late_results, NULL);
	last_turn = GetCurrentTimestamp();
	pgstat_report_activity(STATE_RUNNING, activity);
}

/*
 * Whether this server may export and transmit now; if not, the worker pauses
 * (logged when the pause starts and when it ends, not every pass).
 */
static bool paused = false;

static bool
writable_or_paused(void)
{
	const char *why;

	if (ff_fence_writable_or_pause(&paused,
								   "No batch is fixed or uploaded and no transmit is sent until this server is a writable primary.",
								   &why))
		return true;
	ff_status_set(psprintf("waiting: %s", why));
	ff_export_refuse_requests(why);
	ff_status_pass_done();
	return false;
}

/*
 * One unit of the worker's work.  Returns how long to sleep before the next
 * pass, in milliseconds.
 */
static long
run_pass(void)
{
	long		next_due_ms = -1;
	long		timeout_ms;

	if (!extension_ready())
		return EXTENSION_WAIT_MS;
	if (!writable_or_paused())
		return PAUSED_TICK_MS;

	(void) ff_work_run_phase(&transmit_ph, false, transmit_phase, &next_due_ms);
	leave_if_released();
	/* asked for by ff_export_batch(): runs even while the phase backs off */
	(void) ff_work_run_phase(&export_ph, ff_export_requested(), export_phase, NULL);
	leave_if_released();
	(void) ff_work_run_phase(&late_ph, false, apply_late_results, NULL);

	/* a pass in which nothing is failing any more leaves no stale error */
	if (!transmit_ph.failing && !export_ph.failing && !late_ph.failing)
		ff_status_clear_error();
	ff_status_set("idle");
	ff_status_pass_done();
	/* exports keep their own schedule (batch.c); the rest runs every few seconds */
	timeout_ms = HOUSEKEEPING_TICK_MS;
	if (ff_batch_interval > 0)
		timeout_ms = Min(timeout_ms, ff_batch_interval * 1000L);
	if (next_due_ms >= 0)
		timeout_ms = Max(1, Min(timeout_ms, next_due_ms));
	return timeout_ms;
}

void
ff_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext pass_cxt;

	setup_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	if (!ff_status_claim(FF_ROLE_WORKER, dboid))
	{
		ereport(LOG, (errmsg("flexfactor worker is already running; this copy exits")));
		proc_exit(0);
	}
	pgstat_report_appname("flexfactor worker");
	remember_database_name();

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor worker pass",
									 ALLOCSET_DEFAULT_SIZES);
	/* a slow SFTP server must not hold up the transmit queue or late events */
	ff_sftp_wait_hook = ff_worker_yield;
	for (;;)
	{
		volatile long timeout_ms = EXTENSION_WAIT_MS;

		CHECK_FOR_INTERRUPTS();
		ff_fence_check();
		reload_settings_if_asked();

		leave_if_released();

		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		PG_TRY();
		{
			pgstat_report_activity(STATE_RUNNING, "flexfactor worker pass");
			timeout_ms = run_pass();
		}
		PG_CATCH();
		{
			/* the phases catch their own errors; this is the last resort */
			ErrorData  *edata = ff_work_catch(pass_cxt);

			ff_work_report(edata, "finish a pass");
		}
		PG_END_TRY();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(pass_cxt);
		if (reported_extension_state == FF_EXTENSION_READY && !paused)
			ff_status_set("idle");	/* else it says what it waits for */
		ff_work_idle();

		wait_for_wakeup(timeout_ms);
	}
}
