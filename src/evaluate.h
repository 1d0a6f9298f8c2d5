/*
 * evaluate.h
 *		idempotency keys of attempts, ff_evaluate().
 */
#ifndef FLEXFACTOR_EVALUATE_H
#define FLEXFACTOR_EVALUATE_H

#include "utils/jsonb.h"

extern void ff_attempt_key(const char *kind, const char **parts, int nparts, char *uuid_out);

#endif							/* FLEXFACTOR_EVALUATE_H */
