/*
 * scrub.c
 *		Card numbers and secrets: found in what we would store or send, and
 *		removed from what others send us before it is shown or stored.
 *
 * Two jobs, one notion of "a card number": 13 to 19 digits, in groups
 * joined by at most three separators (space, tab, newline, '-', '.', '/',
 * '_', a comma alone, and in UTF-8 the Unicode spaces and dashes; fullwidth digits
 * count as digits), as people and systems write them: "4111111111111111",
 * "4111 1111 1111 1111", "4111-1111-1111-1111", "4111 - 1111 - 1111 - 1111",
 * "4111,1111,1111,1111".  Any consecutive groups of a longer run may be one:
 * "4111 1111 1111 1111 12/28" (with its expiry), "4111111111111111.0" (a
 * JSON number), "0 4111111111111111".
 *
 * - ff_jsonb_find_card_number(): every body flexfactor queues, stores or
 *   sends is searched, keys and values, at any depth, for a Luhn-valid card
 *   number of a card network (first digit 2-6); the caller refuses the body.
 *   Only ff_tokenize(), whose purpose is to carry a card to /tokenize, is
 *   exempt.  A value that is a GUID (a token) is never taken for one, even
 *   when its hex digits happen to be all decimal.
 * - ff_scrub_remote_text(): text a remote server sent (an error body, an SSH
 *   message) is cleaned before it reaches a message, a column or the log:
 *   digit runs of 12 or more (whether they pass Luhn or not), the configured
 *   secrets, bearer tokens and JWTs, and bytes that are not valid in the
 *   database encoding.
 * - ff_jsonb_scrub_remote(): a JSON answer a remote server sent, kept as it
 *   came (orders.last_response, refunds.response, what ff_evaluate()
 *   returns) but for its strings and numbers that carry a card number, a
 *   configured secret, a bearer token or a JWT, which are replaced as above.
 *   Other values (a GUID whose hex is all digits, amounts) stay as they are.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "scrub.h"
#include "settings.h"

#define MAX_SEPARATORS	3		/* "4111 - 1111" */
#define MAX_CARD_DIGITS	19

/*
 * The bytes of a digit at text[i] (ASCII, or a fullwidth digit U+FF10..U+FF19
 * in UTF-8) with its value as an ASCII digit in *d; 0 when there is none.
 */
static int
digit_at(const char *text, int len, int i, char *d)
{
	const unsigned char *t = (const unsigned char *) text + i;

	if (i >= len)
		return 0;
	if (isdigit(t[0]))
	{
		*d = (char) t[0];
		return 1;
	}
	if (len - i >= 3 && t[0] == 0xEF && t[1] == 0xBC && t[2] >= 0x90 && t[2] <= 0x99 &&
		GetDatabaseEncoding() == PG_UTF8)
	{
		*d = (char) ('0' + t[2] - 0x90);
		return 3;
	}
	return 0;
}

/*
 * The bytes of a separator at text[i], 0 when there is none: space, tab,
 * newline, '-', '.', '/', '_', ',' and, in UTF-8, the no-break, narrow and
 * other Unicode spaces, hyphens, dashes and the minus sign, and the fullwidth
 * hyphen, full stop, solidus and comma, as text copied from a document or a
 * web page carries them.
 */
static int
separator_at(const char *text, int len, int i)
{
	const unsigned char *t = (const unsigned char *) text + i;
	int			left = len - i;

	if (left <= 0)
		return 0;
	switch (t[0])
	{
		case ' ':
		case '\t':
		case '\n':
		case '\r':
		case '-':
		case '.':
		case '/':
		case '_':
		case ',':
			return 1;
	}
	if (t[0] < 0x80 || GetDatabaseEncoding() != PG_UTF8)
		return 0;
	if (left >= 2 && t[0] == 0xC2 && t[1] == 0xA0)
		return 2;				/* U+00A0 no-break space */
	if (left < 3)
		return 0;
	if (t[0] == 0xE2 && t[1] == 0x80 && (t[2] <= 0x8B || (t[2] >= 0x90 && t[2] <= 0x95) || t[2] == 0xAF))
		return 3;				/* U+2000..200B spaces, U+2010..2015 dashes, U+202F */
	if ((t[0] == 0xE2 && t[1] == 0x81 && (t[2] == 0x9F || t[2] == 0xA0)) ||	/* U+205F, U+2060 */
		(t[0] == 0xE2 && t[1] == 0x88 && t[2] == 0x92) ||	/* U+2212 minus */
		(t[0] == 0xE3 && t[1] == 0x80 && t[2] == 0x80) ||	/* U+3000 */
		(t[0] == 0xEF && t[1] == 0xBB && t[2] == 0xBF) ||	/* U+FEFF */
		(t[0] == 0xEF && t[1] == 0xBC && (t[2] == 0x8C || t[2] == 0x8D || t[2] == 0x8E || t[2] == 0x8F)))
		return 3;				/* U+FF0C..FF0F fullwidth comma, hyphen, full stop, solidus */
	return 0;
}

/*
 * At text[i], after a group of digits: the bytes of the separators (at most
 * MAX_SEPARATORS; a comma only alone) that join it to the next group, 0
 * when no group follows.
 */
static int
join_at(const char *text, int len, int i)
{
	int			j = i;
	int			b;
	char		d;

	for (int seps = 0; seps < MAX_SEPARATORS && (b = separator_at(text, len, j)) > 0; seps++)
		j += b;
	/* a comma joins only alone, "4111,1111": "1234, 2026" is a list */
	if (j - i > 1 && memchr(text + i, ',', j - i) != NULL)
		return 0;
	return j > i && digit_at(text, len, j, &d) > 0 ? j - i : 0;
}

/*
 * The digit run whose first digit is at text[i]: groups of digits joined by
 * separators.  Returns how many digits it has, and where it ends (one past
 * its last digit).
 */
static int
digit_run(const char *text, int len, int i, int *end)
{
	int			n = 0;
	int			b;
	char		d;

	for (;;)
	{
		while ((b = digit_at(text, len, i, &d)) > 0)
		{
			n++;
			i += b;
		}
		*end = i;
		if ((b = join_at(text, len, i)) == 0)
			return n;
		i += b;
	}
}

static bool luhn_valid(const char *digits, int n);

/*
 * Whether the groups of digits that follow one another from text[i] (the
 * start of a group) make, once joined, a card number: 13 to 19 digits of a
 * card network (first digit 2-6) that pass the Luhn check, ending where a
 * group ends.  A group of more than 19 digits is never one.
 */
static bool
card_from(const char *text, int len, int i)
{
	char		digits[MAX_CARD_DIGITS];
	int			n = 0;
	int			b;
	char		d;

	for (;;)
	{
		while ((b = digit_at(text, len, i, &d)) > 0)
		{
			if (n == MAX_CARD_DIGITS)
				return false;
			digits[n++] = d;
			i += b;
		}
		if (n >= 13 && digits[0] >= '2' && digits[0] <= '6' && luhn_valid(digits, n))
			return true;
		if ((b = join_at(text, len, i)) == 0)
			return false;
		i += b;
	}
}

static bool
luhn_valid(const char *digits, int n)
{
	int			sum = 0;

	for (int i = 0; i < n; i++)
	{
		int			d = digits[n - 1 - i] - '0';

		if (i % 2 == 1)
		{
			d *= 2;
			if (d > 9)
				d -= 9;
		}
		sum += d;
	}
	return sum % 10 == 0;
}

/* a GUID (8-4-4-4-12 hex digits), such as a /tokenize token, is never a card */
static bool
is_guid(const char *text, int len)
{
	if (len != 36)
		return false;
	for (int i = 0; i < 36; i++)
	{
		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (text[i] != '-')
				return false;
		}
		else if (!isxdigit((unsigned char) text[i]))
			return false;
	}
	return true;
}

/*
 * Whether text carries a card number: the groups joined from any group's
 * start, not only the whole run, so that digits written next to it (an
 * expiry date, a CVV, a count) do not hide it.
 */
bool
ff_text_has_card_number(const char *text, int len)
{
	bool		after_digit = false;

	if (is_guid(text, len))
		return false;

	for (int i = 0; i < len;)
	{
		char		d;
		int			b = digit_at(text, len, i, &d);

		if (b > 0)
		{
			if (!after_digit && card_from(text, len, i))
				return true;
			after_digit = true;
			i += b;
		}
		else
		{
			after_digit = false;
			i++;
		}
	}
	return false;
}

/* the text of a string or number (its len in *len), NULL for other scalars */
static char *
scalar_text(JsonbValue *v, int *len)
{
	char	   *text;

	if (v->type == jbvString)
	{
		*len = v->val.string.len;
		return v->val.string.val;
	}
	if (v->type != jbvNumeric)
		return NULL;
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	*len = strlen(text);
	return text;
}

/*
 * The path ("paymentMethod.cardNumber", "orderItems[2].name") of the first
 * key or scalar value that carries a card number, or NULL.
 */
char *
ff_jsonb_find_card_number(Jsonb *body)
{
	JsonbIterator *it = JsonbIteratorInit(&body->root);
	JsonbIteratorToken tok;
	JsonbValue	v;
	char	   *path[64];
	int			index[64];
	bool		in_array[64];
	int			depth = 0;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		char	   *text = NULL;
		int			len = 0;

		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
			case WJB_BEGIN_ARRAY:
				if (depth < lengthof(path))
				{
					path[depth] = NULL;
					index[depth] = -1;
					in_array[depth] = (tok == WJB_BEGIN_ARRAY);
				}
				depth++;
				continue;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				depth--;
				continue;
			case WJB_KEY:
				if (depth - 1 < lengthof(path))
					path[depth - 1] = pnstrdup(v.val.string.val, v.val.string.len);
				text = v.val.string.val;
				len = v.val.string.len;
				break;
			case WJB_ELEM:
				if (depth - 1 < lengthof(path))
					index[depth - 1]++;
				/* fall through */
			case WJB_VALUE:
				text = scalar_text(&v, &len);
				break;
			default:
				continue;
		}
		if (text != NULL && ff_text_has_card_number(text, len))
		{
			StringInfoData where;
			int			levels = (tok == WJB_KEY) ? depth - 1 : depth;

			/* a key that is itself a card number is never repeated */
			initStringInfo(&where);
			for (int d = 0; d < levels && d < lengthof(path); d++)
			{
				if (in_array[d])
					appendStringInfo(&where, "[%d]", Max(index[d], 0));
				else if (path[d] != NULL)
					appendStringInfo(&where, "%s%s", where.len > 0 ? "." : "", path[d]);
			}
			if (tok == WJB_KEY)
				appendStringInfo(&where, "%sa key", where.len > 0 ? ": " : "");
			return where.len > 0 ? where.data : pstrdup("(the body)");
		}
	}
	return NULL;
}

/* ------------------------------------------------------------- remote text */

static bool
is_token_char(char c)
{
	return isalnum((unsigned char) c) || c == '-' || c == '_' || c == '.' || c == '+' ||
		c == '/' || c == '=' || c == '~';
}

/* the configured secrets, longest first not needed: each is replaced whole */
static int
configured_secrets(const char **secrets, int max)
{
	const char *candidates[] = {ff_app_secret, ff_app_key, ff_tokenization_key, ff_webhook_key,
	ff_webhook_key_previous, ff_sftp_passphrase};
	int			n = 0;

	for (int i = 0; i < lengthof(candidates) && n < max; i++)
		if (candidates[i] != NULL && strlen(candidates[i]) >= 6)
			secrets[n++] = candidates[i];
	return n;
}

/*
 * What ff_scrub_remote_text() takes out at text[i]: a configured secret,
 * "Bearer <token>" (the word kept) or a JWT ("eyJ...").  Returns how many
 * bytes it covers, 0 when none starts there; *kept: how many of them stay,
 * *replacement: what stands for the rest.
 */
static int
secret_at(const char *text, int len, int i, const char **secrets, int nsecrets,
		  int *kept, const char **replacement)
{
	int			j;

	*kept = 0;
	*replacement = "[token removed]";
	for (int s = 0; s < nsecrets; s++)
	{
		int			slen = strlen(secrets[s]);

		if (len - i >= slen && memcmp(text + i, secrets[s], slen) == 0)
		{
			*replacement = "[secret removed]";
			return slen;
		}
	}
	if (len - i >= 7 && pg_strncasecmp(text + i, "bearer ", 7) == 0)
	{
		j = i + 7;
		while (j < len && text[j] == ' ')
			j++;
		if (j < len && is_token_char(text[j]))
		{
			while (j < len && is_token_char(text[j]))
				j++;
			*kept = 7;
			return j - i;
		}
	}
	if (len - i >= 10 && strncmp(text + i, "eyJ", 3) == 0 &&
		(i == 0 || !is_token_char(text[i - 1])))
	{
		j = i;
		while (j < len && is_token_char(text[j]))
			j++;
		if (j - i >= 20)
			return j - i;
	}
	return 0;
}

char *
ff_scrub_remote_text(const char *text, int len)
{
	StringInfoData out;
	const char *secrets[8];
	int			nsecrets = configured_secrets(secrets, lengthof(secrets));
	char		digit;
	int			i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		int			kept;
		const char *replacement;
		int			covered = secret_at(text, len, i, secrets, nsecrets, &kept, &replacement);

		if (covered > 0)
		{
			appendBinaryStringInfo(&out, text + i, kept);
			appendStringInfoString(&out, replacement);
			i += covered;
			continue;
		}

		/* card-number-like digit runs, Luhn or not */
		if (digit_at(text, len, i, &digit) > 0)
		{
			int			end;
			int			n = digit_run(text, len, i, &end);

			if (n >= 12)
			{
				appendStringInfoString(&out, "[digits removed]");
				i = end;
				continue;
			}
			appendBinaryStringInfo(&out, text + i, end - i);
			i = end;
			continue;
		}

		/* one character, if it is valid in the database encoding */
		{
			int			clen = pg_encoding_mblen(GetDatabaseEncoding(), text + i);

			if (clen > len - i ||
				pg_encoding_verifymbchar(GetDatabaseEncoding(), text + i, len - i) != clen ||
				(clen == 1 && text[i] == '\0'))
			{
				appendStringInfoChar(&out, '?');
				i++;
				continue;
			}
			appendBinaryStringInfo(&out, text + i, clen);
			i += clen;
		}
	}
	return out.data;
}

/* ------------------------------------------------------------- remote JSON */

/* whether remote text holds a secret or token secret_at() finds, or a card number */
static bool
remote_value_is_unsafe(const char *text, int len)
{
	const char *secrets[8];
	int			nsecrets = configured_secrets(secrets, lengthof(secrets));
	int			kept;
	const char *replacement;

	for (int i = 0; i < len; i++)
		if (secret_at(text, len, i, secrets, nsecrets, &kept, &replacement) > 0)
			return true;
	return ff_text_has_card_number(text, len);
}

/* the scalar as it may be stored: itself, or its text scrubbed */
static bool
scrub_scalar(JsonbValue *v)
{
	int			len;
	char	   *text = scalar_text(v, &len);

	if (text == NULL || !remote_value_is_unsafe(text, len))
		return false;
	text = ff_scrub_remote_text(text, len);
	v->type = jbvString;
	v->val.string.val = text;
	v->val.string.len = strlen(text);
	return true;
}

Jsonb *
ff_jsonb_scrub_remote(Jsonb *answer)
{
	JsonbIterator *it = JsonbIteratorInit(&answer->root);
	JsonbIteratorToken tok;
	JsonbValue	v;
	JsonbParseState *state = NULL;
	JsonbValue *result = NULL;
	bool		changed = false;

	/* most answers hold nothing to take out: look first, rebuild only then */
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE && !changed)
		if (tok == WJB_KEY || tok == WJB_VALUE || tok == WJB_ELEM)
			changed = scrub_scalar(&v);
	if (!changed)
		return answer;
	if (JB_ROOT_IS_SCALAR(answer))
	{
		JsonbValue	scalar;

		(void) JsonbExtractScalar(&answer->root, &scalar);
		(void) scrub_scalar(&scalar);
		return JsonbValueToJsonb(&scalar);
	}
	it = JsonbIteratorInit(&answer->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_KEY || tok == WJB_VALUE || tok == WJB_ELEM)
		{
			(void) scrub_scalar(&v);
			result = pushJsonbValue(&state, tok, &v);
		}
		else
			result = pushJsonbValue(&state, tok, NULL);
	}
	return JsonbValueToJsonb(result);
}

PG_FUNCTION_INFO_V1(ff_scrub_sql);

Datum
ff_scrub_sql(PG_FUNCTION_ARGS)
{
	text	   *remote = PG_GETARG_TEXT_PP(0);

	PG_RETURN_TEXT_P(cstring_to_text(ff_scrub_remote_text(VARDATA_ANY(remote),
														   VARSIZE_ANY_EXHDR(remote))));
}
