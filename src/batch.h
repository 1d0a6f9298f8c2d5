/*
 * batch.h
 *		SFTP batch export of queued declines.
 */
#ifndef FLEXFACTOR_BATCH_H
#define FLEXFACTOR_BATCH_H

#include <openssl/evp.h>

#include "shmem.h"

extern bool ff_export_if_due(void);
extern bool ff_export_requested(void);
extern void ff_export_refuse_requests(const char *why);

/* for results.c, which reads the answers in the same pass */
extern void ff_export_report_failure(ErrorData *edata, FFExportResult *result,
									 const char *activity);
extern EVP_MD_CTX *ff_sha256_new(void);
extern void ff_sha256_hex(const uint8 *digest, char *hex);

#endif							/* FLEXFACTOR_BATCH_H */
