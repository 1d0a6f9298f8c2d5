/*
 * webhook_verify.h
 *		Authenticity of FlexFactor webhook deliveries (x-fc-* headers).
 */
#ifndef FLEXFACTOR_WEBHOOK_VERIFY_H
#define FLEXFACTOR_WEBHOOK_VERIFY_H

#include "utils/timestamp.h"

typedef struct FFWebhookHeaders
{
	const char *nonce;			/* x-fc-nonce */
	const char *date;			/* x-fc-date, RFC 1123 */
	const char *host;			/* Host, as received */
	const char *content_sha512;	/* x-fc-content-sha512 */
	const char *authorization;	/* x-fc-authorization */
	const char *signature;		/* x-fc-signature */
} FFWebhookHeaders;

typedef enum FFWebhookVerdict
{
	FF_WEBHOOK_OK = 0,
	FF_WEBHOOK_NOT_CONFIGURED,	/* no webhook key set */
	FF_WEBHOOK_MISSING_HEADER,
	FF_WEBHOOK_BAD_CONTENT_HASH,
	FF_WEBHOOK_BAD_SIGNATURE,
	FF_WEBHOOK_STALE_DATE
} FFWebhookVerdict;

extern FFWebhookVerdict ff_webhook_verify(const FFWebhookHeaders *headers,
										  const char *body, size_t body_len,
										  TimestampTz now, const char **reason);

#endif							/* FLEXFACTOR_WEBHOOK_VERIFY_H */
