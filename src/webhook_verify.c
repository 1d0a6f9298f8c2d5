/*
 * webhook_verify.c
 *		Checks that a webhook delivery comes from FlexFactor, on the raw bytes.
 *
 * The scheme (flexfactor-api.md section 7.4): x-fc-content-sha512 is
 * base64(SHA-512(body)); x-fc-authorization carries
 * base64(HMAC-SHA512(key, "POST\n" nonce ";" date ";" host ";" contentHash));
 * x-fc-signature is base64(HMAC-SHA512(key, body)); the key is the base64
 * subscriber key in flexfactor.webhook_key, or flexfactor.webhook_key_previous
 * during a rotation.  Every comparison is constant-time (CRYPTO_memcmp), and
 * x-fc-date must be within flexfactor.webhook_max_skew of the server clock.
 *
 * Pure verification: no database access, so the webhook listener can call it
 * for each delivery and ff_ingest_webhook() for SQL callers.  Nonce replay
 * is checked where events are stored.  Reasons returned never contain key
 * material or signatures.
 */
#include "postgres.h"

#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "common/base64.h"

#include "compat.h"
#include "settings.h"
#include "webhook_verify.h"

#define SIGNED_HEADERS	"x-fc-nonce;x-fc-date;host;x-fc-content-sha512"

static char *
b64(const unsigned char *data, int len)
{
	int			out_len = pg_b64_enc_len(len);
	char	   *out = palloc(out_len + 1);
	int			n = pg_b64_encode((const ff_b64_raw *) data, len, out, out_len);

	out[Max(n, 0)] = '\0';
	return out;
}

/* decoded key, or NULL when the setting is empty or not base64 */
static unsigned char *
decode_key(const char *setting, int *key_len)
{
	int			len;
	unsigned char *key;

	if (setting == NULL || setting[0] == '\0')
		return NULL;
	len = strlen(setting);
	key = palloc(pg_b64_dec_len(len) + 1);
	*key_len = pg_b64_decode(setting, len, (ff_b64_raw *) key, pg_b64_dec_len(len));
	return *key_len > 0 ? key : NULL;
}

static char *
hmac_b64(const unsigned char *key, int key_len, const char *data, size_t len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;

	if (HMAC(EVP_sha512(), key, key_len, (const unsigned char *) data, len, mac, &mac_len) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute HMAC-SHA512")));
	return b64(mac, (int) mac_len);
}

static bool
same_text(const char *a, const char *b)
{
	size_t		len = strlen(a);

	return len == strlen(b) && CRYPTO_memcmp(a, b, len) == 0;
}

/* the Signature= value of an x-fc-authorization header, or NULL */
static const char *
authorization_signature(const char *header)
{
	const char *p;

	if (strncmp(header, "HMAC-SHA512 ", 12) != 0)
		return NULL;
	p = strstr(header, "SignedHeaders=");
	if (p == NULL || strncmp(p + 14, SIGNED_HEADERS "&", strlen(SIGNED_HEADERS) + 1) != 0)
		return NULL;
	p = strstr(p, "&Signature=");
	return p ? p + 11 : NULL;
}

/* RFC 1123 date ("Mon, 20 Mar 2023 17:16:40 GMT") as TimestampTz, or 0 */
static TimestampTz
parse_http_date(const char *text)
{
	struct tm	tm = {0};
	const char *end = strptime(text, "%a, %d %b %Y %H:%M:%S GMT", &tm);

	if (end == NULL || *end != '\0')
		return 0;
	return time_t_to_timestamptz(timegm(&tm));
}

/*
 * Verify one delivery.  On failure *reason says what failed (no secrets).
 */
FFWebhookVerdict
ff_webhook_verify(const FFWebhookHeaders *h, const char *body, size_t body_len,
				  TimestampTz now, const char **reason)
{
	const char *keys[2] = {ff_webhook_key, ff_webhook_key_previous};
	char	   *content_hash;
	const char *claimed;
	char	   *to_sign;
	TimestampTz sent_at;
	unsigned char digest[SHA512_DIGEST_LENGTH];

	if ((ff_webhook_key == NULL || ff_webhook_key[0] == '\0') &&
		(ff_webhook_key_previous == NULL || ff_webhook_key_previous[0] == '\0'))
	{
		*reason = "flexfactor.webhook_key is not set";
		return FF_WEBHOOK_NOT_CONFIGURED;
	}
	if (!h->nonce || !h->date || !h->host || !h->content_sha512 || !h->authorization || !h->signature)
	{
		*reason = !h->nonce ? "missing x-fc-nonce header" :
			!h->date ? "missing x-fc-date header" :
			!h->host ? "missing Host header" :
			!h->content_sha512 ? "missing x-fc-content-sha512 header" :
			!h->authorization ? "missing x-fc-authorization header" :
			"missing x-fc-signature header";
		return FF_WEBHOOK_MISSING_HEADER;
	}

	SHA512((const unsigned char *) body, body_len, digest);
	content_hash = b64(digest, SHA512_DIGEST_LENGTH);
	if (!same_text(content_hash, h->content_sha512))
	{
		*reason = "x-fc-content-sha512 does not match the body";
		return FF_WEBHOOK_BAD_CONTENT_HASH;
	}

	claimed = authorization_signature(h->authorization);
	if (claimed == NULL)
	{
		*reason = "x-fc-authorization is not \"HMAC-SHA512 SignedHeaders=" SIGNED_HEADERS "&Signature=...\"";
		return FF_WEBHOOK_BAD_SIGNATURE;
	}
	to_sign = psprintf("POST\n%s;%s;%s;%s", h->nonce, h->date, h->host, content_hash);

	for (int k = 0; k < 2; k++)
	{
		int			key_len;
		unsigned char *key = decode_key(keys[k], &key_len);

		if (key == NULL)
			continue;
		if (same_text(hmac_b64(key, key_len, to_sign, strlen(to_sign)), claimed) &&
			same_text(hmac_b64(key, key_len, body, body_len), h->signature))
		{
			explicit_bzero(key, key_len);
			sent_at = parse_http_date(h->date);
			if (sent_at == 0)
			{
				*reason = "x-fc-date is not an RFC 1123 date";
				return FF_WEBHOOK_STALE_DATE;
			}
			if (ff_webhook_max_skew > 0 &&
				(sent_at > now + (int64) ff_webhook_max_skew * USECS_PER_SEC ||
				 sent_at < now - (int64) ff_webhook_max_skew * USECS_PER_SEC))
			{
				*reason = "x-fc-date is outside flexfactor.webhook_max_skew of the server clock";
				return FF_WEBHOOK_STALE_DATE;
			}
			*reason = NULL;
			return FF_WEBHOOK_OK;
		}
		explicit_bzero(key, key_len);
	}
	*reason = "the HMAC-SHA512 signatures do not match the webhook key";
	return FF_WEBHOOK_BAD_SIGNATURE;
}
