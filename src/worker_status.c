/*
 * worker_status.c
 *		Status slots of the background workers and ff_worker_status().
 *
 * Each worker claims the slot of its role when it starts (at most one live
 * process per role), updates its state as it works, and the slot is cleared
 * when the process exits.  A backend reads the slots to show them in SQL or
 * to wake a worker through its latch.  Messages stored here are the ones the
 * worker already logged; they never contain secrets.
 */
#include "postgres.h"

#include <signal.h>

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "worker_status.h"

static const char *const role_names[FF_NUM_ROLES] = {
	[FF_ROLE_LAUNCHER] = "launcher",
	[FF_ROLE_WORKER] = "worker",
	[FF_ROLE_LISTENER] = "listener",
};

static FFWorkerSlot *my_slot = NULL;

static void
release_slot(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		strlcpy(my_slot->state, "stopped", FF_STATE_LEN);
		my_slot->state_since = GetCurrentTimestamp();
	}
	LWLockRelease(ff_shared->lock);
	my_slot = NULL;
	ConditionVariableBroadcast(&ff_shared->worker_exited);
}

/*
 * Claim the slot of a role for this process.  Returns false when another
 * live process holds it, so a role never runs twice.
 */
bool
ff_status_claim(FFWorkerRole role, Oid dboid)
{
	FFWorkerSlot *slot = &ff_shared_or_error()->slots[role];
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	if (slot->pid != 0 && slot->pid != MyProcPid && kill(slot->pid, 0) == 0)
	{
		LWLockRelease(ff_shared->lock);
		return false;
	}
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	slot->dboid = dboid;
	strlcpy(slot->state, "starting", FF_STATE_LEN);
	slot->state_since = now;
	slot->started_at = now;
	slot->last_pass_at = 0;
	slot->passes = 0;
	slot->config_reloads = 0;
	LWLockRelease(ff_shared->lock);

	my_slot = slot;
	before_shmem_exit(release_slot, (Datum) 0);
	return true;
}

void
ff_status_set(const char *state)
{
	if (my_slot == NULL || strcmp(my_slot->state, state) == 0)
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	strlcpy(my_slot->state, state, FF_STATE_LEN);
	my_slot->state_since = GetCurrentTimestamp();
	LWLockRelease(ff_shared->lock);
}

void
ff_status_pass_done(void)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	my_slot->passes++;
	my_slot->last_pass_at = GetCurrentTimestamp();
	LWLockRelease(ff_shared->lock);
}

void
ff_status_error(const char *message)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	strlcpy(my_slot->last_error, message ? message : "unknown error", FF_ERROR_LEN);
	my_slot->last_error_at = GetCurrentTimestamp();
	LWLockRelease(ff_shared->lock);
}

/* Nothing is failing any more: the last error is no longer news. */
void
ff_status_clear_error(void)
{
	if (my_slot == NULL || my_slot->last_error[0] == '\0')
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	my_slot->last_error[0] = '\0';
	my_slot->last_error_at = 0;
	LWLockRelease(ff_shared->lock);
}

void
ff_status_config_reloaded(void)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	my_slot->config_reloads++;
	LWLockRelease(ff_shared->lock);
}

void
ff_status_count_launch(FFWorkerRole role)
{
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	ff_shared->slots[role].restarts++;
	LWLockRelease(ff_shared->lock);
}

pid_t
ff_status_pid(FFWorkerRole role)
{
	pid_t		pid;

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	pid = ff_shared->slots[role].pid;
	LWLockRelease(ff_shared->lock);
	return pid;
}

/* Wake a worker, e.g. because work was queued; a no-op if it is not running. */
void
ff_status_wake(FFWorkerRole role)
{
	if (ff_shared == NULL)
		return;
	LWLockAcquire(ff_shared->lock, LW_SHARED);
	if (ff_shared->slots[role].pid != 0 && ff_shared->slots[role].latch != NULL)
		SetLatch(ff_shared->slots[role].latch);
	LWLockRelease(ff_shared->lock);
}

static Datum
timestamp_or_null(TimestampTz ts, bool *isnull)
{
	*isnull = (ts == 0);
	return TimestampTzGetDatum(ts);
}

PG_FUNCTION_INFO_V1(ff_worker_status);

Datum
ff_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	FFWorkerSlot slots[FF_NUM_ROLES];

	ff_shared_or_error();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	memcpy(slots, ff_shared->slots, sizeof(slots));
	LWLockRelease(ff_shared->lock);

	for (int role = 0; role < FF_NUM_ROLES; role++)
	{
		FFWorkerSlot *s = &slots[role];
		Datum		values[12];
		bool		nulls[12] = {0};
		char	   *dbname = OidIsValid(s->dboid) ? get_database_name(s->dboid) : NULL;

		values[0] = CStringGetTextDatum(role_names[role]);
		values[1] = Int32GetDatum((int32) s->pid);
		nulls[1] = (s->pid == 0);
		values[2] = dbname ? CStringGetTextDatum(dbname) : (Datum) 0;
		nulls[2] = (dbname == NULL);
		values[3] = CStringGetTextDatum(s->state[0] ? s->state : "not started");
		values[4] = timestamp_or_null(s->state_since, &nulls[4]);
		values[5] = timestamp_or_null(s->started_at, &nulls[5]);
		values[6] = timestamp_or_null(s->last_pass_at, &nulls[6]);
		values[7] = Int64GetDatum((int64) s->passes);
		values[8] = Int64GetDatum((int64) s->config_reloads);
		values[9] = Int64GetDatum((int64) s->restarts);
		values[10] = s->last_error[0] ? CStringGetTextDatum(s->last_error) : (Datum) 0;
		nulls[10] = (s->last_error[0] == '\0');
		values[11] = timestamp_or_null(s->last_error_at, &nulls[11]);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
