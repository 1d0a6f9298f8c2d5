/*
 * decline_queue.c
 *		The queue of declined merchant-initiated charges for SFTP batches:
 *		the one place where rows of flexfactor.declines are written.
 *
 * ff_enqueue_decline() (SQL) and the decline trigger (decline_trigger.c)
 * both come here with a complete body.  It is checked as an SFTP batch line
 * (body_check.c: every missing field named, FF023; a card number, FF024),
 * its idempotency key is derived from the attempt (mid, orderId,
 * transaction.id; evaluate.c), and it is inserted with a plan prepared once
 * per backend (saved_plan.c).  A second call for the same attempt (orderId
 * + transaction.id) queues nothing and finds the queued row.
 *
 * The decline trigger fires at the end of the statement that wrote the
 * billing rows (AfterTriggerEndQuery, inside ExecutorFinish).  The declines
 * it decides on there, already checked, wait in memory and are inserted by
 * one statement when that ExecutorFinish returns (or every 1,000 rows),
 * instead of one insert each: the executor's setup per statement is what a
 * single row costs most.  They are queued in the order they were decided,
 * before the statement returns, each in the subtransaction that decided it
 * or one enclosing it (never inside a later one, which could roll it back
 * alone): those decided inside a subtransaction begun while others wait (a
 * PL/pgSQL block with EXCEPTION in another trigger) are queued at their
 * own statement's end, before the ones that wait for the enclosing
 * statement's.  Rows decided in a subtransaction that is rolled back are
 * dropped with it, and a transaction can never commit with rows still
 * waiting.  A trigger fired anywhere else (a deferred constraint trigger at
 * commit, COPY) and ff_enqueue_decline() insert at once, after whatever
 * waits in their subtransaction.
 *
 * The insert is the only step that needs rights on the queue, and it takes
 * data only: it runs as the owner of flexfactor.declines, as a
 * security-restricted operation, for that one statement.  The trigger calls
 * this with the rights of the role that writes the billing row, having run
 * the merchant's enrich function and type functions with those rights; no
 * code of the caller's runs inside the insert: the table has no insert
 * trigger, its defaults and check are built-in functions, and the
 * statements name every function and operator with its schema (they may be
 * planned under the writer's search_path).  Queue order is (enqueue_xid,
 * id), given by the table's defaults: any change to how a decline is
 * positioned belongs here.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

#include "body_check.h"
#include "decline_queue.h"
#include "evaluate.h"
#include "saved_plan.h"
#include "settings.h"

#define UUID_TEXT_LEN	36

#define MAX_WAITING 1000

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr insert_many_plan = NULL;
static SPIPlanPtr lookup_plan = NULL;

static Oid	row_types[4] = {TEXTOID, TEXTOID, UUIDOID, JSONBOID};
static Oid	array_types[4] = {TEXTARRAYOID, TEXTARRAYOID, UUIDARRAYOID, JSONBARRAYOID};

/* a checked decline waiting for the end of its statement */
typedef struct WaitingDecline
{
	Datum		values[4];		/* order_id, transaction_id, idempotency_key, payload */
	SubTransactionId subid;		/* the subtransaction that decided it */
	int			depth;			/* the statement end it waits for (finish_depth) */
} WaitingDecline;

static MemoryContext waiting_cxt = NULL;	/* under TopTransactionContext */
static WaitingDecline *waiting = NULL;
static int	n_waiting = 0;
static int	waiting_depth = 0;	/* the deepest statement end they wait for */
static int	finish_depth = 0;	/* ExecutorFinish calls in progress */
static ExecutorFinish_hook_type prev_executor_finish = NULL;

/* the owner of flexfactor.declines, as whom the insert runs */
static Oid
queue_owner(void)
{
	Oid			relid = get_relname_relid("declines", get_namespace_oid("flexfactor", false));
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table flexfactor.declines does not exist"),
				 errhint("Update the extension: ALTER EXTENSION flexfactor UPDATE.")));
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* the payload without what each batch line adds (idempotencyKey, mid, sequenceNumber) */
static Jsonb *
stored_payload(Jsonb *payload)
{
	static const char *const added[] = {"idempotencyKey", "mid", "sequenceNumber"};
	JsonbValue	v;
	bool		any = false;
	Datum		keys[lengthof(added)];

	for (int i = 0; i < lengthof(added); i++)
		any |= getKeyJsonValueFromContainer(&payload->root, added[i], strlen(added[i]), &v) != NULL;
	if (!any)
		return payload;
	for (int i = 0; i < lengthof(added); i++)
		keys[i] = CStringGetTextDatum(added[i]);
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_delete_array, JsonbPGetDatum(payload),
											  PointerGetDatum(construct_array(keys, lengthof(added),
																			  TEXTOID, -1, false,
																			  TYPALIGN_INT))));
}

/* ------------------------------------------------------------ inserting */

/*
 * Runs one statement of the queue as its owner, as a security-restricted
 * operation; returns the id RETURNING gave, or 0.
 */
static int64
insert_as_owner(SPIPlanPtr *plan, const char *sql, Oid *types, Datum *values, bool want_id)
{
	Oid			saved_user;
	int			saved_context;
	volatile int64 id = 0;

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(queue_owner(), saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		bool		isnull;
		int			rc;

		SPI_connect();
		rc = SPI_execute_plan(ff_saved_plan(plan, sql, 4, types), values, NULL, false, 0);
		if (rc != SPI_OK_INSERT && rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not queue the decline: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1 && rc == SPI_OK_INSERT_RETURNING)
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		else if (SPI_processed == 0 && want_id)
		{
			/* the same attempt, queued before */
			if (SPI_execute_plan(ff_saved_plan(&lookup_plan,
											   "SELECT id FROM flexfactor.declines"
											   " WHERE order_id OPERATOR(pg_catalog.=) $1"
											   "   AND transaction_id OPERATOR(pg_catalog.=) $2",
											   2, row_types),
								 values, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not find the queued decline");
			if (SPI_processed == 1)
				id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	return id;
}

/* the deepest statement end the declines still waiting wait for */
static void
reset_waiting_depth(void)
{
	waiting_depth = 0;
	for (int i = 0; i < n_waiting; i++)
		waiting_depth = Max(waiting_depth, waiting[i].depth);
}

/*
 * The declines waiting for the end of their statement, queued by one
 * insert: those of the current subtransaction and of the ones it committed,
 * never those of an enclosing one.  A decline is inserted in the
 * subtransaction that decided it or one enclosing it, so that it goes
 * exactly when its decision goes: inserted inside a subtransaction that is
 * then rolled back (a nested statement's, ff_enqueue_decline()'s, in a
 * PL/pgSQL block with EXCEPTION) it would be lost, and its billing row
 * committed with nothing queued.  The enclosing ones' wait for their own
 * statement's end (they are the first ones: every decline decided since
 * this subtransaction began is its own or a committed child's).
 */
static void
queue_waiting(void)
{
	static const int16 lens[4] = {-1, -1, UUID_LEN, -1};
	static const char aligns[4] = {TYPALIGN_INT, TYPALIGN_INT, TYPALIGN_CHAR, TYPALIGN_INT};
	SubTransactionId current = GetCurrentSubTransactionId();
	Datum		arrays[4];
	Datum	   *elems;
	int			first = n_waiting;
	int			n;

	while (first > 0 && waiting[first - 1].subid >= current)
		first--;
	n = n_waiting - first;
	if (n == 0)
		return;
	elems = palloc(sizeof(Datum) * n);
	for (int c = 0; c < 4; c++)
	{
		for (int i = 0; i < n; i++)
			elems[i] = waiting[first + i].values[c];
		arrays[c] = PointerGetDatum(construct_array(elems, n, row_types[c], lens[c], false, aligns[c]));
	}
	pfree(elems);
	/* detached before the insert, whose own statement end comes here again */
	if (first == 0)
	{
		MemoryContextDelete(waiting_cxt);
		waiting_cxt = NULL;
		waiting = NULL;
	}
	else
	{
		for (int i = first; i < n_waiting; i++)
			for (int c = 0; c < 4; c++)
				pfree(DatumGetPointer(waiting[i].values[c]));
	}
	n_waiting = first;
	reset_waiting_depth();

	(void) insert_as_owner(&insert_many_plan,
						   "INSERT INTO flexfactor.declines"
						   "       (order_id, transaction_id, idempotency_key, payload)"
						   " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
						   "                          pg_catalog.unnest($3), pg_catalog.unnest($4))"
						   " ON CONFLICT (order_id, transaction_id) DO NOTHING",
						   array_types, arrays, false);
}

static void
wait_for_statement_end(Datum *values)
{
	static const int16 lens[4] = {-1, -1, UUID_LEN, -1};
	WaitingDecline *w;

	if (waiting_cxt == NULL)
	{
		waiting_cxt = AllocSetContextCreate(TopTransactionContext, "flexfactor declines to queue",
											ALLOCSET_DEFAULT_SIZES);
		waiting = MemoryContextAlloc(waiting_cxt, sizeof(WaitingDecline) * MAX_WAITING);
	}
	w = &waiting[n_waiting++];
	for (int c = 0; c < 4; c++)
	{
		MemoryContext old = MemoryContextSwitchTo(waiting_cxt);

		w->values[c] = datumCopy(values[c], false, lens[c]);
		MemoryContextSwitchTo(old);
	}
	w->subid = GetCurrentSubTransactionId();
	w->depth = finish_depth;
	waiting_depth = Max(waiting_depth, finish_depth);
	if (n_waiting == MAX_WAITING)
		queue_waiting();
}

/*
 * Checks and queues one decline body.  want_id: at once, returning the id
 * of its row (the new one, or for a repeat of the same attempt the one
 * queued before); else, inside a statement's end, possibly when that end
 * comes (returns 0).
 */
int64
ff_queue_decline(Jsonb *payload, bool want_id)
{
	JsonbValue	v;
	char	   *order_id;
	char	   *tx_id;
	char	   *given_key;
	const char *mid;
	char		key[UUID_TEXT_LEN + 1];
	Datum		values[4];

	ff_check_body(payload, FF_BODY_BATCH, "ff_enqueue_decline");
	if (getKeyJsonValueFromContainer(&payload->root, "isMIT", 5, &v) != NULL &&
		v.type == jbvBool && !v.val.boolean)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ff_enqueue_decline() takes merchant-initiated charges only"),
				 errdetail("The payload has isMIT = false; SFTP batches carry MIT declines."),
				 errhint("Send customer-initiated declines with ff_evaluate().")));

	order_id = ff_body_text(&payload->root, "orderId");
	tx_id = ff_body_text(&payload->root, "transaction.id");
	given_key = ff_body_text(&payload->root, "idempotencyKey");
	if (given_key != NULL)
		values[2] = DirectFunctionCall1(uuid_in, CStringGetDatum(given_key));
	else
	{
		const char *parts[3];

		mid = ff_body_text(&payload->root, "mid");
		if (mid == NULL && ff_mid[0] != '\0')
			mid = ff_mid;
		parts[0] = mid;
		parts[1] = order_id;
		parts[2] = tx_id;
		ff_attempt_key("evaluate", parts, 3, key);
		values[2] = DirectFunctionCall1(uuid_in, CStringGetDatum(key));
	}
	values[0] = CStringGetTextDatum(order_id);
	values[1] = CStringGetTextDatum(tx_id);
	values[3] = JsonbPGetDatum(stored_payload(payload));

	if (!want_id && finish_depth > 0)
	{
		wait_for_statement_end(values);
		return 0;
	}
	queue_waiting();			/* first what this subtransaction decided before */
	return insert_as_owner(&insert_plan,
						   "INSERT INTO flexfactor.declines"
						   "       (order_id, transaction_id, idempotency_key, payload)"
						   " VALUES ($1, $2, $3, $4)"
						   " ON CONFLICT (order_id, transaction_id) DO NOTHING"
						   " RETURNING id",
						   row_types, values, want_id);
}

/* ------------------------------------------------- statement and transaction ends */

static void
decline_queue_executor_finish(QueryDesc *queryDesc)
{
	finish_depth++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		/* what this statement's triggers decided (and any nested one's) */
		if (n_waiting > 0 && waiting_depth >= finish_depth)
			queue_waiting();
	}
	PG_FINALLY();
	{
		finish_depth--;
	}
	PG_END_TRY();
}

/* declines decided in a subtransaction that is rolled back go with it */
static void
decline_queue_subxact(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	/* later subtransactions are its own: they started while it was open */
	while (n_waiting > 0 && waiting[n_waiting - 1].subid >= mySubid)
		n_waiting--;
	reset_waiting_depth();
}

static void
decline_queue_xact(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (n_waiting > 0)
				elog(ERROR, "%d declines decided by the decline trigger were not queued", n_waiting);
			break;
		default:
			/* the memory went with the transaction */
			waiting_cxt = NULL;
			waiting = NULL;
			n_waiting = 0;
			waiting_depth = 0;
			break;
	}
}

/* from _PG_init, when the library is preloaded; without it every decline is queued at once */
void
ff_decline_queue_install_hooks(void)
{
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = decline_queue_executor_finish;
	RegisterXactCallback(decline_queue_xact, NULL);
	RegisterSubXactCallback(decline_queue_subxact, NULL);
}

PG_FUNCTION_INFO_V1(ff_enqueue_decline);

Datum
ff_enqueue_decline(PG_FUNCTION_ARGS)
{
	int64		id = ff_queue_decline(PG_GETARG_JSONB_P(0), true);

	if (id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}
