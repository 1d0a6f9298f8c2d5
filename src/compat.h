/*
 * compat.h
 *		The differences between the PostgreSQL versions flexfactor builds on
 *		(15.4 through 18), in one place.
 *
 * The code is written against the newest API; this header maps it onto the
 * older versions.  Include it after postgres.h.  It owns no behaviour of its
 * own beyond the custom wait events' names.
 */
#ifndef FLEXFACTOR_COMPAT_H
#define FLEXFACTOR_COMPAT_H

#include "fmgr.h"
#include "utils/wait_event.h"

/* database_is_invalid_form() (worker.c) came with 15.4 */
#if PG_VERSION_NUM < 150004
#error "flexfactor needs PostgreSQL 15.4 or later"
#endif

/* 18: the module's magic block also carries its name and version */
#ifndef PG_MODULE_MAGIC_EXT
#define PG_MODULE_MAGIC_EXT(...) PG_MODULE_MAGIC
#endif

/* 18: pg_noreturn before the type replaces pg_attribute_noreturn() */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * 18: pg_b64_encode() reads and pg_b64_decode() writes uint8 buffers; before,
 * char.  The raw side of each call is cast to this.
 */
#if PG_VERSION_NUM >= 180000
typedef uint8 ff_b64_raw;
#else
typedef char ff_b64_raw;
#endif

/*
 * 17: makeJsonLexContextCstringLen() takes the context to fill first (NULL:
 * allocate one).
 */
#if PG_VERSION_NUM >= 170000
#define ff_make_json_lex(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen(NULL, (json), (len), (encoding), (need_escapes))
#else
#define ff_make_json_lex(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen((json), (len), (encoding), (need_escapes))
#endif

/*
 * 16: GUC string values live in the GUC's own memory, so a check hook that
 * replaces *newval allocates with guc_malloc() and frees with guc_free();
 * before, with malloc() and free().
 */
#if PG_VERSION_NUM < 160000
#define guc_malloc(elevel, size) malloc(size)
#define guc_free(ptr) free(ptr)
#endif

/*
 * 17: custom wait events, shown by name in pg_stat_activity.wait_event (and
 * pg_wait_events); before, every wait is "Extension".
 */
typedef enum FFWaitEvent
{
	FF_WAIT_HTTP,				/* an HTTP transfer in progress */
	FF_WAIT_SFTP,				/* the SFTP server's answer */
	FF_WAIT_TOKEN,				/* another session fetching the bearer token */
	FF_WAIT_EXPORT,				/* the worker exporting a batch for us */
	FF_WAIT_WORKER,				/* the worker between passes */
	FF_WAIT_LISTENER,			/* the webhook listener between deliveries */
	FF_WAIT_COUNT
} FFWaitEvent;

static inline uint32
ff_wait_event(FFWaitEvent which)
{
#if PG_VERSION_NUM >= 170000
	static const char *const names[FF_WAIT_COUNT] = {
		"FlexFactorHttp", "FlexFactorSftp", "FlexFactorToken",
		"FlexFactorExport", "FlexFactorWorkerMain", "FlexFactorWebhookListener"
	};
	static uint32 ids[FF_WAIT_COUNT];

	/* registered once per name in shared memory; same id on every call */
	if (ids[which] == 0)
		ids[which] = WaitEventExtensionNew(names[which]);
	return ids[which];
#else
	return PG_WAIT_EXTENSION;
#endif
}

#endif							/* FLEXFACTOR_COMPAT_H */
