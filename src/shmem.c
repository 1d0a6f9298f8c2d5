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

FFShared *
ff_shared_or_error(void)
{
	if (ff_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flexfactor is not loaded through shared_preload_libraries"),
				 errdetail("The background workers and the shared token cache need the library at server start."),
				 errhint("Add 'flexfactor' to shared_preload_libraries in postgresql.conf and restart PostgreSQL.")));
	return ff_shared;
}
