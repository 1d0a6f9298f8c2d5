/*
 * body_check.c
 *		Refuses, before any request or queueing, a request body that the real
 *		FlexFactor service would refuse (flexfactor-api.md 12a).
 *
 * One check for every path that sends or queues a body: ff_evaluate()
 * (/evaluate), ff_enqueue_decline() and the decline trigger (SFTP evaluate
 * lines), ff_transmit() (/transmit, by API or SFTP).  Every missing or
 * invalid field is collected and reported in one error, as the sandbox
 * itself answers, so a DBA fixes a mapping once rather than field by field.
 * Fields are looked up with their exact key: the body is checked as it will
 * be sent.  This file does not fill anything in: ff_decline() and
 * ff_payment() build complete bodies, with the documented placeholder 'NA'
 * for result codes the merchant does not have.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "api.h"
#include "body_check.h"
#include "errors.h"
#include "scrub.h"
#include "settings.h"

/* one field FlexFactor requires, with the argument that supplies it */
typedef struct RequiredField
{
	const char *path;			/* dot path in the body, e.g. "payer.email" */
	const char *decline_arg;	/* ff_decline() argument, or NULL */
	const char *payment_arg;	/* ff_payment() argument, or NULL */
} RequiredField;

/* required in /evaluate bodies, SFTP evaluate lines and /transmit bodies */
static const RequiredField common_fields[] = {
	{"orderId", "order_id", "order_id"},
	{"isMIT", NULL, "is_mit"},
	{"transaction.id", "transaction_id", "transaction_id"},
	{"transaction.timestampUtc", "declined_at", "paid_at"},
	{"transaction.responseCode", "decline_code", "response_code"},
	{"transaction.responseCodeSource", "response_code_source", "response_code_source"},
	{"transaction.avsResultCode", "avs_result_code", "avs_result_code"},
	{"transaction.cvvResultCode", "cvv_result_code", "cvv_result_code"},
	{"transaction.cavvResultCode", "cavv_result_code", "cavv_result_code"},
	{"payer.email", "email", "email"},
};

/* the documented minimum billing address of an /evaluate body */
static const RequiredField billing_fields[] = {
	{"billingInformation.firstName", "first_name", NULL},
	{"billingInformation.lastName", "last_name", NULL},
	{"billingInformation.addressLine1", "address_line1", NULL},
	{"billingInformation.city", "city", NULL},
	{"billingInformation.country", "country", NULL},
	{"billingInformation.countryCode", "country_code", NULL},
};

/* a merchant-initiated recurring charge */
static const RequiredField subscription_fields[] = {
	{"subscription.subscriptionId", "subscription_id", "subscription_id"},
	{"subscription.interval", "subscription_interval", "subscription_interval"},
};

/* /transmit: once paymentMethod carries card details, all of them */
static const RequiredField card_detail_fields[] = {
	{"paymentMethod.holderName", NULL, "holder_name"},
	{"paymentMethod.cardType", NULL, "card_type"},
	{"paymentMethod.cardBrand", NULL, "card_brand"},
	{"paymentMethod.cardCountry", NULL, "card_country"},
	{"paymentMethod.expirationMonth", NULL, "expiration_month"},
	{"paymentMethod.expirationYear", NULL, "expiration_year"},
	{"paymentMethod.cardBinNumber", NULL, "card_bin"},
	{"paymentMethod.cardLast4Digits", NULL, "card_last4"},
};

typedef struct BodyProblems
{
	FFBodyKind	kind;
	StringInfoData missing;		/* "a, b, c" */
	StringInfoData invalid;		/* "a (why), b (why)" */
	StringInfoData args;		/* the builder's arguments that supply them */
	bool		needs_mid;		/* no mid in the body nor in flexfactor.mid */
	int			count;
} BodyProblems;

/* the value at a dot path (exact keys), or NULL */
static bool
get_path(JsonbContainer *root, const char *path, JsonbValue *out)
{
	JsonbContainer *container = root;
	const char *part = path;

	for (;;)
	{
		const char *dot = strchr(part, '.');
		int			len = dot ? dot - part : strlen(part);

		if (container == NULL || !JsonContainerIsObject(container) ||
			getKeyJsonValueFromContainer(container, part, len, out) == NULL)
			return false;
		if (dot == NULL)
			return true;
		if (out->type != jbvBinary)
			return false;
		container = out->val.binary.data;
		part = dot + 1;
	}
}

/* the text of a scalar at a dot path of a body (exact keys), or NULL */
char *
ff_body_text(JsonbContainer *root, const char *path)
{
	JsonbValue	v;

	return get_path(root, path, &v) ? ff_json_scalar_text(&v) : NULL;
}

static bool
path_is_true(JsonbContainer *root, const char *path)
{
	JsonbValue	v;

	return get_path(root, path, &v) && v.type == jbvBool && v.val.boolean;
}

static void
append_item(StringInfo list, const char *text)
{
	if (list->len > 0)
		appendStringInfoString(list, ", ");
	appendStringInfoString(list, text);
}

static void
note_missing(BodyProblems *p, const RequiredField *f)
{
	const char *arg = p->kind == FF_BODY_TRANSMIT ? f->payment_arg : f->decline_arg;

	append_item(&p->missing, f->path);
	if (arg != NULL)
		append_item(&p->args, arg);
	p->count++;
}

static void
note_invalid(BodyProblems *p, const char *path, const char *why)
{
	if (p->invalid.len > 0)
		appendStringInfoString(&p->invalid, ", ");
	appendStringInfo(&p->invalid, "%s (%s)", path, why);
	p->count++;
}

/* a field that must be present with a non-empty scalar value */
static void
require(BodyProblems *p, JsonbContainer *root, const RequiredField *f)
{
	char	   *text = ff_body_text(root, f->path);

	if (text == NULL || text[0] == '\0' || strspn(text, " \t") == strlen(text))
		note_missing(p, f);
}

static void
require_all(BodyProblems *p, JsonbContainer *root, const RequiredField *fields, int n)
{
	for (int i = 0; i < n; i++)
		require(p, root, &fields[i]);
}

static bool
all_digits(const char *s)
{
	return s[0] != '\0' && strspn(s, "0123456789") == strlen(s);
}

/* a positive whole JSON number of cents below 10^11 */
static void
check_cents(BodyProblems *p, JsonbContainer *root, const char *path)
{
	JsonbValue	v;
	char	   *text;

	if (!get_path(root, path, &v))
		return;					/* reported as missing where it is required */
	text = ff_json_scalar_text(&v);
	if (v.type != jbvNumeric || !all_digits(text) || strspn(text, "0") == strlen(text) ||
		strlen(text) > 11)
		note_invalid(p, path, psprintf("%s is not a whole positive number of cents",
									   text ? text : "not a number"));
}

static void
check_letters(BodyProblems *p, JsonbContainer *root, const char *path, int n, const char *what)
{
	char	   *text = ff_body_text(root, path);

	if (text == NULL || text[0] == '\0')
		return;
	if ((int) strlen(text) != n)
		note_invalid(p, path, psprintf("not %s", what));
	else
		for (int i = 0; i < n; i++)
			if (!isalpha((unsigned char) text[i]))
			{
				note_invalid(p, path, psprintf("not %s", what));
				break;
			}
}

/* the days of a month of the proleptic Gregorian calendar, as .NET's DateTime knows it */
static int
days_in_month(int year, int month)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool		leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

	return days[month - 1] + (month == 2 && leap ? 1 : 0);
}

/*
 * An ISO 8601 date-time as FlexFactor parses it: YYYY-MM-DDTHH:MM:SS, then
 * optional fractional seconds, then Z or +hh:mm / -hh:mm.  A day the month
 * does not have (2026-02-30) is unparsable to it, as to any date parser.
 */
static bool
is_iso_timestamp(const char *s)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd";
	int			month,
				day,
				hour,
				minute,
				second;
	const char *p;

	if (strlen(s) < sizeof(shape) - 1)
		return false;
	for (int i = 0; shape[i]; i++)
		if (shape[i] == 'd' ? !isdigit((unsigned char) s[i]) : s[i] != shape[i])
			return false;
	month = atoi(s + 5);
	day = atoi(s + 8);
	hour = atoi(s + 11);
	minute = atoi(s + 14);
	second = atoi(s + 17);
	if (month < 1 || month > 12 || day < 1 || day > days_in_month(atoi(s), month) ||
		hour > 23 || minute > 59 || second > 59)
		return false;
	p = s + sizeof(shape) - 1;
	if (*p == '.')
	{
		p++;
		if (!isdigit((unsigned char) *p))
			return false;
		while (isdigit((unsigned char) *p))
			p++;
	}
	if (p[0] == 'Z' && p[1] == '\0')
		return true;
	return (p[0] == '+' || p[0] == '-') && isdigit((unsigned char) p[1]) &&
		isdigit((unsigned char) p[2]) && p[3] == ':' && isdigit((unsigned char) p[4]) &&
		isdigit((unsigned char) p[5]) && p[6] == '\0';
}

static void
check_timestamp(BodyProblems *p, JsonbContainer *root, const char *path, bool required,
				const char *arg)
{
	JsonbValue	v;

	if (!get_path(root, path, &v))
	{
		if (required)
		{
			RequiredField f = {path, arg, arg};

			note_missing(p, &f);
		}
		return;
	}
	if (v.type != jbvString ||
		!is_iso_timestamp(pnstrdup(v.val.string.val, v.val.string.len)))
		note_invalid(p, path, "not an ISO 8601 time such as 2026-07-01T00:00:00Z");
}

static void
check_boolean(BodyProblems *p, JsonbContainer *root, const char *path)
{
	JsonbValue	v;

	if (get_path(root, path, &v) && v.type != jbvBool)
		note_invalid(p, path, "not true or false");
}

static const char *
kind_name(FFBodyKind kind)
{
	switch (kind)
	{
		case FF_BODY_EVALUATE:
			return "an /evaluate body";
		case FF_BODY_BATCH:
			return "an SFTP batch line";
		case FF_BODY_TRANSMIT:
			return "a /transmit body";
	}
	return "body";
}

void
ff_check_body(Jsonb *payload, FFBodyKind kind, const char *caller)
{
	JsonbContainer *root = &payload->root;
	BodyProblems p;
	bool		is_mit;
	bool		transmit = (kind == FF_BODY_TRANSMIT);
	const char *builder = transmit ? "flexfactor.ff_payment" : "flexfactor.ff_decline";
	JsonbValue	v;
	char	   *card_path;

	if (!JB_ROOT_IS_OBJECT(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() expects a JSON object", caller),
				 errhint("Build the body with %s(...).", builder)));

	/* before anything else: a card number is never queued, stored or sent */
	card_path = ff_jsonb_find_card_number(payload);
	if (card_path != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_CARD_NUMBER),
				 errmsg("%s() refused %s that carries a card number in %s",
						caller, kind_name(kind), card_path),
				 errdetail("Card numbers are never stored or sent by flexfactor; nothing was sent or queued."),
				 errhint("Tokenize the card with ff_tokenize() and send the token with paymentMethod.token = true; "
						 "a /transmit copy carries only the card's BIN and last four digits.")));

	memset(&p, 0, sizeof(p));
	p.kind = kind;
	initStringInfo(&p.missing);
	initStringInfo(&p.invalid);
	initStringInfo(&p.args);

	require_all(&p, root, common_fields, lengthof(common_fields));
	if (!get_path(root, "transaction.amount", &v))
	{
		RequiredField f = {"transaction.amount", "amount_cents", "amount_cents"};

		note_missing(&p, &f);
	}
	else
		check_cents(&p, root, "transaction.amount");
	{
		RequiredField f = {"transaction.currency", "currency", "currency"};

		require(&p, root, &f);
		check_letters(&p, root, "transaction.currency", 3, "a 3-letter ISO 4217 code");
	}
	check_timestamp(&p, root, "transaction.timestampUtc", false, NULL);
	check_boolean(&p, root, "isMIT");
	check_boolean(&p, root, "isRecurring");
	check_boolean(&p, root, "isDeclined");
	check_boolean(&p, root, "paymentMethod.token");
	/*
	 * isDeclined: the sandbox answered "The IsDeclined field is required."
	 * [OBS].  ff_evaluate() fills it in when missing; nothing fills in a
	 * batch line's.  An /evaluate body or batch line is a declined charge.
	 */
	if (transmit || kind == FF_BODY_BATCH)
	{
		RequiredField f = {"isDeclined", NULL, NULL};

		require(&p, root, &f);
	}
	if (!transmit && get_path(root, "isDeclined", &v) && v.type == jbvBool && !v.val.boolean)
		note_invalid(&p, "isDeclined", "false; FlexFactor evaluates declined transactions only");
	/*
	 * A merchant id: FlexFactor requires it in /evaluate bodies and batch
	 * lines, and flexfactor needs it for every /transmit copy too (its
	 * idempotency key and its transmit_ file are derived from it).
	 */
	if (ff_body_text(root, "mid") == NULL && ff_mid[0] == '\0')
	{
		RequiredField f = {"mid", NULL, NULL};

		note_missing(&p, &f);
		p.needs_mid = true;
	}

	if (!transmit)
	{
		RequiredField card = {"paymentMethod.cardNumber", "card_token", NULL};

		require_all(&p, root, billing_fields, lengthof(billing_fields));
		check_letters(&p, root, "billingInformation.countryCode", 2,
					  "a 2-letter ISO 3166 code");
		require(&p, root, &card);
	}
	else if (!get_path(root, "paymentMethod", &v) || v.type != jbvBinary)
	{
		RequiredField f = {"paymentMethod", NULL, "card_bin"};

		note_missing(&p, &f);
	}
	else
	{
		bool		has_details = false;

		for (int i = 0; i < lengthof(card_detail_fields); i++)
			has_details |= get_path(root, card_detail_fields[i].path, &v);
		if (has_details)
			require_all(&p, root, card_detail_fields, lengthof(card_detail_fields));
	}

	is_mit = path_is_true(root, "isMIT");
	if (is_mit)
	{
		RequiredField f = {"isRecurring", "is_recurring", "is_recurring"};

		require(&p, root, &f);
	}
	/* /transmit requires the subscription of every MIT copy (4.2) */
	if (is_mit && (transmit || path_is_true(root, "isRecurring")))
	{
		require_all(&p, root, subscription_fields, lengthof(subscription_fields));
		check_cents(&p, root, "subscription.price");
	}

	/*
	 * expiryDateUtc: when present it must parse (an empty string is refused
	 * by the sandbox); a batch line is managed MIT by nature, and so is an
	 * /evaluate of an MIT charge when the account is set up for managed MIT.
	 */
	if (!transmit)
		check_timestamp(&p, root, "expiryDateUtc",
						kind == FF_BODY_BATCH ||
						(is_mit && ff_mit_mode == FF_MIT_MANAGED),
						"expiry");

	if (kind == FF_BODY_BATCH && !path_is_true(root, "paymentMethod.token") &&
		!(get_path(root, "paymentMethod.token", &v) && v.type != jbvBool))	/* named above */
		note_invalid(&p, "paymentMethod.token",
					 "batch lines carry a /tokenize token with token = true, never a card number");

	if (p.count == 0)
		return;

	ereport(ERROR,
			(errcode(ERRCODE_FF_BODY_INCOMPLETE),
			 errmsg("%s() refused %s that FlexFactor would refuse: %s%s%s",
					caller, kind_name(kind),
					p.missing.len > 0 ? "missing " : "", p.missing.data,
					p.invalid.len > 0 ? psprintf("%sinvalid %s",
												 p.missing.len > 0 ? "; " : "",
												 p.invalid.data) : ""),
			 errdetail("FlexFactor answers 400 to such a body (flexfactor's docs/request-bodies.md lists them); nothing was sent or queued."),
			 p.args.len > 0 ?
			 errhint("Pass %s to %s()%s; a result code you do not have is sent as 'NA'.",
					 p.args.data, builder,
					 p.needs_mid ? " and set flexfactor.mid" : "") :
			 p.needs_mid ?
			 errhint("Set flexfactor.mid to your FlexFactor merchant id (a GUID).") :
			 errhint("Build the body with %s(...).", builder)));
}

PG_FUNCTION_INFO_V1(ff_check_body_sql);

Datum
ff_check_body_sql(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload = PG_GETARG_JSONB_P(0);
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *caller = text_to_cstring(PG_GETARG_TEXT_PP(2));
	FFBodyKind	k;

	if (strcmp(kind, "evaluate") == 0)
		k = FF_BODY_EVALUATE;
	else if (strcmp(kind, "batch") == 0)
		k = FF_BODY_BATCH;
	else if (strcmp(kind, "transmit") == 0)
		k = FF_BODY_TRANSMIT;
	else
		elog(ERROR, "unknown body kind \"%s\"", kind);
	ff_check_body(payload, k, caller);
	PG_RETURN_VOID();
}
