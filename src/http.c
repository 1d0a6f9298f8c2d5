/*
 * http.c
 *		Sends HTTP requests to FlexFactor with libcurl, one or many at once.
 *
 * Owns the process's libcurl state: one multi handle (its connection cache
 * keeps connections alive between calls and statements) and a small pool of
 * easy handles, created on first use and kept for the life of the backend or
 * worker.  Every request: http/https only, no redirects, TLS verification on
 * (flexfactor.ca_file if set), flexfactor.http_timeout_ms, no signals.
 *
 * Transfers run in a loop that polls for at most 100 ms at a time and calls
 * CHECK_FOR_INTERRUPTS() in between, so pg_cancel_backend() and
 * statement_timeout stop a call within a fraction of a second; handles still
 * in flight are detached on the way out.  A process whose postmaster is gone
 * ends there too (fence.c): no answer it could still get would be recorded
 * anywhere that counts.
 *
 * Not here: what a status code means (api.c) or authentication (token.c).
 * URLs may carry secrets in their query string, so no message here prints
 * one; callers name the request by method and path.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "http.h"
#include "settings.h"

#define POLL_INTERVAL_MS		100
#define MAX_RESPONSE_BYTES		(8 * 1024 * 1024)
#define MAX_CONNECT_TIMEOUT_MS	10000

typedef struct HttpSlot
{
	CURL	   *easy;
	struct curl_slist *headers;
	FFHttpRequest *req;			/* NULL when the slot is free */
} HttpSlot;

static CURLM *multi = NULL;
static HttpSlot slots[FF_HTTP_MAX_CONCURRENCY];

static void
ensure_curl(void)
{
	static bool global_done = false;

	if (!global_done)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialise libcurl")));
		global_done = true;
	}
	if (multi == NULL)
	{
		multi = curl_multi_init();
		if (multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) FF_HTTP_MAX_CONCURRENCY);
	}
}

/*
 * libcurl calls this from inside curl_multi_perform(): it must never
 * ereport (an error would longjmp through libcurl's frames), so it grows the
 * buffer with an allocation that returns NULL instead of raising, and a
 * failure makes libcurl end the transfer with CURLE_WRITE_ERROR.
 */
static size_t
collect_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	FFHttpRequest *req = (FFHttpRequest *) userdata;
	StringInfo	buf = &req->response;
	size_t		n = size * nmemb;

	if (buf->len + n > MAX_RESPONSE_BYTES)
		return 0;
	if (buf->len + n + 1 > (size_t) buf->maxlen)
	{
		size_t		newlen = Max((size_t) buf->maxlen * 2, buf->len + n + 1);
		char	   *grown = MemoryContextAllocExtended(GetMemoryChunkContext(buf->data),
													   newlen, MCXT_ALLOC_NO_OOM);

		if (grown == NULL)
			return 0;
		memcpy(grown, buf->data, buf->len + 1);
		pfree(buf->data);
		buf->data = grown;
		buf->maxlen = newlen;
	}
	memcpy(buf->data + buf->len, data, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

static size_t
collect_header(char *data, size_t size, size_t nmemb, void *userdata)
{
	FFHttpRequest *req = (FFHttpRequest *) userdata;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) && pg_strncasecmp(data, name, sizeof(name) - 1) == 0)
	{
		size_t		start = sizeof(name) - 1;
		size_t		len = 0;

		while (start < n && data[start] == ' ')
			start++;
		while (start + len < n && len < sizeof(req->retry_after) - 1 &&
			   data[start + len] != '\r' && data[start + len] != '\n')
			len++;
		memcpy(req->retry_after, data + start, len);
		req->retry_after[len] = '\0';
	}
	return n;
}

static void
check_setopt(CURLcode rc)
{
	if (rc != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not configure a libcurl request: %s", curl_easy_strerror(rc))));
}

static struct curl_slist *
append_header(struct curl_slist *list, const char *header)
{
	struct curl_slist *grown = curl_slist_append(list, header);

	/* on failure the list stays the slot's, and release_slot() frees it */
	if (grown == NULL)
	{
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory building HTTP headers")));
	}
	return grown;
}

static void
start_request(HttpSlot *slot, FFHttpRequest *req)
{
	CURL	   *h;
	long		timeout_ms = ff_http_timeout_ms;

	if (slot->easy == NULL)
	{
		slot->easy = curl_easy_init();
		if (slot->easy == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	else
		curl_easy_reset(slot->easy);	/* keeps live connections and caches */
	h = slot->easy;

	req->status = 0;
	req->curl_code = CURLE_OK;
	req->error[0] = '\0';
	req->retry_after[0] = '\0';
	initStringInfo(&req->response);

	curl_slist_free_all(slot->headers);
	slot->headers = NULL;
	slot->headers = append_header(slot->headers, "Accept: application/json");
	slot->headers = append_header(slot->headers, "Expect:");	/* no 100-continue round trip */
	if (req->body != NULL)
		slot->headers = append_header(slot->headers, "Content-Type: application/json");
	if (req->bearer != NULL)
	{
		char	   *auth = psprintf("Authorization: Bearer %s", req->bearer);

		slot->headers = append_header(slot->headers, auth);
		explicit_bzero(auth, strlen(auth));
		pfree(auth);
	}

	check_setopt(curl_easy_setopt(h, CURLOPT_URL, req->url));
	check_setopt(curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https"));
	check_setopt(curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L));
	check_setopt(curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L));
	check_setopt(curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms));
	check_setopt(curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
								  Min(timeout_ms, (long) MAX_CONNECT_TIMEOUT_MS)));
	check_setopt(curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L));
	check_setopt(curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L));
	check_setopt(curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L));
	if (ff_ca_file != NULL && ff_ca_file[0] != '\0')
		check_setopt(curl_easy_setopt(h, CURLOPT_CAINFO, ff_ca_file));
	check_setopt(curl_easy_setopt(h, CURLOPT_USERAGENT, "flexfactor/" FLEXFACTOR_VERSION));
	check_setopt(curl_easy_setopt(h, CURLOPT_HTTPHEADER, slot->headers));
	check_setopt(curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect_body));
	check_setopt(curl_easy_setopt(h, CURLOPT_WRITEDATA, req));
	check_setopt(curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, collect_header));
	check_setopt(curl_easy_setopt(h, CURLOPT_HEADERDATA, req));
	check_setopt(curl_easy_setopt(h, CURLOPT_ERRORBUFFER, req->error));
	check_setopt(curl_easy_setopt(h, CURLOPT_PRIVATE, slot));

	/*
	 * libcurl re-sends a request once when a kept-alive connection turns out
	 * dead before any answer.  Harmless with an idempotency key; a request
	 * without one gets a connection of its own.
	 */
	if (req->fresh_connection)
	{
		check_setopt(curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L));
		check_setopt(curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L));
	}
	if (strcmp(req->method, "POST") == 0)
	{
		const char *body = req->body ? req->body : "";

		check_setopt(curl_easy_setopt(h, CURLOPT_POST, 1L));
		check_setopt(curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long) strlen(body)));
		check_setopt(curl_easy_setopt(h, CURLOPT_POSTFIELDS, body));
	}
	else
		check_setopt(curl_easy_setopt(h, CURLOPT_HTTPGET, 1L));

	if (curl_multi_add_handle(multi, h) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start an HTTP request")));
	slot->req = req;
}

/*
 * Detach a slot's handle (if it was started) and free its header list, which
 * exists from the first header on: a setup that fails half-way leaks nothing.
 */
static void
release_slot(HttpSlot *slot)
{
	if (slot->req != NULL)
		curl_multi_remove_handle(multi, slot->easy);
	curl_slist_free_all(slot->headers);
	slot->headers = NULL;
	slot->req = NULL;
}

static void
collect_finished(void)
{
	CURLMsg    *msg;
	int			queued;

	while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
	{
		HttpSlot   *slot;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &slot);
		slot->req->curl_code = msg->data.result;
		if (msg->data.result == CURLE_OK)
			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &slot->req->status);
		else if (slot->req->error[0] == '\0')
			strlcpy(slot->req->error, curl_easy_strerror(msg->data.result), CURL_ERROR_SIZE);
		release_slot(slot);
	}
}

static void
run_transfers(FFHttpRequest *requests, int nrequests, int concurrency)
{
	int			next = 0;

	for (;;)
	{
		int			running = 0;
		int			busy = 0;
		CURLMcode	mc;

		for (int s = 0; s < concurrency; s++)
		{
			if (slots[s].req == NULL && next < nrequests)
				start_request(&slots[s], &requests[next++]);
			if (slots[s].req != NULL)
				busy++;
		}
		if (busy == 0)
			break;

		mc = curl_multi_perform(multi, &running);
		if (mc != CURLM_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("HTTP transfer failed: %s", curl_multi_strerror(mc))));
		collect_finished();

		if (running > 0)
		{
			pgstat_report_wait_start(ff_wait_event(FF_WAIT_HTTP));
			mc = curl_multi_poll(multi, NULL, 0, POLL_INTERVAL_MS, NULL);
			pgstat_report_wait_end();
			if (mc != CURLM_OK)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("HTTP transfer failed: %s", curl_multi_strerror(mc))));
		}
		CHECK_FOR_INTERRUPTS();
		ff_fence_check();
	}
}

/*
 * Perform the requests, at most `concurrency` at a time, and fill in their
 * results.  Transport failures are reported per request (curl_code); only
 * interrupts and internal libcurl failures raise errors here, after the
 * handles in flight are detached.
 */
void
ff_http_perform(FFHttpRequest *requests, int nrequests, int concurrency)
{
	ensure_curl();
	PG_TRY();
	{
		run_transfers(requests, nrequests,
					  Max(1, Min(concurrency, FF_HTTP_MAX_CONCURRENCY)));
	}
	PG_CATCH();
	{
		for (int s = 0; s < FF_HTTP_MAX_CONCURRENCY; s++)
			release_slot(&slots[s]);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

const char *
ff_http_transport_error_text(const FFHttpRequest *req)
{
	return req->error[0] ? req->error : curl_easy_strerror(req->curl_code);
}

/* Raise the error that fits a request whose transfer failed. */
void
ff_http_raise_transport_error(const FFHttpRequest *req, const char *what)
{
	const char *text = ff_http_transport_error_text(req);

	switch (req->curl_code)
	{
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_FF_TIMEOUT),
					 errmsg("FlexFactor request %s timed out", what),
					 errdetail("No complete answer within flexfactor.http_timeout_ms = %d ms (%s).",
							   ff_http_timeout_ms, text),
					 errhint("Check the network path to FlexFactor, or raise flexfactor.http_timeout_ms. "
							 "Retrying the same call is safe: it reuses its idempotency key.")));
			break;
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
			ereport(ERROR,
					(errcode(ERRCODE_FF_TLS_FAILURE),
					 errmsg("TLS failure talking to FlexFactor for %s", what),
					 errdetail("%s", text),
					 errhint("Check flexfactor.api_url and flexfactor.ca_file; certificate verification cannot be turned off.")));
			break;
		case CURLE_WRITE_ERROR:
			ereport(ERROR,
					(errcode(ERRCODE_FF_MALFORMED_RESPONSE),
					 errmsg("FlexFactor's answer to %s is too large", what),
					 errdetail("Answers larger than %d bytes are refused.", MAX_RESPONSE_BYTES)));
			break;
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
			ereport(ERROR,
					(errcode(ERRCODE_FF_NOT_CONFIGURED),
					 errmsg("flexfactor.api_url cannot be used for %s", what),
					 errdetail("%s", text),
					 errhint("Set flexfactor.api_url to an https:// URL ending in /v1/.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_FF_CONNECTION_FAILURE),
					 errmsg("could not reach FlexFactor for %s", what),
					 errdetail("%s", text),
					 errhint("Check flexfactor.api_url and the network path to it. "
							 "Retrying the same call is safe: it reuses its idempotency key.")));
	}
	pg_unreachable();
}
