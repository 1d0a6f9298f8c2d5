/*
 * scrub.h
 *		Card numbers and secrets: found in bodies, removed from remote text.
 */
#ifndef FLEXFACTOR_SCRUB_H
#define FLEXFACTOR_SCRUB_H

#include "utils/jsonb.h"

extern bool ff_text_has_card_number(const char *text, int len);
extern char *ff_jsonb_find_card_number(Jsonb *body);
extern char *ff_scrub_remote_text(const char *text, int len);
extern Jsonb *ff_jsonb_scrub_remote(Jsonb *answer);

#endif							/* FLEXFACTOR_SCRUB_H */
