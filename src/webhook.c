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
#include "webhook.h"
#include "webhook_verify.h"

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
 */
char *
ff_webhook_receive(const FFWebhookHeaders *headers, const char *body, size_t body_len,
				   const char *received_via)
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
														VARSIZE_ANY_EXHDR(body), "sql")));
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
