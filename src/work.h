/*
 * work.h
 *		A unit of a background process's work: its transaction, its memory,
 *		its error boundary.  See work.c.
 */
#ifndef FLEXFACTOR_WORK_H
#define FLEXFACTOR_WORK_H

#include "postgres.h"

#include "utils/timestamp.h"

/* One phase of a background process's pass, with its own backoff. */
typedef struct FFPhase
{
	const char *name;			/* for messages: "send queued transmits" */
	TimestampTz not_before;		/* backoff: the phase is skipped until then */
	int			backoff_ms;		/* 0 while it succeeds */
	bool		failing;		/* its last run failed */
} FFPhase;

extern void ff_work_begin(const char *activity);
extern void ff_work_commit(void);
extern void ff_work_abort(void);
extern void ff_work_idle(void);
extern ErrorData *ff_work_catch(MemoryContext cxt);
extern void ff_work_report(ErrorData *edata, const char *doing);
extern bool ff_work_run_phase(FFPhase *phase, bool force, bool (*fn) (void *), void *arg);

#endif							/* FLEXFACTOR_WORK_H */
