/*
 * decline_trigger.c
 *		flexfactor.ff_decline_trigger(): queues a billing table's declined
 *		recurring charges for FlexFactor.
 *
 * The trigger runs on the merchant's hot path, for every row written to the
 * billing table, and with the rights of the role that writes it (it is not
 * SECURITY DEFINER): nothing of the caller's, no cast, no output function,
 * no enrich function, ever runs with the extension owner's rights.
 *
 * Its arguments are parsed once per statement into a mapping of attribute
 * numbers, kept in the trigger's FmgrInfo; the functions a decline needs are
 * looked up at the statement's first decline.  A row is first tested against
 * the conditions (declined_if, recurring_if) by reading those columns alone;
 * a row that is not a declined recurring charge costs nothing more.  A row
 * that is one has its mapped columns read and turned into text, the DBA's
 * enrich function called, and both handed, as data, to the one privileged
 * step: flexfactor._queue_mapped_decline(), which builds the body with
 * ff_decline(), checks it and queues it.  The trigger never touches the
 * network.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

/* the fields a column or a constant may supply (see ff_decline()) */
static const char *const field_names[] = {
	"order_id", "amount", "amount_dollars", "currency", "token",
	"transaction_id", "decline_code", "decline_message", "response_code_source",
	"avs_result_code", "cvv_result_code", "cavv_result_code",
	"email", "phone", "first_name", "last_name", "address_line1", "address_line2",
	"city", "state", "zip_code", "country_code", "country",
	"subscription_id", "subscription_interval", "expiry", "expiry_days", "declined_at",
	"holder_name", "card_brand", "card_bin", "card_last4",
	"expiration_month", "expiration_year", "sense_key",
};

#define NUM_FIELDS	lengthof(field_names)

typedef struct FieldSource
{
	AttrNumber	attnum;			/* a column of the row, or 0 */
	char	   *constant;		/* or a constant, or NULL */
	FmgrInfo	output;			/* the column type's output function */
} FieldSource;

typedef struct DeclineMapping
{
	Oid			tgoid;			/* the trigger it was parsed for */
	FieldSource fields[NUM_FIELDS];
	AttrNumber	declined_attnum;	/* declined_if column, or 0 */
	char	   *declined_value;
	FmgrInfo	declined_output;
	AttrNumber	recurring_attnum;	/* recurring_if column (boolean), or 0 */
	char	   *enrich_name;	/* enrich function, or NULL */
	char	   *enrich_arg;		/* the argument that named it */
	bool		resolved;		/* enrich and queue looked up (first decline) */
	FmgrInfo	enrich;			/* enrich function(row) -> jsonb */
	FmgrInfo	queue;			/* flexfactor._queue_mapped_decline */
} DeclineMapping;

static int
field_index(const char *name)
{
	for (int i = 0; i < NUM_FIELDS; i++)
		if (strcmp(field_names[i], name) == 0)
			return i;
	return -1;
}

static const char *
relation_display_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

static char *
known_fields_list(void)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < NUM_FIELDS; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", field_names[i]);
	appendStringInfoString(&buf, "; expiry_days=N, enrich=function, declined_if=column:value, recurring_if=column");
	return buf.data;
}

/* the attribute number of a user column, or an error naming the argument */
static AttrNumber
column_attnum(TriggerData *td, const char *column, const char *arg, Oid *typid)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), column) == 0)
		{
			*typid = att->atttypid;
			return att->attnum;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" named by argument \"%s\" of trigger \"%s\" does not exist in %s",
					column, arg, td->tg_trigger->tgname, relation_display_name(td->tg_relation)),
			 errhint("Fix the trigger's arguments: DROP TRIGGER and CREATE it again.")));
	return InvalidAttrNumber;	/* keep the compiler quiet */
}

static void
output_function(Oid typid, FmgrInfo *finfo, MemoryContext cxt)
{
	Oid			func;
	bool		varlena;

	getTypeOutputInfo(typid, &func, &varlena);
	fmgr_info_cxt(func, finfo, cxt);
}

static void
bad_argument(TriggerData *td, const char *arg, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid argument \"%s\" of trigger \"%s\" on %s",
					arg, td->tg_trigger->tgname, relation_display_name(td->tg_relation)),
			 errdetail("%s", why),
			 errhint("Arguments are field=column, field='constant', expiry_days=N, enrich=function, "
					 "declined_if=column:value and recurring_if=column; fields: %s.",
					 known_fields_list())));
}

static void
lookup_enrich(TriggerData *td, DeclineMapping *map, const char *name, const char *arg,
			  MemoryContext cxt)
{
	Oid			rowtype = RelationGetForm(td->tg_relation)->reltype;
	List	   *names = textToQualifiedNameList(cstring_to_text(name));
	Oid			func = LookupFuncName(names, 1, &rowtype, true);

	if (!OidIsValid(func))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("enrich function %s(%s) named by trigger \"%s\" does not exist",
						name, format_type_be(rowtype), td->tg_trigger->tgname),
				 errhint("Create a function taking the row of %s and returning jsonb, or fix the argument \"%s\".",
						 relation_display_name(td->tg_relation), arg)));
	if (get_func_rettype(func) != JSONBOID || get_func_retset(func))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("enrich function %s of trigger \"%s\" must return jsonb",
						name, td->tg_trigger->tgname)));

	/* called with the writer's rights, so checked as a call of theirs */
	if (!DatumGetBool(DirectFunctionCall2(has_function_privilege_id,
										  ObjectIdGetDatum(func),
										  CStringGetTextDatum("EXECUTE"))))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for enrich function %s of trigger \"%s\"",
						name, td->tg_trigger->tgname),
				 errhint("GRANT EXECUTE on it to the roles that write %s.",
						 relation_display_name(td->tg_relation))));
	InvokeFunctionExecuteHook(func);
	fmgr_info_cxt(func, &map->enrich, cxt);
}

/*
 * The privileged step, found in the extension's schema without any
 * permission check of the writer's: a role that may write the billing table
 * needs no rights in schema flexfactor.
 */
static void
lookup_queue_function(DeclineMapping *map, MemoryContext cxt)
{
	Oid			args[2] = {JSONBOID, JSONBOID};
	Oid			namespace = get_namespace_oid("flexfactor", false);
	Oid			func = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
									   CStringGetDatum("_queue_mapped_decline"),
									   PointerGetDatum(buildoidvector(args, 2)),
									   ObjectIdGetDatum(namespace));

	if (!OidIsValid(func))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function flexfactor._queue_mapped_decline(jsonb, jsonb) does not exist"),
				 errhint("Update the extension: ALTER EXTENSION flexfactor UPDATE.")));
	fmgr_info_cxt(func, &map->queue, cxt);
}

/*
 * What only a decline needs, looked up at the first decline of the
 * statement: a statement that writes no decline needs no rights on the
 * enrich function's schema.
 */
static void
resolve_for_decline(TriggerData *td, DeclineMapping *map, MemoryContext cxt)
{
	if (map->enrich_name != NULL)
		lookup_enrich(td, map, map->enrich_name, map->enrich_arg, cxt);
	lookup_queue_function(map, cxt);
	map->resolved = true;
}

static DeclineMapping *
parse_mapping(TriggerData *td, MemoryContext cxt)
{
	Trigger    *trigger = td->tg_trigger;
	MemoryContext old = MemoryContextSwitchTo(cxt);
	DeclineMapping *map = palloc0(sizeof(DeclineMapping));
	Oid			typid;

	map->tgoid = trigger->tgoid;
	for (int a = 0; a < trigger->tgnargs; a++)
	{
		char	   *arg = trigger->tgargs[a];
		char	   *eq = strchr(arg, '=');
		char	   *name;
		char	   *value;
		int			field;

		if (eq == NULL || eq == arg)
			bad_argument(td, arg, "An argument is a name, \"=\" and a value.");
		name = pnstrdup(arg, eq - arg);
		value = eq + 1;

		if (strcmp(name, "declined_if") == 0)
		{
			char	   *colon = strchr(value, ':');

			if (colon == NULL || colon == value)
				bad_argument(td, arg, "declined_if takes column:value.");
			map->declined_attnum = column_attnum(td, pnstrdup(value, colon - value), arg, &typid);
			map->declined_value = pstrdup(colon + 1);
			output_function(typid, &map->declined_output, cxt);
			continue;
		}
		if (strcmp(name, "recurring_if") == 0)
		{
			map->recurring_attnum = column_attnum(td, value, arg, &typid);
			if (typid != BOOLOID)
				bad_argument(td, arg, "recurring_if names a boolean column.");
			continue;
		}
		if (strcmp(name, "enrich") == 0)
		{
			if (value[0] == '\0')
				bad_argument(td, arg, "enrich names a function.");
			map->enrich_name = pstrdup(value);
			map->enrich_arg = pstrdup(arg);
			continue;
		}

		field = field_index(name);
		if (field < 0)
			bad_argument(td, arg, psprintf("\"%s\" is not a field of a decline.", name));
		if (strcmp(name, "expiry_days") == 0)
		{
			char	   *end;
			long		days = strtol(value, &end, 10);

			if (*value == '\0' || *end != '\0' || days < 1 || days > 365)
				bad_argument(td, arg, "expiry_days is a whole number of days from 1 to 365.");
			map->fields[field].constant = pstrdup(value);
		}
		else if (value[0] == '\'' && strlen(value) >= 2 && value[strlen(value) - 1] == '\'')
			map->fields[field].constant = pnstrdup(value + 1, strlen(value) - 2);
		else
		{
			map->fields[field].attnum = column_attnum(td, value, arg, &typid);
			output_function(typid, &map->fields[field].output, cxt);
		}
	}

	/* what no body can do without */
	{
		static const char *const required[] = {"order_id", "currency", "token"};

		for (int i = 0; i < lengthof(required); i++)
		{
			FieldSource *f = &map->fields[field_index(required[i])];

			if (f->attnum == 0 && f->constant == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("trigger \"%s\" on %s maps no column as %s",
								trigger->tgname, relation_display_name(td->tg_relation), required[i]),
						 errhint("Add an argument %s=<column>.", required[i])));
		}
		if (map->fields[field_index("amount")].attnum == 0 &&
			map->fields[field_index("amount")].constant == NULL &&
			map->fields[field_index("amount_dollars")].attnum == 0 &&
			map->fields[field_index("amount_dollars")].constant == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("trigger \"%s\" on %s maps no column as amount or amount_dollars",
							trigger->tgname, relation_display_name(td->tg_relation)),
					 errhint("Add an argument amount=<column of cents> or amount_dollars=<column>.")));
	}

	MemoryContextSwitchTo(old);
	return map;
}

static char *
column_text(HeapTuple tuple, TupleDesc desc, AttrNumber attnum, FmgrInfo *output)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, desc, &isnull);

	return isnull ? NULL : OutputFunctionCall(output, value);
}

/* does the row satisfy declined_if and recurring_if? */
static bool
row_is_decline(DeclineMapping *map, TriggerData *td, HeapTuple tuple)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);

	if (map->recurring_attnum != 0)
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, map->recurring_attnum, desc, &isnull);

		if (isnull || !DatumGetBool(value))
			return false;
	}
	if (map->declined_attnum != 0)
	{
		char	   *text = column_text(tuple, desc, map->declined_attnum, &map->declined_output);

		if (text == NULL || strcmp(text, map->declined_value) != 0)
			return false;

		/* an UPDATE queues only a row it newly makes a decline */
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		{
			char	   *old = column_text(td->tg_trigtuple, desc, map->declined_attnum,
										  &map->declined_output);

			if (old != NULL && strcmp(old, text) == 0)
				return false;
		}
	}
	return true;
}

/* the mapped values as a flat JSON object of text: {"order_id": "...", ...} */
static Datum
mapped_fields(DeclineMapping *map, TupleDesc desc, HeapTuple tuple)
{
	StringInfoData json;

	initStringInfo(&json);
	appendStringInfoChar(&json, '{');
	for (int i = 0; i < NUM_FIELDS; i++)
	{
		FieldSource *f = &map->fields[i];
		char	   *text = f->constant;

		if (f->attnum != 0)
			text = column_text(tuple, desc, f->attnum, &f->output);
		if (text == NULL)
			continue;
		if (json.len > 1)
			appendStringInfoChar(&json, ',');
		escape_json(&json, field_names[i]);
		appendStringInfoChar(&json, ':');
		escape_json(&json, text);
	}
	appendStringInfoChar(&json, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data));
}

PG_FUNCTION_INFO_V1(ff_decline_trigger);

Datum
ff_decline_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	DeclineMapping *map;
	HeapTuple	tuple;
	TupleDesc	desc;
	Datum		details = (Datum) 0;
	bool		details_null = true;
	LOCAL_FCINFO(call, 2);

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flexfactor.ff_decline_trigger() must be an AFTER INSERT OR UPDATE ... FOR EACH ROW trigger")));

	map = (DeclineMapping *) fcinfo->flinfo->fn_extra;
	if (map == NULL || map->tgoid != td->tg_trigger->tgoid)
	{
		map = parse_mapping(td, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = map;
	}

	tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	if (!row_is_decline(map, td, tuple))
		return PointerGetDatum(NULL);

	if (!map->resolved)
		resolve_for_decline(td, map, fcinfo->flinfo->fn_mcxt);
	desc = RelationGetDescr(td->tg_relation);
	if (map->enrich_name != NULL)
	{
		LOCAL_FCINFO(enrich, 1);

		InitFunctionCallInfoData(*enrich, &map->enrich, 1, InvalidOid, NULL, NULL);
		enrich->args[0].value = heap_copy_tuple_as_datum(tuple, desc);
		enrich->args[0].isnull = false;
		details = FunctionCallInvoke(enrich);
		details_null = enrich->isnull;
	}

	InitFunctionCallInfoData(*call, &map->queue, 2, InvalidOid, NULL, NULL);
	call->args[0].value = mapped_fields(map, desc, tuple);
	call->args[0].isnull = false;
	call->args[1].value = details;
	call->args[1].isnull = details_null;
	(void) FunctionCallInvoke(call);

	return PointerGetDatum(NULL);
}
