/*
 * decline_body.h
 *		The /evaluate body of a declined merchant-initiated charge, built in
 *		C for ff_decline() and the decline trigger alike.
 */
#ifndef FLEXFACTOR_DECLINE_BODY_H
#define FLEXFACTOR_DECLINE_BODY_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* what a decline body is built from; the values an ff_decline() call has */
typedef enum FFDeclineText
{
	FF_DT_ORDER_ID,
	FF_DT_CURRENCY,
	FF_DT_TOKEN,
	FF_DT_TRANSACTION_ID,
	FF_DT_DECLINE_CODE,
	FF_DT_DECLINE_MESSAGE,
	FF_DT_RESPONSE_CODE_SOURCE,
	FF_DT_AVS_RESULT_CODE,
	FF_DT_CVV_RESULT_CODE,
	FF_DT_CAVV_RESULT_CODE,
	FF_DT_EMAIL,
	FF_DT_PHONE,
	FF_DT_FIRST_NAME,
	FF_DT_LAST_NAME,
	FF_DT_ADDRESS_LINE1,
	FF_DT_ADDRESS_LINE2,
	FF_DT_CITY,
	FF_DT_STATE,
	FF_DT_ZIP_CODE,
	FF_DT_COUNTRY_CODE,
	FF_DT_COUNTRY,
	FF_DT_SUBSCRIPTION_ID,
	FF_DT_SUBSCRIPTION_INTERVAL,
	FF_DT_HOLDER_NAME,
	FF_DT_CARD_BRAND,
	FF_DT_CARD_BIN,
	FF_DT_CARD_LAST4,
	FF_DT_SENSE_KEY,			/* the trigger's sense_key; not an ff_decline() argument */
	FF_DT_COUNT
} FFDeclineText;

typedef struct FFDeclineValues
{
	const char *text[FF_DT_COUNT];	/* NULL: not given */
	bool		has_amount;
	int64		amount_cents;
	bool		has_expiry;
	TimestampTz expiry;
	bool		has_declined_at;
	TimestampTz declined_at;
	bool		has_expiration_month;
	int32		expiration_month;
	bool		has_expiration_year;
	int32		expiration_year;
	bool		has_is_recurring;
	bool		is_recurring;
} FFDeclineValues;

/*
 * The body, as ff_decline() documents it; details (an enrich function's
 * answer, or NULL) merged in by the rules of the decline trigger.
 * collation: the one upper() uses for codes.
 */
extern Jsonb *ff_decline_body(const FFDeclineValues *values, Oid collation, Jsonb *details);

#endif							/* FLEXFACTOR_DECLINE_BODY_H */
