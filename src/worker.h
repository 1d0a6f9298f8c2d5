/*
 * worker.h
 *		flexfactor's background processes: the launcher and the worker.
 */
#ifndef FLEXFACTOR_WORKER_H
#define FLEXFACTOR_WORKER_H

#include "postgres.h"

extern void ff_register_launcher(void);
extern void ff_worker_yield(void);
extern void ff_worker_retry_now(void);

extern PGDLLEXPORT void ff_launcher_main(Datum main_arg);
extern PGDLLEXPORT void ff_worker_main(Datum main_arg);

#endif							/* FLEXFACTOR_WORKER_H */
