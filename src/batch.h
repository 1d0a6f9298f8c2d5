/*
 * batch.h
 *		SFTP batch export of queued declines.
 */
#ifndef FLEXFACTOR_BATCH_H
#define FLEXFACTOR_BATCH_H

extern void ff_export_if_due(void);

#endif							/* FLEXFACTOR_BATCH_H */
