/*
 * refusals.h
 *		Refused webhook requests: counted in shared memory, flushed in
 *		aggregate, a bounded sample kept.
 */
#ifndef FLEXFACTOR_REFUSALS_H
#define FLEXFACTOR_REFUSALS_H

#include "port/atomics.h"

typedef enum FFRefusal
{
	FF_REFUSAL_PATH = 0,		/* 404 another path */
	FF_REFUSAL_METHOD,			/* 405 another method */
	FF_REFUSAL_TOO_LARGE,		/* 413 a body over the limit */
	FF_REFUSAL_SIGNATURE,		/* 401 missing or bad signature */
	FF_REFUSAL_STALE,			/* 401 stale or invalid date */
	FF_REFUSAL_REPLAYED,		/* 401 a nonce used before */
	FF_REFUSAL_MALFORMED,		/* 400 a signed body that is not an event */
	FF_REFUSAL_NETWORK,			/* 403 a source address outside the allowed networks */
	FF_REFUSAL_SLOW,			/* closed: headers or body not received in time */
	FF_REFUSAL_EVICTED,			/* closed: idle, to make room for another */
	FF_NUM_REFUSALS
} FFRefusal;

/* In shared memory (FFShared); only the listener writes. */
typedef struct FFRefusalCounters
{
	pg_atomic_uint64 refused[FF_NUM_REFUSALS];	/* since the server started */
	uint64		flushed[FF_NUM_REFUSALS];	/* of those, in webhook_refusal_counts */
} FFRefusalCounters;

extern void ff_refusals_init(FFRefusalCounters *counters);
extern bool ff_refusal_count(FFRefusal refusal);
extern const char *ff_refusal_name(FFRefusal refusal);
extern unsigned int ff_refusal_status(FFRefusal refusal);
typedef struct FFRefusalMarks
{
	uint64		at[FF_NUM_REFUSALS];
} FFRefusalMarks;

extern bool ff_refusals_flush_due(void);
extern void ff_refusals_flush(FFRefusalMarks *marks);
extern void ff_refusals_flushed(const FFRefusalMarks *marks);

#endif							/* FLEXFACTOR_REFUSALS_H */
