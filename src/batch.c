/*
 * batch.c
 *		Exports queued declines to FlexFactor as SFTP batch files, exactly
 *		once, and reads FlexFactor's result files back.
 *
 * Evaluate batches carry queued declines; with flexfactor.transmit_via =
 * 'sftp', transmit batches carry the queued /transmit copies the same way.
 *
 * A batch is fixed in the database before anything is sent: its file name
 * and its rows (for declines, a range in queue order; for transmit copies,
 * the rows it claimed) are decided once, by _create_evaluate_batch() and
 * _create_transmit_batch() in SQL.  Uploading streams the lines derived from
 * those rows (flexfactor.batch_file_lines), read 500 at a time in short
 * transactions, so neither memory nor any transaction grows with the batch
 * or spans the network; the first upload records the size and SHA-256 and
 * every later one must match them before the file is renamed into place.  A
 * retried upload therefore writes the same bytes under the same name.  Each
 * attempt writes a temporary file of its own and renames it only once the
 * server holds exactly the bytes sent (sftp.c); if the final name exists
 * already (an attempt whose success was not recorded, or the other node
 * around a failover: the lines come from replicated rows only, so both write
 * the same bytes), a file with the batch's size and SHA-256, read back, is
 * left in place and this attempt's copy removed, and any other file is
 * replaced, with a WARNING.  Temporary files of attempts that died are
 * removed once unchanged for an hour.
 *
 * Only the worker exports, in its SFTP phase (work.c): it fixes batches in
 * one short transaction, uploads each batch with none open and marks it
 * uploaded in another, so a crash between an upload and that commit leaves
 * the batch "ready" and it is uploaded again, identically.  ff_export_batch()
 * (SQL, for pg_cron or by hand) asks the worker for a pass and waits for its
 * result, so no caller's transaction can undo an upload.  A failed upload
 * records attempts, the error and the next attempt time (exponential
 * backoff) on the batch; the others wait for the next pass.  After
 * EXPORT_PASS_BUDGET_MS a pass starts no new file, and while it waits for
 * the network the worker's other phases get their turn (ff_worker_yield), so
 * a slow SFTP server never holds up the transmit queue.
 *
 * After the uploads, the same connection reads FlexFactor's answers from
 * the outbound folder (results.c).  Everything a pass allocates, the SFTP
 * connection included, lives in the phase's memory context and goes with it.
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batch.h"
#include "results.h"
#include "work.h"
#include "worker.h"
#include "shmem.h"
#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "settings.h"
#include "sftp.h"
#include "worker_status.h"

#define LINES_PER_FETCH		500

typedef struct ReadyBatch
{
	int64		id;
	char	   *file_name;
	char	   *sha256;			/* NULL until the first upload */
	int32		attempts;
	int32		line_count;
} ReadyBatch;

/*
 * Fix one batch of the given kind; returns false when nothing was ready.
 * Transmit batches claim rows one by one: *after_id is the last row claimed
 * in this pass, so each claim starts where the previous one ended.
 */
static bool
create_one_batch(const char *kind, int64 *after_id)
{
	bool		evaluate = strcmp(kind, "evaluate") == 0;
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		values[2] = {Int32GetDatum(ff_batch_max_rows), Int64GetDatum(*after_id)};
	Datum		batch;
	bool		isnull;

	if (SPI_execute_with_args(evaluate ?
							  "SELECT flexfactor._create_evaluate_batch($1)" :
							  "SELECT flexfactor._create_transmit_batch($1, $2)",
							  evaluate ? 1 : 2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not create a %s batch", kind);
	batch = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_freetuptable(SPI_tuptable);
	if (isnull)
		return false;
	if (evaluate)
		return true;

	types[0] = INT8OID;
	/*
	 * Where the claim ended: one entry of transmit_queue_batch_idx (the
	 * ORDER BY names it; max(id) could walk the primary key from the top).
	 * Not read_only: that snapshot would not see this transaction's claim.
	 */
	if (SPI_execute_with_args("SELECT id FROM flexfactor.transmit_queue WHERE batch_id = $1"
							  " ORDER BY batch_id DESC, id DESC LIMIT 1",
							  1, types, &batch, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read a batch");
	*after_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/* Fix pending declines (and transmits, when they go by SFTP) into batches. */
static int
create_batches(void)
{
	int64		after_decline = 0;
	int64		after_transmit = 0;
	bool		declines_left = true;
	bool		transmits_left = (ff_transmit_via == FF_TRANSMIT_VIA_SFTP);
	int			created = 0;

	while (declines_left || transmits_left)
	{
		if (declines_left && (declines_left = create_one_batch("evaluate", &after_decline)))
			created++;
		if (transmits_left && (transmits_left = create_one_batch("transmit", &after_transmit)))
			created++;
		CHECK_FOR_INTERRUPTS();
	}
	return created;
}

/* Ready batches whose next attempt is due, oldest first, copied into `cxt`. */
static List *
ready_batches(MemoryContext cxt, bool lock)
{
	List	   *result = NIL;

	if (SPI_execute(lock ?
					"SELECT id, file_name, sha256, attempts, line_count FROM flexfactor.batches"
					" WHERE state = 'ready' AND next_attempt_at <= now()"
					" ORDER BY id FOR UPDATE SKIP LOCKED" :
					"SELECT id, file_name, sha256, attempts, line_count FROM flexfactor.batches"
					" WHERE state = 'ready' AND next_attempt_at <= now() ORDER BY id",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list batches to upload");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		ReadyBatch *b = palloc(sizeof(ReadyBatch));
		bool		isnull;

		b->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		b->file_name = SPI_getvalue(tup, desc, 2);
		b->sha256 = SPI_getvalue(tup, desc, 3);
		b->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		b->line_count = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		result = lappend(result, b);
		MemoryContextSwitchTo(old);
	}
	return result;
}

void
ff_sha256_hex(const uint8 *digest, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		hex[2 * i] = digits[digest[i] >> 4];
		hex[2 * i + 1] = digits[digest[i] & 0xf];
	}
	hex[2 * PG_SHA256_DIGEST_LENGTH] = '\0';
}

static void
free_sha256(void *arg)
{
	EVP_MD_CTX_free((EVP_MD_CTX *) arg);
}

/*
 * A SHA-256 computation (OpenSSL), freed with the current memory context: it
 * spans transactions, so it cannot belong to a resource owner.
 */
EVP_MD_CTX *
ff_sha256_new(void)
{
	MemoryContextCallback *cb = palloc(sizeof(MemoryContextCallback));
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	if (ctx == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	cb->func = free_sha256;
	cb->arg = ctx;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		elog(ERROR, "could not start a SHA-256 computation");
	return ctx;
}

/*
 * The next lines of a batch after sequence number *after, at most
 * LINES_PER_FETCH, in a short transaction of their own; copied into the
 * current context.  No transaction stays open while they are sent.
 */
static List *
fetch_lines(ReadyBatch *b, int32 *after)
{
	Oid			types[3] = {INT8OID, INT4OID, INT4OID};
	Datum		values[3] = {Int64GetDatum(b->id), Int32GetDatum(*after),
	Int32GetDatum(LINES_PER_FETCH)};
	MemoryContext cxt = CurrentMemoryContext;
	List	   *lines = NIL;

	ff_work_begin("flexfactor: reading a batch's lines");
	if (SPI_execute_with_args("SELECT sequence_number, line FROM flexfactor.batch_file_lines($1)"
							  " WHERE sequence_number > $2 ORDER BY sequence_number LIMIT $3",
							  3, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the lines of batch %lld", (long long) b->id);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *line = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		MemoryContext spi_cxt;

		*after = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		/* the list too, not only its strings: SPI's memory goes at commit */
		spi_cxt = MemoryContextSwitchTo(cxt);
		lines = lappend(lines, pstrdup(line));
		MemoryContextSwitchTo(spi_cxt);
	}
	ff_work_commit();
	return lines;
}

/* The SHA-256 (hex) of a remote file of at most max_bytes, read back. */
static void
remote_sha256(FFSftp *conn, const char *path, size_t max_bytes, char *hex)
{
	EVP_MD_CTX *hash = ff_sha256_new();
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	FFSftpReader *r = ff_sftp_open_read(conn, path, "flexfactor.sftp_inbound_dir");
	char		buf[32768];
	size_t		total = 0;
	size_t		n;

	while ((n = ff_sftp_read_some(r, buf, sizeof(buf))) > 0)
	{
		total += n;
		if (total > max_bytes)
			break;				/* not the batch's file: a hash that cannot match */
		if (EVP_DigestUpdate(hash, buf, n) != 1)
			elog(ERROR, "could not compute SHA-256");
	}
	ff_sftp_close_read(r);
	if (EVP_DigestFinal_ex(hash, digest, NULL) != 1)
		elog(ERROR, "could not compute SHA-256");
	ff_sha256_hex(digest, hex);
}

/*
 * Give the verified upload its final name.  If a file has that name already
 * (this batch placed by an attempt whose success was not recorded, or by the
 * other node around a failover), it is compared with the batch's file: its
 * size, then, if that matches, its SHA-256 read back.  The same bytes: left
 * in place, this attempt's copy removed.  Other bytes (a partial file from
 * two writers sharing one file in an older version, say): replaced by the
 * verified file, with a WARNING, since FlexFactor may have read it.
 */
static void
place_batch_file(FFSftp *conn, FFSftpUpload *up, ReadyBatch *b, const char *hex, int64 bytes)
{
	const char *final = ff_sftp_upload_final_path(up);

	for (int round = 0; !ff_sftp_place_upload(up); round++)
	{
		uint64		size;
		char		found[PG_SHA256_DIGEST_STRING_LENGTH] = "";

		if (round >= 3)
			ereport(ERROR,
					(errcode(ERRCODE_FF_SFTP_IO),
					 errmsg("could not rename the upload of batch %lld to \"%s\" on the SFTP server",
							(long long) b->id, b->file_name),
					 errdetail("Another writer kept putting a file of that name in place."),
					 errhint("Make sure a single primary exports; the upload is retried with backoff.")));
		if (!ff_sftp_size(conn, final, &size))
			continue;			/* gone again: rename once more */
		if (size == (uint64) bytes)
		{
			remote_sha256(conn, final, bytes, found);
			if (strcmp(found, hex) == 0)
			{
				ff_sftp_discard_upload(up);
				ereport(LOG,
						(errmsg("flexfactor worker found batch %lld already in place as \"%s\"",
								(long long) b->id, b->file_name),
						 errdetail("The file there has the batch's %lld bytes and SHA-256; it was left as it is, and this attempt's copy removed.",
								   (long long) bytes)));
				return;
			}
		}
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("flexfactor worker replaced \"%s\" on the SFTP server: it held other bytes than batch %lld",
						b->file_name, (long long) b->id),
				 errdetail("It had %llu bytes%s%s; the batch's file has %lld bytes, SHA-256 %s.",
						   (unsigned long long) size, found[0] ? ", SHA-256 " : "", found,
						   (long long) bytes, hex),
				 errhint("Two writers may have shared that file (an older flexfactor on two nodes around a failover); "
						 "if FlexFactor read it before, ask them to check its lines.")));
		if (ff_sftp_replace_final(up))
			return;
	}
}

/*
 * Stream the batch's lines to a temporary file of this attempt's own, check
 * them against what the batch recorded (line count; size and SHA-256 after
 * the first upload), give the file its final name (place_batch_file) and
 * mark the batch uploaded.  The lines are read
 * in short transactions and sent with none open: the upload holds no
 * snapshot, lock or transaction id however slow the server.
 */
static void
upload_batch(FFSftp *conn, ReadyBatch *b)
{
	Oid			types[3] = {INT8OID, TEXTOID, INT8OID};
	Datum		values[3] = {Int64GetDatum(b->id)};
	EVP_MD_CTX *hash = ff_sha256_new();
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_STRING_LENGTH];
	int64		lines = 0;
	int64		bytes = 0;
	int32		after = 0;
	FFSftpUpload *up;
	MemoryContext chunk_cxt = AllocSetContextCreate(CurrentMemoryContext,
													"flexfactor batch lines",
													ALLOCSET_DEFAULT_SIZES);

	pgstat_report_activity(STATE_RUNNING, "flexfactor: uploading a batch");
	up = ff_sftp_begin_upload(conn, ff_sftp_inbound_dir, b->file_name);
	for (;;)
	{
		MemoryContext old = MemoryContextSwitchTo(chunk_cxt);
		List	   *chunk = fetch_lines(b, &after);
		ListCell   *lc;

		MemoryContextSwitchTo(old);
		pgstat_report_activity(STATE_RUNNING, "flexfactor: uploading a batch");
		if (chunk == NIL)
			break;
		foreach(lc, chunk)
		{
			char	   *line = lfirst(lc);
			size_t		len = strlen(line);

			ff_sftp_write(up, line, len);
			ff_sftp_write(up, "\n", 1);
			if (EVP_DigestUpdate(hash, line, len) != 1 ||
				EVP_DigestUpdate(hash, "\n", 1) != 1)
				elog(ERROR, "could not compute SHA-256");
			lines++;
			bytes += len + 1;
		}
		MemoryContextReset(chunk_cxt);
		ff_worker_yield();
	}
	MemoryContextDelete(chunk_cxt);
	if (EVP_DigestFinal_ex(hash, digest, NULL) != 1)
		elog(ERROR, "could not compute SHA-256");
	ff_sha256_hex(digest, hex);
	if (lines != b->line_count || (b->sha256 != NULL && strcmp(hex, b->sha256) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("batch %lld no longer has the lines it was created with",
						(long long) b->id),
				 errdetail("Recorded %d lines, SHA-256 %s; found %lld lines, SHA-256 %s. The file was not renamed into place.",
						   b->line_count, b->sha256 ? b->sha256 : "(not uploaded yet)",
						   (long long) lines, hex),
				 errhint("Someone changed or removed its rows in flexfactor.declines or flexfactor.transmit_queue; restore them.")));

	ff_sftp_close_upload(up);
	place_batch_file(conn, up, b, hex, bytes);

	ff_work_begin("flexfactor: recording an upload");
	values[1] = CStringGetTextDatum(hex);
	values[2] = Int64GetDatum(bytes);
	if (SPI_execute_with_args("UPDATE flexfactor.batches"
							  "   SET state = 'uploaded', uploaded_at = now(),"
							  "       attempts = attempts + 1, last_error = NULL,"
							  "       sha256 = $2, byte_count = $3"
							  " WHERE id = $1",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_execute_with_args("UPDATE flexfactor.transmit_queue"
							  "   SET state = 'delivered', delivered_at = now(), attempts = attempts + 1"
							  " WHERE batch_id = $1 AND state = 'batched'",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not mark batch uploaded");
	ff_work_commit();
}

static void
record_failure(ReadyBatch *b, const char *message)
{
	Oid			types[3] = {INT8OID, TEXTOID, INT4OID};
	Datum		values[3] = {Int64GetDatum(b->id), CStringGetTextDatum(message),
	Int32GetDatum(ff_batch_retry_base)};

	if (SPI_execute_with_args("UPDATE flexfactor.batches"
							  "   SET attempts = attempts + 1, last_error = $2,"
							  "       next_attempt_at = now() + make_interval(secs =>"
							  "           least($3 * power(2, least(attempts, 20)), 900))"
							  " WHERE id = $1",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record a failed upload");
}

static char *
describe_error(ErrorData *edata)
{
	return edata->detail ? psprintf("%s: %s", edata->message, edata->detail)
		: pstrdup(edata->message);
}

/* ------------------------------------------------------------ the worker */

/*
 * Log a failure of the pass caught as edata (with its SQLSTATE, detail, hint
 * and context), record it in the status slot, and keep the pass's first
 * failure in *result.
 */
static void
report_failure(ErrorData *edata, FFExportResult *result, ReadyBatch *failed_batch,
			   const char *activity)
{
	bool		read_only = ff_fence_read_only_error(edata->sqlerrcode);

	if (result->sqlerrcode == 0)
	{
		result->sqlerrcode = edata->sqlerrcode;
		if (failed_batch)
			snprintf(result->message, FF_ERROR_LEN, "batch %lld (%s) was not uploaded: %s",
					 (long long) failed_batch->id, failed_batch->file_name, edata->message);
		else
			snprintf(result->message, FF_ERROR_LEN, "could not %s: %s", activity, edata->message);
		strlcpy(result->detail, edata->detail ? edata->detail : "", FF_ERROR_LEN);
		strlcpy(result->hint, edata->hint ? edata->hint : "", FF_ERROR_LEN);
	}
	if (!read_only)
		ff_status_error(describe_error(edata));
	if (failed_batch != NULL)
		edata->message = psprintf("flexfactor worker could not upload batch %lld (%s): %s",
								  (long long) failed_batch->id, failed_batch->file_name,
								  edata->message);
	else
		edata->message = psprintf("flexfactor worker could not %s: %s", activity, edata->message);
	/* the server became read-only (a switchover): nothing failed */
	if (read_only)
	{
		elog(DEBUG1, "%s", edata->message);
		return;
	}
	edata->elevel = WARNING;
	ThrowErrorData(edata);
}

void
ff_export_report_failure(ErrorData *edata, FFExportResult *result, const char *activity)
{
	report_failure(edata, result, NULL, activity);
}

/*
 * Catch the current error: abort the transaction, record it on the batch that
 * failed (if any), and report it.
 */
static void
take_failure(MemoryContext cxt, FFExportResult *result, ReadyBatch *failed_batch,
			 const char *activity)
{
	ErrorData  *edata = ff_work_catch(cxt);

	/* read-only (a switchover): nothing failed, nothing to record */
	if (failed_batch != NULL && !ff_fence_read_only_error(edata->sqlerrcode))
	{
		ff_work_begin("flexfactor: recording a failed upload");
		record_failure(failed_batch, describe_error(edata));
		ff_work_commit();
	}
	report_failure(edata, result, failed_batch, activity);
}

/*
 * ff_export_batch(retry_now => true), after the DBA fixed a setting: what
 * waits for a retry after a failure is due at once.  Ready batch files are
 * uploaded by this pass; queued transmits and failed billing callbacks by
 * the worker's next steps, whose own backoff is cleared too.  Only the worker
 * runs this, between its steps, so no transmit is in flight: a future
 * next_attempt_at of a pending transmit is a backoff or the lease of a
 * worker that died, and the row carries the same idempotency key either way.
 * Runs in the caller's transaction.
 */
static void
make_waiting_due(FFExportResult *result)
{
	bool		isnull;

	if (SPI_execute("WITH b AS (UPDATE flexfactor.batches SET next_attempt_at = now()"
					"            WHERE state = 'ready' AND next_attempt_at > now() RETURNING 1),"
					"     t AS (UPDATE flexfactor.transmit_queue SET next_attempt_at = now()"
					"            WHERE state = 'pending' AND next_attempt_at > now() RETURNING 1),"
					"     c AS (UPDATE flexfactor.order_events SET next_callback_at = now()"
					"            WHERE callback_state = 'failed' AND next_callback_at > now() RETURNING 1)"
					" SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM t), (SELECT count(*) FROM c)",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not make waiting work due");
	result->retried_batches = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	result->retried_transmits = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	result->retried_callbacks = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	SPI_freetuptable(SPI_tuptable);
}

/*
 * The batch files still waiting for a later attempt after this pass (their
 * backoff after a failure), the soonest first, for ff_export_batch() to say
 * what waits until when.
 */
static void
list_waiting(FFExportResult *result)
{
	ff_work_begin("flexfactor: listing waiting batches");
	if (SPI_execute("SELECT id, file_name, attempts, next_attempt_at, count(*) OVER ()"
					"  FROM flexfactor.batches WHERE state = 'ready' AND next_attempt_at > now()"
					" ORDER BY next_attempt_at, id LIMIT " CppAsString2(FF_WAITING_SHOWN),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list waiting batches");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		FFWaitingBatch *w = &result->waiting_first[i];
		bool		isnull;

		w->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(w->file_name, SPI_getvalue(tup, desc, 2), sizeof(w->file_name));
		w->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		w->next_attempt_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		result->waiting = (int32) DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	}
	ff_work_commit();
}

/* The same, behind an error boundary: a failure only costs the NOTICE. */
static void
collect_waiting(FFExportResult *result)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		list_waiting(result);
	}
	PG_CATCH();
	{
		take_failure(cxt, result, NULL, "list the batches waiting for a retry");
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/* the SFTP part of a pass gives the rest of the worker its turn after this */
#define EXPORT_PASS_BUDGET_MS	10000

/*
 * Temporary upload files unchanged for this long (by the server's clock)
 * belong to attempts that died: a live attempt writes at least every
 * flexfactor.sftp_timeout_ms (at most 10 minutes) or fails.
 */
#define STALE_UPLOAD_AGE_S		3600
#define STALE_UPLOAD_CHECK_MS	60000

static bool
is_batch_file_name(const char *name)
{
	size_t		n = strlen(name);

	return (strncmp(name, "evaluate_", 9) == 0 || strncmp(name, "transmit_", 9) == 0) &&
		n > 6 && strcmp(name + n - 6, ".jsonl") == 0;
}

/* a temporary upload file of a batch: what the listing keeps */
static bool
is_batch_upload_name(const char *name)
{
	char	   *final = ff_sftp_upload_final_name(name);
	bool		is = final != NULL && is_batch_file_name(final);

	if (final != NULL)
		pfree(final);
	return is;
}

/*
 * Remove from the inbound folder the temporary files of uploads that died
 * (any node's: named "<batch file name>.<pid>-<hex>.part", or an older
 * version's "<batch file name>.part") once they are stale.  Nothing else is
 * touched: no final name, no file named otherwise.
 */
static void
remove_stale_uploads(FFSftp *conn)
{
	List	   *entries = ff_sftp_list(conn, ff_sftp_inbound_dir, "flexfactor.sftp_inbound_dir",
								  is_batch_upload_name);
	time_t		now = time(NULL);
	int			removed = 0;
	ListCell   *lc;

	foreach(lc, entries)
	{
		FFSftpEntry *e = lfirst(lc);

		if (e->mtime == 0 || (time_t) e->mtime > now - STALE_UPLOAD_AGE_S)
			continue;
		ff_sftp_remove(conn, psprintf("%s/%s", ff_sftp_inbound_dir, e->name),
					   "flexfactor.sftp_inbound_dir");
		removed++;
	}
	if (removed > 0)
		ereport(LOG,
				(errmsg("flexfactor worker removed %d temporary upload files left by attempts that died",
						removed),
				 errdetail("They were unchanged for over %d minutes in flexfactor.sftp_inbound_dir; none had been renamed into place.",
						   STALE_UPLOAD_AGE_S / 60)));
}

static FFSftp *
connect_in(MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	FFSftp	   *conn;

	pgstat_report_activity(STATE_RUNNING, "flexfactor: connecting to the SFTP server");
	conn = ff_sftp_connect();	/* closed when cxt is reset or deleted */
	MemoryContextSwitchTo(old);
	return conn;
}

/*
 * One SFTP pass of the worker: fix pending declines into batches (one short
 * transaction), upload each due batch (its lines read in short transactions,
 * none open while bytes travel), then read FlexFactor's result files over the
 * same connection.  Everything it allocates, the connection included, lives
 * in the caller's context (the phase's, deleted after it).  A failed upload
 * is recorded on its batch and ends the uploads; the first failure is kept
 * in *result; the pass itself never raises an error.  After
 * EXPORT_PASS_BUDGET_MS it starts no new file: the rest waits for the next
 * pass, which follows at once.
 */
static void
export_pass(FFExportResult *result, bool asked, bool retry_now)
{
	static TimestampTz last_stale_check = 0;
	MemoryContext pass_cxt = CurrentMemoryContext;
	List	   *volatile batches = NIL;
	ListCell   *lc;
	FFSftp	   *volatile conn = NULL;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   EXPORT_PASS_BUDGET_MS);

	memset(result, 0, sizeof(FFExportResult));
	PG_TRY();
	{
		ff_work_begin("flexfactor: fixing batches");
		create_batches();
		if (retry_now)
			make_waiting_due(result);
		batches = ready_batches(pass_cxt, false);
		ff_work_commit();
	}
	PG_CATCH();
	{
		take_failure(pass_cxt, result, NULL, "fix batches");
		return;
	}
	PG_END_TRY();
	if (retry_now)
		ff_worker_retry_now();

	foreach(lc, batches)
	{
		ReadyBatch *b = (ReadyBatch *) lfirst(lc);
		volatile bool failed = false;

		if (GetCurrentTimestamp() >= deadline)
		{
			SetLatch(MyLatch);
			break;
		}
		ff_status_set("uploading batches");
		PG_TRY();
		{
			if (conn == NULL)
				conn = connect_in(pass_cxt);
			upload_batch(conn, b);
			result->uploaded++;
		}
		PG_CATCH();
		{
			take_failure(pass_cxt, result, b, "upload a batch");
			failed = true;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(pass_cxt);
		if (failed)
			break;
	}

	/* then FlexFactor's answers, over the same connection */
	if (result->sqlerrcode == 0 && ff_sftp_host[0] != '\0')
	{
		PG_TRY();
		{
			if (conn == NULL)
				conn = connect_in(pass_cxt);
		}
		PG_CATCH();
		{
			take_failure(pass_cxt, result, NULL, "connect to read result files");
		}
		PG_END_TRY();
		MemoryContextSwitchTo(pass_cxt);
		if (conn != NULL)
			ff_results_ingest(conn, pass_cxt, result, deadline);
	}

	/* leftovers of dead attempts: when asked, and at most every minute */
	if (conn != NULL && result->sqlerrcode == 0 &&
		(asked || TimestampDifferenceExceeds(last_stale_check, GetCurrentTimestamp(),
											 STALE_UPLOAD_CHECK_MS)))
	{
		PG_TRY();
		{
			remove_stale_uploads(conn);
			last_stale_check = GetCurrentTimestamp();
		}
		PG_CATCH();
		{
			take_failure(pass_cxt, result, NULL, "remove stale upload files");
		}
		PG_END_TRY();
		MemoryContextSwitchTo(pass_cxt);
	}
	if (conn != NULL)
		ff_sftp_disconnect(conn);
}

/*
 * Whether a caller of ff_export_batch() waits for a pass (*ticket: the last
 * ticket taken) and whether one of them asked for retry_now.
 */
static bool
export_requested(uint64 *ticket, bool *retry_now)
{
	bool		requested;

	LWLockAcquire(ff_shared->lock, LW_SHARED);
	*ticket = ff_shared->export_requested;
	requested = *ticket > ff_shared->export_completed;
	*retry_now = ff_shared->export_retry > ff_shared->export_completed;
	LWLockRelease(ff_shared->lock);
	return requested;
}

/* Whether ff_export_batch() is waiting for a pass. */
bool
ff_export_requested(void)
{
	uint64		ticket;
	bool		retry_now;

	return export_requested(&ticket, &retry_now);
}

static void
publish(uint64 ticket, FFExportResult *result)
{
	LWLockAcquire(ff_shared->lock, LW_EXCLUSIVE);
	ff_shared->export_result = *result;
	ff_shared->export_completed = Max(ff_shared->export_completed, ticket);
	if (ff_shared->export_requested > ticket)
		SetLatch(MyLatch);		/* asked again meanwhile: another pass at once */
	LWLockRelease(ff_shared->lock);
	ConditionVariableBroadcast(&ff_shared->export_done);
}

/*
 * Called by the worker every pass: exports when SFTP is configured, and
 * always when ff_export_batch() asked for it, publishing the result to the
 * callers waiting for it, whatever happened.  Returns false when the last
 * export (this pass's, or the last one that ran) met a failure.
 */
bool
ff_export_if_due(void)
{
	static TimestampTz last_scheduled = 0;
	static bool last_ok = true;
	FFExportResult result;
	uint64		ticket;
	bool		retry_now;
	bool		requested = export_requested(&ticket, &retry_now);
	TimestampTz now = GetCurrentTimestamp();
	bool		scheduled;

	/* on its own only every batch_interval seconds (0: only when asked) */
	scheduled = ff_sftp_host[0] != '\0' && ff_batch_interval > 0 &&
		TimestampDifferenceExceeds(last_scheduled, now, ff_batch_interval * 1000 - 100);
	if (!requested && !scheduled)
		return last_ok;
	if (scheduled)
		last_scheduled = now;

	PG_TRY();
	{
		export_pass(&result, requested, requested && retry_now);
		/* the callers hear what still waits, and until when */
		if (requested)
			collect_waiting(&result);
	}
	PG_CATCH();
	{
		if (requested)
		{
			/* the caller waiting in ff_export_batch() hears of it too */
			MemoryContext cxt = CurrentMemoryContext == ErrorContext ?
				TopMemoryContext : CurrentMemoryContext;
			MemoryContext old = MemoryContextSwitchTo(cxt);
			ErrorData  *edata = CopyErrorData();

			MemoryContextSwitchTo(old);
			memset(&result, 0, sizeof(result));
			result.sqlerrcode = edata->sqlerrcode;
			snprintf(result.message, FF_ERROR_LEN, "the export pass failed: %s", edata->message);
			strlcpy(result.detail, edata->detail ? edata->detail : "", FF_ERROR_LEN);
			strlcpy(result.hint, edata->hint ? edata->hint : "", FF_ERROR_LEN);
			FreeErrorData(edata);
			publish(ticket, &result);
		}
		last_ok = false;
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (requested)
		publish(ticket, &result);
	last_ok = (result.sqlerrcode == 0);
	return last_ok;
}

/*
 * Called by the worker while this server may not export (read-only, in
 * recovery): callers waiting in ff_export_batch() hear why at once.
 */
void
ff_export_refuse_requests(const char *why)
{
	FFExportResult result;
	uint64		ticket;
	bool		retry_now;

	if (!export_requested(&ticket, &retry_now))
		return;
	memset(&result, 0, sizeof(result));
	result.sqlerrcode = ERRCODE_READ_ONLY_SQL_TRANSACTION;
	snprintf(result.message, FF_ERROR_LEN, "nothing was exported: %s", why);
	strlcpy(result.hint, "Batches are fixed and uploaded once this server is a writable primary.",
			FF_ERROR_LEN);
	publish(ticket, &result);
}

/* ----------------------------------------------------- ff_export_batch() */

#define EXPORT_WAIT_TICK_MS		1000
#define WORKER_ABSENT_LIMIT_MS	30000

PG_FUNCTION_INFO_V1(ff_export_batch);
PG_FUNCTION_INFO_V1(ff_export_batch_retry);

/*
 * After an export: which batch files still wait for their next attempt and
 * until when, in the caller's time zone; a NOTICE, so that 0 files uploaded
 * is never silent about them.
 */
static void
report_waiting(const FFExportResult *result, bool retry_now)
{
	StringInfoData list;
	int			shown = Min(result->waiting, FF_WAITING_SHOWN);

	if (result->waiting <= 0)
		return;
	initStringInfo(&list);
	for (int i = 0; i < shown; i++)
	{
		const FFWaitingBatch *w = &result->waiting_first[i];

		appendStringInfo(&list, "%sbatch %lld (%s): attempt %d at %s",
						 i > 0 ? "; " : "", (long long) w->id, w->file_name, w->attempts + 1,
						 timestamptz_to_str(w->next_attempt_at));
	}
	if (result->waiting > shown)
		appendStringInfo(&list, "; and %d more", result->waiting - shown);
	ereport(NOTICE,
			(errmsg_plural("%d batch file waits for its next upload attempt, at %s",
						   "%d batch files wait for their next upload attempt, the first at %s",
						   result->waiting, result->waiting,
						   timestamptz_to_str(result->waiting_first[0].next_attempt_at)),
			 errdetail("%s.", list.data),
			 retry_now ?
			 errhint("They failed again in this export; flexfactor.batch_status shows why.") :
			 errhint("After fixing what made them fail (flexfactor.batch_status shows it), "
					 "upload them now with SELECT flexfactor.ff_export_batch(retry_now => true).")));
}

/* What retry_now made due at once. */
static void
report_retried(const FFExportResult *result)
{
	if (result->retried_batches + result->retried_transmits + result->retried_callbacks == 0)
		return;
	ereport(NOTICE,
			(errmsg("retry now: %lld %s, %lld %s and %lld %s that waited for a later attempt are due at once",
					(long long) result->retried_batches,
					result->retried_batches == 1 ? "batch file" : "batch files",
					(long long) result->retried_transmits,
					result->retried_transmits == 1 ? "queued transmit" : "queued transmits",
					(long long) result->retried_callbacks,
					result->retried_callbacks == 1 ? "failed billing callback" : "failed billing callbacks"),
			 errdetail("The batch files were tried in this export; the worker sends the transmits and "
					   "runs the callbacks next.")));
}

/*
 * ff_export_batch() returns integer: asks the worker for an export pass now
 * and waits for it; returns the number of batch files uploaded.  The worker
 * fixes and uploads in transactions of its own, so the caller's transaction
 * can neither undo an upload nor make one twice; declines the caller has not
 * committed yet are not seen.  The pass's first failure is re-raised here as
 * a WARNING with its SQLSTATE, and the batch files still waiting for a later
 * attempt are named in a NOTICE with that attempt's time.  Waiting is
 * interruptible; a cancelled caller leaves the worker to finish (or retry)
 * the same files.
 *
 * ff_export_batch(retry_now boolean) (ff_export_batch_retry): with true, the
 * pass first makes everything that waits for a retry after a failure due
 * (batch files, queued transmits, failed billing callbacks), for use after
 * fixing a setting.
 */
static int32
export_batch(bool retry_now)
{
	FFShared   *sh = ff_shared_or_error();
	FFWorkerSlot *worker = &sh->slots[FF_ROLE_WORKER];
	FFExportResult *result = palloc(sizeof(FFExportResult));
	uint64		ticket;
	pid_t		pid;
	char	   *dbname;
	long		absent_ms = 0;

	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || strcmp(dbname, ff_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("the flexfactor worker does not serve this database"),
				 errdetail("Exports run in the worker, which serves flexfactor.database = \"%s\".", ff_database),
				 errhint("Set flexfactor.database to this database and restart PostgreSQL.")));

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	ticket = ++sh->export_requested;
	if (retry_now)
		sh->export_retry = ticket;
	LWLockRelease(sh->lock);
	ff_status_wake(FF_ROLE_WORKER);

	ConditionVariablePrepareToSleep(&sh->export_done);
	for (;;)
	{
		bool		done;

		LWLockAcquire(sh->lock, LW_SHARED);
		done = sh->export_completed >= ticket;
		if (done)
			*result = sh->export_result;
		pid = worker->pid;
		LWLockRelease(sh->lock);
		if (done)
			break;

		/* the worker may be starting, or restarting after a crash */
		absent_ms = (pid == 0) ? absent_ms + EXPORT_WAIT_TICK_MS : 0;
		if (absent_ms > WORKER_ABSENT_LIMIT_MS)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_FF_NOT_CONFIGURED),
					 errmsg("the flexfactor worker stopped before the export finished"),
					 errhint("Pending batches are uploaded when the worker runs again; see ff_worker_status().")));
		}
		(void) ConditionVariableTimedSleep(&sh->export_done, EXPORT_WAIT_TICK_MS,
										  ff_wait_event(FF_WAIT_EXPORT));
	}
	ConditionVariableCancelSleep();

	if (retry_now)
		report_retried(result);
	if (result->sqlerrcode != 0)
		ereport(WARNING,
				(errcode(result->sqlerrcode),
				 errmsg("%s", result->message),
				 result->detail[0] ? errdetail("%s", result->detail) : 0,
				 result->hint[0] ? errhint("%s", result->hint) : 0));
	report_waiting(result, retry_now);
	return result->uploaded;
}

Datum
ff_export_batch(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(export_batch(false));
}

Datum
ff_export_batch_retry(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(export_batch(PG_GETARG_BOOL(0)));
}
