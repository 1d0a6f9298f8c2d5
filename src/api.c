/*
 * api.c
 *		Calls the FlexFactor REST API and turns its answers into results or
 *		errors with specific SQLSTATEs.
 *
 * Owns: the bearer-token retry (one retry after a 401 with a fresh token),
 * the mapping of HTTP statuses to SQLSTATEs (errors.h), the reading of
 * FlexFactor's error bodies in both shapes (ProblemDetails with "errors",
 * and the flat 2024 map), tolerant JSON lookups (keys matched without regard
 * to case, unknown fields ignored), and the SQL entry points _api_call(),
 * _api_call_answer() (a refusal sent with a 4xx status comes back with its
 * body) and ff_tokenize().
 *
 * Messages name a request by method and path only, never the URL (its query
 * may hold the tokenization key), and card-number-like digit runs in remote
 * messages are masked.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "api.h"
#include "compat.h"
#include "errors.h"
#include "scrub.h"
#include "http.h"
#include "settings.h"
#include "token.h"

#define MAX_DETAIL_LEN	1000

/* ------------------------------------------------------------ JSON lookups */

/* Top-level key of an object, matched exactly first, then without case. */
JsonbValue *
ff_json_get(JsonbContainer *container, const char *key, JsonbValue *out)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	bool		want_value = false;

	if (container == NULL || !JsonContainerIsObject(container))
		return NULL;
	if (getKeyJsonValueFromContainer(container, key, strlen(key), out) != NULL)
		return out;

	it = JsonbIteratorInit(container);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			want_value = (v.val.string.len == (int) strlen(key) &&
						  pg_strncasecmp(v.val.string.val, key, v.val.string.len) == 0);
		else if (tok == WJB_VALUE && want_value)
		{
			*out = v;
			return out;
		}
	}
	return NULL;
}

/* A scalar JSON value as text (strings unquoted), or NULL for others. */
char *
ff_json_scalar_text(const JsonbValue *v)
{
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	return NULL;
}

char *
ff_json_get_text(JsonbContainer *container, const char *key)
{
	JsonbValue	v;

	return ff_json_get(container, key, &v) ? ff_json_scalar_text(&v) : NULL;
}

/* ------------------------------------------------------------ error bodies */

/* Remote text, scrubbed of card numbers, secrets and invalid bytes (scrub.c). */
static void
append_redacted(StringInfo out, const char *text, int len)
{
	appendStringInfoString(out, ff_scrub_remote_text(text, len));
}

/* "field: message; message" for each key of an object of message arrays. */
static void
describe_field_map(StringInfo out, JsonbContainer *map)
{
	JsonbIterator *it = JsonbIteratorInit(map);
	JsonbIteratorToken tok;
	JsonbValue	v;
	int			depth = 0;
	bool		skip = false;
	bool		first_message = true;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
			depth++;
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			depth--;
		else if (tok == WJB_KEY && depth == 1)
		{
			skip = (v.val.string.len == 7 &&
					pg_strncasecmp(v.val.string.val, "traceId", 7) == 0);
			if (!skip)
			{
				if (out->len > 0)
					appendStringInfoString(out, "; ");
				append_redacted(out, v.val.string.val, v.val.string.len);
				appendStringInfoString(out, ":");
				first_message = true;
			}
		}
		else if ((tok == WJB_ELEM || tok == WJB_VALUE) && !skip && v.type == jbvString)
		{
			appendStringInfoString(out, first_message ? " " : ", ");
			append_redacted(out, v.val.string.val, v.val.string.len);
			first_message = false;
		}
	}
}

/* "message; message" for an array of the envelope's business errors (C# tuples, item1 the message) */
static void
describe_error_tuples(StringInfo out, JsonbContainer *errors)
{
	JsonbIterator *it = JsonbIteratorInit(errors);
	JsonbIteratorToken tok;
	JsonbValue	v;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue	message;
		bool		found = false;

		if (tok != WJB_ELEM)
			continue;
		if (v.type == jbvString)
		{
			message = v;
			found = true;
		}
		else if (v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
			found = ff_json_get(v.val.binary.data, "item1", &message) != NULL &&
				message.type == jbvString;
		if (!found)
			continue;
		if (out->len > 0)
			appendStringInfoString(out, "; ");
		append_redacted(out, message.val.string.val, message.val.string.len);
	}
}

/*
 * The JSON text as jsonb, or NULL when it is empty, not valid JSON, or not
 * valid in the database encoding.
 */
Jsonb *
ff_json_parse_or_null(const char *text, int len)
{
	JsonLexContext *lex;

	if (len == 0)
		return NULL;
	/* bytes from the network: never let invalid text into the database */
	if (!pg_verifymbstr(text, len, true))
		return NULL;
	lex = ff_make_json_lex(unconstify(char *, text), len, GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(text, len))));
}

/*
 * FlexFactor's error messages from an error body: field errors in either
 * shape, the envelope's business errors (tuples), else title or
 * responseMessage.  NULL when there is none.
 */
char *
ff_api_describe_errors(const char *body)
{
	Jsonb	   *jb = ff_json_parse_or_null(body, strlen(body));
	StringInfoData out;
	JsonbValue	v;
	char	   *text;

	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		return NULL;
	initStringInfo(&out);
	if (ff_json_get(&jb->root, "errors", &v) != NULL && v.type == jbvBinary &&
		JsonContainerIsObject(v.val.binary.data))
		describe_field_map(&out, v.val.binary.data);	/* ProblemDetails */
	else if (ff_json_get(&jb->root, "errors", &v) != NULL && v.type == jbvBinary &&
			 JsonContainerIsArray(v.val.binary.data))
		describe_error_tuples(&out, v.val.binary.data);	/* the envelope (§3) */
	else if (ff_json_get(&jb->root, "title", &v) == NULL &&
			 ff_json_get(&jb->root, "responseMessage", &v) == NULL &&
			 ff_json_get(&jb->root, "success", &v) == NULL)
		describe_field_map(&out, &jb->root);	/* the flat 2024 shape */

	if (out.len == 0)
	{
		if ((text = ff_json_get_text(&jb->root, "responseMessage")) != NULL ||
			(text = ff_json_get_text(&jb->root, "title")) != NULL)
			append_redacted(&out, text, strlen(text));
	}
	if (out.len == 0)
		return NULL;
	if (out.len > MAX_DETAIL_LEN)
	{
		out.len = pg_mbcliplen(out.data, out.len, MAX_DETAIL_LEN);
		out.data[out.len] = '\0';
		appendStringInfoString(&out, "...");
	}
	return out.data;
}

/* ----------------------------------------------------------------- answers */

Jsonb *
ff_api_parse_json(const FFHttpRequest *req, const char *what)
{
	Jsonb	   *jb;

	if (req->response.len == 0)
		return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	jb = ff_json_parse_or_null(req->response.data, req->response.len);
	if (jb == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_MALFORMED_RESPONSE),
				 errmsg("FlexFactor's answer to %s is not valid JSON", what),
				 errdetail("HTTP %ld with %d bytes that do not parse as JSON.",
						   req->status, req->response.len),
				 errhint("This is a FlexFactor-side problem; retry later, and contact FlexFactor if it persists.")));
	return jb;
}

void
ff_api_raise_status_error(const FFHttpRequest *req, const char *what)
{
	char	   *remote = ff_api_describe_errors(req->response.data);
	const char *remote_detail = remote ? remote : "no error message";
	long		status = req->status;

	if (status == 400 || status == 422)
		ereport(ERROR,
				(errcode(ERRCODE_FF_VALIDATION),
				 errmsg("FlexFactor rejected %s as invalid", what),
				 errdetail("HTTP %ld: %s", status, remote_detail),
				 errhint("Correct the fields named above; see the FlexFactor API reference.")));
	if (status == 401)
		ereport(ERROR,
				(errcode(ERRCODE_FF_BAD_CREDENTIALS),
				 errmsg("FlexFactor refused the bearer token for %s", what),
				 errdetail("HTTP 401 even with a freshly issued token."),
				 errhint("Check that flexfactor.app_key, flexfactor.app_secret and flexfactor.api_url "
						 "belong to the same FlexFactor environment.")));
	if (status == 403)
		ereport(ERROR,
				(errcode(ERRCODE_FF_FORBIDDEN),
				 errmsg("FlexFactor forbade %s", what),
				 errdetail("HTTP 403: %s", remote_detail),
				 errhint("Check that flexfactor.mid matches the API credentials.")));
	if (status == 404)
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_FOUND),
				 errmsg("FlexFactor does not know the object of %s", what),
				 errdetail("HTTP 404: %s", remote_detail),
				 errhint("Check the order id (the orderSessionKey returned by ff_evaluate).")));
	if (status == 409)
		ereport(ERROR,
				(errcode(ERRCODE_FF_IDEMPOTENCY_CONFLICT),
				 errmsg("FlexFactor reports an idempotency conflict for %s", what),
				 errdetail("HTTP 409: %s", remote_detail),
				 errhint("The idempotency key was used with a different request, the same request is still "
						 "in progress, or the order's state does not allow this call.")));
	if (status == 429)
		ereport(ERROR,
				(errcode(ERRCODE_FF_RATE_LIMITED),
				 errmsg("FlexFactor is rate limiting %s", what),
				 errdetail("HTTP 429%s%s.", req->retry_after[0] ? ", Retry-After: " : "",
						   ff_scrub_remote_text(req->retry_after, strlen(req->retry_after))),
				 errhint("Retry later; the same call reuses its idempotency key.")));
	if (status >= 500)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SERVER_ERROR),
				 errmsg("FlexFactor failed to process %s", what),
				 errdetail("HTTP %ld: %s", status, remote_detail),
				 errhint("Retry later with backoff; the same call reuses its idempotency key.")));
	ereport(ERROR,
			(errcode(ERRCODE_FF_SERVER_ERROR),
			 errmsg("FlexFactor answered %s with an unexpected status", what),
			 errdetail("HTTP %ld: %s", status, remote_detail)));
}

char *
ff_api_endpoint(const char *path)
{
	return psprintf("%s%s", ff_api_url, path);
}

/* "POST /orders/<id>/refund": the path without its query string */
static char *
describe_request(const char *method, const char *path)
{
	const char *query = strchr(path, '?');

	return psprintf("%s /%.*s", method, query ? (int) (query - path) : (int) strlen(path), path);
}

/* a JSON object with "success" or "responseCode": FlexFactor's business envelope */
static bool
is_business_answer(const FFHttpRequest *req)
{
	Jsonb	   *jb = ff_json_parse_or_null(req->response.data, req->response.len);
	JsonbValue	v;

	return jb != NULL && JB_ROOT_IS_OBJECT(jb) &&
		(ff_json_get(&jb->root, "success", &v) != NULL ||
		 ff_json_get(&jb->root, "responseCode", &v) != NULL);
}

/*
 * Perform one API call and return its JSON answer, and its HTTP status in
 * *status_out when given.  With a token, a 401 fetches a new token and
 * retries once.  Every failure raises an error, except a status listed in
 * answer_statuses whose body is FlexFactor's business envelope: a refusal
 * (refund 2001 ...) that the caller reads itself, responseCode included.
 */
Jsonb *
ff_api_call_answer(const char *method, const char *path, const char *body, int flags,
				   const int *answer_statuses, int n_answer_statuses, long *status_out)
{
	bool		with_token = (flags & FF_API_BEARER) != 0;
	char	   *what = describe_request(method, path);
	FFHttpRequest req = {0};
	uint64		generation = 0;

	req.method = method;
	req.url = ff_api_endpoint(path);
	req.body = body;
	req.fresh_connection = (flags & FF_API_NOT_IDEMPOTENT) != 0;
	for (int attempt = 0; attempt < 2; attempt++)
	{
		req.bearer = with_token ? ff_token_get(&generation) : NULL;
		ff_http_perform(&req, 1, 1);
		if (req.curl_code != CURLE_OK)
			ff_http_raise_transport_error(&req, what);
		if (req.status != 401 || !with_token)
			break;
		ff_token_invalidate(generation);
	}
	if (req.status < 200 || req.status > 299)
	{
		bool		answered = false;

		for (int i = 0; i < n_answer_statuses && !answered; i++)
			answered = (req.status == answer_statuses[i]);
		if (!answered || !is_business_answer(&req))
			ff_api_raise_status_error(&req, what);
	}
	if (status_out != NULL)
		*status_out = req.status;
	/* kept and shown as it came, less what must never be stored (scrub.c) */
	return ff_jsonb_scrub_remote(ff_api_parse_json(&req, what));
}

/*
 * Perform one API call and return its JSON answer; every failure raises an
 * error.  With a token, a 401 fetches a new token and retries once.
 */
Jsonb *
ff_api_call(const char *method, const char *path, const char *body, int flags)
{
	return ff_api_call_answer(method, path, body, flags, NULL, 0, NULL);
}

/* ------------------------------------------------------------ SQL entries */

void
ff_api_require_configured(void)
{
	if (ff_mid[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("flexfactor.mid is not set"),
				 errhint("Set flexfactor.mid to your FlexFactor merchant id (a GUID).")));
}

/*
 * _api_call(method, path, body): the one internal door to the API for the
 * SQL-level functions (ff_evaluate, ff_order, ...).  Not granted to anyone;
 * those functions run as the extension owner.
 */
PG_FUNCTION_INFO_V1(ff_api_call_sql);

/*
 * The method, path and body of an _api_call*() call (arguments 0-2): a GET
 * or POST of a relative path inside the API, with an optional JSON body.
 */
static void
sql_call_request(FunctionCallInfo fcinfo, char **method, char **path, char **body)
{
	*method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	*path = text_to_cstring(PG_GETARG_TEXT_PP(1));
	*body = NULL;
	if (strcmp(*method, "GET") != 0 && strcmp(*method, "POST") != 0)
		elog(ERROR, "unsupported HTTP method \"%s\"", *method);
	if ((*path)[0] == '/' || strstr(*path, "..") != NULL)
		elog(ERROR, "invalid API path");
	if (!PG_ARGISNULL(2))
	{
		Jsonb	   *jb = PG_GETARG_JSONB_P(2);

		*body = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	}
}

Datum
ff_api_call_sql(PG_FUNCTION_ARGS)
{
	char	   *method;
	char	   *path;
	char	   *body;

	sql_call_request(fcinfo, &method, &path, &body);
	ff_api_require_configured();
	PG_RETURN_JSONB_P(ff_api_call(method, path, body, FF_API_BEARER));
}

/*
 * _api_call_answer(method, path, body, answer_statuses, OUT http_status,
 * OUT answer): _api_call() for the calls whose refusals FlexFactor may send
 * with a 4xx status (refund, capture): those statuses, with a business
 * answer, come back to the caller with the answer instead of raising.
 * Granted to nobody, like _api_call().
 */
PG_FUNCTION_INFO_V1(ff_api_call_answer_sql);

Datum
ff_api_call_answer_sql(PG_FUNCTION_ARGS)
{
	char	   *method;
	char	   *path;
	char	   *body;
	int		   *statuses = NULL;
	int			n_statuses = 0;
	long		status = 0;
	Jsonb	   *answer;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	sql_call_request(fcinfo, &method, &path, &body);
	if (!PG_ARGISNULL(3))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(3);
		Datum	   *elems;
		bool	   *elem_nulls;

		deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT,
						  &elems, &elem_nulls, &n_statuses);
		statuses = palloc(sizeof(int) * Max(n_statuses, 1));
		for (int i = 0; i < n_statuses; i++)
		{
			statuses[i] = elem_nulls[i] ? 0 : DatumGetInt32(elems[i]);
			if (statuses[i] < 400 || statuses[i] > 499 || statuses[i] == 401)
				elog(ERROR, "only 4xx statuses other than 401 can be answered, not %d", statuses[i]);
		}
	}
	ff_api_require_configured();
	answer = ff_api_call_answer(method, path, body, FF_API_BEARER, statuses, n_statuses, &status);
	values[0] = Int32GetDatum((int32) status);
	values[1] = JsonbPGetDatum(answer);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

static char *
url_escape(const char *value)
{
	char	   *escaped = curl_easy_escape(NULL, value, 0);
	char	   *copy;

	if (escaped == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	copy = pstrdup(escaped);
	curl_free(escaped);
	return copy;
}

/*
 * ff_tokenize(card jsonb) returns text: vaults a card with /tokenize and
 * returns the token.  The card is never stored, and neither it nor the
 * tokenization key reaches a message.
 */
PG_FUNCTION_INFO_V1(ff_tokenize);

Datum
ff_tokenize(PG_FUNCTION_ARGS)
{
	Jsonb	   *card = PG_GETARG_JSONB_P(0);
	JsonbValue	pm;
	JsonbValue	tx;
	char	   *body;
	char	   *path;
	Jsonb	   *answer;
	char	   *token = NULL;

	if (!JB_ROOT_IS_OBJECT(card) || ff_json_get(&card->root, "payment_method", &pm) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ff_tokenize() expects the /tokenize request body"),
				 errdetail("The argument has no \"payment_method\" object."),
				 errhint("Pass {\"payment_method\": {\"credit_card\": {\"first_name\": ..., \"last_name\": ..., "
						 "\"number\": ..., \"month\": ..., \"year\": ...}}}.")));
	ff_api_require_configured();
	if (ff_tokenization_key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("flexfactor.tokenization_key is not set"),
				 errhint("Set it from the Developers page of the FlexFactor portal.")));

	body = JsonbToCString(NULL, &card->root, VARSIZE(card));
	path = psprintf("tokenize?mid=%s&environment=%s", url_escape(ff_mid),
					url_escape(ff_tokenization_key));
	answer = ff_api_call("POST", path, body, FF_API_NOT_IDEMPOTENT);
	explicit_bzero(body, strlen(body));
	explicit_bzero(path, strlen(path));

	if (ff_json_get(&answer->root, "transaction", &tx) != NULL && tx.type == jbvBinary &&
		ff_json_get(tx.val.binary.data, "payment_method", &pm) != NULL && pm.type == jbvBinary)
		token = ff_json_get_text(pm.val.binary.data, "token");
	if (token == NULL || token[0] == '\0')
	{
		char	   *remote = ff_api_describe_errors(JsonbToCString(NULL, &answer->root, VARSIZE(answer)));

		ereport(ERROR,
				(errcode(ERRCODE_FF_REQUEST_FAILED),
				 errmsg("FlexFactor did not return a card token"),
				 errdetail("POST /tokenize succeeded without transaction.payment_method.token%s%s.",
						   remote ? ": " : "", remote ? remote : ""),
				 errhint("Check the card fields (name, number, month, year).")));
	}
	PG_RETURN_TEXT_P(cstring_to_text(token));
}
