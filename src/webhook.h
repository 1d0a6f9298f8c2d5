/*
 * webhook.h
 *		Receiving a webhook delivery: verify, store, apply.
 */
#ifndef FLEXFACTOR_WEBHOOK_H
#define FLEXFACTOR_WEBHOOK_H

#include "webhook_verify.h"

extern char *ff_webhook_receive(const FFWebhookHeaders *headers, const char *body,
								size_t body_len, const char *received_via,
								bool *authentic);
extern bool ff_webhook_error_is_permanent(int sqlerrcode);
extern void ff_webhook_store_rejected(const FFWebhookHeaders *headers, const char *body,
									  size_t body_len, const char *received_via,
									  const char *reason);

#endif							/* FLEXFACTOR_WEBHOOK_H */
