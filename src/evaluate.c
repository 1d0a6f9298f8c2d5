/*
 * evaluate.c
 *		ff_evaluate(): sends a declined transaction to /evaluate and keeps
 *		the order book in step.
 *
 * Written in C, with saved plans, because it is the call billing code makes
 * in loops: the order row is recorded (with its idempotency key) before the
 * request and updated with FlexFactor's answer after it, and nothing else is
 * done per call.  The body is checked by body_check.c first.  Also owns
 * the derivation of idempotency keys, which must match the SQL function
 * ff_attempt_key() byte for byte.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/md5.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "api.h"
#include "body_check.h"
#include "errors.h"
#include "evaluate.h"
#include "settings.h"

#define UUID_TEXT_LEN	36

/* ---------------------------------------------------------- body fields */

/* exact key: the body is checked as it will be sent, like the SQL side does */
static char *
scalar_text(JsonbContainer *container, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(container, key, strlen(key), &v) == NULL)
		return NULL;
	return ff_json_scalar_text(&v);
}

static JsonbContainer *
object_member(JsonbContainer *container, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(container, key, strlen(key), &v) == NULL ||
		v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		return NULL;
	return v.val.binary.data;
}

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

static SPIPlanPtr
saved_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL || SPI_keepplan(p) != 0)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		*plan = p;
	}
	return *plan;
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
	MemoryContext caller_cxt = CurrentMemoryContext;
	MemoryContext spi_cxt;
	JsonbContainer *tx;
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
	int64		row_id;
	bool		isnull;
	Oid			record_types[7] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT8OID, TEXTOID, TEXTOID};
	Datum		record_values[7];
	char		record_nulls[7] = "       ";
	Oid			answer_types[4] = {INT8OID, TEXTOID, TEXTOID, JSONBOID};
	Datum		answer_values[4];
	char		answer_nulls[4] = "    ";

	ff_check_body(payload, FF_BODY_EVALUATE, "ff_evaluate");
	tx = object_member(&payload->root, "transaction");
	order_id = scalar_text(&payload->root, "orderId");
	tx_id = scalar_text(tx, "id");
	mid = scalar_text(&payload->root, "mid");
	if (mid == NULL && ff_mid[0] != '\0')
		mid = ff_mid;

	given_key = scalar_text(&payload->root, "idempotencyKey");
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

	/*
	 * The function runs as the extension owner (SECURITY DEFINER) with SET
	 * search_path = pg_catalog, pg_temp (sql/install/05_api.sql): its queries name
	 * flexfactor's objects explicitly and find the rest in pg_catalog, and the
	 * functions they reach keep their own SET search_path.
	 */
	SPI_connect();
	spi_cxt = CurrentMemoryContext;

	/*
	 * Recorded before sending; never moves the order's state back.  Sent
	 * again for the same orderId (a sync-MIT retry), the order keeps the
	 * amount, currency, transaction and kind (MIT or not) it was first sent
	 * with: only the key of this attempt is stored.
	 */
	is_mit = scalar_text(&payload->root, "isMIT");
	record_values[0] = CStringGetTextDatum(order_id);
	record_values[1] = CStringGetTextDatum(tx_id);
	record_values[2] = CStringGetTextDatum(key);
	record_values[3] = BoolGetDatum(is_mit != NULL && strcmp(is_mit, "true") == 0);
	record_values[4] = DirectFunctionCall1(numeric_int8,
										   DirectFunctionCall3(numeric_in,
															   CStringGetDatum(scalar_text(tx, "amount")),
															   ObjectIdGetDatum(InvalidOid),
															   Int32GetDatum(-1)));
	record_values[5] = CStringGetTextDatum(scalar_text(tx, "currency"));
	expiry = scalar_text(&payload->root, "expiryDateUtc");
	record_values[6] = expiry ? CStringGetTextDatum(expiry) : (Datum) 0;
	if (expiry == NULL)
		record_nulls[6] = 'n';
	if (SPI_execute_plan(saved_plan(&record_plan,
									"INSERT INTO flexfactor.orders AS o"
									"       (order_id, transaction_id, idempotency_key, source, is_mit,"
									"        amount_cents, currency, expiry_date_utc)"
									" VALUES ($1, $2, $3::uuid, 'api', $4, $5, upper($6), $7::timestamptz)"
									" ON CONFLICT (order_id) DO UPDATE"
									"    SET idempotency_key = EXCLUDED.idempotency_key,"
									"        expiry_date_utc = coalesce(o.expiry_date_utc, EXCLUDED.expiry_date_utc)"
									" RETURNING id",
									7, record_types),
						 record_values, record_nulls, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record the order");
	row_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	/* the answer must outlive SPI_finish(): allocate it in the caller's context */
	MemoryContextSwitchTo(caller_cxt);
	answer = ff_api_call("POST", "evaluate", body, FF_API_BEARER);
	session_key = ff_json_get_text(&answer->root, "orderSessionKey");
	status = ff_json_get_text(&answer->root, "status");
	MemoryContextSwitchTo(spi_cxt);

	/*
	 * A later answer for the same order (sync MIT: DECLINED, then APPROVED)
	 * moves it on by ff_next_status(); an answer about another FlexFactor
	 * order (a repeated CIT orderId) neither takes its key nor its status.
	 */
	answer_values[0] = Int64GetDatum(row_id);
	if (looks_like_uuid(session_key))
		answer_values[1] = CStringGetTextDatum(session_key);
	else
		answer_nulls[1] = 'n';
	if (status != NULL)
		answer_values[2] = CStringGetTextDatum(status);
	else
		answer_nulls[2] = 'n';
	answer_values[3] = JsonbPGetDatum(answer);
	if (SPI_execute_plan(saved_plan(&answer_plan,
									"UPDATE flexfactor.orders"
									"   SET order_session_key = coalesce(order_session_key, $2::uuid),"
									"       status = CASE WHEN $2::uuid IS DISTINCT FROM order_session_key"
									"                      AND order_session_key IS NOT NULL AND $2 IS NOT NULL"
									"                     THEN status"
									"                     ELSE flexfactor.ff_next_status(status, upper($3)) END,"
									"       last_response = $4"
									" WHERE id = $1",
									4, answer_types),
						 answer_values, answer_nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not store FlexFactor's answer");

	SPI_finish();
	PG_RETURN_JSONB_P(answer);
}
