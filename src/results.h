/*
 * results.h
 *		Reading FlexFactor's result and error files.  See results.c.
 */
#ifndef FLEXFACTOR_RESULTS_H
#define FLEXFACTOR_RESULTS_H

#include "postgres.h"

#include "utils/timestamp.h"

#include "sftp.h"
#include "shmem.h"

extern void ff_results_ingest(FFSftp *conn, MemoryContext pass_cxt, FFExportResult *result,
							  TimestampTz deadline);

#endif							/* FLEXFACTOR_RESULTS_H */
