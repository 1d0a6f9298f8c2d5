/*
 * transmit.h
 *		The /transmit queue: woken at commit, drained by the worker.
 */
#ifndef FLEXFACTOR_TRANSMIT_H
#define FLEXFACTOR_TRANSMIT_H

extern int	ff_transmit_pass(long *next_due_ms);

#endif							/* FLEXFACTOR_TRANSMIT_H */
