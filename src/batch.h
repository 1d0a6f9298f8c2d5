/*
 * batch.h
 *		SFTP batch export of queued declines.
 */
#ifndef FLEXFACTOR_BATCH_H
#define FLEXFACTOR_BATCH_H

extern bool ff_export_if_due(void);
extern bool ff_export_requested(void);

#endif							/* FLEXFACTOR_BATCH_H */
