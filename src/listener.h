/*
 * listener.h
 *		The webhook listener: an HTTP endpoint in a background worker.
 */
#ifndef FLEXFACTOR_LISTENER_H
#define FLEXFACTOR_LISTENER_H

#include "postgres.h"

#define FF_MAX_NETWORKS	64

/*
 * GET (or HEAD) on this path answers 200 on a writable primary and 503
 * otherwise, for a load balancer's health check (never a webhook path).
 */
#define FF_HEALTH_PATH	"/healthz"

/* one network of flexfactor.webhook_allowed_networks */
typedef struct FFNetwork
{
	int			family;			/* AF_INET or AF_INET6 */
	unsigned char addr[16];
	int			prefix;			/* bits */
} FFNetwork;

extern PGDLLEXPORT void ff_listener_main(Datum main_arg);
extern int	ff_parse_networks(const char *text, FFNetwork *out, int max, const char **bad);

#endif							/* FLEXFACTOR_LISTENER_H */
