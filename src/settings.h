/*
 * settings.h
 *		The flexfactor.* configuration parameters (GUCs).
 *
 * Every setting the extension reads is declared here and defined in
 * settings.c; other files read these variables and never define GUCs.
 */
#ifndef FLEXFACTOR_SETTINGS_H
#define FLEXFACTOR_SETTINGS_H

/* API client */
extern char *ff_api_url;
extern char *ff_app_key;
extern char *ff_app_secret;
extern char *ff_mid;
extern char *ff_tokenization_key;
extern char *ff_site_id;
extern int	ff_http_timeout_ms;
extern char *ff_ca_file;

/* background worker */
extern char *ff_database;
extern int	ff_batch_interval;
extern int	ff_batch_max_rows;
extern int	ff_batch_retry_base;

/* how the account handles merchant-initiated declines (flexfactor-api.md 8) */
extern int	ff_mit_mode;

typedef enum FFMitMode
{
	FF_MIT_MANAGED,				/* FlexFactor retries until expiryDateUtc */
	FF_MIT_SYNC					/* the merchant re-evaluates; no expiry needed */
} FFMitMode;

/* transmit queue */
extern int	ff_transmit_concurrency;
extern int	ff_transmit_max_attempts;
extern int	ff_transmit_retry_base_ms;
extern int	ff_transmit_retention;
extern int	ff_transmit_via;

typedef enum FFTransmitVia
{
	FF_TRANSMIT_VIA_API,
	FF_TRANSMIT_VIA_SFTP
} FFTransmitVia;

/* SFTP transport */
extern char *ff_sftp_host;
extern int	ff_sftp_port;
extern int	ff_sftp_timeout_ms;
extern char *ff_sftp_user;
extern char *ff_sftp_private_key_file;
extern char *ff_sftp_public_key_file;
extern char *ff_sftp_passphrase;
extern char *ff_sftp_known_hosts_file;
extern char *ff_sftp_inbound_dir;
extern char *ff_sftp_outbound_dir;

/* webhook listener */
extern char *ff_webhook_listen_address;
extern int	ff_webhook_port;
extern char *ff_webhook_path;
extern char *ff_webhook_key;
extern char *ff_webhook_key_previous;
extern int	ff_webhook_max_skew;
extern char *ff_webhook_tls_cert_file;
extern char *ff_webhook_tls_key_file;
extern char *ff_webhook_allowed_networks;

/* results */
extern char *ff_on_order_status;
extern int	ff_callback_timeout_ms;
extern char *ff_sftp_processed_dir;

extern void ff_define_settings(void);

#endif							/* FLEXFACTOR_SETTINGS_H */
