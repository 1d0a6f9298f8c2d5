/*
 * decline_body.c
 *		The /evaluate body of a declined merchant-initiated charge:
 *		flexfactor.ff_decline(), and the decline trigger's body with its
 *		enrich function's details merged in.
 *
 * One builder for both, so that a decline queued by the trigger is, byte
 * for byte, what ff_decline() gives for the same values.  The body is
 * complete by the real service's rules where the values allow it: a result
 * code the merchant does not have is the documented placeholder 'NA'; what
 * has no placeholder (the payer's email, the billing address, ...) is left
 * out when missing, and body_check.c names it.  A value that is NULL is
 * left out, as jsonb_strip_nulls() would; the objects themselves are always
 * there (the subscription only for a recurring charge).
 *
 * The enrich function's answer may add to the body, never change what
 * identifies the charge (order id, transaction id, amount, currency, card
 * token): its keys are checked against a fixed list, as documented in
 * README.  This file does not check the body (body_check.c), queue it
 * (decline_queue.c) or call anything of the merchant's: the caller hands
 * it values and details, already computed with the caller's rights.
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "decline_body.h"

/* ------------------------------------------------------------ the body */

/* one member of an object: a scalar, a JSON value, or an object of pairs */
typedef struct BodyPair
{
	const char *key;
	JsonbValue	value;			/* scalar or jbvBinary; unused for an object */
	struct BodyObject *object;	/* or an object built here */
} BodyPair;

typedef struct BodyObject
{
	int			n;
	int			size;
	BodyPair   *pairs;
} BodyObject;

static BodyObject *
new_object(int size)
{
	BodyObject *o = palloc(sizeof(BodyObject));

	o->n = 0;
	o->size = size;
	o->pairs = palloc(sizeof(BodyPair) * size);
	return o;
}

static BodyPair *
add_pair(BodyObject *o, const char *key)
{
	BodyPair   *p;

	if (o->n == o->size)
	{
		o->size *= 2;
		o->pairs = repalloc(o->pairs, sizeof(BodyPair) * o->size);
	}
	p = &o->pairs[o->n++];
	p->key = key;
	p->object = NULL;
	return p;
}

static void
add_string(BodyObject *o, const char *key, const char *value)
{
	BodyPair   *p;

	if (value == NULL)
		return;
	p = add_pair(o, key);
	p->value.type = jbvString;
	p->value.val.string.val = (char *) value;
	p->value.val.string.len = strlen(value);
}

static void
add_bool(BodyObject *o, const char *key, bool value)
{
	BodyPair   *p = add_pair(o, key);

	p->value.type = jbvBool;
	p->value.val.boolean = value;
}

static void
add_number(BodyObject *o, const char *key, int64 value)
{
	BodyPair   *p = add_pair(o, key);

	p->value.type = jbvNumeric;
	p->value.val.numeric = int64_to_numeric(value);
}

static BodyObject *
add_object(BodyObject *o, const char *key, int size)
{
	BodyPair   *p = add_pair(o, key);

	p->object = new_object(size);
	return p->object;
}

static BodyPair *
find_pair(BodyObject *o, const char *key, int len)
{
	for (int i = 0; i < o->n; i++)
		if (strncmp(o->pairs[i].key, key, len) == 0 && o->pairs[i].key[len] == '\0')
			return &o->pairs[i];
	return NULL;
}

/* pushed in order: of two equal keys the later wins, as with jsonb's || */
static JsonbValue *
push_object(JsonbParseState **state, BodyObject *o)
{
	(void) pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < o->n; i++)
	{
		BodyPair   *p = &o->pairs[i];
		JsonbValue	key;

		key.type = jbvString;
		key.val.string.val = (char *) p->key;
		key.val.string.len = strlen(p->key);
		(void) pushJsonbValue(state, WJB_KEY, &key);
		if (p->object != NULL)
			push_object(state, p->object);
		else
			(void) pushJsonbValue(state, WJB_VALUE, &p->value);
	}
	return pushJsonbValue(state, WJB_END_OBJECT, NULL);
}

/* ------------------------------------------------------------ values */

/* to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'); NULL when infinite */
static char *
utc_text(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(t))
		return NULL;
	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	/* to_char's YYYY: the year of an era, at least four digits */
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02dZ",
					tm.tm_year <= 0 ? -(tm.tm_year - 1) : tm.tm_year,
					tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static const char *
upper_text(const char *s, Oid collation)
{
	if (s == NULL)
		return NULL;
	return TextDatumGetCString(DirectFunctionCall1Coll(upper, collation, CStringGetTextDatum(s)));
}

/* coalesce(nullif(s, ''), 'NA') */
static const char *
code_or_na(const char *s)
{
	return (s == NULL || s[0] == '\0') ? "NA" : s;
}

/* ------------------------------------------------ the enrich function's details */

/*
 * What the details may set (README, "Capturing declines with the
 * trigger"): whole members, or, for the three listed, only the given keys.
 * Listed in jsonb's key order, the order of the messages.
 */
typedef struct AllowedMember
{
	const char *key;
	const char *const *keys;	/* NULL: any value */
} AllowedMember;

static const char *const transaction_keys[] = {
	"responseCode", "responseCodeSource", "responseDescription", "responseSubStatus",
	"processorName", "avsResultCode", "cvvResultCode", "cavvResultCode",
	"dynamicDescriptor", NULL
};
static const char *const subscription_keys[] = {
	"subscriptionId", "interval", "paymentNumber", "totalPayments", NULL
};
static const char *const payment_method_keys[] = {
	"holderName", "cardType", "cardBrand", "cardCountry", "cardIssuer", "cardLevel",
	"expirationMonth", "expirationYear", "cardBinNumber", "cardLast4Digits", NULL
};

static const AllowedMember allowed_members[] = {
	{"payer", NULL},
	{"senseKey", NULL},
	{"customerIp", NULL},
	{"orderItems", NULL},
	{"transaction", transaction_keys},
	{"subscription", subscription_keys},
	{"expiryDateUtc", NULL},
	{"paymentMethod", payment_method_keys},
	{"additionalFields", NULL},
	{"billingInformation", NULL},
	{"shippingInformation", NULL},
};

static const char *
json_type_name(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvNull:
			return "null";
		case jbvBinary:
			return JsonContainerIsObject(v->val.binary.data) ? "object" : "array";
		default:
			return "unknown";
	}
}

static bool
is_object(const JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

static char *
joined(const char *const *words)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; words[i] != NULL; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", words[i]);
	return buf.data;
}

static char *
allowed_member_list(void)
{
	const char *words[lengthof(allowed_members) + 1];

	for (int i = 0; i < lengthof(allowed_members); i++)
		words[i] = allowed_members[i].key;
	words[lengthof(allowed_members)] = NULL;
	return joined(words);
}

static const AllowedMember *
allowed_member(const JsonbValue *key)
{
	for (int i = 0; i < lengthof(allowed_members); i++)
		if (strlen(allowed_members[i].key) == key->val.string.len &&
			memcmp(allowed_members[i].key, key->val.string.val, key->val.string.len) == 0)
			return &allowed_members[i];
	return NULL;
}

static bool
listed(const char *const *keys, const JsonbValue *key)
{
	for (int i = 0; keys[i] != NULL; i++)
		if (strlen(keys[i]) == key->val.string.len &&
			memcmp(keys[i], key->val.string.val, key->val.string.len) == 0)
			return true;
	return false;
}

static char *
key_text(const JsonbValue *key)
{
	return pnstrdup(key->val.string.val, key->val.string.len);
}

/* the pairs of a JSON object, appended to an object of the body */
static void
append_pairs(BodyObject *to, JsonbValue *from, const AllowedMember *rule)
{
	JsonbIterator *it = JsonbIteratorInit(from->val.binary.data);
	JsonbIteratorToken tok;
	JsonbValue	k;
	JsonbValue	v;

	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		BodyPair   *p;

		if (tok != WJB_KEY)
			continue;
		if (rule != NULL && rule->keys != NULL && !listed(rule->keys, &k))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the decline trigger's enrich function returned \"%s.%s\", which it may not set",
							rule->key, key_text(&k)),
					 errhint("In \"%s\" it may return: %s.", rule->key, joined(rule->keys))));
		tok = JsonbIteratorNext(&it, &v, true);
		Assert(tok == WJB_VALUE);
		p = add_pair(to, key_text(&k));
		p->value = v;
	}
}

/*
 * The details, NULLs stripped, merged into the body: an object given for an
 * object of the body adds to it (its keys win), anything else replaces the
 * member.  Values of the details take precedence over mapped columns and
 * 'NA' placeholders.
 */
static void
merge_details(BodyObject *body, Jsonb *details)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k;
	JsonbValue	v;

	if (details == NULL)
		return;
	if (JB_ROOT_IS_SCALAR(details))
	{
		JsonbValue	scalar;

		(void) JsonbExtractScalar(&details->root, &scalar);
		if (scalar.type == jbvNull)
			return;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the decline trigger's enrich function returned a JSON %s, not an object",
						json_type_name(&scalar)),
				 errhint("Return jsonb such as {\"payer\": {\"email\": ...}, \"billingInformation\": {...}}.")));
	}
	if (!JB_ROOT_IS_OBJECT(details))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the decline trigger's enrich function returned a JSON array, not an object"),
				 errhint("Return jsonb such as {\"payer\": {\"email\": ...}, \"billingInformation\": {...}}.")));

	details = DatumGetJsonbP(DirectFunctionCall1(jsonb_strip_nulls, JsonbPGetDatum(details)));
	it = JsonbIteratorInit(&details->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		const AllowedMember *rule;
		BodyPair   *member;

		if (tok != WJB_KEY)
			continue;
		rule = allowed_member(&k);
		if (rule == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the decline trigger's enrich function returned \"%s\", which it may not set",
							key_text(&k)),
					 errdetail("The order id, transaction id, amount, currency and card token come from the mapped columns."),
					 errhint("It may return: %s.", allowed_member_list())));
		tok = JsonbIteratorNext(&it, &v, true);
		Assert(tok == WJB_VALUE);

		member = find_pair(body, k.val.string.val, k.val.string.len);
		if (rule->keys != NULL && !is_object(&v))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the decline trigger's enrich function returned a JSON %s as \"%s\", not an object",
							json_type_name(&v), rule->key)));
		if (is_object(&v) && (rule->keys != NULL || (member != NULL && member->object != NULL)))
		{
			/* the body's object, or a new one, and the details' keys after it */
			if (member == NULL)
				member = add_pair(body, rule->key);
			if (member->object == NULL)
				member->object = new_object(8);
			append_pairs(member->object, &v, rule);
			continue;
		}
		if (member == NULL)
			member = add_pair(body, rule->key);
		member->object = NULL;
		member->value = v;
	}
}

/* ------------------------------------------------------------ building */

Jsonb *
ff_decline_body(const FFDeclineValues *values, Oid collation, Jsonb *details)
{
	const char *const *t = values->text;
	BodyObject *body = new_object(16);
	BodyObject *o;
	const char *currency;
	const char *country_code;
	JsonbParseState *state = NULL;

	if (!OidIsValid(collation))
		collation = DEFAULT_COLLATION_OID;
	currency = upper_text(t[FF_DT_CURRENCY], collation);
	country_code = upper_text(t[FF_DT_COUNTRY_CODE], collation);

	add_string(body, "orderId", t[FF_DT_ORDER_ID]);
	add_bool(body, "isMIT", true);
	add_bool(body, "isDeclined", true);
	if (values->has_is_recurring)
		add_bool(body, "isRecurring", values->is_recurring);
	if (values->has_expiry)
		add_string(body, "expiryDateUtc", utc_text(values->expiry));

	o = add_object(body, "transaction", 16);
	add_string(o, "id", t[FF_DT_TRANSACTION_ID]);
	if (values->has_amount)
		add_number(o, "amount", values->amount_cents);
	add_string(o, "currency", currency);
	if (values->has_declined_at)
		add_string(o, "timestampUtc", utc_text(values->declined_at));
	add_number(o, "timezoneUtcOffset", 0);
	add_string(o, "responseCode", code_or_na(t[FF_DT_DECLINE_CODE]));
	add_string(o, "responseCodeSource", code_or_na(t[FF_DT_RESPONSE_CODE_SOURCE]));
	add_string(o, "responseDescription", t[FF_DT_DECLINE_MESSAGE]);
	add_string(o, "responseStatus", "DECLINED");
	add_string(o, "avsResultCode", code_or_na(t[FF_DT_AVS_RESULT_CODE]));
	add_string(o, "cvvResultCode", code_or_na(t[FF_DT_CVV_RESULT_CODE]));
	add_string(o, "cavvResultCode", code_or_na(t[FF_DT_CAVV_RESULT_CODE]));
	add_bool(o, "cardNotPresent", true);

	o = add_object(body, "payer", 4);
	add_string(o, "email", t[FF_DT_EMAIL]);
	add_string(o, "phone", t[FF_DT_PHONE]);

	o = add_object(body, "billingInformation", 12);
	add_string(o, "firstName", t[FF_DT_FIRST_NAME]);
	add_string(o, "lastName", t[FF_DT_LAST_NAME]);
	add_string(o, "addressLine1", t[FF_DT_ADDRESS_LINE1]);
	add_string(o, "addressLine2", t[FF_DT_ADDRESS_LINE2]);
	add_string(o, "city", t[FF_DT_CITY]);
	add_string(o, "state", t[FF_DT_STATE]);
	add_string(o, "zipCode", t[FF_DT_ZIP_CODE]);
	add_string(o, "countryCode", country_code);
	add_string(o, "country", t[FF_DT_COUNTRY] ? t[FF_DT_COUNTRY] : country_code);
	add_string(o, "phone", t[FF_DT_PHONE]);

	o = add_object(body, "paymentMethod", 12);
	add_string(o, "cardNumber", t[FF_DT_TOKEN]);
	add_bool(o, "token", true);
	add_string(o, "holderName", t[FF_DT_HOLDER_NAME]);
	add_string(o, "cardBrand", upper_text(t[FF_DT_CARD_BRAND], collation));
	add_string(o, "cardBinNumber", t[FF_DT_CARD_BIN]);
	add_string(o, "cardLast4Digits", t[FF_DT_CARD_LAST4]);
	if (values->has_expiration_month)
		add_number(o, "expirationMonth", values->expiration_month);
	if (values->has_expiration_year)
		add_number(o, "expirationYear", values->expiration_year);

	if (values->has_is_recurring && values->is_recurring)
	{
		o = add_object(body, "subscription", 8);
		add_string(o, "subscriptionId", t[FF_DT_SUBSCRIPTION_ID]);
		add_string(o, "interval", t[FF_DT_SUBSCRIPTION_INTERVAL]);
		if (values->has_amount)
			add_number(o, "price", values->amount_cents);
		add_string(o, "currency", currency);
	}
	add_string(body, "senseKey", t[FF_DT_SENSE_KEY]);

	merge_details(body, details);

	return JsonbValueToJsonb(push_object(&state, body));
}

/* ------------------------------------------------------------ ff_decline() */

/* its arguments that are text, by position (sql/install/04_bodies_and_checks.sql) */
static const struct
{
	int			arg;
	FFDeclineText field;
}			decline_text_args[] = {
	{0, FF_DT_ORDER_ID}, {2, FF_DT_CURRENCY}, {3, FF_DT_TOKEN}, {4, FF_DT_TRANSACTION_ID},
	{5, FF_DT_DECLINE_CODE}, {6, FF_DT_EMAIL}, {8, FF_DT_SUBSCRIPTION_ID},
	{11, FF_DT_RESPONSE_CODE_SOURCE}, {12, FF_DT_AVS_RESULT_CODE}, {13, FF_DT_CVV_RESULT_CODE},
	{14, FF_DT_CAVV_RESULT_CODE}, {15, FF_DT_DECLINE_MESSAGE}, {16, FF_DT_FIRST_NAME},
	{17, FF_DT_LAST_NAME}, {18, FF_DT_ADDRESS_LINE1}, {19, FF_DT_ADDRESS_LINE2}, {20, FF_DT_CITY},
	{21, FF_DT_STATE}, {22, FF_DT_ZIP_CODE}, {23, FF_DT_COUNTRY_CODE}, {24, FF_DT_COUNTRY},
	{25, FF_DT_PHONE}, {26, FF_DT_SUBSCRIPTION_INTERVAL}, {27, FF_DT_HOLDER_NAME},
	{28, FF_DT_CARD_BRAND}, {29, FF_DT_CARD_BIN}, {30, FF_DT_CARD_LAST4},
};

PG_FUNCTION_INFO_V1(ff_decline);

Datum
ff_decline(PG_FUNCTION_ARGS)
{
	FFDeclineValues v;

	memset(&v, 0, sizeof(v));
	for (int i = 0; i < lengthof(decline_text_args); i++)
		if (!PG_ARGISNULL(decline_text_args[i].arg))
			v.text[decline_text_args[i].field] =
				TextDatumGetCString(PG_GETARG_DATUM(decline_text_args[i].arg));
	if ((v.has_amount = !PG_ARGISNULL(1)))
		v.amount_cents = PG_GETARG_INT64(1);
	if ((v.has_expiry = !PG_ARGISNULL(7)))
		v.expiry = PG_GETARG_TIMESTAMPTZ(7);
	if ((v.has_is_recurring = !PG_ARGISNULL(9)))
		v.is_recurring = PG_GETARG_BOOL(9);
	if ((v.has_declined_at = !PG_ARGISNULL(10)))
		v.declined_at = PG_GETARG_TIMESTAMPTZ(10);
	if ((v.has_expiration_month = !PG_ARGISNULL(31)))
		v.expiration_month = PG_GETARG_INT32(31);
	if ((v.has_expiration_year = !PG_ARGISNULL(32)))
		v.expiration_year = PG_GETARG_INT32(32);
	PG_RETURN_JSONB_P(ff_decline_body(&v, PG_GET_COLLATION(), NULL));
}
