/*
 * work.c
 *		A unit of a background process's work: a short transaction, the
 *		memory it allocates, and the boundary that keeps its failure its own.
 *
 * Every background process (the worker, the export pass, the webhook
 * listener) does its database work in short transactions begun and ended
 * here.  ff_work_begin() remembers the caller's memory context, starts a
 * transaction, connects SPI, pushes a snapshot and reports the activity;
 * ff_work_commit() and ff_work_abort() end it, switch back to the caller's
 * context (a commit or abort leaves TopMemoryContext current, where anything
 * allocated would live forever), flush statistics so that autovacuum sees the
 * queues' churn, report idle and clear debug_query_string, as worker_spi
 * does.  Network I/O happens between such transactions, never inside one.
 * No unit of work commits once the postmaster is gone (fence.c): what it
 * records (an upload, a transmit, a result applied) would be recorded on a
 * node that a failover has left behind.
 *
 * ff_work_run_phase() runs one phase of a pass (the transmit queue, the SFTP
 * export, late events) in a memory context of its own, deleted afterwards,
 * behind its own error boundary: a failure aborts whatever transaction was
 * open, is logged as a WARNING with its SQLSTATE, detail, hint and context,
 * is recorded in the process's status slot, and puts only that phase in
 * backoff; the other phases run as usual.  A phase that found the server
 * read-only (a switchover under way) is not a failure: it is retried a
 * second later, with a debug line only.
 *
 * Not here: what the phases do, and the processes' main loops.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "fence.h"
#include "work.h"
#include "worker_status.h"

#define PHASE_BACKOFF_MIN_MS	1000
#define READ_ONLY_RETRY_MS		1000
#define PHASE_BACKOFF_MAX_MS	60000

/* the context current when the unit of work began; NULL outside one */
static MemoryContext work_caller_cxt = NULL;

void
ff_work_begin(const char *activity)
{
	Assert(!IsTransactionState());
	work_caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "could not connect to SPI");
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = activity;
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Statistics out, idle in pg_stat_activity, no statement in crash reports. */
void
ff_work_idle(void)
{
	debug_query_string = NULL;
	if (!IsTransactionState())
		pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

static void
restore_caller_context(void)
{
	if (work_caller_cxt != NULL)
		MemoryContextSwitchTo(work_caller_cxt);
	work_caller_cxt = NULL;
}

void
ff_work_commit(void)
{
	ff_fence_check();
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	restore_caller_context();
	ff_work_idle();
}

/*
 * Abort whatever transaction is open (SPI and snapshots are released by the
 * abort) and go back to the context of the caller of ff_work_begin(), if a
 * unit of work was open.  Safe when no transaction is open.
 */
void
ff_work_abort(void)
{
	AbortCurrentTransaction();
	restore_caller_context();
	ff_work_idle();
}

/*
 * In a PG_CATCH block: take the error out of the error machinery into cxt,
 * abort the transaction, and leave cxt current.
 */
ErrorData *
ff_work_catch(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	ff_work_abort();
	MemoryContextSwitchTo(cxt);
	return edata;
}

/*
 * Log a caught error again as a WARNING, with everything it carried
 * (SQLSTATE, detail, hint, context), and record it in the status slot.
 */
void
ff_work_report(ErrorData *edata, const char *doing)
{
	ff_status_error(edata->detail ?
					psprintf("%s: %s", edata->message, edata->detail) : edata->message);
	if (doing != NULL)
		edata->message = psprintf("%s could not %s: %s",
								  MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "flexfactor",
								  doing, edata->message);
	edata->elevel = WARNING;
	ThrowErrorData(edata);
}

/*
 * Run fn(arg) as one phase: in a memory context of its own, deleted after,
 * behind an error boundary of its own.  fn returns false when it met a
 * failure it handled and reported itself.  A phase that raised an error waits
 * (1 s, doubling to 60 s) before it runs again, unless forced.  Returns
 * whether the phase ran and succeeded.
 */
bool
ff_work_run_phase(FFPhase *phase, bool force, bool (*fn) (void *), void *arg)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext cxt;
	volatile bool ok = false;
	volatile bool raised = false;
	volatile bool read_only = false;

	if (!force && GetCurrentTimestamp() < phase->not_before)
		return false;

	cxt = AllocSetContextCreate(caller, "flexfactor phase", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		ok = fn(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata = ff_work_catch(cxt);

		if (ff_fence_read_only_error(edata->sqlerrcode))
		{
			read_only = true;
			elog(DEBUG1, "flexfactor: \"%s\" found the server read-only: %s",
				 phase->name, edata->message);
		}
		else
		{
			raised = true;
			ff_work_report(edata, phase->name);
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(cxt);
	ff_work_idle();

	phase->failing = !ok && !read_only;
	if (read_only)
		phase->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														READ_ONLY_RETRY_MS);
	else if (raised)
	{
		phase->backoff_ms = Min(Max(phase->backoff_ms * 2, PHASE_BACKOFF_MIN_MS),
								PHASE_BACKOFF_MAX_MS);
		phase->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														phase->backoff_ms);
	}
	else
	{
		phase->backoff_ms = 0;
		phase->not_before = 0;
	}
	return ok;
}
