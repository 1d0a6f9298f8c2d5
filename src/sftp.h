/*
 * sftp.h
 *		SFTP transport to FlexFactor's batch folders, on libssh2.
 */
#ifndef FLEXFACTOR_SFTP_H
#define FLEXFACTOR_SFTP_H

#include "nodes/pg_list.h"

typedef struct FFSftp FFSftp;
typedef struct FFSftpUpload FFSftpUpload;
typedef struct FFSftpReader FFSftpReader;

/* A regular file in a remote folder, as listed. */
typedef struct FFSftpEntry
{
	char	   *name;
	uint64		size;			/* 0 when the server did not say */
	unsigned long mtime;		/* 0 when the server did not say */
} FFSftpEntry;

/*
 * Called while an SFTP call waits for the network with no transaction open
 * (the worker lets its other phases run there); the time it takes does not
 * count against flexfactor.sftp_timeout_ms.
 */
typedef void (*FFSftpWaitHook) (void);
extern FFSftpWaitHook ff_sftp_wait_hook;

extern FFSftp *ff_sftp_connect(void);
extern void ff_sftp_disconnect(FFSftp *conn);

/*
 * An upload: begin (this attempt's own temporary file), write, close (its
 * size on the server checked), then place (renamed to the final name unless
 * a file has it; false then) or, after the caller compared that file,
 * replace it or discard this attempt's copy.
 */
extern FFSftpUpload *ff_sftp_begin_upload(FFSftp *conn, const char *dir, const char *name);
extern void ff_sftp_write(FFSftpUpload *upload, const char *data, size_t len);
extern void ff_sftp_close_upload(FFSftpUpload *upload);
extern bool ff_sftp_place_upload(FFSftpUpload *upload);
extern bool ff_sftp_replace_final(FFSftpUpload *upload);
extern void ff_sftp_discard_upload(FFSftpUpload *upload);
extern const char *ff_sftp_upload_final_path(FFSftpUpload *upload);
extern char *ff_sftp_upload_final_name(const char *name);

extern bool ff_sftp_size(FFSftp *conn, const char *path, uint64 *size);
extern List *ff_sftp_list(FFSftp *conn, const char *dir, const char *folder_setting,
						  bool (*wanted) (const char *name));
extern FFSftpReader *ff_sftp_open_read(FFSftp *conn, const char *path, const char *folder_setting);
extern size_t ff_sftp_read_some(FFSftpReader *reader, char *buf, size_t size);
extern void ff_sftp_close_read(FFSftpReader *reader);
extern char *ff_sftp_read(FFSftp *conn, const char *path, size_t max_bytes, size_t *len);
extern void ff_sftp_move(FFSftp *conn, const char *from, const char *to_dir, const char *name);
extern void ff_sftp_remove(FFSftp *conn, const char *path, const char *folder_setting);

#endif							/* FLEXFACTOR_SFTP_H */
