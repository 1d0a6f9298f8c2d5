/*
 * errors.h
 *		flexfactor's own SQLSTATEs (class FF), so that callers can tell a
 *		timeout from a validation error from bad credentials.
 *
 * docs/reference.md (Errors) lists them with what the DBA should do about each one.
 */
#ifndef FLEXFACTOR_ERRORS_H
#define FLEXFACTOR_ERRORS_H

#include "utils/elog.h"

/* talking to FlexFactor */
#define ERRCODE_FF_CONNECTION_FAILURE	MAKE_SQLSTATE('F','F','0','0','1')
#define ERRCODE_FF_TIMEOUT				MAKE_SQLSTATE('F','F','0','0','2')
#define ERRCODE_FF_TLS_FAILURE			MAKE_SQLSTATE('F','F','0','0','3')
#define ERRCODE_FF_BAD_CREDENTIALS		MAKE_SQLSTATE('F','F','0','0','4')
#define ERRCODE_FF_VALIDATION			MAKE_SQLSTATE('F','F','0','0','5')
#define ERRCODE_FF_IDEMPOTENCY_CONFLICT	MAKE_SQLSTATE('F','F','0','0','6')
#define ERRCODE_FF_RATE_LIMITED			MAKE_SQLSTATE('F','F','0','0','7')
#define ERRCODE_FF_SERVER_ERROR			MAKE_SQLSTATE('F','F','0','0','8')
#define ERRCODE_FF_MALFORMED_RESPONSE	MAKE_SQLSTATE('F','F','0','0','9')
#define ERRCODE_FF_NOT_FOUND			MAKE_SQLSTATE('F','F','0','1','0')
#define ERRCODE_FF_FORBIDDEN			MAKE_SQLSTATE('F','F','0','1','1')
#define ERRCODE_FF_REQUEST_FAILED		MAKE_SQLSTATE('F','F','0','1','2')
#define ERRCODE_FF_NOT_CONFIGURED		MAKE_SQLSTATE('F','F','0','1','3')

/* the SFTP transport */
#define ERRCODE_FF_SFTP_CONNECTION		MAKE_SQLSTATE('F','F','0','3','0')
#define ERRCODE_FF_SFTP_HOST_KEY		MAKE_SQLSTATE('F','F','0','3','1')
#define ERRCODE_FF_SFTP_AUTH			MAKE_SQLSTATE('F','F','0','3','2')
#define ERRCODE_FF_SFTP_IO				MAKE_SQLSTATE('F','F','0','3','3')

/* webhook deliveries */
#define ERRCODE_FF_WEBHOOK_SIGNATURE	MAKE_SQLSTATE('F','F','0','4','0')
#define ERRCODE_FF_WEBHOOK_STALE		MAKE_SQLSTATE('F','F','0','4','1')
#define ERRCODE_FF_WEBHOOK_REPLAYED		MAKE_SQLSTATE('F','F','0','4','2')
#define ERRCODE_FF_WEBHOOK_MALFORMED	MAKE_SQLSTATE('F','F','0','4','3')

/* refused locally, before any request (raised from the SQL functions) */
#define ERRCODE_FF_INVALID_ORDER_STATE	MAKE_SQLSTATE('F','F','0','2','0')
#define ERRCODE_FF_REFUND_EXCEEDS		MAKE_SQLSTATE('F','F','0','2','1')
#define ERRCODE_FF_UNKNOWN_ORDER		MAKE_SQLSTATE('F','F','0','2','2')
#define ERRCODE_FF_BODY_INCOMPLETE		MAKE_SQLSTATE('F','F','0','2','3')
#define ERRCODE_FF_CARD_NUMBER			MAKE_SQLSTATE('F','F','0','2','4')
#define ERRCODE_FF_CALLBACK_TIMEOUT		MAKE_SQLSTATE('F','F','0','2','5')

#endif							/* FLEXFACTOR_ERRORS_H */
