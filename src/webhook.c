/*
 * webhook.c
 *		Turns one webhook delivery into a stored, applied event.
 *
 * ff_webhook_receive() verifies the delivery (webhook_verify.c), reads the
 * PascalCase body (keys matched without regard to case), and stores and
 * applies it through flexfactor._record_webhook_event() in SQL, in the
 * caller's transaction; a replayed nonce is refused there.  Every refusal is
 * an error with its own SQLSTATE, which the listener maps to an HTTP status
 * (401 for authenticity, 400 for a malformed body).
 *
 * SQL entry points: ff_ingest_webhook(headers, body), for merchants running
 * their own receiver, and ff_webhook_check(headers, body, at), which only
 * says whether a delivery would pass the checks.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "api.h"
#include "errors.h"
#include "scrub.h"
#include "webhook.h"
#include "webhook_verify.h"

#define MAX_JSON_DEPTH	64

/* SELECT flexfactor._record_webhook_event(...), kept for the life of the process */
static SPIPlanPtr record_plan = NULL;

static void
raise_verdict(FFWebhookVerdict verdict, const char *reason)
{
	switch (verdict)
	{
		case FF_WEBHOOK_OK:
			return;
		case FF_WEBHOOK_NOT_CONFIGURED:
			ereport(ERROR,
					(errcode(ERRCODE_FF_NOT_CONFIGURED),
					 errmsg("webhook deliveries cannot be verified"),
					 errdetail("%s.", reason),
					 errhint("Set flexfactor.webhook_key to the subscriber key from the FlexFactor portal.")));
			break;
		case FF_WEBHOOK_STALE_DATE:
			ereport(ERROR,
					(errcode(ERRCODE_FF_WEBHOOK_STALE),
					 errmsg("webhook delivery refused: stale or invalid date"),
					 errdetail("%s.", reason),
					 errhint("Check the server clock; flexfactor.webhook_max_skew bounds the accepted difference.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_FF_WEBHOOK_SIGNATURE),
					 errmsg("webhook delivery refused: not signed by FlexFactor"),
					 errdetail("%s.", reason),
					 errhint("Check flexfactor.webhook_key (and webhook_key_previous during a rotation), "
							 "and that a proxy in front passes the body and the Host header unchanged.")));
	}
}

/*
 * Refuse a body nested deeper than MAX_JSON_DEPTH before parsing it: the
 * parser recurses once per level, and a signed body of 20,000 levels would
 * otherwise fail with "stack depth limit exceeded" on every retry.  Strings
 * are skipped, escapes included.
 */
static void
check_nesting(const char *body, size_t len)
{
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		c = body[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > MAX_JSON_DEPTH)
				ereport(ERROR,
						(errcode(ERRCODE_FF_WEBHOOK_MALFORMED),
						 errmsg("webhook delivery refused: the body is nested deeper than %d levels",
								MAX_JSON_DEPTH),
						 errdetail("FlexFactor webhooks are a few levels deep; this one can never be stored.")));
		}
		else if (c == '}' || c == ']')
			depth--;
	}
}

static char *
required_text(JsonbContainer *body, const char *key)
{
	char	   *value = ff_json_get_text(body, key);

	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_WEBHOOK_MALFORMED),
				 errmsg("webhook delivery refused: the body has no \"%s\"", key),
				 errdetail("FlexFactor webhooks carry Event, OrderId (null for payout events), ExternalOrderId, "
						   "ConfirmationId, TimeStamp, EventData, IsTestMode and IsResent.")));
	return value;
}

/*
 * Verify, store and apply one delivery; returns what became of the event
 * ("applied", "duplicate", "waiting_order", "ignored" or "not_applicable").
 * *authentic (when not NULL) is set once the signature and date were found
 * good: a later error is then about the content of a genuine delivery.
 */
char *
ff_webhook_receive(const FFWebhookHeaders *headers, const char *body, size_t body_len,
				   const char *received_via, bool *authentic)
{
	const char *reason = NULL;
	FFWebhookVerdict verdict;
	Jsonb	   *json;
	JsonbValue	data;
	char	   *event;
	char	   *order_key;
	char	   *is_resent;
	Oid			types[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BOOLOID,
	TEXTOID, TEXTOID, TEXTOID};
	Datum		values[10];
	char		nulls[10] = "          ";
	char	   *result;
	MemoryContext caller_cxt;

	verdict = ff_webhook_verify(headers, body, body_len, GetCurrentTimestamp(), &reason);

	raise_verdict(verdict, reason);
	if (authentic != NULL)
		*authentic = true;

	check_nesting(body, body_len);
	json = ff_json_parse_or_null(body, body_len);
	if (json == NULL || !JB_ROOT_IS_OBJECT(json))
		ereport(ERROR,
				(errcode(ERRCODE_FF_WEBHOOK_MALFORMED),
				 errmsg("webhook delivery refused: the body is not a JSON object"),
				 errdetail("%zu bytes that do not parse as a JSON object.", body_len)));
	event = required_text(&json->root, "Event");

	/*
	 * An event without an order (payout.created, payout.updated, or any with
	 * OrderId absent, null or empty) is stored as not applicable and
	 * acknowledged: refusing it would make FlexFactor retry it for good.
	 */
	order_key = ff_json_get_text(&json->root, "OrderId");
	is_resent = ff_json_get_text(&json->root, "IsResent");

	values[0] = CStringGetTextDatum(event);
	if (order_key != NULL && order_key[0] != '\0')
		values[1] = CStringGetTextDatum(order_key);
	else
		nulls[1] = 'n';
#define OPTIONAL_TEXT(i, key) \
	do { char *v_ = ff_json_get_text(&json->root, key); \
		 if (v_) values[i] = CStringGetTextDatum(v_); else nulls[i] = 'n'; } while (0)
	OPTIONAL_TEXT(2, "ExternalOrderId");
	OPTIONAL_TEXT(3, "ConfirmationId");
	OPTIONAL_TEXT(4, "TimeStamp");
#undef OPTIONAL_TEXT
	if (ff_json_get(&json->root, "EventData", &data) != NULL && data.type != jbvNull)
		values[5] = JsonbPGetDatum(JsonbValueToJsonb(&data));
	else
		nulls[5] = 'n';
	values[6] = BoolGetDatum(is_resent != NULL && strcmp(is_resent, "true") == 0);
	values[7] = CStringGetTextDatum(headers->nonce);
	values[8] = PointerGetDatum(cstring_to_text_with_len(body, body_len));
	values[9] = CStringGetTextDatum(received_via);

	caller_cxt = CurrentMemoryContext;
	SPI_connect();
	if (record_plan == NULL)
	{
		/* planned once per process; the plan cache replans it after DDL */
		SPIPlanPtr	plan = SPI_prepare("SELECT flexfactor._record_webhook_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
									   10, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the webhook event's storage: %s",
				 SPI_result_code_string(SPI_result));
		record_plan = plan;
	}
	if (SPI_execute_plan(record_plan, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not record the webhook event");
	result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	result = MemoryContextStrdup(caller_cxt, result ? result : "ignored");
	SPI_finish();
	return result;
}

/*
 * Whether an error met while storing or applying an authentic delivery comes
 * from the delivery itself, so that it would fail the same way on every
 * retry: a value out of range or of the wrong form (class 22), a program
 * limit (54: too complex, too deep), an integrity constraint other than a
 * unique one (a unique violation can be a race with a concurrent delivery).
 * Everything else (the database unavailable, read-only, out of resources, a
 * serialization failure, a lock, a missing setting or object) may pass.
 */
bool
ff_webhook_error_is_permanent(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_PROGRAM_LIMIT_EXCEEDED ||
		(category == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION &&
		 sqlerrcode != ERRCODE_UNIQUE_VIOLATION);
}

/*
 * Store an authentic delivery that can never be applied (see
 * ff_webhook_error_is_permanent) as 'rejected', with the reason, so that it
 * can be acknowledged instead of retried for good.  Its nonce is kept: a
 * replay of it is refused as any other.
 */
void
ff_webhook_store_rejected(const FFWebhookHeaders *headers, const char *body, size_t body_len,
						  const char *received_via, const char *reason)
{
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = "    ";

	if (headers->nonce != NULL)
		values[0] = CStringGetTextDatum(headers->nonce);
	else
		nulls[0] = 'n';
	values[1] = PointerGetDatum(cstring_to_text_with_len(body, body_len));
	values[2] = CStringGetTextDatum(received_via);
	values[3] = CStringGetTextDatum(ff_scrub_remote_text(reason, strlen(reason)));
	SPI_connect();
	if (SPI_execute_with_args("SELECT flexfactor._record_rejected_webhook_event($1, $2, $3, $4)",
							  4, types, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not record the rejected webhook event");
	SPI_finish();
}

/* headers jsonb (names in any case) to the fields verification needs */
static void
headers_from_jsonb(Jsonb *headers, FFWebhookHeaders *h)
{
	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the headers must be a JSON object of header names and values"),
				 errhint("For example {\"host\": \"billing.example.com\", \"x-fc-nonce\": \"...\", ...}.")));
	h->nonce = ff_json_get_text(&headers->root, "x-fc-nonce");
	h->date = ff_json_get_text(&headers->root, "x-fc-date");
	h->host = ff_json_get_text(&headers->root, "host");
	h->content_sha512 = ff_json_get_text(&headers->root, "x-fc-content-sha512");
	h->authorization = ff_json_get_text(&headers->root, "x-fc-authorization");
	h->signature = ff_json_get_text(&headers->root, "x-fc-signature");
}

PG_FUNCTION_INFO_V1(ff_ingest_webhook);

/* ff_ingest_webhook(headers jsonb, body text) returns text */
Datum
ff_ingest_webhook(PG_FUNCTION_ARGS)
{
	FFWebhookHeaders h;
	text	   *body = PG_GETARG_TEXT_PP(1);

	headers_from_jsonb(PG_GETARG_JSONB_P(0), &h);
	PG_RETURN_TEXT_P(cstring_to_text(ff_webhook_receive(&h, VARDATA_ANY(body),
														VARSIZE_ANY_EXHDR(body), "sql", NULL)));
}

PG_FUNCTION_INFO_V1(ff_webhook_check);

/* ff_webhook_check(headers jsonb, body text, at timestamptz) returns text */
Datum
ff_webhook_check(PG_FUNCTION_ARGS)
{
	FFWebhookHeaders h;
	text	   *body = PG_GETARG_TEXT_PP(1);
	const char *reason = NULL;

	headers_from_jsonb(PG_GETARG_JSONB_P(0), &h);
	if (ff_webhook_verify(&h, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
						  PG_GETARG_TIMESTAMPTZ(2), &reason) == FF_WEBHOOK_OK)
		PG_RETURN_TEXT_P(cstring_to_text("ok"));
	PG_RETURN_TEXT_P(cstring_to_text(reason));
}
