/*
 * sftp.h
 *		SFTP transport to FlexFactor's batch folders, on libssh2.
 */
#ifndef FLEXFACTOR_SFTP_H
#define FLEXFACTOR_SFTP_H

typedef struct FFSftp FFSftp;
typedef struct FFSftpUpload FFSftpUpload;

extern FFSftp *ff_sftp_connect(void);
extern void ff_sftp_disconnect(FFSftp *conn);

extern FFSftpUpload *ff_sftp_begin_upload(FFSftp *conn, const char *dir, const char *name);
extern void ff_sftp_write(FFSftpUpload *upload, const char *data, size_t len);
extern void ff_sftp_finish_upload(FFSftpUpload *upload);

#endif							/* FLEXFACTOR_SFTP_H */
