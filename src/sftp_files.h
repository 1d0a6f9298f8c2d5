/*
 * sftp_files.h
 *		The local files of the SFTP connection, checked as the server
 *		account before libssh2 reads them.  See sftp_files.c.
 */
#ifndef FLEXFACTOR_SFTP_FILES_H
#define FLEXFACTOR_SFTP_FILES_H

/* What the private key file holds, judged from its first bytes. */
typedef enum FFKeyKind
{
	FF_KEY_PLAIN,				/* a private key without a passphrase */
	FF_KEY_ENCRYPTED,			/* a private key locked by a passphrase */
	FF_KEY_PUBLIC,				/* a public key, by mistake */
	FF_KEY_UNKNOWN				/* something else: libssh2 will say */
} FFKeyKind;

extern FFKeyKind ff_sftp_check_files(void);

#endif							/* FLEXFACTOR_SFTP_FILES_H */
