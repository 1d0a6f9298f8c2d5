/*
 * token.c
 *		One FlexFactor bearer token for the whole cluster.
 *
 * The token lives in shared memory.  The first backend that needs one while
 * there is none (or it has less than 30 s left) fetches it from
 * /oauth2/token; backends that need one meanwhile wait on a condition
 * variable (interruptibly) instead of sending their own request, so N calls
 * from M backends cause one token request per token lifetime.  After a 401
 * the caller invalidates the generation it used, and the next caller fetches
 * anew.  ff_token_status() shows the cache.
 *
 * A token is only ever sent to the API it came from, with the credentials
 * it was issued for: the cache is keyed by a hash of api_url and app_key,
 * and a backend whose settings differ fetches its own.  Its lifetime is
 * bounded by the documented 10 minutes, whatever "expires" says (an absurd
 * or unparsable value neither keeps a token forever nor overflows, and one
 * already past does not make every request fetch a token).
 *
 * The AppSecret is sent in the request body and never appears in a message.
 */
#include "postgres.h"

#include <signal.h>
#include <sys/time.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "api.h"
#include "compat.h"
#include "errors.h"
#include "http.h"
#include "settings.h"
#include "shmem.h"
#include "token.h"

#define REFRESH_MARGIN_MS	30000
#define WAIT_TICK_MS		100
#define DEFAULT_LIFETIME_MS	600000	/* the documented lifetime, and the most we trust */

/* which API and credentials a token belongs to */
static uint64
token_issuer(void)
{
	StringInfoData key;
	uint64		hash;

	initStringInfo(&key);
	appendStringInfo(&key, "%s%c%s", ff_api_url, '\x1f', ff_app_key);
	hash = hash_bytes_extended((const unsigned char *) key.data, key.len, 0);
	explicit_bzero(key.data, key.len);
	return hash;
}

/*
 * When a token answered now expires: "expires" (Unix epoch ms) when it is a
 * plain integer, at most ten minutes from now (sooner when FlexFactor says
 * so); ten minutes when it is absent, not an integer or out of any range.
 * A token just issued that would already be due for renewal ("expires" in
 * the past, 0, or seconds instead of milliseconds) is kept for ten minutes
 * too: believing it would fetch a token for every request.  Should it
 * really be expired, the 401 it earns fetches a new one (ff_token_invalidate).
 */
static int64
bounded_expiry(Jsonb *answer, int64 now_ms)
{
	char	   *text = ff_json_get_text(&answer->root, "expires");
	int64		expires;

	if (text == NULL || text[0] == '\0' || strlen(text) > 18 ||
		strspn(text, "0123456789") != strlen(text))
		return now_ms + DEFAULT_LIFETIME_MS;
	expires = strtoll(text, NULL, 10);
	if (expires - REFRESH_MARGIN_MS <= now_ms)
		return now_ms + DEFAULT_LIFETIME_MS;
	return Min(expires, now_ms + DEFAULT_LIFETIME_MS);
}

static int64
now_epoch_ms(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* POST /oauth2/token; returns the token and sets *expires_ms. */
static char *
fetch_token(int64 *expires_ms)
{
	StringInfoData body;
	FFHttpRequest req = {0};
	char	   *url;
	Jsonb	   *answer;
	char	   *token;

	if (ff_app_key[0] == '\0' || ff_app_secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("FlexFactor API credentials are not configured"),
				 errdetail("flexfactor.app_key or flexfactor.app_secret is empty."),
				 errhint("Set both in postgresql.conf (or with ALTER SYSTEM) and reload; "
						 "they are on the Developers page of the FlexFactor portal.")));

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"AppKey\":");
	escape_json(&body, ff_app_key);
	appendStringInfoString(&body, ",\"AppSecret\":");
	escape_json(&body, ff_app_secret);
	appendStringInfoChar(&body, '}');

	url = psprintf("%soauth2/token", ff_api_url);
	req.method = "POST";
	req.url = url;
	req.body = body.data;
	ff_http_perform(&req, 1, 1);
	explicit_bzero(body.data, body.len);

	if (req.curl_code != CURLE_OK)
		ff_http_raise_transport_error(&req, "POST /oauth2/token");
	if (req.status == 400 || req.status == 401 || req.status == 403)
		ereport(ERROR,
				(errcode(ERRCODE_FF_BAD_CREDENTIALS),
				 errmsg("FlexFactor refused the API credentials"),
				 errdetail("POST /oauth2/token answered HTTP %ld.", req.status),
				 errhint("Check flexfactor.app_key and flexfactor.app_secret; sandbox and production "
						 "credentials differ, and flexfactor.api_url must match them.")));
	if (req.status < 200 || req.status > 299)
		ff_api_raise_status_error(&req, "POST /oauth2/token");

	answer = ff_api_parse_json(&req, "POST /oauth2/token");
	token = ff_json_get_text(&answer->root, "accessToken");
	if (token == NULL || token[0] == '\0' || strlen(token) >= FF_TOKEN_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_FF_MALFORMED_RESPONSE),
				 errmsg("FlexFactor's token answer has no usable accessToken"),
				 errdetail("POST /oauth2/token answered HTTP %ld without an access token of at most %d bytes.",
						   req.status, FF_TOKEN_MAX - 1)));
	*expires_ms = bounded_expiry(answer, now_epoch_ms());
	return token;
}

static void
finish_fetch(const char *token, int64 expires_ms, uint64 issuer)
{
	FFTokenCache *cache = &ff_shared->token;

	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	if (token != NULL)
	{
		strlcpy(cache->token, token, FF_TOKEN_MAX);
		cache->issuer = issuer;
		cache->expires_ms = expires_ms;
		cache->generation++;
	}
	cache->fetching = false;
	cache->fetcher = 0;
	LWLockRelease(ff_shared->lock);
	ConditionVariableBroadcast(&cache->fetched);
}

/*
 * A token with at least 30 s to live; fetches one if needed.  Returns a
 * palloc'd copy and the generation it belongs to.
 */
char *
ff_token_get(uint64 *generation)
{
	FFTokenCache *cache = &ff_shared_or_error()->token;
	char	   *token = NULL;
	int64		expires_ms = 0;
	uint64		issuer = token_issuer();

	for (;;)
	{
		LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
		if (cache->token[0] != '\0' && cache->issuer == issuer &&
			cache->expires_ms - REFRESH_MARGIN_MS > now_epoch_ms())
		{
			token = pstrdup(cache->token);
			*generation = cache->generation;
			LWLockRelease(ff_shared->lock);
			ConditionVariableCancelSleep();
			return token;
		}
		if (cache->fetching && cache->fetcher != MyProcPid && kill(cache->fetcher, 0) == 0)
		{
			LWLockRelease(ff_shared->lock);
			ConditionVariableTimedSleep(&cache->fetched, WAIT_TICK_MS, ff_wait_event(FF_WAIT_TOKEN));
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		cache->fetching = true;
		cache->fetcher = MyProcPid;
		cache->requests++;
		LWLockRelease(ff_shared->lock);
		break;
	}
	ConditionVariableCancelSleep();

	PG_TRY();
	{
		token = fetch_token(&expires_ms);
	}
	PG_CATCH();
	{
		finish_fetch(NULL, 0, 0);
		PG_RE_THROW();
	}
	PG_END_TRY();
	finish_fetch(token, expires_ms, issuer);

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	*generation = cache->generation;
	LWLockRelease(ff_shared->lock);
	return token;
}

/* The token of this generation was refused (HTTP 401): forget it. */
void
ff_token_invalidate(uint64 generation)
{
	FFTokenCache *cache = &ff_shared_or_error()->token;

	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	if (cache->generation == generation)
		cache->token[0] = '\0';
	LWLockRelease(ff_shared->lock);
}

PG_FUNCTION_INFO_V1(ff_token_status);

Datum
ff_token_status(PG_FUNCTION_ARGS)
{
	FFTokenCache *cache = &ff_shared_or_error()->token;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {0};
	bool		has_token;
	int64		expires_ms;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	has_token = cache->token[0] != '\0';
	expires_ms = cache->expires_ms;
	values[2] = Int64GetDatum((int64) cache->requests);
	LWLockRelease(ff_shared->lock);

	values[0] = BoolGetDatum(has_token);
	/* Unix epoch ms to PostgreSQL's microseconds since 2000-01-01 */
	values[1] = TimestampTzGetDatum(expires_ms * 1000 -
									((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY));
	nulls[1] = !has_token;

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
