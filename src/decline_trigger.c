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
 * numbers, kept in the trigger's FmgrInfo; the enrich function is looked up
 * at the statement's first decline.  A row is first tested against the
 * conditions (declined_if, recurring_if) by reading those columns alone; a
 * row that is not a declined recurring charge costs nothing more.  A row
 * that is one has the DBA's enrich function called and its mapped columns
 * read (columns of the matching type directly, others through their type's
 * output and the field's input function, as a cast from text would), the
 * body is built as ff_decline() builds it, with the details merged in
 * (decline_body.c), and it is checked and queued (decline_queue.c), whose
 * insert alone runs as the queue's owner and takes data only.  The trigger
 * never touches the network.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_collation.h"
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
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "decline_body.h"
#include "decline_queue.h"

/* how a field's value is read */
typedef enum FieldKind
{
	FK_TEXT,					/* text, into FFDeclineValues.text[] */
	FK_AMOUNT,					/* cents: bigint */
	FK_AMOUNT_DOLLARS,			/* numeric, times 100, rounded */
	FK_EXPIRY,					/* timestamptz */
	FK_DECLINED_AT,				/* timestamptz */
	FK_EXPIRATION_MONTH,		/* integer */
	FK_EXPIRATION_YEAR,			/* integer */
	FK_EXPIRY_DAYS				/* a constant number of days */
} FieldKind;

/* the fields a column or a constant may supply (see ff_decline()), in the order of the hint */
static const struct
{
	const char *name;
	FieldKind	kind;
	FFDeclineText text;			/* for FK_TEXT */
}			fields[] = {
	{"order_id", FK_TEXT, FF_DT_ORDER_ID},
	{"amount", FK_AMOUNT},
	{"amount_dollars", FK_AMOUNT_DOLLARS},
	{"currency", FK_TEXT, FF_DT_CURRENCY},
	{"token", FK_TEXT, FF_DT_TOKEN},
	{"transaction_id", FK_TEXT, FF_DT_TRANSACTION_ID},
	{"decline_code", FK_TEXT, FF_DT_DECLINE_CODE},
	{"decline_message", FK_TEXT, FF_DT_DECLINE_MESSAGE},
	{"response_code_source", FK_TEXT, FF_DT_RESPONSE_CODE_SOURCE},
	{"avs_result_code", FK_TEXT, FF_DT_AVS_RESULT_CODE},
	{"cvv_result_code", FK_TEXT, FF_DT_CVV_RESULT_CODE},
	{"cavv_result_code", FK_TEXT, FF_DT_CAVV_RESULT_CODE},
	{"email", FK_TEXT, FF_DT_EMAIL},
	{"phone", FK_TEXT, FF_DT_PHONE},
	{"first_name", FK_TEXT, FF_DT_FIRST_NAME},
	{"last_name", FK_TEXT, FF_DT_LAST_NAME},
	{"address_line1", FK_TEXT, FF_DT_ADDRESS_LINE1},
	{"address_line2", FK_TEXT, FF_DT_ADDRESS_LINE2},
	{"city", FK_TEXT, FF_DT_CITY},
	{"state", FK_TEXT, FF_DT_STATE},
	{"zip_code", FK_TEXT, FF_DT_ZIP_CODE},
	{"country_code", FK_TEXT, FF_DT_COUNTRY_CODE},
	{"country", FK_TEXT, FF_DT_COUNTRY},
	{"subscription_id", FK_TEXT, FF_DT_SUBSCRIPTION_ID},
	{"subscription_interval", FK_TEXT, FF_DT_SUBSCRIPTION_INTERVAL},
	{"expiry", FK_EXPIRY},
	{"expiry_days", FK_EXPIRY_DAYS},
	{"declined_at", FK_DECLINED_AT},
	{"holder_name", FK_TEXT, FF_DT_HOLDER_NAME},
	{"card_brand", FK_TEXT, FF_DT_CARD_BRAND},
	{"card_bin", FK_TEXT, FF_DT_CARD_BIN},
	{"card_last4", FK_TEXT, FF_DT_CARD_LAST4},
	{"expiration_month", FK_EXPIRATION_MONTH},
	{"expiration_year", FK_EXPIRATION_YEAR},
	{"sense_key", FK_TEXT, FF_DT_SENSE_KEY},
};

#define NUM_FIELDS	lengthof(fields)

typedef struct FieldSource
{
	AttrNumber	attnum;			/* a column of the row, or 0 */
	Oid			typid;			/* its type */
	char	   *constant;		/* or a constant, or NULL */
	FmgrInfo	output;			/* the column type's output function */
} FieldSource;

typedef struct DeclineMapping
{
	Oid			tgoid;			/* the trigger it was parsed for */
	FieldSource fields[NUM_FIELDS];
	int			expiry_days;	/* expiry_days=N, or 0 */
	AttrNumber	declined_attnum;	/* declined_if column, or 0 */
	char	   *declined_value;
	int			declined_len;
	bool		declined_is_text;	/* text or varchar: compared as bytes */
	FmgrInfo	declined_output;
	AttrNumber	recurring_attnum;	/* recurring_if column (boolean), or 0 */
	char	   *enrich_name;	/* enrich function, or NULL */
	char	   *enrich_arg;		/* the argument that named it */
	bool		resolved;		/* enrich looked up (first decline) */
	FmgrInfo	enrich;			/* enrich function(row) -> jsonb */
} DeclineMapping;

static int
field_index(const char *name)
{
	for (int i = 0; i < NUM_FIELDS; i++)
		if (strcmp(fields[i].name, name) == 0)
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
		appendStringInfo(&buf, "%s%s", i ? ", " : "", fields[i].name);
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
 * What only a decline needs, looked up at the first decline of the
 * statement: a statement that writes no decline needs no rights on the
 * enrich function's schema.
 */
static void
resolve_for_decline(TriggerData *td, DeclineMapping *map, MemoryContext cxt)
{
	if (map->enrich_name != NULL)
		lookup_enrich(td, map, map->enrich_name, map->enrich_arg, cxt);
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
			map->declined_len = strlen(map->declined_value);
			map->declined_is_text = (typid == TEXTOID || typid == VARCHAROID);
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
			map->expiry_days = (int) days;
		}
		else if (value[0] == '\'' && strlen(value) >= 2 && value[strlen(value) - 1] == '\'')
			map->fields[field].constant = pnstrdup(value + 1, strlen(value) - 2);
		else
		{
			map->fields[field].attnum = column_attnum(td, value, arg, &typid);
			map->fields[field].typid = typid;
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

/* is the declined_if column's text the value?  NULL never is */
static bool
declined_value_is(DeclineMapping *map, TupleDesc desc, HeapTuple tuple, const char *value, int len)
{
	bool		isnull;
	Datum		datum = heap_getattr(tuple, map->declined_attnum, desc, &isnull);
	char	   *printed;

	if (isnull)
		return false;
	if (map->declined_is_text)
	{
		/* text and varchar print as they are stored: no output function */
		text	   *t = DatumGetTextPP(datum);

		return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), value, len) == 0;
	}
	printed = OutputFunctionCall(&map->declined_output, datum);
	return strlen(printed) == len && memcmp(printed, value, len) == 0;
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
		if (!declined_value_is(map, desc, tuple, map->declined_value, map->declined_len))
			return false;

		/* an UPDATE queues only a row it newly makes a decline */
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) &&
			declined_value_is(map, desc, td->tg_trigtuple, map->declined_value, map->declined_len))
			return false;
	}
	return true;
}

/* the field's value as text (a column through its type's output function), or NULL */
static char *
field_text(FieldSource *f, TupleDesc desc, HeapTuple tuple)
{
	bool		isnull;
	Datum		value;

	if (f->attnum == 0)
		return f->constant;
	value = heap_getattr(tuple, f->attnum, desc, &isnull);
	if (isnull)
		return NULL;
	if (f->typid == TEXTOID || f->typid == VARCHAROID)
		return TextDatumGetCString(value);
	return OutputFunctionCall(&f->output, value);
}

/*
 * The field's value as a datum of type typid: a column of that type (or a
 * narrower integer) as it is, anything else through text and the type's
 * input function, as a cast from text does.  false when NULL.
 */
static bool
field_value(FieldSource *f, TupleDesc desc, HeapTuple tuple, Oid typid, Datum *out)
{
	char	   *text;
	bool		integer = (f->typid == INT2OID || f->typid == INT4OID);

	if (f->attnum != 0 &&
		(f->typid == typid || (typid == INT8OID && integer) ||
		 (typid == INT4OID && f->typid == INT2OID)))
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, f->attnum, desc, &isnull);

		if (isnull)
			return false;
		if (f->typid == INT2OID)
			value = Int32GetDatum(DatumGetInt16(value));
		if (typid == INT8OID && integer)
			value = Int64GetDatum(DatumGetInt32(value));
		*out = value;
		return true;
	}
	if ((text = field_text(f, desc, tuple)) == NULL)
		return false;
	switch (typid)
	{
		case INT8OID:
			*out = DirectFunctionCall1(int8in, CStringGetDatum(text));
			break;
		case INT4OID:
			*out = DirectFunctionCall1(int4in, CStringGetDatum(text));
			break;
		case NUMERICOID:
			*out = DirectFunctionCall3(numeric_in, CStringGetDatum(text),
									   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
			break;
		case TIMESTAMPTZOID:
			*out = DirectFunctionCall3(timestamptz_in, CStringGetDatum(text),
									   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
			break;
		default:
			elog(ERROR, "unexpected field type %u", typid);
	}
	return true;
}

static bool
field_given(FieldSource *f)
{
	return f->attnum != 0 || f->constant != NULL;
}

/*
 * The values of the body, as the trigger documents them: transaction_id
 * defaults to the order id, declined_at to now(), expiry to now() plus
 * expiry_days; amount (cents) wins over amount_dollars; the charge is
 * recurring.
 */
static void
decline_values(DeclineMapping *map, TupleDesc desc, HeapTuple tuple, FFDeclineValues *v)
{
	FieldSource *amount = NULL;
	FieldSource *dollars = NULL;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	Datum		d;

	memset(v, 0, sizeof(*v));
	for (int i = 0; i < NUM_FIELDS; i++)
	{
		FieldSource *f = &map->fields[i];

		if (!field_given(f))
			continue;
		switch (fields[i].kind)
		{
			case FK_TEXT:
				v->text[fields[i].text] = field_text(f, desc, tuple);
				break;
			case FK_AMOUNT:
				amount = f;
				break;
			case FK_AMOUNT_DOLLARS:
				dollars = f;
				break;
			case FK_EXPIRY:
				if ((v->has_expiry = field_value(f, desc, tuple, TIMESTAMPTZOID, &d)))
					v->expiry = DatumGetTimestampTz(d);
				break;
			case FK_DECLINED_AT:
				if ((v->has_declined_at = field_value(f, desc, tuple, TIMESTAMPTZOID, &d)))
					v->declined_at = DatumGetTimestampTz(d);
				break;
			case FK_EXPIRATION_MONTH:
				if ((v->has_expiration_month = field_value(f, desc, tuple, INT4OID, &d)))
					v->expiration_month = DatumGetInt32(d);
				break;
			case FK_EXPIRATION_YEAR:
				if ((v->has_expiration_year = field_value(f, desc, tuple, INT4OID, &d)))
					v->expiration_year = DatumGetInt32(d);
				break;
			case FK_EXPIRY_DAYS:
				break;
		}
	}

	if (amount != NULL && field_value(amount, desc, tuple, INT8OID, &d))
	{
		v->has_amount = true;
		v->amount_cents = DatumGetInt64(d);
	}
	else if (dollars != NULL && field_value(dollars, desc, tuple, NUMERICOID, &d))
	{
		Datum		cents = DirectFunctionCall2(numeric_mul, d,
												NumericGetDatum(int64_to_numeric(100)));

		cents = DirectFunctionCall2(numeric_round, cents, Int32GetDatum(0));
		v->has_amount = true;
		v->amount_cents = DatumGetInt64(DirectFunctionCall1(numeric_int8, cents));
	}
	if (v->text[FF_DT_TRANSACTION_ID] == NULL)
		v->text[FF_DT_TRANSACTION_ID] = v->text[FF_DT_ORDER_ID];
	if (!v->has_expiry && map->expiry_days > 0)
	{
		Interval   *days = palloc0(sizeof(Interval));

		days->day = map->expiry_days;
		v->has_expiry = true;
		v->expiry = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															TimestampTzGetDatum(now),
															IntervalPGetDatum(days)));
	}
	if (!v->has_declined_at)
	{
		v->has_declined_at = true;
		v->declined_at = now;
	}
	v->has_is_recurring = true;
	v->is_recurring = true;
}

PG_FUNCTION_INFO_V1(ff_decline_trigger);

Datum
ff_decline_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	DeclineMapping *map;
	HeapTuple	tuple;
	TupleDesc	desc;
	Jsonb	   *details = NULL;
	Datum		d;
	FFDeclineValues values;

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
		d = FunctionCallInvoke(enrich);
		if (!enrich->isnull)
			details = DatumGetJsonbP(d);
	}

	decline_values(map, desc, tuple, &values);
	(void) ff_queue_decline(ff_decline_body(&values, DEFAULT_COLLATION_OID, details), false);

	return PointerGetDatum(NULL);
}
