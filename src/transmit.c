/*
 * transmit.c
 *		Delivers queued /transmit copies, in the worker, after commit.
 *
 * ff_transmit() (SQL) only inserts a row and calls _wake_worker_at_commit(),
 * which sets the worker's latch when, and only if, the transaction commits:
 * the caller never waits on the network and a rolled-back transaction sends
 * nothing.  The worker claims due rows with a lease in a short transaction,
 * sends up to flexfactor.transmit_concurrency at once over kept-alive
 * connections with no transaction open, and records each outcome in another
 * short transaction: delivered (with FlexFactor's transmitId), retried later
 * with exponential backoff (transport failures, 408, 429, 5xx), or set aside
 * with its last error (other 4xx answers, flexfactor.transmit_max_attempts
 * failures, or an answer that cannot be processed or recorded: one poison
 * answer never holds up the rest).  Every row sends a stable idempotencyKey,
 * so a copy re-sent after a crash (once its lease has run out) is
 * recognisable.
 * Delivered rows are deleted after flexfactor.transmit_retention.  With
 * flexfactor.transmit_via = 'sftp' the rows leave in transmit_ batch files
 * instead (batch.c), and this file only tidies the queue.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "api.h"
#include "errors.h"
#include "http.h"
#include "settings.h"
#include "token.h"
#include "transmit.h"
#include "work.h"
#include "worker.h"
#include "worker_status.h"

#define TRANSMIT_BATCH		1000
#define MAX_ROUNDS_PER_PASS	50
#define MAX_RETRY_DELAY_MS	300000.0

/* ------------------------------------------------------ wake after commit */

static bool wake_at_commit = false;

static void
transmit_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (wake_at_commit)
				ff_status_wake(FF_ROLE_WORKER);
			wake_at_commit = false;
			break;
		case XACT_EVENT_PREPARE:	/* COMMIT PREPARED wakes it (dbguard.c) */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

PG_FUNCTION_INFO_V1(ff_wake_worker_at_commit);

Datum
ff_wake_worker_at_commit(PG_FUNCTION_ARGS)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(transmit_xact_callback, NULL);
		registered = true;
	}
	wake_at_commit = true;
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------- the sender */

typedef struct TransmitRow
{
	int64		id;
	int32		attempts;
	char	   *body;
	/* outcome */
	const char *state;
	char	   *error;
	char	   *transmit_id;
	double		delay_ms;
} TransmitRow;

static double
retry_delay_ms(int attempts_before)
{
	double		delay = (double) ff_transmit_retry_base_ms;

	for (int i = 0; i < attempts_before && delay < MAX_RETRY_DELAY_MS; i++)
		delay *= 2;
	return Min(delay, MAX_RETRY_DELAY_MS);
}

static bool
retryable_status(long status)
{
	return status == 408 || status == 429 || status >= 500;
}

static void
judge(TransmitRow *row, const FFHttpRequest *req)
{
	char	   *reason;

	if (req->curl_code == CURLE_OK && req->status >= 200 && req->status <= 299)
	{
		Jsonb	   *answer = ff_json_parse_or_null(req->response.data, req->response.len);
		JsonbValue	success;

		/*
		 * The envelope's success says whether the request itself succeeded
		 * (§3): an answer that says it did not is no delivery.  A business
		 * refusal: set aside with FlexFactor's errors, not sent again.
		 */
		if (answer != NULL && JB_ROOT_IS_OBJECT(answer) &&
			ff_json_get(&answer->root, "success", &success) != NULL &&
			success.type == jbvBool && !success.val.boolean)
		{
			char	   *remote = ff_api_describe_errors(req->response.data);

			row->state = "set_aside";
			row->error = psprintf("HTTP %ld with success false%s%s", req->status,
								  remote ? ": " : "", remote ? remote : "");
			return;
		}
		row->state = "delivered";
		row->error = NULL;
		row->transmit_id = answer ? ff_json_get_text(&answer->root, "transmitId") : NULL;
		return;
	}

	if (req->curl_code != CURLE_OK)
		reason = psprintf("could not reach FlexFactor: %s", ff_http_transport_error_text(req));
	else
	{
		char	   *remote = ff_api_describe_errors(req->response.data);

		reason = psprintf("HTTP %ld%s%s", req->status, remote ? ": " : "", remote ? remote : "");
	}

	if ((req->curl_code != CURLE_OK || retryable_status(req->status)) &&
		row->attempts + 1 < ff_transmit_max_attempts)
	{
		row->state = "pending";
		row->error = reason;
		row->delay_ms = retry_delay_ms(row->attempts);
	}
	else
	{
		row->state = "set_aside";
		row->error = (req->curl_code != CURLE_OK || retryable_status(req->status))
			? psprintf("gave up after %d attempts; last: %s", row->attempts + 1, reason)
			: reason;
	}
}

static void judge_all(TransmitRow *rows, FFHttpRequest *reqs, int n);

static void
send_rows(TransmitRow *rows, int n)
{
	FFHttpRequest *reqs = palloc0(sizeof(FFHttpRequest) * n);
	char	   *url = ff_api_endpoint("transmit");
	uint64		generation;
	char	   *token = ff_token_get(&generation);
	int			refused = 0;

	for (int i = 0; i < n; i++)
	{
		reqs[i].method = "POST";
		reqs[i].url = url;
		reqs[i].body = rows[i].body;
		reqs[i].bearer = token;
	}
	ff_http_perform(reqs, n, ff_transmit_concurrency);

	/* a 401 means the shared token went stale: once more with a new one */
	for (int i = 0; i < n; i++)
		if (reqs[i].curl_code == CURLE_OK && reqs[i].status == 401)
			refused++;
	if (refused > 0)
	{
		FFHttpRequest *again = palloc0(sizeof(FFHttpRequest) * refused);
		int		   *index = palloc(sizeof(int) * refused);
		int			k = 0;

		ff_token_invalidate(generation);
		token = ff_token_get(&generation);
		for (int i = 0; i < n; i++)
			if (reqs[i].curl_code == CURLE_OK && reqs[i].status == 401)
			{
				again[k] = reqs[i];
				again[k].bearer = token;
				index[k++] = i;
			}
		ff_http_perform(again, refused, ff_transmit_concurrency);
		for (k = 0; k < refused; k++)
			reqs[index[k]] = again[k];
	}

	judge_all(rows, reqs, n);
}

static Datum
text_array(TransmitRow *rows, int n, int field)
{
	Datum	   *elems = palloc(sizeof(Datum) * n);
	bool	   *nulls = palloc(sizeof(bool) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		const char *value = field == 0 ? rows[i].state :
			field == 1 ? rows[i].error : rows[i].transmit_id;

		nulls[i] = (value == NULL);
		elems[i] = value ? CStringGetTextDatum(value) : (Datum) 0;
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

static void
record_outcomes(TransmitRow *rows, int n)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *delays = palloc(sizeof(Datum) * n);
	Oid			types[5] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID};
	Datum		values[5];

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(rows[i].id);
		delays[i] = Float8GetDatum(rows[i].delay_ms);
	}
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = text_array(rows, n, 0);
	values[2] = text_array(rows, n, 1);
	values[3] = text_array(rows, n, 2);
	values[4] = PointerGetDatum(construct_array(delays, n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	if (SPI_execute_with_args(
							  "UPDATE flexfactor.transmit_queue q"
							  "   SET state = u.state,"
							  "       attempts = q.attempts + 1,"
							  "       last_error = u.error,"
							  "       transmit_id = u.transmit_id,"
							  "       delivered_at = CASE WHEN u.state = 'delivered' THEN now() END,"
							  "       next_attempt_at = CASE WHEN u.state = 'pending'"
							  "           THEN now() + u.delay_ms * interval '1 millisecond'"
							  "           ELSE q.next_attempt_at END"
							  "  FROM unnest($1, $2, $3, $4, $5) AS u(id, state, error, transmit_id, delay_ms)"
							  " WHERE q.id = u.id",
							  5, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record transmit outcomes");
}

static void
judge_one(TransmitRow *row, FFHttpRequest *req)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		judge(row, req);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		row->state = "set_aside";
		row->transmit_id = NULL;
		row->error = psprintf("FlexFactor's answer could not be processed: %s", edata->message);
	}
	PG_END_TRY();
}

/*
 * judge() for every row, each behind its own boundary: an answer that cannot
 * be processed (say, a body jsonb refuses) sets its own row aside with the
 * reason, never the others.  Runs with no transaction open.
 */
static void
judge_all(TransmitRow *rows, FFHttpRequest *reqs, int n)
{
	for (int i = 0; i < n; i++)
		judge_one(&rows[i], &reqs[i]);
}

static void
record_one(TransmitRow *row, MemoryContext cxt)
{
	PG_TRY();
	{
		ff_work_begin("flexfactor: recording a transmit outcome");
		record_outcomes(row, 1);
		ff_work_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata = ff_work_catch(cxt);

		row->state = "set_aside";
		row->transmit_id = NULL;
		row->error = psprintf("its outcome could not be recorded: %s", edata->message);
		ff_work_begin("flexfactor: setting a transmit aside");
		record_outcomes(row, 1);
		ff_work_commit();
	}
	PG_END_TRY();
}

/*
 * Record the outcomes in a short transaction.  Should that fail, each row is
 * recorded in a transaction of its own, and a row that still cannot be is
 * set aside with the reason, so one poison answer never holds up the queue.
 */
static void
record_all(TransmitRow *rows, int n)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		ff_work_begin("flexfactor: recording transmit outcomes");
		record_outcomes(rows, n);
		ff_work_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata = ff_work_catch(cxt);

		ff_work_report(edata, "record transmit outcomes together; recording them one by one");
		for (int i = 0; i < n; i++)
			record_one(&rows[i], cxt);
	}
	PG_END_TRY();
}

/* Make claimed rows due again at once. */
static void
release_lease(TransmitRow *rows, int n)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	for (int i = 0; i < n; i++)
		ids[i] = Int64GetDatum(rows[i].id);
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ff_work_begin("flexfactor: releasing claimed transmits");
	if (SPI_execute_with_args("UPDATE flexfactor.transmit_queue SET next_attempt_at = now()"
							  " WHERE id = ANY($1) AND state = 'pending'",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not release claimed transmits");
	ff_work_commit();
}

/*
 * Claim, send and record one batch of due rows; returns how many.  Three
 * steps, and no transaction open while requests travel: a short transaction
 * claims the rows with a lease (their next attempt moves past the time the
 * requests can take, so nobody else takes them and a crash leaves them due
 * again later), the requests go out, and another short transaction records
 * the outcomes.  A row re-sent after a crash carries the same idempotency key.
 */
static int
transmit_batch(void)
{
	Oid			types[3] = {INT4OID, TEXTOID, FLOAT8OID};
	Datum		values[3];
	TransmitRow *volatile rows = NULL;
	MemoryContext cxt = CurrentMemoryContext;
	double		lease_s;
	int			n;

	/* every request may take the whole timeout, one wave after another, twice (401) */
	lease_s = 60.0 + 2.0 * (TRANSMIT_BATCH / Max(1, ff_transmit_concurrency) + 1) *
		(ff_http_timeout_ms / 1000.0);
	values[0] = Int32GetDatum(TRANSMIT_BATCH);
	values[1] = CStringGetTextDatum(ff_mid);
	values[2] = Float8GetDatum(lease_s);

	ff_work_begin("flexfactor: claiming queued transmits");
	if (SPI_execute_with_args(
							  "UPDATE flexfactor.transmit_queue q"
							  "   SET next_attempt_at = now() + make_interval(secs => $3)"
							  "  FROM (SELECT id FROM flexfactor.transmit_queue"
							  "         WHERE state = 'pending' AND next_attempt_at <= now()"
							  "         ORDER BY next_attempt_at, id"
							  "         LIMIT $1 FOR UPDATE SKIP LOCKED) due"
							  " WHERE q.id = due.id"
							  " RETURNING q.id, q.attempts,"
							  "       (q.payload"
							  "        || jsonb_build_object('idempotencyKey', coalesce(q.payload->>'idempotencyKey',"
							  "               md5('flexfactor-transmit:' || $2 || ':' || q.id)::uuid::text))"
							  "        || CASE WHEN q.payload ? 'mid' OR $2 = '' THEN '{}'::jsonb"
							  "                ELSE jsonb_build_object('mid', $2) END)::text",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not claim queued transmits");

	n = (int) SPI_processed;
	if (n > 0)
	{
		rows = MemoryContextAllocZero(cxt, sizeof(TransmitRow) * n);
		for (int i = 0; i < n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			rows[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			rows[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			rows[i].body = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 3));
		}
	}
	ff_work_commit();

	if (n > 0)
	{
		ff_status_set("sending transmits");
		pgstat_report_activity(STATE_RUNNING, "flexfactor: sending queued transmits");
		PG_TRY();
		{
			send_rows(rows, n);
		}
		PG_CATCH();
		{
			/* nothing was judged (no token, an interrupt): give the rows back */
			ErrorData  *edata = ff_work_catch(cxt);

			release_lease(rows, n);
			ReThrowError(edata);
		}
		PG_END_TRY();
		record_all(rows, n);
	}
	return n;
}

/* Delete old delivered rows; returns ms until the next pending row is due, or -1. */
static long
tidy_and_find_next_due(void)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(ff_transmit_retention)};
	long		next_due_ms = -1;
	bool		isnull;
	Datum		d;

	ff_work_begin("flexfactor: tidying the transmit queue");
	(void) SPI_execute_with_args("DELETE FROM flexfactor.transmit_queue"
						  " WHERE state = 'delivered'"
						  "   AND delivered_at < now() - make_interval(secs => $1)",
						  1, types, values, NULL, false, 0);
	if (SPI_execute("SELECT ceil(extract(epoch FROM min(next_attempt_at) - clock_timestamp()) * 1000)::int8"
				"  FROM flexfactor.transmit_queue WHERE state = 'pending'", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the transmit queue");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next_due_ms = Max(0, DatumGetInt64(d));

	ff_work_commit();
	return next_due_ms;
}

/*
 * One pass of the worker over the transmit queue.  Returns the number of
 * rows handled; *next_due_ms is when the next pending row is due (-1: none).
 */
int
ff_transmit_pass(long *next_due_ms)
{
	int			total = 0;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext round_cxt = AllocSetContextCreate(caller, "flexfactor transmit round",
													ALLOCSET_DEFAULT_SIZES);

	for (int round = 0; round < MAX_ROUNDS_PER_PASS && ff_transmit_via == FF_TRANSMIT_VIA_API; round++)
	{
		int			n;

		MemoryContextSwitchTo(round_cxt);
		n = transmit_batch();
		MemoryContextSwitchTo(caller);
		MemoryContextReset(round_cxt);
		total += n;
		if (n < TRANSMIT_BATCH)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextDelete(round_cxt);
	*next_due_ms = tidy_and_find_next_due();
	return total;
}
