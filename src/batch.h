/*
 * batch.h
 *		SFTP batch export of queued declines.
 */
#ifndef FLEXFACTOR_BATCH_H
#define FLEXFACTOR_BATCH_H

extern int	ff_export_pass_in_worker(void);

#endif							/* FLEXFACTOR_BATCH_H */
