/*
 * listener.h
 *		The webhook listener: an HTTP endpoint in a background worker.
 */
#ifndef FLEXFACTOR_LISTENER_H
#define FLEXFACTOR_LISTENER_H

#include "postgres.h"

extern PGDLLEXPORT void ff_listener_main(Datum main_arg);

#endif							/* FLEXFACTOR_LISTENER_H */
