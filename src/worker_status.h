/*
 * worker_status.h
 *		What each flexfactor background worker reports about itself, and
 *		the SQL function ff_worker_status() that shows it.
 */
#ifndef FLEXFACTOR_WORKER_STATUS_H
#define FLEXFACTOR_WORKER_STATUS_H

#include "shmem.h"

extern bool ff_status_claim(FFWorkerRole role, Oid dboid);
extern void ff_status_set(const char *state);
extern void ff_status_pass_done(void);
extern void ff_status_error(const char *message);
extern void ff_status_clear_error(void);
extern void ff_status_config_reloaded(void);
extern void ff_status_count_launch(FFWorkerRole role);
extern pid_t ff_status_pid(FFWorkerRole role);
extern void ff_status_wake(FFWorkerRole role);

#endif							/* FLEXFACTOR_WORKER_STATUS_H */
