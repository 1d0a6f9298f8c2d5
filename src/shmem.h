/*
 * shmem.h
 *		The extension's shared memory: worker status slots and the
 *		database-release handshake and the bearer token cache.
 *
 * Only exists when flexfactor is in shared_preload_libraries; code that
 * needs it calls ff_shared_or_error(), which says so plainly otherwise.
 */
#ifndef FLEXFACTOR_SHMEM_H
#define FLEXFACTOR_SHMEM_H

#include "compat.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "refusals.h"

typedef enum FFWorkerRole
{
	FF_ROLE_LAUNCHER = 0,
	FF_ROLE_WORKER,
	FF_ROLE_LISTENER,
	FF_NUM_ROLES
} FFWorkerRole;

#define FF_STATE_LEN	64
#define FF_ERROR_LEN	512

/* What one background worker reports about itself; see worker_status.c. */
typedef struct FFWorkerSlot
{
	pid_t		pid;			/* 0 when not running */
	Latch	   *latch;			/* to wake it up */
	Oid			dboid;			/* database it is connected to */
	char		state[FF_STATE_LEN];
	TimestampTz state_since;
	TimestampTz started_at;
	TimestampTz last_pass_at;
	uint64		passes;
	uint64		config_reloads;
	uint64		restarts;		/* launches by the launcher since start-up */
	char		last_error[FF_ERROR_LEN];
	TimestampTz last_error_at;
} FFWorkerSlot;

#define FF_TOKEN_MAX	8192

/* The cluster's one FlexFactor bearer token; see token.c. */
typedef struct FFTokenCache
{
	char		token[FF_TOKEN_MAX];	/* empty when none */
	uint64		issuer;			/* hash of the api_url and app_key it is for */
	int64		expires_ms;		/* Unix epoch milliseconds */
	uint64		generation;		/* bumped for every new token */
	uint64		requests;		/* /oauth2/token requests since start */
	bool		fetching;		/* a backend is fetching a new token */
	pid_t		fetcher;
	ConditionVariable fetched;	/* broadcast when a fetch ends */
} FFTokenCache;

/* A batch file that waits for its next upload attempt after a failure. */
typedef struct FFWaitingBatch
{
	int64		id;
	int32		attempts;		/* failed so far */
	TimestampTz next_attempt_at;
	char		file_name[128];
} FFWaitingBatch;

#define FF_WAITING_SHOWN	5

/* What one export pass achieved; see batch.c. */
typedef struct FFExportResult
{
	int32		uploaded;		/* batch files uploaded */
	int32		sqlerrcode;		/* of the first failure, 0 if none */
	char		message[FF_ERROR_LEN];
	char		detail[FF_ERROR_LEN];
	char		hint[FF_ERROR_LEN];

	/* made due at once by ff_export_batch(retry_now => true) */
	int64		retried_batches;
	int64		retried_transmits;
	int64		retried_callbacks;

	/* batch files still waiting for a later attempt after the pass */
	int32		waiting;
	FFWaitingBatch waiting_first[FF_WAITING_SHOWN];	/* the soonest */
} FFExportResult;

typedef struct FFShared
{
	LWLock	   *lock;
	FFWorkerSlot slots[FF_NUM_ROLES];

	/*
	 * Set by a backend about to DROP, RENAME or copy the workers' database:
	 * workers connected to release_dboid leave it, and nobody reconnects
	 * before release_until.  See dbguard.c.
	 */
	Oid			release_dboid;
	TimestampTz release_until;
	ConditionVariable worker_exited;	/* broadcast when a slot is released */

	FFTokenCache token;

	/*
	 * ff_export_batch() asks the worker for an export pass by taking a ticket
	 * (export_requested); the worker serves every ticket taken before its pass
	 * started, publishes the pass's result and broadcasts export_done.
	 * export_retry is the last ticket taken with retry_now: the pass serving
	 * it first makes everything that waits for a retry due.
	 */
	uint64		export_requested;
	uint64		export_completed;
	uint64		export_retry;
	FFExportResult export_result;
	ConditionVariable export_done;

	FFRefusalCounters refusals; /* see refusals.c */
} FFShared;

extern FFShared *ff_shared;

extern void ff_shmem_install_hooks(void);
extern FFShared *ff_shared_or_error(void);
extern pg_noreturn void ff_report_not_preloaded(void);

#endif							/* FLEXFACTOR_SHMEM_H */
