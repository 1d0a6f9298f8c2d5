/*
 * body_check.h
 *		The check of a request body against the real service's rules.
 */
#ifndef FLEXFACTOR_BODY_CHECK_H
#define FLEXFACTOR_BODY_CHECK_H

#include "utils/jsonb.h"

typedef enum FFBodyKind
{
	FF_BODY_EVALUATE,			/* POST /evaluate */
	FF_BODY_BATCH,				/* a line of an SFTP evaluate batch */
	FF_BODY_TRANSMIT			/* POST /transmit, or a transmit_ batch line */
} FFBodyKind;

extern void ff_check_body(Jsonb *payload, FFBodyKind kind, const char *caller);
extern char *ff_body_text(JsonbContainer *root, const char *path);

#endif							/* FLEXFACTOR_BODY_CHECK_H */
