/*
 * refusals.c
 *		What the webhook listener refused: counted without a commit each.
 *
 * An anonymous client can make the listener refuse thousands of requests a
 * second; a committed row for each (as there once was) turned that into
 * thousands of WAL flushes a second and a table that grew for 7 days.  Every
 * refusal is instead counted, by reason, in shared memory (an atomic add; no
 * database work, so it is allowed inside libmicrohttpd's callbacks), and the
 * listener flushes the counts at most every FLUSH_INTERVAL_MS in one
 * transaction, as one row per reason and minute in
 * flexfactor.webhook_refusal_counts.  Only a bounded sample of refusals is
 * kept one by one, with its address and reason, in
 * flexfactor.webhook_rejections: at most SAMPLES_PER_REASON of a reason and
 * SAMPLES_PER_MINUTE in all in any minute.  Both tables keep 7 days.
 * ff_webhook_refusals() shows the live counters, flushed or not.
 *
 * Not here: deciding what to refuse (listener.c, webhook.c).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "refusals.h"
#include "shmem.h"

#define FLUSH_INTERVAL_MS	5000
#define SAMPLES_PER_REASON	10	/* per minute */
#define SAMPLES_PER_MINUTE	60
#define RETENTION			"7 days"

static const struct
{
	const char *name;
	unsigned int status;
}			refusals[FF_NUM_REFUSALS] = {
	[FF_REFUSAL_PATH] = {"unknown path", 404},
	[FF_REFUSAL_METHOD] = {"method not allowed", 405},
	[FF_REFUSAL_TOO_LARGE] = {"body too large", 413},
	[FF_REFUSAL_SIGNATURE] = {"bad signature", 401},
	[FF_REFUSAL_STALE] = {"stale date", 401},
	[FF_REFUSAL_REPLAYED] = {"replayed nonce", 401},
	[FF_REFUSAL_MALFORMED] = {"malformed body", 400},
	[FF_REFUSAL_NETWORK] = {"network not allowed", 403},
	[FF_REFUSAL_SLOW] = {"too slow", 0},	/* closed without an answer */
	[FF_REFUSAL_EVICTED] = {"evicted", 0},
};

/* the sample budget of the current minute (the listener's own) */
static int64 sample_minute = -1;
static int	sampled[FF_NUM_REFUSALS];
static int	sampled_total;

static TimestampTz last_flush = 0;

void
ff_refusals_init(FFRefusalCounters *counters)
{
	for (int i = 0; i < FF_NUM_REFUSALS; i++)
	{
		pg_atomic_init_u64(&counters->refused[i], 0);
		counters->flushed[i] = 0;
	}
}

const char *
ff_refusal_name(FFRefusal refusal)
{
	return refusals[refusal].name;
}

unsigned int
ff_refusal_status(FFRefusal refusal)
{
	return refusals[refusal].status;
}

/*
 * Count one refusal; returns whether it is to be kept as a sample (its row
 * written to webhook_rejections), within this minute's budget.
 */
bool
ff_refusal_count(FFRefusal refusal)
{
	int64		minute = (int64) (GetCurrentTimestamp() / USECS_PER_MINUTE);

	if (ff_shared != NULL)
		pg_atomic_fetch_add_u64(&ff_shared->refusals.refused[refusal], 1);
	if (minute != sample_minute)
	{
		sample_minute = minute;
		memset(sampled, 0, sizeof(sampled));
		sampled_total = 0;
	}
	if (sampled[refusal] >= SAMPLES_PER_REASON || sampled_total >= SAMPLES_PER_MINUTE)
		return false;
	sampled[refusal]++;
	sampled_total++;
	return true;
}

/* Whether counts wait to be flushed and the last flush is long enough ago. */
bool
ff_refusals_flush_due(void)
{
	if (ff_shared == NULL ||
		!TimestampDifferenceExceeds(last_flush, GetCurrentTimestamp(), FLUSH_INTERVAL_MS))
		return false;
	for (int i = 0; i < FF_NUM_REFUSALS; i++)
		if (pg_atomic_read_u64(&ff_shared->refusals.refused[i]) != ff_shared->refusals.flushed[i])
			return true;
	return false;
}

/*
 * Add the counts not flushed yet to this minute's rows, and drop rows and
 * samples older than the retention, in the caller's transaction (SPI
 * connected).  *marks receives the counters flushed; the caller passes them
 * to ff_refusals_flushed() once its transaction committed, so that a failed
 * flush loses nothing and counts nothing twice.
 */
void
ff_refusals_flush(FFRefusalMarks *marks)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT8OID};

	last_flush = GetCurrentTimestamp();
	for (int i = 0; i < FF_NUM_REFUSALS; i++)
	{
		uint64		delta;
		Datum		values[3];
		char		nulls[3] = "   ";

		marks->at[i] = pg_atomic_read_u64(&ff_shared->refusals.refused[i]);
		delta = marks->at[i] - ff_shared->refusals.flushed[i];
		if (delta == 0)
			continue;
		values[0] = CStringGetTextDatum(refusals[i].name);
		values[1] = Int32GetDatum((int32) refusals[i].status);
		nulls[1] = refusals[i].status == 0 ? 'n' : ' ';
		values[2] = Int64GetDatum((int64) delta);
		if (SPI_execute_with_args("INSERT INTO flexfactor.webhook_refusal_counts AS c"
								  " (minute, reason, http_status, refusals)"
								  " VALUES (date_trunc('minute', now()), $1, $2, $3)"
								  " ON CONFLICT (minute, reason)"
								  " DO UPDATE SET refusals = c.refusals + EXCLUDED.refusals",
								  3, types, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not count refused webhook requests");
	}
	if (SPI_execute("DELETE FROM flexfactor.webhook_refusal_counts"
					" WHERE minute < now() - interval '" RETENTION "'", false, 0) != SPI_OK_DELETE ||
		SPI_execute("DELETE FROM flexfactor.webhook_rejections"
					" WHERE received_at < now() - interval '" RETENTION "'", false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop old refused webhook requests");
}

/* After the commit of ff_refusals_flush()'s transaction. */
void
ff_refusals_flushed(const FFRefusalMarks *marks)
{
	for (int i = 0; i < FF_NUM_REFUSALS; i++)
		ff_shared->refusals.flushed[i] = marks->at[i];
}

PG_FUNCTION_INFO_V1(ff_webhook_refusals);

/* ff_webhook_refusals(): the live counters, one row per reason */
Datum
ff_webhook_refusals(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	ff_shared_or_error();
	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < FF_NUM_REFUSALS; i++)
	{
		uint64		refused = pg_atomic_read_u64(&ff_shared->refusals.refused[i]);
		uint64		flushed = ff_shared->refusals.flushed[i];
		Datum		values[4];
		bool		nulls[4] = {0};

		values[0] = CStringGetTextDatum(refusals[i].name);
		values[1] = Int32GetDatum((int32) refusals[i].status);
		nulls[1] = refusals[i].status == 0;
		values[2] = Int64GetDatum((int64) refused);
		values[3] = Int64GetDatum((int64) (refused >= flushed ? refused - flushed : 0));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
