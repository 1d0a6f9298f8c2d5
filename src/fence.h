/*
 * fence.h
 *		Keeps a process from acting for a node that is no longer a writable
 *		primary.  See fence.c.
 */
#ifndef FLEXFACTOR_FENCE_H
#define FLEXFACTOR_FENCE_H

#include "postgres.h"

#include "pgstat.h"

extern void ff_fence_check(void);
extern int	ff_fence_wait(int events, pgsocket sock, long timeout_ms, uint32 wait_event_info);
extern bool ff_fence_writable(const char **why);
extern bool ff_fence_writable_or_pause(bool *paused, const char *detail, const char **why);
extern bool ff_fence_read_only_error(int sqlerrcode);

#endif							/* FLEXFACTOR_FENCE_H */
