/*
 * settings.c
 *		Defines and validates every flexfactor.* configuration parameter.
 *
 * Owns: the GUC variables, their check hooks (a bad value is refused with a
 * message that says what is allowed) and the show hooks that mask secrets.
 *
 * Secrets (API secret, tokenization key, SSH key passphrase, webhook keys)
 * are superuser-only, shown as "********" by SHOW and current_setting() even
 * to superusers, and left out of pg_settings altogether (GUC_NO_SHOW_ALL),
 * because its reset_val column would bypass the show hook.  Their check hooks
 * never echo the rejected value.  File paths are superuser-only.
 */
#include "postgres.h"

#include <arpa/inet.h>

#include "common/base64.h"
#include "utils/guc.h"

#include "compat.h"
#include "settings.h"
#include "listener.h"

char	   *ff_api_url = NULL;
char	   *ff_app_key = NULL;
char	   *ff_app_secret = NULL;
char	   *ff_mid = NULL;
char	   *ff_tokenization_key = NULL;
char	   *ff_site_id = NULL;
int			ff_http_timeout_ms = 30000;
char	   *ff_ca_file = NULL;

char	   *ff_database = NULL;
int			ff_batch_interval = 60;
int			ff_batch_max_rows = 2000;
int			ff_batch_retry_base = 5;

int			ff_mit_mode = FF_MIT_MANAGED;

static const struct config_enum_entry mit_mode_options[] = {
	{"managed", FF_MIT_MANAGED, false},
	{"sync", FF_MIT_SYNC, false},
	{NULL, 0, false}
};

int			ff_transmit_concurrency = 16;
int			ff_transmit_max_attempts = 8;
int			ff_transmit_retry_base_ms = 1000;
int			ff_transmit_retention = 604800;
int			ff_transmit_via = FF_TRANSMIT_VIA_API;

static const struct config_enum_entry transmit_via_options[] = {
	{"api", FF_TRANSMIT_VIA_API, false},
	{"sftp", FF_TRANSMIT_VIA_SFTP, false},
	{NULL, 0, false}
};

char	   *ff_sftp_host = NULL;
int			ff_sftp_port = 22;
int			ff_sftp_timeout_ms = 30000;
char	   *ff_sftp_user = NULL;
char	   *ff_sftp_private_key_file = NULL;
char	   *ff_sftp_public_key_file = NULL;
char	   *ff_sftp_passphrase = NULL;
char	   *ff_sftp_known_hosts_file = NULL;
char	   *ff_sftp_inbound_dir = NULL;
char	   *ff_sftp_outbound_dir = NULL;

char	   *ff_webhook_listen_address = NULL;
int			ff_webhook_port = 8480;
char	   *ff_webhook_path = NULL;
char	   *ff_webhook_allowed_networks = NULL;
char	   *ff_webhook_key = NULL;
char	   *ff_webhook_key_previous = NULL;
int			ff_webhook_max_skew = 300;
char	   *ff_webhook_tls_cert_file = NULL;
char	   *ff_webhook_tls_key_file = NULL;

char	   *ff_on_order_status = NULL;
int			ff_callback_timeout_ms = 10000;
char	   *ff_sftp_processed_dir = NULL;

#define SECRET_FLAGS	(GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL)
#define PATH_FLAGS		GUC_SUPERUSER_ONLY
#define MASKED_VALUE	"********"

/* ---- show hooks: secrets are never displayed ---- */

static const char *
mask(const char *value)
{
	return (value != NULL && value[0] != '\0') ? MASKED_VALUE : "";
}

static const char *show_app_secret(void) { return mask(ff_app_secret); }
static const char *show_tokenization_key(void) { return mask(ff_tokenization_key); }
static const char *show_sftp_passphrase(void) { return mask(ff_sftp_passphrase); }
static const char *show_webhook_key(void) { return mask(ff_webhook_key); }
static const char *show_webhook_key_previous(void) { return mask(ff_webhook_key_previous); }

/* ---- check hooks ---- */

static bool
is_empty(const char *value)
{
	return value == NULL || value[0] == '\0';
}

static bool
has_whitespace(const char *value)
{
	for (const char *p = value; *p; p++)
		if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			return true;
	return false;
}

/* 8-4-4-4-12 hexadecimal digits, as FlexFactor issues MIDs and site ids */
static bool
is_guid(const char *value)
{
	static const int group_len[] = {8, 4, 4, 4, 12};
	const char *p = value;

	for (int g = 0; g < 5; g++)
	{
		for (int i = 0; i < group_len[g]; i++, p++)
			if (!isxdigit((unsigned char) *p))
				return false;
		if (g < 4 && *p++ != '-')
			return false;
	}
	return *p == '\0';
}

/*
 * Credentials may not be stored where every role can read them: ALTER
 * DATABASE/ROLE ... SET keeps values in pg_db_role_setting, and a function's
 * SET clause in pg_proc.proconfig, both readable by all.  Such values are
 * validated (PGC_S_TEST) or applied at login (the database and role
 * sources): refuse them there.  postgresql.conf, ALTER SYSTEM and SET in a
 * superuser's own session remain.
 */
static bool
check_credential_source(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (source == PGC_S_TEST || source == PGC_S_DATABASE || source == PGC_S_USER ||
		source == PGC_S_DATABASE_USER)
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("flexfactor credentials may not be set with ALTER DATABASE, ALTER ROLE or a function's SET clause");
		GUC_check_errdetail("Those values are stored in pg_db_role_setting or pg_proc, which every role can read.");
		GUC_check_errhint("Set it in a configuration file only the server account can read (a conf.d file of mode 0600), or with ALTER SYSTEM.");
		return false;
	}
	return true;
}

static bool
check_api_url(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;
	size_t		len;

	if (is_empty(url) ||
		(strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) ||
		has_whitespace(url))
	{
		GUC_check_errdetail("The FlexFactor API URL must start with \"https://\" (or \"http://\" for a local simulator) and contain no spaces.");
		GUC_check_errhint("Use the base URL including the version, e.g. \"https://api-sandbox.flexfactor.io/v1/\".");
		return false;
	}

	/* normalise to one trailing slash so paths can be appended */
	len = strlen(url);
	if (url[len - 1] != '/')
	{
		char	   *with_slash = guc_malloc(LOG, len + 2);

		if (with_slash == NULL)
			return false;
		memcpy(with_slash, url, len);
		with_slash[len] = '/';
		with_slash[len + 1] = '\0';
		guc_free(*newval);
		*newval = with_slash;
	}
	return true;
}

static bool
check_optional_guid(char **newval, void **extra, GucSource source)
{
	if (is_empty(*newval) || is_guid(*newval))
		return true;
	GUC_check_errdetail("The value must be empty or a GUID such as \"00000000-0000-4000-8000-000000000001\".");
	GUC_check_errhint("Copy the value from the Developers page of the FlexFactor merchant portal.");
	return false;
}

static bool
check_absolute_path(char **newval, void **extra, GucSource source)
{
	if (is_empty(*newval) || (*newval)[0] == '/')
		return true;
	GUC_check_errmsg("file path settings of flexfactor must be absolute");
	GUC_check_errdetail("The path does not start with \"/\".");
	GUC_check_errhint("Give the full path of a file readable by the PostgreSQL server account.");
	return false;
}

static bool
check_nonempty_name(char **newval, void **extra, GucSource source)
{
	if (!is_empty(*newval) && !has_whitespace(*newval))
		return true;
	GUC_check_errdetail("The value must not be empty or contain spaces.");
	return false;
}

static bool
check_optional_host(char **newval, void **extra, GucSource source)
{
	if (is_empty(*newval) || !has_whitespace(*newval))
		return true;
	GUC_check_errdetail("A host name or address must not contain spaces.");
	return false;
}

static bool
check_listen_address(char **newval, void **extra, GucSource source)
{
	unsigned char addr[sizeof(struct in6_addr)];

	if (is_empty(*newval) ||
		inet_pton(AF_INET, *newval, addr) == 1 ||
		inet_pton(AF_INET6, *newval, addr) == 1)
		return true;
	GUC_check_errdetail("The value must be empty (listener off) or a numeric IPv4 or IPv6 address.");
	GUC_check_errhint("Use \"127.0.0.1\" behind a reverse proxy, or \"0.0.0.0\" to listen on every IPv4 interface.");
	return false;
}

static bool
check_allowed_networks(char **newval, void **extra, GucSource source)
{
	const char *bad = NULL;

	if (ff_parse_networks(*newval, NULL, 0, &bad) >= 0)
		return true;
	GUC_check_errdetail("\"%.64s\" is not an address or a network such as \"192.0.2.0/24\" or \"2001:db8::/32\".",
						bad ? bad : "");
	GUC_check_errhint("Separate the networks with commas; at most %d.", FF_MAX_NETWORKS);
	return false;
}

static bool
check_webhook_path(char **newval, void **extra, GucSource source)
{
	if (*newval != NULL && strcmp(*newval, FF_HEALTH_PATH) == 0)
	{
		GUC_check_errdetail("%s is the listener's health check for a load balancer.", FF_HEALTH_PATH);
		GUC_check_errhint("Choose another path, such as /flexfactor/webhook.");
		return false;
	}
	if (!is_empty(*newval) && (*newval)[0] == '/' && !has_whitespace(*newval) &&
		strchr(*newval, '?') == NULL)
		return true;
	GUC_check_errdetail("The webhook path must start with \"/\" and contain no spaces or query string.");
	return false;
}

/*
 * Webhook subscriber keys are base64 (flexfactor-api.md section 7.4).  The
 * rejected value is a secret, so the message is replaced and never echoes it.
 */
static bool
check_webhook_key(char **newval, void **extra, GucSource source)
{
	const char *key = *newval;
	int			len;
	int			decoded_len;
	char	   *decoded;

	if (is_empty(key))
		return true;

	len = strlen(key);
	decoded = malloc(pg_b64_dec_len(len) + 1);
	if (decoded == NULL)
		return false;
	decoded_len = pg_b64_decode(key, len, (ff_b64_raw *) decoded, pg_b64_dec_len(len));
	explicit_bzero(decoded, pg_b64_dec_len(len) + 1);
	free(decoded);

	if (decoded_len >= 16)
		return true;

	GUC_check_errmsg("invalid webhook subscriber key");
	GUC_check_errdetail("The key must be base64 text that decodes to at least 16 bytes.");
	GUC_check_errhint("Copy the subscriber key from Developers > Webhooks in the FlexFactor merchant portal.");
	return false;
}

void
ff_define_settings(void)
{
	/* ---- API ---- */
	DefineCustomStringVariable("flexfactor.api_url",
							   "Base URL of the FlexFactor API, including the version path.",
							   NULL, &ff_api_url,
							   "https://api-sandbox.flexfactor.io/v1/",
							   PGC_SUSET, 0, check_api_url, NULL, NULL);
	DefineCustomStringVariable("flexfactor.app_key",
							   "FlexFactor API key (AppKey) used to obtain bearer tokens.",
							   NULL, &ff_app_key, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY, check_credential_source, NULL, NULL);
	DefineCustomStringVariable("flexfactor.app_secret",
							   "FlexFactor API secret (AppSecret). Secret: never shown.",
							   NULL, &ff_app_secret, "",
							   PGC_SUSET, SECRET_FLAGS, check_credential_source, NULL, show_app_secret);
	DefineCustomStringVariable("flexfactor.mid",
							   "FlexFactor merchant id (MID, a GUID).",
							   NULL, &ff_mid, "",
							   PGC_SUSET, 0, check_optional_guid, NULL, NULL);
	DefineCustomStringVariable("flexfactor.tokenization_key",
							   "FlexFactor tokenization key for /tokenize. Secret: never shown.",
							   NULL, &ff_tokenization_key, "",
							   PGC_SUSET, SECRET_FLAGS, check_credential_source, NULL, show_tokenization_key);
	DefineCustomStringVariable("flexfactor.site_id",
							   "Optional FlexFactor site id (GUID) sent as siteId.",
							   NULL, &ff_site_id, "",
							   PGC_SUSET, 0, check_optional_guid, NULL, NULL);
	DefineCustomEnumVariable("flexfactor.mit_mode",
							 "How the FlexFactor account handles merchant-initiated declines: \"managed\" (FlexFactor retries until expiryDateUtc, which every MIT /evaluate must then carry) or \"sync\".",
							 NULL, &ff_mit_mode, FF_MIT_MANAGED, mit_mode_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.http_timeout_ms",
							"Total time limit of one FlexFactor API request.",
							NULL, &ff_http_timeout_ms, 30000, 100, 600000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("flexfactor.ca_file",
							   "CA bundle used to verify the API's TLS certificate (empty = system bundle).",
							   NULL, &ff_ca_file, "",
							   PGC_SUSET, PATH_FLAGS, check_absolute_path, NULL, NULL);

	/* ---- background worker ---- */
	DefineCustomStringVariable("flexfactor.database",
							   "Database the flexfactor background workers connect to.",
							   NULL, &ff_database, "postgres",
							   PGC_POSTMASTER, 0, check_nonempty_name, NULL, NULL);
	DefineCustomIntVariable("flexfactor.batch_interval",
							"Seconds between batch exports by the worker (0 = only on demand).",
							NULL, &ff_batch_interval, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.batch_max_rows",
							"Most lines in one batch file (FlexFactor accepts at most 2000).",
							NULL, &ff_batch_max_rows, 2000, 1, 2000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("flexfactor.batch_retry_base",
							"Delay before the first retry of a failed batch upload; doubles per attempt, at most 15 minutes.",
							NULL, &ff_batch_retry_base, 5, 1, 900,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	/* ---- transmit queue ---- */
	DefineCustomIntVariable("flexfactor.transmit_concurrency",
							"Most /transmit requests the worker has in flight at once.",
							NULL, &ff_transmit_concurrency, 16, 1, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.transmit_max_attempts",
							"Failed attempts after which a queued transmit is set aside.",
							NULL, &ff_transmit_max_attempts, 8, 1, 100,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.transmit_retry_base_ms",
							"Delay before the first retry of a failed transmit; doubles per attempt, at most 5 minutes.",
							NULL, &ff_transmit_retry_base_ms, 1000, 10, 300000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.transmit_retention",
							"How long delivered transmits are kept before the worker deletes them.",
							NULL, &ff_transmit_retention, 604800, 0, 315360000,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomEnumVariable("flexfactor.transmit_via",
							 "How queued transmits leave: \"api\" (POST /transmit) or \"sftp\" (transmit_ batch files).",
							 NULL, &ff_transmit_via, FF_TRANSMIT_VIA_API, transmit_via_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	/* ---- SFTP ---- */
	DefineCustomStringVariable("flexfactor.sftp_host",
							   "FlexFactor SFTP host (empty = SFTP export off).",
							   NULL, &ff_sftp_host, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, check_optional_host, NULL, NULL);
	DefineCustomIntVariable("flexfactor.sftp_port",
							"FlexFactor SFTP port.",
							NULL, &ff_sftp_port, 22, 1, 65535,
							PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.sftp_timeout_ms",
							"Time limit of each SFTP connect, handshake, read and write.",
							NULL, &ff_sftp_timeout_ms, 30000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_user",
							   "SFTP user name issued by FlexFactor.",
							   NULL, &ff_sftp_user, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_private_key_file",
							   "Private key file for SFTP authentication.",
							   NULL, &ff_sftp_private_key_file, "",
							   PGC_SIGHUP, PATH_FLAGS, check_absolute_path, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_public_key_file",
							   "Public key file matching sftp_private_key_file (empty = derived).",
							   NULL, &ff_sftp_public_key_file, "",
							   PGC_SIGHUP, PATH_FLAGS, check_absolute_path, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_passphrase",
							   "Passphrase of the SFTP private key. Secret: never shown.",
							   NULL, &ff_sftp_passphrase, "",
							   PGC_SIGHUP, SECRET_FLAGS, NULL, NULL, show_sftp_passphrase);
	DefineCustomStringVariable("flexfactor.sftp_known_hosts_file",
							   "known_hosts file pinning the SFTP server's host key (required).",
							   NULL, &ff_sftp_known_hosts_file, "",
							   PGC_SIGHUP, PATH_FLAGS, check_absolute_path, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_inbound_dir",
							   "Remote folder batch files are uploaded to.",
							   NULL, &ff_sftp_inbound_dir, "inbound",
							   PGC_SIGHUP, PATH_FLAGS, check_nonempty_name, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_outbound_dir",
							   "Remote folder FlexFactor writes result files to.",
							   NULL, &ff_sftp_outbound_dir, "outbound",
							   PGC_SIGHUP, PATH_FLAGS, check_nonempty_name, NULL, NULL);

	/* ---- webhooks ---- */
	DefineCustomStringVariable("flexfactor.webhook_listen_address",
							   "IP address the webhook listener binds to (empty = listener off).",
							   NULL, &ff_webhook_listen_address, "",
							   PGC_SIGHUP, 0, check_listen_address, NULL, NULL);
	DefineCustomIntVariable("flexfactor.webhook_port",
							"TCP port of the webhook listener.",
							NULL, &ff_webhook_port, 8480, 1, 65535,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("flexfactor.webhook_path",
							   "URL path the webhook listener accepts deliveries on.",
							   NULL, &ff_webhook_path, "/flexfactor/webhook",
							   PGC_SIGHUP, 0, check_webhook_path, NULL, NULL);
	DefineCustomStringVariable("flexfactor.webhook_allowed_networks",
							   "Source networks the webhook listener accepts connections from (comma-separated CIDR); empty: any.",
							   NULL, &ff_webhook_allowed_networks, "",
							   PGC_SIGHUP, 0, check_allowed_networks, NULL, NULL);
	DefineCustomStringVariable("flexfactor.webhook_key",
							   "Webhook subscriber key (base64). Secret: never shown.",
							   NULL, &ff_webhook_key, "",
							   PGC_SIGHUP, SECRET_FLAGS, check_webhook_key, NULL, show_webhook_key);
	DefineCustomStringVariable("flexfactor.webhook_key_previous",
							   "Previous webhook subscriber key, accepted during a key rotation. Secret: never shown.",
							   NULL, &ff_webhook_key_previous, "",
							   PGC_SIGHUP, SECRET_FLAGS, check_webhook_key, NULL, show_webhook_key_previous);
	DefineCustomIntVariable("flexfactor.webhook_max_skew",
							"Largest accepted difference between x-fc-date and the server clock.",
							NULL, &ff_webhook_max_skew, 300, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomStringVariable("flexfactor.webhook_tls_cert_file",
							   "PEM certificate (chain) the webhook listener serves HTTPS with (empty = plain HTTP).",
							   NULL, &ff_webhook_tls_cert_file, "",
							   PGC_SIGHUP, PATH_FLAGS, check_absolute_path, NULL, NULL);
	DefineCustomStringVariable("flexfactor.webhook_tls_key_file",
							   "PEM private key of webhook_tls_cert_file.",
							   NULL, &ff_webhook_tls_key_file, "",
							   PGC_SIGHUP, PATH_FLAGS, check_absolute_path, NULL, NULL);

	/* ---- results ---- */
	DefineCustomStringVariable("flexfactor.on_order_status",
							   "Function called with each order whose status changes (empty = none).",
							   "It must take one argument of type flexfactor.orders.",
							   &ff_on_order_status, "",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("flexfactor.callback_timeout",
							"Longest a call of the on_order_status function may run where no statement_timeout applies (0 = no limit).",
							"The call is then cancelled, recorded as failed and retried like any failed call.",
							&ff_callback_timeout_ms, 10000, 0, 3600000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("flexfactor.sftp_processed_dir",
							   "Remote folder applied result files are moved to (empty = delete them).",
							   NULL, &ff_sftp_processed_dir, "",
							   PGC_SIGHUP, PATH_FLAGS, NULL, NULL, NULL);

	MarkGUCPrefixReserved("flexfactor");
}
