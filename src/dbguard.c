/*
 * dbguard.c
 *		Makes the workers step out of their database when a backend is
 *		about to drop, rename, copy (CREATE DATABASE ... TEMPLATE) or move
 *		it (ALTER DATABASE ... SET TABLESPACE).
 *
 * Those commands refuse to run while another session is connected, and a
 * background worker is such a session.  A ProcessUtility hook, present in
 * every backend because the library is preloaded, recognises them when they
 * name flexfactor.database and the current user may run them, asks the
 * workers to leave through shared memory,
 * waits briefly for them to go, and keeps them away until shortly after the
 * command ends.  It also wakes the worker after COMMIT PREPARED, whose
 * transaction may have queued work.  The launcher then finds the database again or waits for it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "utils/acl.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "dbguard.h"
#include "settings.h"
#include "shmem.h"
#include "worker_status.h"

/* how long workers stay away while the command runs, and after it ends */
#define RELEASE_DURING_MS	30000
#define RELEASE_AFTER_MS	2000
/* how long the command waits for the workers to disconnect */
#define WAIT_FOR_EXIT_MS	5000

static ProcessUtility_hook_type prev_process_utility = NULL;

static const char *
option_string(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/* The database a statement needs to have to itself, or NULL. */
static const char *
exclusive_database_of(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			return NULL;
		case T_CreatedbStmt:
			return option_string(((CreatedbStmt *) stmt)->options, "template");
		case T_AlterDatabaseStmt:
			if (option_string(((AlterDatabaseStmt *) stmt)->options, "tablespace"))
				return ((AlterDatabaseStmt *) stmt)->dbname;
			return NULL;
		default:
			return NULL;
	}
}

/*
 * Would PostgreSQL let the current user run this command on the database?
 * The workers are sent away only for a command that can succeed: a role
 * that may not drop, rename, copy or move the database must not be able to
 * stop the workers by trying (the command itself then fails as usual).
 */
static bool
command_allowed(Node *stmt, Oid dboid)
{
	HeapTuple	tuple;
	Oid			owner;
	bool		is_template;
	bool		is_owner;
	bool		can_createdb = superuser();

	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	if (!HeapTupleIsValid(tuple))
		return false;
	owner = ((Form_pg_database) GETSTRUCT(tuple))->datdba;
	is_template = ((Form_pg_database) GETSTRUCT(tuple))->datistemplate;
	ReleaseSysCache(tuple);
	is_owner = has_privs_of_role(GetUserId(), owner);

	if (!can_createdb)
	{
		tuple = SearchSysCache1(AUTHOID, ObjectIdGetDatum(GetUserId()));
		if (HeapTupleIsValid(tuple))
		{
			can_createdb = ((Form_pg_authid) GETSTRUCT(tuple))->rolcreatedb;
			ReleaseSysCache(tuple);
		}
	}

	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
		case T_AlterDatabaseStmt:
			return is_owner;
		case T_RenameStmt:
			return is_owner && can_createdb;
		case T_CreatedbStmt:
			return can_createdb && (is_template || is_owner);
		default:
			return false;
	}
}

static void
set_release(Oid dboid, int duration_ms)
{
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	ff_shared->release_dboid = dboid;
	ff_shared->release_until =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), duration_ms);
	LWLockRelease(ff_shared->lock);
}

/*
 * Wait (briefly) until no worker is connected to the database any more: each
 * is woken to see the request at once, and a worker leaving broadcasts
 * worker_exited, so this sleeps instead of polling.
 */
static void
wait_for_worker_exit(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), WAIT_FOR_EXIT_MS);

	ConditionVariablePrepareToSleep(&ff_shared->worker_exited);
	for (;;)
	{
		bool		connected = false;
		long		left;

		for (int role = FF_ROLE_WORKER; role < FF_NUM_ROLES; role++)
			if (ff_status_pid(role) != 0)
			{
				connected = true;
				ff_status_wake(role);
			}
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (!connected || left <= 0)
			break;
		/* the timeout also covers a worker that died without its exit hook */
		(void) ConditionVariableTimedSleep(&ff_shared->worker_exited, Min(left, 100),
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
}

static void
ff_process_utility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	const char *dbname = exclusive_database_of(pstmt->utilityStmt);
	Oid			dboid = InvalidOid;

	if (ff_shared != NULL && dbname != NULL && ff_database != NULL &&
		strcmp(dbname, ff_database) == 0)
		dboid = get_database_oid(dbname, true);
	if (OidIsValid(dboid) && !command_allowed(pstmt->utilityStmt, dboid))
		dboid = InvalidOid;

	if (OidIsValid(dboid))
	{
		set_release(dboid, RELEASE_DURING_MS);
		wait_for_worker_exit();
	}

	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		if (OidIsValid(dboid))
			set_release(dboid, RELEASE_AFTER_MS);
	}
	PG_END_TRY();

	/*
	 * A prepared transaction's commit callbacks ran at PREPARE, where nothing
	 * is committed yet: whatever it queued (ff_transmit(), declines) becomes
	 * visible here, so the worker is woken now rather than at its next tick.
	 */
	if (ff_shared != NULL && IsA(pstmt->utilityStmt, TransactionStmt) &&
		((TransactionStmt *) pstmt->utilityStmt)->kind == TRANS_STMT_COMMIT_PREPARED)
		ff_status_wake(FF_ROLE_WORKER);
}

void
ff_dbguard_install_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = ff_process_utility;
}

/* True while workers must stay out of this database. */
bool
ff_database_released(Oid dboid)
{
	bool		released;

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	released = (ff_shared->release_dboid == dboid &&
				GetCurrentTimestamp() < ff_shared->release_until);
	LWLockRelease(ff_shared->lock);
	return released;
}
