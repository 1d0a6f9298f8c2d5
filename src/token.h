/*
 * token.h
 *		The shared FlexFactor bearer token.
 */
#ifndef FLEXFACTOR_TOKEN_H
#define FLEXFACTOR_TOKEN_H

extern char *ff_token_get(uint64 *generation);
extern void ff_token_invalidate(uint64 generation);

#endif							/* FLEXFACTOR_TOKEN_H */
