/*
 * api.h
 *		Calling the FlexFactor REST API: authentication, answers, errors.
 */
#ifndef FLEXFACTOR_API_H
#define FLEXFACTOR_API_H

#include "utils/jsonb.h"

#include "compat.h"
#include "http.h"

/* flags of ff_api_call() */
#define FF_API_BEARER			0x01	/* send the shared bearer token */
#define FF_API_NOT_IDEMPOTENT	0x02	/* no key: never re-sent on a reused connection */

extern Jsonb *ff_api_call(const char *method, const char *path, const char *body, int flags);
extern Jsonb *ff_api_call_answer(const char *method, const char *path, const char *body, int flags,
								 const int *answer_statuses, int n_answer_statuses, long *status_out);
extern Jsonb *ff_api_parse_json(const FFHttpRequest *req, const char *what);
extern pg_noreturn void ff_api_raise_status_error(const FFHttpRequest *req,
												   const char *what);
extern char *ff_api_describe_errors(const char *body);
extern char *ff_api_endpoint(const char *path);
extern void ff_api_require_configured(void);

extern Jsonb *ff_json_parse_or_null(const char *text, int len);
extern JsonbValue *ff_json_get(JsonbContainer *container, const char *key, JsonbValue *out);
extern char *ff_json_scalar_text(const JsonbValue *v);
extern char *ff_json_get_text(JsonbContainer *container, const char *key);

#endif							/* FLEXFACTOR_API_H */
