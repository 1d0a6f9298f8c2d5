/*
 * evaluate.c
 *		ff_evaluate(): sends a declined transaction to /evaluate and keeps
 *		the order book in step.
 *
 * Written in C, with saved plans, because it is the call billing code makes
 * in loops.  The body is checked once (body_check.c) and the attempt's
 * idempotency key derived from it (or taken from it).  A lock on the order
 * id is taken before the request, so that no other call for the same order,
 * in any session, sends until this one's answer is written; the order is
 * then written once, with its key and FlexFactor's answer: inserted, or
 * moved forward by ff_next_status() with the key of this attempt.  Its
 * triggers (order_events.c) log the status change as from PENDING, NOTIFY
 * and run the callback.  No row lock is held across the request, and a
 * request that fails leaves nothing behind (its transaction or
 * subtransaction rolls back, as it would have rolled back a row written
 * before).  Also owns the derivation of idempotency keys, which must match
 * the SQL function ff_attempt_key() byte for byte.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/md5.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "api.h"
#include "body_check.h"
#include "errors.h"
#include "evaluate.h"
#include "order_events.h"
#include "saved_plan.h"
#include "settings.h"

#define UUID_TEXT_LEN	36

/*
 * The class of flexfactor's advisory locks (the fourth field of the lock
 * tag; pg_locks.objsubid): 1 and 2 are the SQL functions', so no
 * pg_advisory_lock() of an application ever meets one of ours.
 */
#define FF_LOCK_ORDER_ID	0x4646

/* ------------------------------------------------------- idempotency keys */

/*
 * The key of one business attempt: md5 of "flexfactor:<kind>:" and the parts
 * joined by U+001F (NULL parts as empty), shaped as an RFC 9562 version 8
 * UUID.  Same as the SQL function ff_attempt_key().
 */
void
ff_attempt_key(const char *kind, const char **parts, int nparts, char *uuid_out)
{
	StringInfoData buf;
	char		hex[33];
	const char *errstr = NULL;
	int			o = 0;

	initStringInfo(&buf);
	appendStringInfo(&buf, "flexfactor:%s:", kind);
	for (int i = 0; i < nparts; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, '\x1f');
		if (parts[i] != NULL)
			appendStringInfoString(&buf, parts[i]);
	}
	if (!pg_md5_hash(buf.data, buf.len, hex, &errstr))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute an idempotency key: %s", errstr)));
	hex[12] = '8';				/* version 8 */
	hex[16] = 'a';				/* RFC variant */
	for (int i = 0; i < 32; i++)
	{
		if (i == 8 || i == 12 || i == 16 || i == 20)
			uuid_out[o++] = '-';
		uuid_out[o++] = hex[i];
	}
	uuid_out[o] = '\0';
}

static bool
looks_like_uuid(const char *s)
{
	int			digits = 0;

	if (s == NULL)
		return false;
	for (const char *p = s; *p; p++)
	{
		if (isxdigit((unsigned char) *p))
			digits++;
		else if (*p != '-')
			return false;
	}
	return digits == 32 && strlen(s) <= UUID_TEXT_LEN;
}

/* ------------------------------------------------------------ ff_evaluate */

static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr answer_plan = NULL;

/*
 * While it is held, no other ff_evaluate() for the order id, in any
 * session, sends: requests for one order are never in flight together.
 * Taken before the request, released once the answer is written (the
 * order's row is then locked by this transaction until it ends), so that a
 * transaction may record any number of orders with one lock at a time; an
 * error releases it with the (sub)transaction.
 */
static void
order_id_lock(const char *order_id, LOCKTAG *tag)
{
	uint64		h = hash_bytes_extended((const unsigned char *) order_id, strlen(order_id), 0);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, FF_LOCK_ORDER_ID);
}

/* payload's JSON text with the fields FlexFactor needs that it lacks */
static char *
request_body(Jsonb *payload, const char *key, const char *mid)
{
	StringInfoData body;
	JsonbValue	v;

	initStringInfo(&body);
	(void) JsonbToCString(&body, &payload->root, VARSIZE(payload));
	body.data[--body.len] = '\0';	/* drop the closing brace */
	while (body.len > 1 && body.data[body.len - 1] == ' ')
		body.data[--body.len] = '\0';

#define ADD_FIELD(name) \
	appendStringInfo(&body, "%s\"%s\": ", body.len > 1 ? ", " : "", name)

	if (getKeyJsonValueFromContainer(&payload->root, "idempotencyKey", 14, &v) == NULL)
	{
		ADD_FIELD("idempotencyKey");
		escape_json(&body, key);
	}
	if (getKeyJsonValueFromContainer(&payload->root, "isDeclined", 10, &v) == NULL)
	{
		ADD_FIELD("isDeclined");
		appendStringInfoString(&body, "true");
	}
	if (mid != NULL && getKeyJsonValueFromContainer(&payload->root, "mid", 3, &v) == NULL)
	{
		ADD_FIELD("mid");
		escape_json(&body, mid);
	}
	if (ff_site_id[0] != '\0' &&
		getKeyJsonValueFromContainer(&payload->root, "siteId", 6, &v) == NULL &&
		getKeyJsonValueFromContainer(&payload->root, "siteUrl", 7, &v) == NULL)
	{
		ADD_FIELD("siteId");
		escape_json(&body, ff_site_id);
	}
#undef ADD_FIELD
	appendStringInfoChar(&body, '}');
	return body.data;
}

PG_FUNCTION_INFO_V1(ff_evaluate);

Datum
ff_evaluate(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload = PG_GETARG_JSONB_P(0);
	const char *mid;
	char	   *order_id;
	char	   *tx_id;
	char	   *given_key;
	char		key[UUID_TEXT_LEN + 1];
	char	   *body;
	char	   *is_mit;
	char	   *expiry;
	Jsonb	   *answer;
	char	   *session_key;
	char	   *status;
	const char *recording;
	LOCKTAG		lock;
	Oid			types[10] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT8OID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, JSONBOID};
	Datum		values[10];
	char		nulls[10] = "          ";

	ff_check_body(payload, FF_BODY_EVALUATE, "ff_evaluate");
	order_id = ff_body_text(&payload->root, "orderId");
	tx_id = ff_body_text(&payload->root, "transaction.id");
	mid = ff_body_text(&payload->root, "mid");
	if (mid == NULL && ff_mid[0] != '\0')
		mid = ff_mid;

	given_key = ff_body_text(&payload->root, "idempotencyKey");
	if (given_key != NULL)
	{
		if (!looks_like_uuid(given_key))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid idempotencyKey: '%s'", given_key),
					 errdetail("A GUID such as 8f2b6c1e-4d7a-4c1e-9a53-2f0d6e1b7c90 is expected.")));
		strlcpy(key, given_key, sizeof(key));
	}
	else
	{
		const char *parts[3] = {mid, order_id, tx_id};

		ff_attempt_key("evaluate", parts, 3, key);
	}
	body = request_body(payload, key, mid);
	ff_api_require_configured();

	/* what the order is recorded with, read before the request */
	is_mit = ff_body_text(&payload->root, "isMIT");
	values[0] = CStringGetTextDatum(order_id);
	values[1] = CStringGetTextDatum(tx_id);
	values[2] = CStringGetTextDatum(key);
	values[3] = BoolGetDatum(is_mit != NULL && strcmp(is_mit, "true") == 0);
	values[4] = DirectFunctionCall1(numeric_int8,
									DirectFunctionCall3(numeric_in,
														CStringGetDatum(ff_body_text(&payload->root, "transaction.amount")),
														ObjectIdGetDatum(InvalidOid),
														Int32GetDatum(-1)));
	values[5] = CStringGetTextDatum(ff_body_text(&payload->root, "transaction.currency"));
	expiry = ff_body_text(&payload->root, "expiryDateUtc");
	values[6] = expiry ? CStringGetTextDatum(expiry) : (Datum) 0;
	if (expiry == NULL)
		nulls[6] = 'n';

	order_id_lock(order_id, &lock);
	(void) LockAcquire(&lock, ExclusiveLock, false, false);
	answer = ff_api_call("POST", "evaluate", body, FF_API_BEARER);
	session_key = ff_json_get_text(&answer->root, "orderSessionKey");
	status = ff_json_get_text(&answer->root, "status");

	/*
	 * A new order starts at PENDING and takes the answer's status; a known
	 * one (a sync-MIT retry: DECLINED, then APPROVED) moves on by
	 * ff_next_status() and keeps the amount, currency, transaction and kind
	 * (MIT or not) it was first sent with: only the key of this attempt is
	 * stored.  An answer about another FlexFactor order (a repeated CIT
	 * orderId) neither takes its key nor its status.
	 */
	if (looks_like_uuid(session_key))
		values[7] = CStringGetTextDatum(session_key);
	else
		nulls[7] = 'n';
	if (status != NULL)
		values[8] = CStringGetTextDatum(status);
	else
		nulls[8] = 'n';
	values[9] = JsonbPGetDatum(answer);

	recording = ff_order_events_recording(order_id);
	PG_TRY();
	{
		/*
		 * The function runs as the extension owner (SECURITY DEFINER) with
		 * SET search_path = pg_catalog, pg_temp (sql/install/05_api.sql):
		 * the statement names flexfactor's objects explicitly and finds the
		 * rest in pg_catalog, and the functions it reaches keep their own
		 * SET search_path.
		 */
		SPI_connect();
		if (SPI_execute_plan(ff_saved_plan(&record_plan,
										   "INSERT INTO flexfactor.orders"
										   "       (order_id, transaction_id, idempotency_key, source, is_mit,"
										   "        amount_cents, currency, expiry_date_utc, order_session_key,"
										   "        status, last_response)"
										   " VALUES ($1, $2, $3::uuid, 'api', $4, $5, upper($6), $7::timestamptz,"
										   "         $8::uuid,"
										   /* ff_next_status('PENDING', s): s when it is a state we know */
										   "         CASE WHEN flexfactor.ff_status_rank(upper($9)) > 0"
										   "              THEN upper($9) ELSE 'PENDING' END, $10)"
										   " ON CONFLICT (order_id) DO NOTHING",
										   10, types),
							 values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record the order");
		/* an order sent before (this lock keeps it from going away) */
		if (SPI_processed == 0 &&
			SPI_execute_plan(ff_saved_plan(&answer_plan,
										   "UPDATE flexfactor.orders AS o"
										   "   SET idempotency_key = $3::uuid,"
										   "       expiry_date_utc = coalesce(o.expiry_date_utc, $7::timestamptz),"
										   "       order_session_key = coalesce(o.order_session_key, $8::uuid),"
										   "       status = CASE WHEN $8::uuid IS DISTINCT FROM o.order_session_key"
										   "                      AND o.order_session_key IS NOT NULL AND $8 IS NOT NULL"
										   "                     THEN o.status"
										   "                     ELSE flexfactor.ff_next_status(o.status, upper($9)) END,"
										   "       last_response = $10"
										   " WHERE o.order_id = $1",
										   10, types),
							 values, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not store FlexFactor's answer");
		SPI_finish();
	}
	PG_FINALLY();
	{
		(void) ff_order_events_recording(recording);
	}
	PG_END_TRY();
	LockRelease(&lock, ExclusiveLock, false);

	PG_RETURN_JSONB_P(answer);
}
