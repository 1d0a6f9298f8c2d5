/*
 * order_events.c
 *		The triggers of flexfactor.orders: its timestamps, and what every
 *		change of an order's status sets off (the order_events row, NOTIFY
 *		flexfactor_order, the billing callback), and the webhook events that
 *		waited for an order's FlexFactor key.
 *
 * In C because every order written pays for them: ff_evaluate() in the
 * billing code's loops, each webhook, each line of a result file.  Each
 * statement they run is planned once per backend (saved_plan.c) and names
 * every object, function and operator with its schema: they run with the
 * rights of whoever writes the order (the extension's owner through the
 * SECURITY DEFINER ff_* functions, the worker, the listener), under any
 * search_path.  The callback itself is run by flexfactor._run_callback()
 * (SQL), in a subtransaction and as its owner (callback.c); applying a
 * waiting event is flexfactor._apply_webhook_event() (SQL).  When the
 * conditions hold is said by the triggers' WHEN clauses
 * (sql/install/08_results_and_webhooks.sql), not here.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "order_events.h"
#include "saved_plan.h"
#include "settings.h"

/* set by ff_evaluate() around its write: the order it records was PENDING until the answer */
static const char *recording_api_order = NULL;

const char *
ff_order_events_recording(const char *order_id)
{
	const char *previous = recording_api_order;

	recording_api_order = order_id;
	return previous;
}

static SPIPlanPtr event_plan = NULL;
static SPIPlanPtr callback_plan = NULL;
static Oid	callback_plan_rowtype = InvalidOid;
static SPIPlanPtr waiting_plan = NULL;
static SPIPlanPtr apply_plan = NULL;

static void
require_row_trigger(FunctionCallInfo fcinfo, const char *name, bool before)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		TRIGGER_FIRED_BEFORE(td->tg_event) != before)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flexfactor.%s() must be a %s ... FOR EACH ROW trigger on flexfactor.orders",
						name, before ? "BEFORE" : "AFTER")));
}

static int
column(Relation rel, const char *name)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		elog(ERROR, "flexfactor.orders has no column \"%s\"", name);
	return attnum;
}

/* a text column; NULL for SQL NULL */
static text *
text_column(HeapTuple tuple, TupleDesc desc, int attnum)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, desc, &isnull);

	return isnull ? NULL : DatumGetTextPP(value);
}

static bool
same_text(text *a, text *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/* BEFORE UPDATE: updated_at, and status_changed_at when the status changes */
PG_FUNCTION_INFO_V1(ff_orders_touch);

Datum
ff_orders_touch(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	int			cols[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			n = 0;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	int			status;

	require_row_trigger(fcinfo, "_orders_touch", true);
	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return PointerGetDatum(td->tg_trigtuple);
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	status = column(rel, "status");

	cols[n] = column(rel, "updated_at");
	values[n++] = now;
	if (!same_text(text_column(td->tg_trigtuple, desc, status),
				   text_column(td->tg_newtuple, desc, status)))
	{
		cols[n] = column(rel, "status_changed_at");
		values[n++] = now;
	}
	return PointerGetDatum(heap_modify_tuple_by_cols(td->tg_newtuple, desc, n, cols, values, nulls));
}

/*
 * AFTER INSERT or UPDATE OF status, when the status is new: the
 * order_events row, NOTIFY flexfactor_order with the row id and status, and
 * the callback when one is configured (flexfactor._run_callback() records
 * its outcome on the event).
 */
PG_FUNCTION_INFO_V1(ff_orders_status_changed);

Datum
ff_orders_status_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	row;
	bool		isnull;
	int64		order_ref;
	text	   *status;
	Datum		values[3];
	char		nulls[3] = "   ";
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	int64		event_id;
	StringInfoData payload;

	require_row_trigger(fcinfo, "_orders_status_changed", false);
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	order_ref = DatumGetInt64(heap_getattr(row, column(rel, "id"), desc, &isnull));
	status = text_column(row, desc, column(rel, "status"));

	values[0] = Int64GetDatum(order_ref);
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		text	   *old = text_column(td->tg_trigtuple, desc, column(rel, "status"));

		values[1] = PointerGetDatum(old);
		nulls[1] = old ? ' ' : 'n';
	}
	else if (recording_api_order != NULL &&
			 strcmp(recording_api_order,
					TextDatumGetCString(heap_getattr(row, column(rel, "order_id"), desc, &isnull))) == 0)
		values[1] = CStringGetTextDatum("PENDING");
	else
		nulls[1] = 'n';
	values[2] = PointerGetDatum(status);

	SPI_connect();
	if (SPI_execute_plan(ff_saved_plan(&event_plan,
									   "INSERT INTO flexfactor.order_events (order_ref, old_status, new_status)"
									   " VALUES ($1, $2, $3) RETURNING id",
									   3, types),
						 values, nulls, false, 1) != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not record the order's status change");
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	/* any role may LISTEN: the row id and the status only, as json_build_object() writes them */
	initStringInfo(&payload);
	appendStringInfo(&payload, "{\"id\" : " INT64_FORMAT ", \"status\" : ", order_ref);
	escape_json(&payload, text_to_cstring(status));
	appendStringInfoChar(&payload, '}');
	Async_Notify("flexfactor_order", payload.data);

	if (ff_on_order_status != NULL && ff_on_order_status[0] != '\0')
	{
		Oid			rowtype = RelationGetForm(rel)->reltype;
		Datum		args[2];

		/* planned for the orders row type; a new one after the extension is created again */
		if (callback_plan != NULL && callback_plan_rowtype != rowtype)
		{
			SPI_freeplan(callback_plan);
			callback_plan = NULL;
		}
		types[1] = rowtype;
		callback_plan_rowtype = rowtype;
		args[0] = Int64GetDatum(event_id);
		args[1] = heap_copy_tuple_as_datum(row, desc);
		if (SPI_execute_plan(ff_saved_plan(&callback_plan,
										   "SELECT flexfactor._run_callback($1, $2)", 2, types),
							 args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not run the billing callback");
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * AFTER INSERT or UPDATE OF order_session_key, when the order gets its key:
 * the webhook events that came before it, in the order they came.
 */
PG_FUNCTION_INFO_V1(ff_orders_key_known);

Datum
ff_orders_key_known(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	row;
	bool		isnull;
	Datum		key;
	Oid			types[1] = {UUIDOID};
	Oid			id_type[1] = {INT8OID};
	int64	   *waiting;
	uint64		n;

	require_row_trigger(fcinfo, "_orders_key_known", false);
	rel = td->tg_relation;
	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	key = heap_getattr(row, column(rel, "order_session_key"), RelationGetDescr(rel), &isnull);
	if (isnull)
		return PointerGetDatum(NULL);

	SPI_connect();
	if (SPI_execute_plan(ff_saved_plan(&waiting_plan,
									   "SELECT id FROM flexfactor.webhook_events"
									   " WHERE order_session_key OPERATOR(pg_catalog.=) $1"
									   "   AND apply_state OPERATOR(pg_catalog.=) 'waiting_order'"
									   " ORDER BY id",
									   1, types),
						 &key, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for webhook events waiting for the order");
	n = SPI_processed;
	waiting = palloc(sizeof(int64) * (n + 1));
	for (uint64 i = 0; i < n; i++)
		waiting[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	for (uint64 i = 0; i < n; i++)
	{
		Datum		id = Int64GetDatum(waiting[i]);

		if (SPI_execute_plan(ff_saved_plan(&apply_plan, "SELECT flexfactor._apply_webhook_event($1)",
										   1, id_type),
							 &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not apply webhook event " INT64_FORMAT, waiting[i]);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
