/*
 * shmem.c
 *		Reserves and initialises flexfactor's shared memory.
 *
 * Owns the FFShared struct's life cycle and its LWLock.  What the fields
 * mean belongs to the files that use them (worker_status.c, dbguard.c,
 * token.c, batch.c).
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "compat.h"
#include "shmem.h"

#define FF_LWLOCK_TRANCHE	"flexfactor"

FFShared   *ff_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
ff_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(FFShared)));
	RequestNamedLWLockTranche(FF_LWLOCK_TRANCHE, 1);
}

static void
ff_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ff_shared = ShmemInitStruct("flexfactor", sizeof(FFShared), &found);
	if (!found)
	{
		memset(ff_shared, 0, sizeof(FFShared));
		ff_shared->lock = &(GetNamedLWLockTranche(FF_LWLOCK_TRANCHE))->lock;
		ff_shared->release_dboid = InvalidOid;
		ConditionVariableInit(&ff_shared->token.fetched);
		ConditionVariableInit(&ff_shared->export_done);
		ConditionVariableInit(&ff_shared->worker_exited);
		ff_refusals_init(&ff_shared->refusals);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
ff_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ff_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ff_shmem_startup;
}

/*
 * flexfactor needs what only a library loaded at server start can have:
 * shared memory, background workers and its settings of context
 * PGC_POSTMASTER (defining one later is a FATAL error in core, which would
 * drop the connection).  _PG_init() raises this before it registers
 * anything, so CREATE EXTENSION, LOAD and every call of one of its functions
 * in a server that did not preload it fail with this ERROR and leave the
 * session usable.
 */
void
ff_report_not_preloaded(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("flexfactor must be loaded through shared_preload_libraries"),
			 errdetail("Its background workers, shared memory and server-start settings can be set up only at server start."),
			 errhint("Add flexfactor to shared_preload_libraries in postgresql.conf (or with ALTER SYSTEM), "
					 "keeping the libraries listed there already, and restart PostgreSQL.")));
	pg_unreachable();
}

FFShared *
ff_shared_or_error(void)
{
	if (ff_shared == NULL)
		ff_report_not_preloaded();
	return ff_shared;
}
