/*
 * http.h
 *		HTTP transport for the FlexFactor API, on libcurl.
 */
#ifndef FLEXFACTOR_HTTP_H
#define FLEXFACTOR_HTTP_H

#include <curl/curl.h>

#include "lib/stringinfo.h"

#include "compat.h"

#define FF_HTTP_MAX_CONCURRENCY	64

typedef struct FFHttpRequest
{
	/* filled in by the caller */
	const char *method;			/* "GET" or "POST" */
	const char *url;			/* may carry secrets in its query: never logged */
	const char *body;			/* NULL for none */
	const char *bearer;			/* NULL for no Authorization header */
	bool		fresh_connection;	/* not idempotent: never on a reused connection */

	/* filled in by ff_http_perform() */
	long		status;			/* HTTP status; 0 when the transfer failed */
	CURLcode	curl_code;
	char		error[CURL_ERROR_SIZE];
	char		retry_after[32];	/* Retry-After header, if any */
	StringInfoData response;
} FFHttpRequest;

extern void ff_http_perform(FFHttpRequest *requests, int nrequests, int concurrency);
extern pg_noreturn void ff_http_raise_transport_error(const FFHttpRequest *req,
													   const char *what);
extern const char *ff_http_transport_error_text(const FFHttpRequest *req);

#endif							/* FLEXFACTOR_HTTP_H */
