/*
 * decline_queue.h
 *		Queueing a declined merchant-initiated charge for SFTP batches.
 */
#ifndef FLEXFACTOR_DECLINE_QUEUE_H
#define FLEXFACTOR_DECLINE_QUEUE_H

#include "utils/jsonb.h"

extern int64 ff_queue_decline(Jsonb *payload, bool want_id);
extern void ff_decline_queue_install_hooks(void);

#endif							/* FLEXFACTOR_DECLINE_QUEUE_H */
