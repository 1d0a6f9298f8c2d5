/*
 * saved_plan.h
 *		SPI plans prepared once per backend and kept.
 */
#ifndef FLEXFACTOR_SAVED_PLAN_H
#define FLEXFACTOR_SAVED_PLAN_H

#include "executor/spi.h"

extern SPIPlanPtr ff_saved_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types);

#endif							/* FLEXFACTOR_SAVED_PLAN_H */
