/*
 * order_events.h
 *		The triggers of flexfactor.orders (status changes, waiting events).
 */
#ifndef FLEXFACTOR_ORDER_EVENTS_H
#define FLEXFACTOR_ORDER_EVENTS_H

/*
 * ff_evaluate() records its order once, with the answer: the order it names
 * (NULL: none) was PENDING until then, and its first order_events row says
 * so.  Returns the one named before, to be named again after the write.
 */
extern const char *ff_order_events_recording(const char *order_id);

#endif							/* FLEXFACTOR_ORDER_EVENTS_H */
