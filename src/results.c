/*
 * results.c
 *		Reads FlexFactor's answers from the outbound folder: result files
 *		(<batch>.result.jsonl) and whole-file rejections (<batch>.error.json),
 *		each applied once, in memory bounded whatever the file's size, a bad
 *		one never holding up the others.
 *
 * Each pass of the export lists the folder and takes the answer files in
 * name order:
 *
 * - A file refused before and still as it was (same name, size and
 *   modification time as its row in flexfactor.refused_result_files) is
 *   skipped without being read, after a restart of the worker too.
 * - A short transaction asks which batch it answers
 *   (flexfactor._answered_batch()): a file applied already is only moved
 *   away; one that answers no batch, or an error file for a batch answered
 *   already, is refused without a byte of it being read, and so is a result
 *   file larger, by its listed size, than its batch's lines can be.
 * - A result file is downloaded with no transaction open into a temporary
 *   file (PostgreSQL's: deleted when closed, and when the process exits),
 *   checked as it comes: text in the database's encoding, no line longer than
 *   MAX_RESULT_LINE_BYTES, no more lines than its batch.  Then one
 *   transaction reads it back and hands it to _apply_result_lines() a chunk
 *   at a time (RESULT_CHUNK_BYTES, RESULT_CHUNK_LINES), and
 *   _finish_result_file() checks that every line of the batch was answered
 *   and records the file as applied: all of it or nothing, once.  The worker
 *   holds one line in memory while downloading and one chunk while applying,
 *   whatever the size of the file.
 * - An error file is a small JSON object, read whole (at most
 *   MAX_ERROR_FILE_BYTES) and applied by _apply_error_file().
 * - An applied file is moved to flexfactor.sftp_processed_dir, or deleted.
 *
 * A failure that is the file's fault (FF009, an SFTP refusal to open or read
 * it, a data exception, a program limit such as a line nested too deep)
 * records the file in flexfactor.refused_result_files, in a transaction of
 * its own, and is logged as a WARNING: once per version
 * of the file, since the next passes skip it.  A lost connection ends the
 * reading until the next pass; any other failure is only logged, and the
 * file is tried again next pass.
 *
 * Not here: what applying means (SQL, sql/install/08_results_and_webhooks.sql),
 * the uploads (batch.c), the SFTP protocol (sftp.c).
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "catalog/pg_type.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "batch.h"
#include "errors.h"
#include "results.h"
#include "settings.h"
#include "work.h"
#include "worker.h"
#include "worker_status.h"

/*
 * A result line answers one batch line with a handful of fields; a line
 * longer than this is refused with its file.  Its end (LF, or CRLF) is not
 * counted: a CRLF file is held to the same limit as an LF one.
 */
#define MAX_RESULT_LINE_BYTES	(1024 * 1024)
/* what one call of _apply_result_lines() gets, at most */
#define RESULT_CHUNK_BYTES		(1024 * 1024)
#define RESULT_CHUNK_LINES		500
#define MAX_ERROR_FILE_BYTES	(64 * 1024)
#define READ_BLOCK_BYTES		(64 * 1024)

static bool
has_suffix(const char *name, const char *suffix)
{
	size_t		n = strlen(name);
	size_t		m = strlen(suffix);

	return n > m && strcmp(name + n - m, suffix) == 0;
}

static int
compare_entries(const ListCell *a, const ListCell *b)
{
	return strcmp(((const FFSftpEntry *) lfirst(a))->name,
				  ((const FFSftpEntry *) lfirst(b))->name);
}

/* a name FlexFactor's answers may have: what the listing keeps */
static bool
is_answer_name(const char *name)
{
	return has_suffix(name, ".result.jsonl") || has_suffix(name, ".error.json");
}

/*
 * How a listed name is shown and stored: the name is the SFTP server's
 * bytes, so every byte that is not printable ASCII, and the backslash, is
 * written \xNN.  The label is then valid text in any server encoding and
 * holds no newline (a log line of its own) or NUL.  A batch's answer is
 * named in printable ASCII, so its label is its name, and a label with an
 * escape answers no batch.
 */
static char *
name_label(const char *name)
{
	StringInfoData s;

	initStringInfo(&s);
	for (const unsigned char *p = (const unsigned char *) name; *p != '\0'; p++)
	{
		if (*p < 0x20 || *p > 0x7e || *p == '\\')
			appendStringInfo(&s, "\\x%02x", *p);
		else
			appendStringInfoChar(&s, (char) *p);
	}
	return s.data;
}

/*
 * Errors that refuse the file: it is recorded in refused_result_files and
 * warned about once.  Those that belong to its bytes keep it unread until it
 * changes; class 54 too: a line nested deeper than the JSON parser's stack
 * allows (54001), a value over a size limit (54000).  The SFTP server's
 * refusal to open or read it (FF033: permission denied while FlexFactor
 * still writes it, say) says nothing of its bytes: such a file is tried
 * again at every pass (files_to_read), and warned about again only when the
 * reason changes (record_refusal).
 */
static bool
file_is_refused(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_FF_MALFORMED_RESPONSE ||
		sqlerrcode == ERRCODE_FF_SFTP_IO ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_DATA_EXCEPTION ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

static Datum
int8_array(int64 *values, int n)
{
	Datum	   *d = palloc(Max(n, 1) * sizeof(Datum));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(values[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
										   TYPALIGN_DOUBLE));
}

/* a file of the listing to read, and what refused it before (if anything) */
typedef struct ResultFile
{
	FFSftpEntry *entry;
	char	   *label;			/* name_label(entry->name) */
	char	   *refused_for;	/* the reason recorded for it as it is now, or NULL */
} ResultFile;

/*
 * The answer files of the listing, in name order, less those refused already
 * as they are listed now for what they hold.  A file the SFTP server refused
 * to open or read (FF033) is tried again, with the reason recorded then.
 * One short transaction.
 */
static List *
files_to_read(List *entries)
{
	List	   *candidates = NIL;
	List	   *result = NIL;
	ListCell   *lc;
	ResultFile *files;
	bool	   *skip;
	Datum	   *names;
	int64	   *sizes;
	int64	   *mtimes;
	int			n = 0;
	Oid			types[3] = {TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[3];
	MemoryContext cxt = CurrentMemoryContext;

	foreach(lc, entries)
	{
		FFSftpEntry *e = lfirst(lc);

		if (is_answer_name(e->name))
			candidates = lappend(candidates, e);
	}
	if (candidates == NIL)
		return NIL;
	list_sort(candidates, compare_entries);

	files = palloc0(list_length(candidates) * sizeof(ResultFile));
	skip = palloc0(list_length(candidates) * sizeof(bool));
	names = palloc(list_length(candidates) * sizeof(Datum));
	sizes = palloc(list_length(candidates) * sizeof(int64));
	mtimes = palloc(list_length(candidates) * sizeof(int64));
	foreach(lc, candidates)
	{
		FFSftpEntry *e = lfirst(lc);

		files[n].entry = e;
		files[n].label = name_label(e->name);
		names[n] = CStringGetTextDatum(files[n].label);
		sizes[n] = (int64) e->size;
		mtimes[n] = (int64) e->mtime;
		n++;
	}
	values[0] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = int8_array(sizes, n);
	values[2] = int8_array(mtimes, n);

	/* each row names its file by its place in the arrays (1-based) */
	ff_work_begin("flexfactor: reading refused result files");
	if (SPI_execute_with_args("SELECT f.place, r.sqlstate, r.reason"
							  "  FROM unnest($1, $2, $3) WITH ORDINALITY AS f(name, size, mtime, place)"
							  "  JOIN flexfactor.refused_result_files r"
							  "    ON r.file_name = f.name AND r.byte_count = f.size"
							  "   AND r.modified_at = to_timestamp(f.mtime)",
							  3, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read flexfactor.refused_result_files");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		place = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		char	   *sqlstate = SPI_getvalue(row, desc, 2);

		if (sqlstate != NULL && strcmp(sqlstate, unpack_sql_state(ERRCODE_FF_SFTP_IO)) == 0)
			files[place - 1].refused_for = MemoryContextStrdup(cxt, SPI_getvalue(row, desc, 3));
		else
			skip[place - 1] = true; /* refused for its bytes */
	}
	ff_work_commit();
	MemoryContextSwitchTo(cxt);

	for (int i = 0; i < n; i++)
		if (!skip[i])
			result = lappend(result, &files[i]);
	return result;
}

/*
 * Which batch the file answers (in the caller's transaction): false when the
 * file was applied already.  Raises FF009 when it answers none.
 */
static bool
answered_batch(const char *name, int64 *batch_id, int32 *line_count)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	Datum		id;

	if (SPI_execute_with_args("SELECT id, line_count FROM flexfactor._answered_batch($1)",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not find the batch of result file \"%s\"", name);
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	*batch_id = DatumGetInt64(id);
	*line_count = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

static void
refuse(const char *message, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_FF_MALFORMED_RESPONSE),
			 errmsg("%s", message),
			 errdetail("%s", detail),
			 errhint("Nothing was applied; ask FlexFactor about the file.")));
}

/* ------------------------------------------------------------ download */

/*
 * A result file downloaded: its non-empty lines, each a length and its
 * bytes, in a temporary file of fd.c's (written through a buffer of our own:
 * a BufFile writes its buffer out when closed, so closing one after a failed
 * write, temp_file_limit or a full disk, raised the error again from the
 * memory context's reset and left the file behind).
 */
typedef struct Download
{
	File		file;
	off_t		written;		/* bytes in the file */
	off_t		read_at;		/* reading it back */
	StringInfoData buffer;		/* not written yet */
	int32		lines;
	char		sha256[PG_SHA256_DIGEST_STRING_LENGTH];
} Download;

/* a reset callback: FileClose() only logs its failures */
static void
close_temp_file(void *arg)
{
	FileClose(*(File *) arg);
}

static void
write_buffer(Download *d)
{
	if (d->buffer.len == 0)
		return;
	errno = 0;
	if (FileWrite(d->file, d->buffer.data, d->buffer.len, d->written,
				  WAIT_EVENT_BUFFILE_WRITE) != d->buffer.len)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write a downloaded result file to its temporary file: %m")));
	d->written += d->buffer.len;
	resetStringInfo(&d->buffer);
}

static void
spool(Download *d, const void *data, uint32 len)
{
	appendBinaryStringInfo(&d->buffer, data, len);
	if (d->buffer.len >= READ_BLOCK_BYTES)
		write_buffer(d);
}

static void
read_exact(Download *d, void *buf, uint32 len)
{
	errno = 0;
	if (len > 0 && FileRead(d->file, buf, len, d->read_at, WAIT_EVENT_BUFFILE_READ) != len)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read a downloaded result file back from its temporary file: %m")));
	d->read_at += len;
}

static void
line_too_long(char **why, const char *name, int32 number)
{
	why[0] = psprintf("result file %s has a line longer than %d bytes", name, MAX_RESULT_LINE_BYTES);
	why[1] = psprintf("Line %d; it was not read further.", number);
}

/*
 * Check one complete line (without its LF; a CR before it is taken off)
 * and keep it when it is not empty.  Returns false, with why in *why (an
 * errmsg and an errdetail), when the file is refused.
 */
static bool
take_line(Download *d, StringInfo line, int32 number, int32 line_count, const char *name,
		  int64 batch_id, char **why)
{
	uint32		len = line->len;

	if (len > 0 && line->data[len - 1] == '\r')
		line->data[--line->len] = '\0';	/* a CRLF end */
	if (line->len > MAX_RESULT_LINE_BYTES)
	{
		line_too_long(why, name, number);
		return false;
	}
	len = line->len;
	if (memchr(line->data, '\0', line->len) != NULL ||
		!pg_verifymbstr(line->data, line->len, true))
	{
		why[0] = psprintf("result file %s is not valid text", name);
		why[1] = psprintf("Line %d is not valid %s, or holds a NUL byte.", number,
						  GetDatabaseEncodingName());
		return false;
	}
	if (len == 0)
		return true;
	if (++d->lines > line_count)
	{
		why[0] = psprintf("result file %s does not match batch %lld", name, (long long) batch_id);
		why[1] = psprintf("It has more than the batch's %d lines; it was not read further.",
						  line_count);
		return false;
	}
	spool(d, &len, sizeof(len));
	spool(d, line->data, len);
	return true;
}

/*
 * Download a result file into a temporary file, with no transaction open,
 * checking it as it comes (see the top of the file).  The temporary file
 * belongs to the current memory context.
 */
static void
download_result(FFSftp *conn, const char *path, const char *name, int64 batch_id,
				int32 line_count, Download *d)
{
	MemoryContextCallback *cb = palloc(sizeof(MemoryContextCallback));
	File	   *file = palloc(sizeof(File));
	EVP_MD_CTX *hash = ff_sha256_new();
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *block = palloc(READ_BLOCK_BYTES);
	StringInfoData line;
	int32		number = 0;
	bool		ok = true;
	char	   *why[2];
	FFSftpReader *r;
	size_t		n;

	d->lines = 0;
	d->written = d->read_at = 0;
	initStringInfo(&d->buffer);
	*file = d->file = OpenTemporaryFile(true);	/* it outlives the transactions */
	cb->func = close_temp_file;
	cb->arg = file;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
	initStringInfo(&line);

	r = ff_sftp_open_read(conn, path, "flexfactor.sftp_outbound_dir");
	while (ok && (n = ff_sftp_read_some(r, block, READ_BLOCK_BYTES)) > 0)
	{
		const char *p = block;
		const char *end = block + n;

		if (EVP_DigestUpdate(hash, block, n) != 1)
			elog(ERROR, "could not compute SHA-256");
		while (ok && p < end)
		{
			const char *nl = memchr(p, '\n', end - p);
			size_t		take = (nl ? nl : end) - p;

			/* one byte more: the CR of a CRLF end, taken off below */
			if (line.len + take > MAX_RESULT_LINE_BYTES + 1)
			{
				line_too_long(why, name, number + 1);
				ok = false;
				break;
			}
			appendBinaryStringInfo(&line, p, take);
			p += take;
			if (nl != NULL)
			{
				ok = take_line(d, &line, ++number, line_count, name, batch_id, why);
				resetStringInfo(&line);
				p++;
			}
		}
	}
	if (ok && line.len > 0)
		ok = take_line(d, &line, ++number, line_count, name, batch_id, why);
	ff_sftp_close_read(r);
	if (!ok)
		refuse(why[0], why[1]);
	write_buffer(d);

	if (EVP_DigestFinal_ex(hash, digest, NULL) != 1)
		elog(ERROR, "could not compute SHA-256");
	ff_sha256_hex(digest, d->sha256);
	pfree(block);
	pfree(line.data);
}

/* --------------------------------------------------------------- apply */

static void
apply_chunk(int64 batch_id, const char *name, Datum *lines, int n, int32 first)
{
	Oid			types[4] = {INT8OID, TEXTOID, TEXTARRAYOID, INT4OID};
	Datum		values[4];

	values[0] = Int64GetDatum(batch_id);
	values[1] = CStringGetTextDatum(name);
	values[2] = PointerGetDatum(construct_array(lines, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = Int32GetDatum(first);
	if (SPI_execute_with_args("SELECT flexfactor._apply_result_lines($1, $2, $3, $4)",
							  4, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not apply the lines of result file \"%s\"", name);
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Apply a downloaded result file, in the caller's transaction, a chunk at a
 * time, each chunk in a memory context reset after it.
 */
static void
apply_result(const char *name, int64 batch_id, Download *d)
{
	MemoryContext chunk_cxt = AllocSetContextCreate(CurrentMemoryContext,
													"flexfactor result file chunk",
													ALLOCSET_DEFAULT_SIZES);
	Datum	   *lines = palloc(RESULT_CHUNK_LINES * sizeof(Datum));
	int			in_chunk = 0;
	size_t		chunk_bytes = 0;
	int32		first = 1;
	Oid			types[4] = {INT8OID, TEXTOID, INT4OID, TEXTOID};
	Datum		values[4];

	d->read_at = 0;
	for (int32 i = 0; i < d->lines; i++)
	{
		uint32		len;
		text	   *t;

		read_exact(d, &len, sizeof(len));
		t = MemoryContextAlloc(chunk_cxt, VARHDRSZ + len);
		SET_VARSIZE(t, VARHDRSZ + len);
		read_exact(d, VARDATA(t), len);
		lines[in_chunk++] = PointerGetDatum(t);
		chunk_bytes += len;
		if (in_chunk == RESULT_CHUNK_LINES || chunk_bytes >= RESULT_CHUNK_BYTES ||
			i == d->lines - 1)
		{
			MemoryContext old = MemoryContextSwitchTo(chunk_cxt);

			apply_chunk(batch_id, name, lines, in_chunk, first);
			MemoryContextSwitchTo(old);
			MemoryContextReset(chunk_cxt);
			first += in_chunk;
			in_chunk = 0;
			chunk_bytes = 0;
			CHECK_FOR_INTERRUPTS();
		}
	}
	MemoryContextDelete(chunk_cxt);

	values[0] = Int64GetDatum(batch_id);
	values[1] = CStringGetTextDatum(name);
	values[2] = Int32GetDatum(d->lines);
	values[3] = CStringGetTextDatum(d->sha256);
	if (SPI_execute_with_args("SELECT flexfactor._finish_result_file($1, $2, $3, $4)",
							  4, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not apply result file \"%s\"", name);
}

/* An error file: a small JSON object, read whole. */
static void
apply_error_file(FFSftp *conn, const char *path, const char *name)
{
	size_t		len;
	char	   *content = ff_sftp_read(conn, path, MAX_ERROR_FILE_BYTES, &len);
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	if (strlen(content) != len || !pg_verifymbstr(content, len, true))
		refuse(psprintf("error file %s is not valid text", name),
			   psprintf("It is not valid %s, or holds a NUL byte.", GetDatabaseEncodingName()));
	values[0] = CStringGetTextDatum(name);
	values[1] = PointerGetDatum(cstring_to_text_with_len(content, len));

	ff_work_begin("flexfactor: applying an error file");
	if (SPI_execute_with_args("SELECT flexfactor._apply_error_file($1, $2)",
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not apply error file \"%s\"", name);
	ff_work_commit();
}

/*
 * Apply one result or error file from the outbound folder, once (see the top
 * of the file).  Returns normally when it is applied, now or before.
 */
static void
ingest_file(FFSftp *conn, const FFSftpEntry *e, const char *path)
{
	const char *name = name_label(e->name);
	bool		error_file = has_suffix(name, ".error.json");
	int64		batch_id;
	int32		line_count;
	bool		pending;
	Download	d;

	ff_work_begin("flexfactor: checking a result file");
	pending = answered_batch(name, &batch_id, &line_count);
	ff_work_commit();
	if (!pending)
		return;
	if (error_file)
	{
		apply_error_file(conn, path, name);
		return;
	}

	/* each line at most MAX_RESULT_LINE_BYTES and its newline (CR LF too) */
	if (e->size > (uint64) line_count * (MAX_RESULT_LINE_BYTES + 2))
		refuse(psprintf("result file %s does not match batch %lld", name, (long long) batch_id),
			   psprintf("It has %llu bytes, more than the batch's %d lines can take; it was not read.",
						(unsigned long long) e->size, line_count));

	download_result(conn, path, name, batch_id, line_count, &d);

	ff_work_begin("flexfactor: applying a result file");
	if (answered_batch(name, &batch_id, &line_count))
		apply_result(name, batch_id, &d);
	ff_work_commit();
}

/*
 * Record a refused file, in a transaction of its own; returns false, and
 * records nothing, when the SFTP server refused it again for the reason
 * recorded already (it is not warned about again).
 */
static bool
record_refusal(const ResultFile *f, ErrorData *edata)
{
	Oid			types[5] = {TEXTOID, INT8OID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[5];
	char	   *reason = edata->detail ? psprintf("%s: %s", edata->message, edata->detail) :
		edata->message;

	if (f->refused_for != NULL && edata->sqlerrcode == ERRCODE_FF_SFTP_IO &&
		strcmp(f->refused_for, reason) == 0)
		return false;
	values[0] = CStringGetTextDatum(f->label);
	values[1] = Int64GetDatum((int64) f->entry->size);
	values[2] = Int64GetDatum((int64) f->entry->mtime);
	values[3] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	values[4] = CStringGetTextDatum(reason);
	ff_work_begin("flexfactor: recording a refused result file");
	if (SPI_execute_with_args("SELECT flexfactor._refuse_result_file($1, $2, $3, $4, $5)",
							  5, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not record refused result file \"%s\"", f->label);
	ff_work_commit();
	return true;
}

/* Move an applied file to flexfactor.sftp_processed_dir, or delete it. */
static void
put_away(FFSftp *conn, const FFSftpEntry *e, const char *path)
{
	if (ff_sftp_processed_dir[0] != '\0')
		ff_sftp_move(conn, path, ff_sftp_processed_dir, e->name);
	else
		ff_sftp_remove(conn, path, "flexfactor.sftp_outbound_dir");
}

/*
 * Read FlexFactor's answers: every result and error file in the outbound
 * folder not refused already, each in a memory context reset after it.  A
 * file that cannot be applied is refused (recorded, logged once) and never
 * keeps the files after it from being applied; only a lost connection ends
 * the reading.  A file the SFTP server refuses to open or read (FF033) is
 * recorded and logged once too, but tried again at every pass.  After the
 * deadline the rest waits for the next pass.
 */
void
ff_results_ingest(FFSftp *conn, MemoryContext pass_cxt, FFExportResult *result,
				  TimestampTz deadline)
{
	List	   *volatile files = NIL;
	ListCell   *lc;
	MemoryContext file_cxt;

	PG_TRY();
	{
		files = files_to_read(ff_sftp_list(conn, ff_sftp_outbound_dir, "flexfactor.sftp_outbound_dir",
										   is_answer_name));
	}
	PG_CATCH();
	{
		ff_export_report_failure(ff_work_catch(pass_cxt), result, "list the outbound folder");
		return;
	}
	PG_END_TRY();

	file_cxt = AllocSetContextCreate(pass_cxt, "flexfactor result file", ALLOCSET_DEFAULT_SIZES);
	foreach(lc, files)
	{
		ResultFile *f = lfirst(lc);
		FFSftpEntry *e = f->entry;
		char	   *path;
		volatile bool applied = false;
		volatile bool stop = false;

		if (GetCurrentTimestamp() >= deadline)
		{
			SetLatch(MyLatch);	/* the rest in the next pass, after the queue's turn */
			break;
		}
		ff_status_set("reading result files");
		MemoryContextSwitchTo(file_cxt);
		path = psprintf("%s/%s", ff_sftp_outbound_dir, e->name);
		PG_TRY();
		{
			ingest_file(conn, e, path);
			applied = true;
		}
		PG_CATCH();
		{
			ErrorData  *edata = ff_work_catch(file_cxt);
			bool		report = true;

			if (edata->sqlerrcode == ERRCODE_FF_SFTP_CONNECTION)
				stop = true;
			else if (file_is_refused(edata->sqlerrcode))
				report = record_refusal(f, edata);
			if (report)
				ff_export_report_failure(edata, result, psprintf("apply result file \"%s\"", f->label));
			else
				elog(DEBUG1, "flexfactor worker: the SFTP server refused result file \"%s\" again: %s",
					 f->label, edata->message);
		}
		PG_END_TRY();
		if (applied)
		{
			PG_TRY();
			{
				put_away(conn, e, path);
			}
			PG_CATCH();
			{
				ErrorData  *edata = ff_work_catch(file_cxt);

				stop = (edata->sqlerrcode == ERRCODE_FF_SFTP_CONNECTION);
				ff_export_report_failure(edata, result,
										 psprintf("move applied result file \"%s\"", f->label));
			}
			PG_END_TRY();
		}
		MemoryContextSwitchTo(pass_cxt);
		MemoryContextReset(file_cxt);
		ff_worker_yield();
		if (stop)
			break;
	}
	MemoryContextSwitchTo(pass_cxt);
	MemoryContextDelete(file_cxt);
}
