/*
 * listener.c
 *		Receives FlexFactor's webhook deliveries over HTTP, in a background
 *		worker, with libmicrohttpd.
 *
 * libmicrohttpd runs without threads of its own: the worker waits on its
 * latch and on the daemon's epoll descriptor, then lets the daemon work
 * (MHD_run), so every request handler, and every PostgreSQL call, runs in the
 * worker's one thread.  A delivery is verified on its raw bytes, stored and
 * applied (webhook.c), and answered 200 only after its transaction committed.
 *
 * Group commit: a delivery whose body is complete is not taken at once; its
 * connection is suspended and the delivery waits until MHD_run returns.  All
 * that waited by then (at most GROUP_MAX) are taken in one transaction, each
 * in a subtransaction of its own, so that one delivery's error (a replayed
 * nonce, a malformed body, a failed application) rolls back only that
 * delivery, and one commit (one WAL flush) makes the group durable.  Only
 * then are the connections resumed and answered: 200 for the stored ones,
 * each refusal with its own status; if the commit fails, every delivery of
 * the group is answered 503 and nothing of it is kept.  With a synchronous
 * standby the commit returns once the standby has it, unless a stop, the
 * postmaster's death or a cancel cut that wait short: then the group is
 * answered 503 too (committed here, maybe not there; see not_confirmed).
 * Nothing waits for a group to fill: a delivery on an idle listener is a
 * group of one, taken in the turn of the loop that received it, and under
 * load the deliveries that arrived while a group was being committed form
 * the next one.
 *
 * Health check: GET or HEAD on /healthz answers 200 "primary" while this
 * node is a writable primary (not in recovery, default_transaction_read_only
 * off, as a failover manager sets it around a promotion) and 503
 * otherwise, from shared state alone (no transaction), and is never counted
 * as a refusal.  A load balancer in front of every node's listener sends
 * FlexFactor's deliveries to the one that passes (a standby runs no
 * listener at all).
 *
 * Refusals: 401 for authenticity (signature, date,
 * replayed nonce), 400 for a malformed body, 404 for another path, 405 for
 * another method, 413 for a body over the limit, 503 when the database
 * cannot take the event for now (FlexFactor then retries).  A genuine
 * delivery that fails because of its content (a value out of range) would
 * fail on every retry: it is kept as 'rejected' and answered 200.  Every
 * refusal is counted in shared memory and only a bounded sample is written
 * to flexfactor.webhook_rejections (refusals.c); a wrong signature or date
 * is refused before any transaction begins, so refusals cost no commit each.
 *
 * Connections are bounded per address, in all (past SOFT_CONNECTIONS a new
 * one evicts the idle or slowest), in memory, and in time (deadlines for the
 * headers and the body), and may be limited to allowed source networks
 * (flexfactor.webhook_allowed_networks), so slow, idle or flooding clients
 * cannot keep a delivery out.
 * With flexfactor.webhook_tls_cert_file and webhook_tls_key_file it serves
 * HTTPS (libmicrohttpd's GnuTLS); otherwise plain HTTP, meant for 127.0.0.1
 * behind a TLS reverse proxy.  The listener leaves its database when it must
 * be dropped, and exits after a SIGHUP that changes its address, port, path
 * or certificate (the launcher starts it again with the new ones).
 *
 * Fencing (fence.c): once the postmaster is gone the listener exits at once,
 * in its wait, before a group's commit and after it, before any answer: a
 * delivery committed on a node a failover left behind is never answered 200,
 * so FlexFactor delivers it again, to the new primary.  While the server is
 * read-only or in recovery, every delivery is answered 503 without a
 * transaction (logged once when that starts and once when it ends).
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "dbguard.h"
#include "errors.h"
#include "ext_version.h"
#include "fence.h"
#include "scrub.h"
#include "listener.h"
#include "refusals.h"
#include "settings.h"
#include "webhook.h"
#include "work.h"
#include "worker.h"
#include "worker_status.h"

#define MAX_BODY_BYTES			(64 * 1024)
#define CONNECTION_TIMEOUT_S	10
#define MAX_CONNECTIONS			256 /* libmicrohttpd's own limit */
#define SOFT_CONNECTIONS		192 /* beyond, a new connection evicts an idle or slow one */
#define MAX_PER_ADDRESS			64
#define HEADER_DEADLINE_MS		5000	/* connection (or last answer) to end of headers */
#define BODY_DEADLINE_MS		10000	/* end of headers to end of body */
#define CONNECTION_MEMORY		(32 * 1024)
#define IDLE_TICK_MS			1000
#define GROUP_MAX				64	/* deliveries per transaction */

typedef struct Delivery
{
	MemoryContext cxt;
	StringInfoData body;
	bool		too_large;
	bool		health;			/* GET /healthz */
	unsigned int refuse_status; /* refused from its headers alone */
	FFRefusal	refusal;
	const char *refuse_reason;
	struct MHD_Connection *connection;	/* while it waits for its group */
	bool		authentic;		/* its signature and date were good */
	unsigned int status;		/* the answer, once its group is done */
	const char *text;
} Delivery;

/*
 * Every open connection, from libmicrohttpd's connection notifications: what
 * it is waiting for and since when.  A connection that is not sending a
 * request fast enough (its headers within HEADER_DEADLINE_MS, its body
 * within BODY_DEADLINE_MS) is shut down; past SOFT_CONNECTIONS a new
 * connection has the idle or slowest one shut down to make room.  A
 * connection whose request is complete (waiting for its group, being
 * answered) is never shut down.  Shutting a socket down makes
 * libmicrohttpd see it closed and free it in its next turn.
 */
typedef enum ConnPhase
{
	CONN_HEADERS,				/* before its headers are complete (idle included) */
	CONN_BODY,					/* headers in, body coming */
	CONN_BUSY					/* request complete: taken, answered */
} ConnPhase;

typedef struct Conn
{
	struct Conn *prev;
	struct Conn *next;
	int			fd;
	ConnPhase	phase;
	TimestampTz since;			/* start of the phase */
	bool		shut;			/* shut down; libmicrohttpd has not closed it yet */
} Conn;

static Conn *conns = NULL;		/* oldest first */
static Conn *conns_tail = NULL;
static int	n_live = 0;			/* connections not shut down */
static MemoryContext conns_cxt = NULL;

/* the parsed flexfactor.webhook_allowed_networks; none: any */
static FFNetwork networks[FF_MAX_NETWORKS];
static int	n_networks = 0;

static struct MHD_Daemon *daemon_handle = NULL;
static MemoryContext loop_cxt = NULL;	/* reset every turn of the loop */
static MemoryContext requests_cxt = NULL;
static MemoryContext group_cxt = NULL;

/* complete deliveries, their connections suspended, in arrival order */
static Delivery *waiting[MAX_CONNECTIONS];
static int	n_waiting = 0;

/*
 * Set by SIGINT (pg_cancel_backend(), or statement_timeout, which signals
 * the process itself) besides the usual cancel request: a cancel ends a
 * commit's wait for the synchronous standby early, without an error.
 */
static volatile sig_atomic_t cancel_signalled = false;

/* what the listener was started with; a SIGHUP that changes them restarts it */
static char *started_address;
static int	started_port;
static char *started_path;
static char *started_cert_file;
static char *started_key_file;

static enum MHD_Result
respond(struct MHD_Connection *c, unsigned int status, const char *text)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *) text,
															  MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ok;

	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, "Allow", "POST");
	ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

/*
 * The health check's answer: 200 on a writable primary, 503 otherwise.  The
 * listener reloads its settings every turn of its loop, so a failover
 * manager's default_transaction_read_only is seen within one turn.
 */
static enum MHD_Result
respond_health(struct MHD_Connection *c)
{
	const char *why;
	bool		primary = ff_fence_writable(&why);

	return respond(c, primary ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
				   primary ? "primary\n" : "not a writable primary\n");
}

static char *
client_address(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	char		buf[INET6_ADDRSTRLEN] = "unknown";

	if (info && info->client_addr)
	{
		if (info->client_addr->sa_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *) info->client_addr)->sin_addr, buf, sizeof(buf));
		else if (info->client_addr->sa_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *) info->client_addr)->sin6_addr, buf, sizeof(buf));
	}
	return pstrdup(buf);
}

/* Insert a refused delivery's row (reason and address only), through SPI. */
static void
insert_rejection(const char *address, unsigned int status, const char *reason)
{
	Oid			types[3] = {TEXTOID, INT4OID, TEXTOID};
	/* the reason may quote what the client sent (its method): scrubbed */
	Datum		values[3] = {CStringGetTextDatum(address), Int32GetDatum((int32) status),
	CStringGetTextDatum(ff_scrub_remote_text(reason, strlen(reason)))};

	if (SPI_execute_with_args("INSERT INTO flexfactor.webhook_rejections (remote_addr, http_status, reason)"
							  " VALUES ($1, $2, $3)", 3, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record a refused webhook delivery");
}

/*
 * Refusals kept as samples (see refusals.c; the others are only counted and
 * answered at once).  The request handler runs inside MHD_run(), where no
 * database work belongs (an error there would unwind through
 * libmicrohttpd): it only notes them here, in the loop's memory, and the
 * loop records them after MHD_run() returns, then answers them.
 */
typedef struct Refused
{
	char	   *address;
	unsigned int status;
	char	   *reason;
	Delivery   *delivery;
	struct MHD_Connection *connection;	/* suspended until recorded */
} Refused;

static List *refused = NIL;

static const char *
refusal_text(unsigned int status)
{
	return status == MHD_HTTP_NOT_FOUND ? "not found" :
		status == MHD_HTTP_METHOD_NOT_ALLOWED ? "method not allowed" :
		status == MHD_HTTP_UNAUTHORIZED ? "unauthorized" : "too large";
}

/* Note a sampled refusal of a suspended connection, to be recorded. */
static void
note_rejection(struct MHD_Connection *c, Delivery *d, unsigned int status, const char *reason)
{
	Refused    *r = palloc(sizeof(Refused));

	r->address = client_address(c);
	r->status = status;
	r->reason = pstrdup(reason);
	r->delivery = d;
	r->connection = c;
	refused = lappend(refused, r);
	d->connection = c;
}

/* the extension was found at the library's version (see extension_ready) */
static bool sql_ready = false;
static Oid	sql_ready_extoid = InvalidOid;	/* its pg_extension OID then */

/*
 * An error that says the extension's objects are not what they were found
 * to be (check_same_extension below; or an undefined function, table or
 * schema) makes the next group check the version again (extension_ready):
 * until it is right again, deliveries are answered 503 without a
 * transaction, and that is logged once.
 */
static void
recheck_extension_after(const ErrorData *edata)
{
	if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION ||
		edata->sqlerrcode == ERRCODE_INVALID_SCHEMA_NAME ||
		edata->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE)
		sql_ready = false;
}

/*
 * In a group's transaction: the extension is still the one found at the
 * library's version.  DROP EXTENSION, then CREATE EXTENSION (maybe at an
 * older version) gives it another OID; its objects would not be what this
 * library expects, even where no call fails.
 */
static void
check_same_extension(void)
{
	if (get_extension_oid("flexfactor", true) != sql_ready_extoid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension flexfactor was dropped or created again since the webhook listener checked its version"),
				 errdetail("The deliveries are answered HTTP 503; the version is checked again before the next ones."),
				 errhint("If it is not at version %s now, run ALTER EXTENSION flexfactor UPDATE.",
						 FLEXFACTOR_VERSION)));
}

/* ff_work_catch() and ff_work_report(), with the check above */
static void
report_work_error(MemoryContext cxt, const char *doing)
{
	ErrorData  *edata = ff_work_catch(cxt);

	recheck_extension_after(edata);
	ff_work_report(edata, doing);
}

/*
 * Record the noted refusals in one short transaction, then resume their
 * connections to be answered: recorded before answered, as deliveries are.
 * Returns whether any connection was resumed.
 */
static bool
record_rejections(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	ListCell   *lc;

	if (refused == NIL)
		return false;
	PG_TRY();
	{
		ff_work_begin("flexfactor: recording refused deliveries");
		foreach(lc, refused)
		{
			Refused    *r = lfirst(lc);

			insert_rejection(r->address, r->status, r->reason);
		}
		ff_work_commit();
	}
	PG_CATCH();
	{
		report_work_error(cxt, "record refused deliveries");
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	foreach(lc, refused)
	{
		Refused    *r = lfirst(lc);

		r->delivery->status = r->status;
		r->delivery->text = refusal_text(r->status);
		r->delivery->connection = NULL;
		MHD_resume_connection(r->connection);
	}
	refused = NIL;
	return true;
}

/* Flush the refusal counters (refusals.c) in a short transaction of their own. */
static void
flush_refusals(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	FFRefusalMarks marks;

	PG_TRY();
	{
		ff_work_begin("flexfactor: counting refused requests");
		ff_refusals_flush(&marks);
		ff_work_commit();
		ff_refusals_flushed(&marks);
	}
	PG_CATCH();
	{
		report_work_error(cxt, "count refused requests");
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

static unsigned int
status_for(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_FF_WEBHOOK_SIGNATURE:
		case ERRCODE_FF_WEBHOOK_STALE:
		case ERRCODE_FF_WEBHOOK_REPLAYED:
			return MHD_HTTP_UNAUTHORIZED;
		case ERRCODE_FF_WEBHOOK_MALFORMED:
			return MHD_HTTP_BAD_REQUEST;
		default:
			return MHD_HTTP_SERVICE_UNAVAILABLE;	/* ours to fix; FlexFactor retries */
	}
}

static const char *
status_text(unsigned int status)
{
	return status == MHD_HTTP_UNAUTHORIZED ? "unauthorized" :
		status == MHD_HTTP_BAD_REQUEST ? "bad request" : "try again later";
}

/*
 * Run fn(arg) in a subtransaction of the group's transaction, as PL/pgSQL
 * runs a block with an EXCEPTION clause.  Returns NULL when it succeeded, or
 * its error, copied into cxt, when it failed and was rolled back alone.
 */
static ErrorData *
in_subtransaction(void (*fn) (void *), void *arg, MemoryContext cxt)
{
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}

/* The signature headers of a delivery, as libmicrohttpd holds them. */
static void
read_signature_headers(struct MHD_Connection *c, FFWebhookHeaders *h)
{
	h->nonce = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-nonce");
	h->date = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-date");
	h->host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	h->content_sha512 = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-content-sha512");
	h->authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-authorization");
	h->signature = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-signature");
}

/* Verify, store and apply one delivery (in its subtransaction). */
static void
receive_one(void *arg)
{
	Delivery   *d = arg;
	struct MHD_Connection *c = d->connection;
	FFWebhookHeaders h;
	char	   *outcome;

	read_signature_headers(c, &h);

	outcome = ff_webhook_receive(&h, d->body.data, d->body.len, "listener", &d->authentic);
	d->text = MemoryContextStrdup(d->cxt, outcome);
	d->status = MHD_HTTP_OK;
}

typedef struct Unprocessable
{
	Delivery   *delivery;
	const char *reason;
} Unprocessable;

/* Store an authentic delivery that can never be applied as 'rejected'. */
static void
store_unprocessable(void *arg)
{
	Unprocessable *u = arg;
	struct MHD_Connection *c = u->delivery->connection;
	FFWebhookHeaders h = {0};

	h.nonce = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-nonce");
	ff_webhook_store_rejected(&h, u->delivery->body.data, u->delivery->body.len, "listener",
							  u->reason);
}

typedef struct Rejection
{
	const char *address;
	unsigned int status;
	const char *reason;
} Rejection;

static void
reject_one(void *arg)
{
	Rejection  *r = arg;

	SPI_connect();
	insert_rejection(r->address, r->status, r->reason);
	SPI_finish();
}

/* One delivery of a group: its answer is set, its rows (if any) are in the group's transaction. */
static void
take_delivery(Delivery *d, MemoryContext cxt)
{
	ErrorData  *edata = in_subtransaction(receive_one, d, cxt);
	Rejection	r;

	if (edata == NULL)
		return;

	/*
	 * A genuine delivery whose content can never be stored or applied (a
	 * value out of range, say) is kept as 'rejected' and acknowledged:
	 * answered 503, FlexFactor would send it again and again.
	 */
	if (d->authentic && ff_webhook_error_is_permanent(edata->sqlerrcode))
	{
		Unprocessable u = {d, edata->detail ? psprintf("%s: %s", edata->message, edata->detail)
		: edata->message};
		ErrorData  *stored = in_subtransaction(store_unprocessable, &u, cxt);

		if (stored == NULL)
		{
			d->status = MHD_HTTP_OK;
			d->text = "rejected";
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("flexfactor webhook listener kept a delivery it cannot apply as rejected: %s",
							ff_scrub_remote_text(edata->message, strlen(edata->message))),
					 errdetail("It is stored in flexfactor.webhook_events with apply_state 'rejected' and acknowledged, so that FlexFactor does not send it again.")));
			return;
		}
		edata = stored;			/* answered 503 below */
	}
	recheck_extension_after(edata);
	d->status = status_for(edata->sqlerrcode);
	d->text = status_text(d->status);
	ereport(d->status >= 500 ? WARNING : LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("flexfactor webhook listener refused a delivery with HTTP %u: %s",
					d->status, edata->message),
			 edata->detail ? errdetail("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0,
			 edata->context ? errcontext("%s", edata->context) : 0));
	if (d->status >= 500)
		return;
	if (!ff_refusal_count(edata->sqlerrcode == ERRCODE_FF_WEBHOOK_REPLAYED ? FF_REFUSAL_REPLAYED :
						  edata->sqlerrcode == ERRCODE_FF_WEBHOOK_MALFORMED ? FF_REFUSAL_MALFORMED :
						  edata->sqlerrcode == ERRCODE_FF_WEBHOOK_STALE ? FF_REFUSAL_STALE :
						  FF_REFUSAL_SIGNATURE))
		return;					/* counted, not sampled */
	r.address = client_address(d->connection);
	r.status = d->status;
	r.reason = edata->detail ? psprintf("%s: %s", edata->message, edata->detail) : edata->message;
	edata = in_subtransaction(reject_one, &r, cxt);
	if (edata != NULL)
		ereport(WARNING,
				(errmsg("flexfactor webhook listener could not record a refused delivery: %s",
						edata->message)));
}

static TimestampTz sql_checked_at = 0;
static FFExtensionState sql_reported = FF_EXTENSION_READY;

/*
 * Whether the extension's SQL objects here are of the library's version.
 * Until they are (not created yet, or a package upgrade not followed by
 * ALTER EXTENSION flexfactor UPDATE), deliveries are answered 503 without a
 * transaction, so that FlexFactor delivers them again, and refusal counts
 * stay in shared memory; this is logged once.  Checked with no transaction
 * open, for every group of deliveries (a short read of pg_extension) but at
 * most once a second for the refusal counts, and not again once they are
 * (the library cannot change without a restart) unless an error says the
 * objects changed (recheck_extension_after: DROP EXTENSION, then CREATE
 * EXTENSION at an older version).
 */
static bool
extension_ready(bool for_deliveries)
{
	char	   *version;
	FFExtensionState state;

	if (sql_ready)
		return true;
	if (!for_deliveries &&
		!TimestampDifferenceExceeds(sql_checked_at, GetCurrentTimestamp(), 1000))
		return false;
	state = ff_extension_state(&version, &sql_ready_extoid);
	sql_checked_at = GetCurrentTimestamp();
	if (state == FF_EXTENSION_READY)
	{
		if (sql_reported != FF_EXTENSION_READY)
			ereport(LOG, (errmsg("flexfactor webhook listener found the extension at version %s and takes deliveries",
								 FLEXFACTOR_VERSION)));
		sql_ready = true;
		sql_reported = FF_EXTENSION_READY;
		return true;
	}
	if (state != sql_reported)
		ereport(LOG,
				(errmsg("flexfactor webhook listener answers 503 until the extension in its database is %s",
						state == FF_EXTENSION_MISSING ? "created" :
						psprintf("updated from version %s to %s", version, FLEXFACTOR_VERSION)),
				 errdetail("FlexFactor delivers the refused webhooks again."),
				 errhint("%s", state == FF_EXTENSION_MISSING ? "Run CREATE EXTENSION flexfactor in that database." :
						 "Run ALTER EXTENSION flexfactor UPDATE in that database; the listener takes deliveries again by itself.")));
	sql_reported = state;
	return false;
}

/*
 * Whether the server can store deliveries: while it is read-only or in
 * recovery, they are answered 503 at once, without a transaction
 * (FlexFactor delivers again later, to whichever node is the primary then);
 * the change is logged once each way.
 */
static bool
writable(void)
{
	static bool paused = false;
	const char *why;

	return ff_fence_writable_or_pause(&paused,
									  "Deliveries are answered 503 meanwhile; FlexFactor delivers them again later.",
									  &why);
}

/*
 * The group's commit returned, but its wait for the synchronous standby may
 * have been cut short: a stop request (SIGTERM, a fast shutdown, a
 * switchover), the postmaster's death or a cancel end that wait without an
 * error, the transaction then committed on this node only, which a failover
 * can lose.  Such a group is not acknowledged: each delivery is answered 503
 * and FlexFactor sends it again (a repeat of a stored event is kept as
 * 'duplicate' and changes nothing).
 */
static void
not_confirmed(Delivery **group, int n)
{
	ereport(WARNING,
			(errcode(ERRCODE_ADMIN_SHUTDOWN),
			 errmsg("flexfactor webhook listener does not acknowledge %d deliveries: their commit's wait for the synchronous standby was cut short", n),
			 errdetail("They are committed here but may not be on the standby; each is answered HTTP 503."),
			 errhint("FlexFactor delivers them again; a repeat changes nothing.")));
	for (int i = 0; i < n; i++)
	{
		group[i]->status = MHD_HTTP_SERVICE_UNAVAILABLE;
		group[i]->text = status_text(MHD_HTTP_SERVICE_UNAVAILABLE);
	}
}

/*
 * Take a group of deliveries in one transaction and set each one's answer:
 * its own when the transaction committed, 503 for all when it did not.
 */
static void
take_group(Delivery **group, int n)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext cxt = group_cxt;

	if (!extension_ready(true) || !writable())
	{
		for (int i = 0; i < n; i++)
		{
			group[i]->status = MHD_HTTP_SERVICE_UNAVAILABLE;
			group[i]->text = status_text(MHD_HTTP_SERVICE_UNAVAILABLE);
		}
		return;
	}
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "flexfactor: storing webhook deliveries");
		check_same_extension();
		for (int i = 0; i < n; i++)
			take_delivery(group[i], cxt);
		PopActiveSnapshot();
		ff_fence_check();
		cancel_signalled = false;
		CommitTransactionCommand();		/* durable before acknowledged */
		if (ProcDiePending || cancel_signalled)
			not_confirmed(group, n);
		else
			ff_status_clear_error();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		recheck_extension_after(edata);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("flexfactor webhook listener could not commit %d deliveries: %s", n, edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0,
				 errhint("Each is answered HTTP 503; FlexFactor delivers them again."),
				 edata->context ? errcontext("%s", edata->context) : 0));
		ff_status_error(edata->message);
		for (int i = 0; i < n; i++)
		{
			group[i]->status = MHD_HTTP_SERVICE_UNAVAILABLE;
			group[i]->text = status_text(MHD_HTTP_SERVICE_UNAVAILABLE);
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	MemoryContextReset(cxt);
	ff_work_idle();
	ff_status_pass_done();
}

/*
 * Refuse the waiting deliveries whose signature or date is wrong before any
 * transaction: anyone can send those, as fast as they like, and they must
 * cost no commit.  Each is counted; a sample is noted to be recorded; the
 * others are resumed to be answered 401 at once (returns whether there were
 * such).  (Verification is repeated
 * in the group's transaction, where the webhook key might have changed in
 * between: a delivery refused there is refused as before.)
 */
static bool
screen_waiting(void)
{
	int			kept = 0;
	bool		resumed = false;
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < n_waiting; i++)
	{
		Delivery   *d = waiting[i];
		struct MHD_Connection *c = d->connection;
		FFWebhookHeaders h;
		const char *reason = NULL;
		FFWebhookVerdict verdict;
		FFRefusal	refusal;

		read_signature_headers(c, &h);
		verdict = ff_webhook_verify(&h, d->body.data, d->body.len, now, &reason);
		if (verdict == FF_WEBHOOK_OK || verdict == FF_WEBHOOK_NOT_CONFIGURED)
		{
			waiting[kept++] = d;	/* taken (or answered 503) in a group */
			continue;
		}
		refusal = verdict == FF_WEBHOOK_STALE_DATE ? FF_REFUSAL_STALE : FF_REFUSAL_SIGNATURE;
		if (ff_refusal_count(refusal))
			note_rejection(c, d, MHD_HTTP_UNAUTHORIZED,
						   psprintf(refusal == FF_REFUSAL_STALE ?
									"webhook delivery refused: stale or invalid date: %s." :
									"webhook delivery refused: not signed by FlexFactor: %s.",
									reason ? reason : "refused"));
		else
		{
			d->status = MHD_HTTP_UNAUTHORIZED;
			d->text = status_text(MHD_HTTP_UNAUTHORIZED);
			d->connection = NULL;
			MHD_resume_connection(c);
			resumed = true;
		}
	}
	n_waiting = kept;
	return resumed;
}

/*
 * Take every waiting delivery, GROUP_MAX to a transaction, and resume the
 * connections: the request handler then answers each with its status.
 */
static void
take_waiting(void)
{
	int			done = 0;

	while (done < n_waiting)
	{
		int			n = Min(GROUP_MAX, n_waiting - done);

		take_group(&waiting[done], n);
		/* a commit may return after the postmaster died: then never answer */
		ff_fence_check();
		for (int i = done; i < done + n; i++)
		{
			struct MHD_Connection *c = waiting[i]->connection;

			waiting[i]->connection = NULL;
			MHD_resume_connection(c);
		}
		done += n;
	}
	n_waiting = 0;
}

static Conn *
conn_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return info ? (Conn *) info->socket_context : NULL;
}

static void
conn_enter(struct MHD_Connection *c, ConnPhase phase)
{
	Conn	   *conn = conn_of(c);

	if (conn != NULL)
	{
		conn->phase = phase;
		conn->since = GetCurrentTimestamp();
	}
}

static void
shut_conn(Conn *conn, FFRefusal why)
{
	if (conn->shut)
		return;
	conn->shut = true;
	n_live--;
	ff_refusal_count(why);
	(void) shutdown(conn->fd, SHUT_RDWR);	/* libmicrohttpd sees it closed */
}

/* Shut the connection that waits longest for its headers, else for its body. */
static void
evict_one(void)
{
	Conn	   *victim = NULL;

	for (Conn *conn = conns; conn != NULL; conn = conn->next)
	{
		if (conn->shut || conn->phase == CONN_BUSY)
			continue;
		if (victim == NULL ||
			(conn->phase == CONN_HEADERS && victim->phase != CONN_HEADERS) ||
			(conn->phase == victim->phase && conn->since < victim->since))
			victim = conn;
	}
	if (victim != NULL)
		shut_conn(victim, FF_REFUSAL_EVICTED);
}

/* Shut the connections past their deadline (every turn of the loop). */
static void
enforce_deadlines(void)
{
	TimestampTz now = GetCurrentTimestamp();

	for (Conn *conn = conns; conn != NULL; conn = conn->next)
	{
		if (conn->shut || conn->phase == CONN_BUSY)
			continue;
		if (TimestampDifferenceExceeds(conn->since, now,
									   conn->phase == CONN_HEADERS ? HEADER_DEADLINE_MS : BODY_DEADLINE_MS))
			shut_conn(conn, FF_REFUSAL_SLOW);
	}
}

static void
notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
				  enum MHD_ConnectionNotificationCode toe)
{
	Conn	   *conn = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED)
	{
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

		conn = MemoryContextAllocZero(conns_cxt, sizeof(Conn));
		conn->fd = info ? info->connect_fd : -1;
		conn->phase = CONN_HEADERS;
		conn->since = GetCurrentTimestamp();
		conn->prev = conns_tail;
		if (conns_tail)
			conns_tail->next = conn;
		else
			conns = conn;
		conns_tail = conn;
		*socket_context = conn;
		if (++n_live > SOFT_CONNECTIONS)
			evict_one();
		return;
	}
	if (conn == NULL)
		return;
	if (!conn->shut)
		n_live--;
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	else
		conns_tail = conn->prev;
	pfree(conn);
	*socket_context = NULL;
}

/*
 * Parse a comma-separated list of addresses and CIDR networks into out[]
 * (when not NULL); returns how many, or -1 with *bad at the offending entry.
 */
int
ff_parse_networks(const char *text, FFNetwork *out, int max, const char **bad)
{
	int			n = 0;
	const char *p = text ? text : "";

	while (*p)
	{
		char		entry[INET6_ADDRSTRLEN + 8];
		size_t		len;
		char	   *slash;
		FFNetwork	net = {0};
		int			bits;

		while (*p == ' ' || *p == ',')
			p++;
		if (*p == '\0')
			break;
		len = strcspn(p, ", ");
		*bad = p;
		if (len >= sizeof(entry) || n >= FF_MAX_NETWORKS)
			return -1;
		memcpy(entry, p, len);
		entry[len] = '\0';
		p += len;
		slash = strchr(entry, '/');
		if (slash)
			*slash = '\0';
		if (inet_pton(AF_INET, entry, net.addr) == 1)
			net.family = AF_INET, bits = 32;
		else if (inet_pton(AF_INET6, entry, net.addr) == 1)
			net.family = AF_INET6, bits = 128;
		else
			return -1;
		net.prefix = bits;
		if (slash)
		{
			char	   *end;
			long		v = strtol(slash + 1, &end, 10);

			if (slash[1] == '\0' || *end != '\0' || v < 0 || v > bits)
				return -1;
			net.prefix = (int) v;
		}
		if (out != NULL && n < max)
			out[n] = net;
		n++;
	}
	return n;
}

static bool
network_contains(const FFNetwork *net, const struct sockaddr *addr)
{
	const unsigned char *a;
	int			full = net->prefix / 8;
	int			rest = net->prefix % 8;

	if (addr->sa_family != net->family)
		return false;
	a = net->family == AF_INET ?
		(const unsigned char *) &((const struct sockaddr_in *) addr)->sin_addr :
		(const unsigned char *) &((const struct sockaddr_in6 *) addr)->sin6_addr;
	if (memcmp(a, net->addr, full) != 0)
		return false;
	return rest == 0 || ((a[full] ^ net->addr[full]) & (0xff << (8 - rest)) & 0xff) == 0;
}

/* libmicrohttpd's accept policy: the allowed networks, if any */
static enum MHD_Result
accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	if (n_networks == 0)
		return MHD_YES;
	for (int i = 0; i < n_networks; i++)
		if (network_contains(&networks[i], addr))
			return MHD_YES;
	ff_refusal_count(FF_REFUSAL_NETWORK);
	return MHD_NO;
}

static void
load_networks(void)
{
	const char *bad = NULL;
	int			n = ff_parse_networks(ff_webhook_allowed_networks, networks, FF_MAX_NETWORKS, &bad);

	n_networks = Max(n, 0);		/* the setting's check hook refused a bad list */
}

static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			   const char *version, const char *upload_data, size_t *upload_data_size,
			   void **con_cls)
{
	Delivery   *d = *con_cls;

	if (d == NULL)
	{
		/* headers only: route, and refuse early what will never be accepted */
		const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
														 MHD_HTTP_HEADER_CONTENT_LENGTH);
		MemoryContext cxt;

		cxt = AllocSetContextCreate(requests_cxt, "flexfactor webhook delivery",
									ALLOCSET_SMALL_SIZES);
		d = MemoryContextAllocZero(cxt, sizeof(Delivery));
		d->cxt = cxt;
		d->body.data = NULL;
		conn_enter(c, CONN_BODY);
		if (strcmp(url, FF_HEALTH_PATH) == 0 &&
			(strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0))
			d->health = true;
		else if (strcmp(url, started_path) != 0)
		{
			d->refuse_status = MHD_HTTP_NOT_FOUND;
			d->refuse_reason = "unknown path";
		}
		else if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
		{
			d->refuse_status = MHD_HTTP_METHOD_NOT_ALLOWED;
			d->refuse_reason = MemoryContextStrdup(cxt, psprintf("method %.16s", method));
		}
		else if (length != NULL && strtoull(length, NULL, 10) > MAX_BODY_BYTES)
		{
			d->refuse_status = MHD_HTTP_CONTENT_TOO_LARGE;
			d->refuse_reason = "body over 64 kB";
		}
		*con_cls = d;
		return MHD_YES;
	}

	if (*upload_data_size > 0)
	{
		/* more body (ignored when it is refused anyway) */
		if (d->refuse_status != 0)
			;
		else if (d->too_large || (d->body.data ? d->body.len : 0) + *upload_data_size > MAX_BODY_BYTES)
			d->too_large = true;
		else
		{
			MemoryContext old = MemoryContextSwitchTo(d->cxt);

			if (d->body.data == NULL)
				initStringInfo(&d->body);
			appendBinaryStringInfo(&d->body, upload_data, *upload_data_size);
			MemoryContextSwitchTo(old);
		}
		*upload_data_size = 0;
		return MHD_YES;
	}

	/* the whole body is here, or its group (or its refusal) is done and it was resumed */
	conn_enter(c, CONN_BUSY);
	if (d->status != 0)
		return respond(c, d->status, d->text);
	if (d->health)
		return respond_health(c);
	if (d->too_large)
	{
		d->refuse_status = MHD_HTTP_CONTENT_TOO_LARGE;
		d->refuse_reason = "body over 64 kB";
	}
	if (d->refuse_status != 0)
	{
		if (!ff_refusal_count(d->refuse_status == MHD_HTTP_NOT_FOUND ? FF_REFUSAL_PATH :
							  d->refuse_status == MHD_HTTP_METHOD_NOT_ALLOWED ? FF_REFUSAL_METHOD :
							  FF_REFUSAL_TOO_LARGE))
			return respond(c, d->refuse_status, refusal_text(d->refuse_status));
		/* a sample: answered once recorded, after MHD_run() returns */
		note_rejection(c, d, d->refuse_status, d->refuse_reason);
		MHD_suspend_connection(c);
		return MHD_YES;
	}
	if (d->body.data == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(d->cxt);

		initStringInfo(&d->body);
		MemoryContextSwitchTo(old);
	}
	if (n_waiting >= MAX_CONNECTIONS)	/* cannot happen: one per connection */
		return respond(c, MHD_HTTP_SERVICE_UNAVAILABLE, status_text(MHD_HTTP_SERVICE_UNAVAILABLE));
	/* wait for the group: answered once its transaction committed */
	d->connection = c;
	waiting[n_waiting++] = d;
	MHD_suspend_connection(c);
	return MHD_YES;
}

static void
request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
				  enum MHD_RequestTerminationCode toe)
{
	Delivery   *d = *con_cls;

	if (toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED)
		ff_refusal_count(FF_REFUSAL_SLOW);
	conn_enter(c, CONN_HEADERS);	/* keep-alive: the next request's headers */
	if (d != NULL)
		MemoryContextDelete(d->cxt);
	*con_cls = NULL;
}

static void log_from_daemon(void *cls, const char *fmt, va_list ap) pg_attribute_printf(2, 0);

static void
log_from_daemon(void *cls, const char *fmt, va_list ap)
{
	char		buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	ereport(DEBUG1, (errmsg_internal("flexfactor webhook listener: %s", buf)));
}

static void
handle_sigint(SIGNAL_ARGS)
{
	cancel_signalled = true;
	StatementCancelHandler(postgres_signal_arg);
}

static void
stop_daemon(int code, Datum arg)
{
	/*
	 * Deliveries still waiting for their group (the worker exits in the
	 * middle of one) are closed unanswered: nothing of theirs was committed.
	 * libmicrohttpd must not be stopped with suspended connections.
	 */
	ListCell   *lc;

	for (int i = 0; i < n_waiting; i++)
		if (waiting[i]->connection != NULL)
			MHD_resume_connection(waiting[i]->connection);
	n_waiting = 0;
	foreach(lc, refused)
		MHD_resume_connection(((Refused *) lfirst(lc))->connection);
	refused = NIL;
	if (daemon_handle != NULL)
		MHD_stop_daemon(daemon_handle);
	daemon_handle = NULL;
}

/* A PEM file's text, read at start-up (the daemon keeps its own copy). */
static char *
read_pem(const char *path, const char *setting)
{
	FILE	   *f = AllocateFile(path, "r");
	StringInfoData text;
	char		buf[4096];
	size_t		n;

	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open %s \"%s\": %m", setting, path),
				 errhint("The file must be readable by the PostgreSQL server account.")));
	initStringInfo(&text);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		appendBinaryStringInfo(&text, buf, n);
	FreeFile(f);
	return text.data;
}

static void
start_daemon(void)
{
	struct sockaddr_storage addr = {0};
	struct sockaddr_in *in4 = (struct sockaddr_in *) &addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &addr;
	unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	struct MHD_OptionItem options[] = {
		{MHD_OPTION_SOCK_ADDR, 0, &addr},
		{MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S, NULL},
		{MHD_OPTION_CONNECTION_LIMIT, MAX_CONNECTIONS, NULL},
		{MHD_OPTION_PER_IP_CONNECTION_LIMIT, MAX_PER_ADDRESS, NULL},
		{MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONNECTION_MEMORY, NULL},
		{MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) request_completed, NULL},
		{MHD_OPTION_NOTIFY_CONNECTION, (intptr_t) notify_connection, NULL},
		{MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) log_from_daemon, NULL},
		{MHD_OPTION_END, 0, NULL},	/* or the certificate, with TLS */
		{MHD_OPTION_END, 0, NULL},	/* or its key */
		{MHD_OPTION_END, 0, NULL}
	};
	char	   *key = NULL;

	if (inet_pton(AF_INET, started_address, &in4->sin_addr) == 1)
	{
		in4->sin_family = AF_INET;
		in4->sin_port = htons(started_port);
	}
	else if (inet_pton(AF_INET6, started_address, &in6->sin6_addr) == 1)
	{
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(started_port);
		flags |= MHD_USE_IPv6;
	}


	if ((started_cert_file[0] != '\0') != (started_key_file[0] != '\0'))
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("flexfactor webhook listener needs both a TLS certificate and its key"),
				 errhint("Set both flexfactor.webhook_tls_cert_file and webhook_tls_key_file, or neither.")));
	if (started_cert_file[0] != '\0')
	{
		if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("this libmicrohttpd has no TLS support"),
					 errhint("Serve plain HTTP on 127.0.0.1 behind a TLS reverse proxy instead.")));
		key = read_pem(started_key_file, "flexfactor.webhook_tls_key_file");
		options[8] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_CERT, 0,
			read_pem(started_cert_file, "flexfactor.webhook_tls_cert_file")};
		options[9] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_KEY, 0, key};
		flags |= MHD_USE_TLS;
	}
	daemon_handle = MHD_start_daemon(flags, (uint16_t) started_port, accept_policy, NULL,
									 handle_request, NULL,
									 MHD_OPTION_ARRAY, options, MHD_OPTION_END);
	if (key != NULL)
		explicit_bzero(key, strlen(key));
	if (daemon_handle == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("flexfactor webhook listener could not listen on %s port %d",
						started_address, started_port),
				 errhint("Check flexfactor.webhook_listen_address and webhook_port; another process may hold the port.")));
	on_proc_exit(stop_daemon, (Datum) 0);
}

static bool
settings_changed(void)
{
	return strcmp(started_address, ff_webhook_listen_address) != 0 ||
		started_port != ff_webhook_port ||
		strcmp(started_path, ff_webhook_path) != 0 ||
		strcmp(started_cert_file, ff_webhook_tls_cert_file) != 0 ||
		strcmp(started_key_file, ff_webhook_tls_key_file) != 0;
}

void
ff_listener_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	int			epoll_fd;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGINT, handle_sigint);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	if (!ff_status_claim(FF_ROLE_LISTENER, dboid))
	{
		ereport(LOG, (errmsg("flexfactor webhook listener is already running; this copy exits")));
		proc_exit(0);
	}
	pgstat_report_appname("flexfactor webhook listener");
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor webhook loop",
									 ALLOCSET_DEFAULT_SIZES);
	requests_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor webhook requests",
										 ALLOCSET_DEFAULT_SIZES);
	group_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor webhook group",
									  ALLOCSET_DEFAULT_SIZES);
	conns_cxt = AllocSetContextCreate(TopMemoryContext, "flexfactor webhook connections",
									  ALLOCSET_SMALL_SIZES);
	load_networks();
	started_address = pstrdup(ff_webhook_listen_address);
	started_port = ff_webhook_port;
	started_path = pstrdup(ff_webhook_path);
	started_cert_file = pstrdup(ff_webhook_tls_cert_file);
	started_key_file = pstrdup(ff_webhook_tls_key_file);
	if (started_address[0] == '\0')
		proc_exit(0);

	start_daemon();
	epoll_fd = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
	ereport(LOG,
			(errmsg("flexfactor webhook listener accepting deliveries on %s port %d at %s (%s)",
					started_address, started_port, started_path,
					started_cert_file[0] ? "HTTPS" : "plain HTTP")));
	ff_status_set("listening");

	for (;;)
	{
		MHD_UNSIGNED_LONG_LONG mhd_timeout;
		long		timeout_ms = IDLE_TICK_MS;
		bool		answer;

		CHECK_FOR_INTERRUPTS();
		ff_fence_check();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			ff_status_config_reloaded();
			load_networks();
			if (settings_changed())
			{
				ereport(LOG, (errmsg("flexfactor webhook listener restarts for its new address, port or path")));
				proc_exit(0);
			}
		}
		if (ff_database_released(MyDatabaseId))
		{
			ereport(LOG, (errmsg("flexfactor webhook listener is leaving its database so that it can be dropped, renamed or copied")));
			proc_exit(0);
		}

		/* deliveries that completed while the last group was answered: no waiting */
		if (n_waiting > 0)
			timeout_ms = 0;
		else if (MHD_get_timeout(daemon_handle, &mhd_timeout) == MHD_YES)
			timeout_ms = Min(timeout_ms, (long) mhd_timeout);
		(void) ff_fence_wait(WL_SOCKET_READABLE | WL_TIMEOUT, epoll_fd, timeout_ms,
							 ff_wait_event(FF_WAIT_LISTENER));
		MHD_run(daemon_handle);		/* receives; complete deliveries wait */
		enforce_deadlines();
		answer = n_waiting > 0 && screen_waiting();
		answer |= record_rejections();
		if (answer || n_waiting > 0)
		{
			if (n_waiting > 0)
				take_waiting();
			MHD_run(daemon_handle); /* answers them */
		}
		if (ff_refusals_flush_due() && extension_ready(false))
			flush_refusals();	/* at most every few seconds, however many refusals */
	}
}
