/*
 * sftp.c
 *		Connects to FlexFactor's SFTP server and uploads files, with libssh2.
 *
 * One connection (TCP + SSH session + SFTP channel) serves every file of a
 * pass.  Connecting: TCP connect with a timeout, SSH handshake, the server's
 * host key checked against flexfactor.sftp_known_hosts_file (an unknown or
 * changed key refuses the connection, before any authentication), then
 * public-key authentication with flexfactor.sftp_private_key_file.  The
 * local files are checked first, as the server account (sftp_files.c), so a
 * missing or unreadable file or a missing passphrase is reported as such,
 * and a failed authentication says whether the passphrase did not unlock the
 * key or the server refused it.
 * Messages name the settings, never their values: they are stored where a
 * monitoring role can read them, and the host and port are hidden from it.
 *
 * Uploading: every attempt writes a temporary file of its own,
 * "<name>.<pid>-<16 random hex digits>.part" (".part" last: FlexFactor takes
 * only final names), created exclusively, so two attempts (two nodes around a
 * failover, a dead worker's connection still draining) never write, truncate
 * or rename one file.  It is written in large writes (libssh2 pipelines
 * them), closed, and its size on the server compared with the bytes sent; a
 * file of another size is removed, never renamed.  The verified file is then
 * renamed to "<name>" only if no file has that name: when one does, the
 * caller decides (batch.c: an identical file is left in place, a different
 * one replaced).  A reader therefore never sees half a file under a final
 * name, and a retry never makes a second one.  The temporary file of an
 * attempt that failed in this process (a connection cut mid-file, a
 * timeout) is removed at this process's next connection; those of processes
 * that died are recognised by their name (ff_sftp_upload_final_name) and
 * removed by the caller once stale.  Reading: a folder's listing, and a
 * file a block at a time (FFSftpReader), so that its size never decides the
 * memory it takes.
 *
 * The connection lives outside PostgreSQL's allocator, so it is closed by a
 * reset callback of the memory context it was made in: an error anywhere
 * releases it, from the moment the socket exists.  libssh2 runs
 * non-blocking: every call is repeated while it would block, waiting on the
 * socket and the process latch (WaitLatchOrSocket, as core does), so
 * pg_cancel_backend(), statement_timeout, shutdown and a dead postmaster stop
 * a transfer at once; flexfactor.sftp_timeout_ms bounds how long one call may
 * go without progress.  Every call, not only every wait, checks the
 * postmaster first (fence.c): a transfer that never has to wait must stop
 * too.  A process that exits with a connection open resets its socket, so
 * that the kernel drops what it still had to send instead of delivering it
 * after the process is gone.
 */
#include "postgres.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libssh2.h>
#include <libssh2_sftp.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"

#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "scrub.h"
#include "settings.h"
#include "sftp.h"
#include "sftp_files.h"

#define UPLOAD_BUFFER_SIZE	(256 * 1024)

FFSftpWaitHook ff_sftp_wait_hook = NULL;

struct FFSftp
{
	int			sock;
	TimestampTz deadline;		/* of the libssh2 call in progress */
	LIBSSH2_SESSION *session;
	LIBSSH2_SFTP *sftp;
	FFKeyKind	key_kind;		/* what the private key file holds */
	MemoryContextCallback cleanup;
};

struct FFSftpUpload
{
	FFSftp	   *conn;
	LIBSSH2_SFTP_HANDLE *handle;
	char	   *temp_path;		/* this attempt's own file */
	char	   *final_path;
	uint64		sent;			/* bytes written to temp_path */
	bool		settled;		/* renamed into place, or removed */
	StringInfoData buffer;
	MemoryContextCallback release;
};

#define MAX_ABANDONED		16

/*
 * Temporary files of this process's uploads that ended without being renamed
 * or removed (an error, a lost connection): removed at the next connection.
 * malloc'd, since they are noted while a memory context is being reset.
 */
static char *abandoned[MAX_ABANDONED];
static int	n_abandoned = 0;

static void
note_abandoned(void *arg)
{
	FFSftpUpload *up = (FFSftpUpload *) arg;
	char	   *copy;

	if (up->settled || n_abandoned >= MAX_ABANDONED)
		return;
	copy = strdup(up->temp_path);	/* nothing here may throw */
	if (copy != NULL)
		abandoned[n_abandoned++] = copy;
}

#define MAX_LIVE_SOCKETS	4

/* sockets of the open connections, reset if the process exits with them */
static int	live_sockets[MAX_LIVE_SOCKETS];
static int	n_live_sockets = 0;

/*
 * At process exit (a dead postmaster, a shutdown, an error that ends the
 * process), reset the connections still open: SO_LINGER 0 makes close()
 * drop unsent bytes and send a reset, instead of the kernel delivering, after
 * the process is gone, up to megabytes of a file this process no longer owns.
 */
static void
reset_live_sockets(int code, Datum arg)
{
	struct linger hard = {1, 0};

	for (int i = 0; i < n_live_sockets; i++)
	{
		(void) setsockopt(live_sockets[i], SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
		close(live_sockets[i]);
	}
	n_live_sockets = 0;
}

static void
track_socket(int sock)
{
	static bool registered = false;

	if (!registered)
	{
		on_proc_exit(reset_live_sockets, (Datum) 0);
		registered = true;
	}
	if (n_live_sockets < MAX_LIVE_SOCKETS)
		live_sockets[n_live_sockets++] = sock;
}

static void
untrack_socket(int sock)
{
	for (int i = 0; i < n_live_sockets; i++)
		if (live_sockets[i] == sock)
		{
			live_sockets[i] = live_sockets[--n_live_sockets];
			return;
		}
}

static const char *
session_error(LIBSSH2_SESSION *session)
{
	char	   *message = NULL;

	libssh2_session_last_error(session, &message, NULL, 0);
	/* it may carry what the server sent */
	return message ? ff_scrub_remote_text(message, strlen(message)) : "unknown libssh2 error";
}

static void
close_connection(void *arg)
{
	FFSftp	   *conn = (FFSftp *) arg;

	/*
	 * A short, blocking goodbye: this runs during cleanup, maybe after an
	 * error, where nothing may throw; a failure is only worth a debug line.
	 */
	if (conn->session)
	{
		libssh2_session_set_blocking(conn->session, 1);
		libssh2_session_set_timeout(conn->session, 1000);
	}
	if (conn->sftp && libssh2_sftp_shutdown(conn->sftp) != 0)
		elog(DEBUG1, "flexfactor: SFTP channel shutdown failed: %s", session_error(conn->session));
	if (conn->session)
	{
		if (libssh2_session_disconnect(conn->session, "flexfactor done") != 0)
			elog(DEBUG1, "flexfactor: SSH disconnect failed: %s", session_error(conn->session));
		libssh2_session_free(conn->session);
	}
	if (conn->sock >= 0)
	{
		untrack_socket(conn->sock);
		close(conn->sock);
	}
	conn->sftp = NULL;
	conn->session = NULL;
	conn->sock = -1;
}

void
ff_sftp_disconnect(FFSftp *conn)
{
	close_connection(conn);
}

/* Before each libssh2 call: nothing more once the postmaster is gone. */
static void
start_call(FFSftp *conn)
{
	ff_fence_check();
	conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ff_sftp_timeout_ms);
}

/*
 * Wait for the socket (in the given WL_SOCKET_* directions), the latch or
 * the deadline, whichever comes first, as core's own network waits do:
 * signals set the latch, so pg_cancel_backend(), statement_timeout and
 * shutdown are seen at once, and a dead postmaster ends the process.
 * CHECK_FOR_INTERRUPTS() may return (a ProcSignalBarrier, a request to log
 * memory contexts): nothing is released before it, and the caller simply
 * waits again.  Returns the WL_* events that occurred.
 */
static int
wait_for_socket(int sock, int socket_events, TimestampTz deadline)
{
	long		timeout_ms;
	int			rc;

	timeout_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
	rc = ff_fence_wait(WL_TIMEOUT | socket_events, sock, Max(timeout_ms, 0),
					   ff_wait_event(FF_WAIT_SFTP));
	CHECK_FOR_INTERRUPTS();
	return rc;
}

/*
 * A libssh2 call would block: wait until the socket is ready in the
 * direction libssh2 needs, or the call's deadline passes.
 */
static void
wait_socket(FFSftp *conn, const char *what)
{
	int			dirs = libssh2_session_block_directions(conn->session);
	int			events = 0;

	if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND)
		events |= WL_SOCKET_READABLE;
	if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)
		events |= WL_SOCKET_WRITEABLE;
	if (events == 0)
		events = WL_SOCKET_READABLE;

	/* with a hook, wake at least every second so that it gets its turn */
	(void) wait_for_socket(conn->sock, events,
						   ff_sftp_wait_hook == NULL ? conn->deadline :
						   Min(conn->deadline,
							   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000)));
	if (ff_sftp_wait_hook != NULL && !IsTransactionState())
	{
		TimestampTz before = GetCurrentTimestamp();

		ff_sftp_wait_hook();
		conn->deadline += GetCurrentTimestamp() - before;
	}
	if (GetCurrentTimestamp() >= conn->deadline)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_CONNECTION),
				 errmsg("SFTP %s timed out", what),
				 errdetail("No progress within flexfactor.sftp_timeout_ms = %d ms.",
						   ff_sftp_timeout_ms),
				 errhint("The upload is retried with backoff; check the SFTP server and the network.")));
}

/* repeat an int-returning libssh2 call while it would block */
#define SSH_CALL(conn, what, call) \
	({ int rc_; start_call(conn); \
	   while ((rc_ = (call)) == LIBSSH2_ERROR_EAGAIN) wait_socket(conn, what); \
	   rc_; })

/* repeat a pointer-returning libssh2 call while it would block */
#define SSH_OPEN(conn, what, call) \
	({ __typeof__(call) p_; start_call(conn); \
	   while ((p_ = (call)) == NULL && \
			  libssh2_session_last_errno((conn)->session) == LIBSSH2_ERROR_EAGAIN) \
		   wait_socket(conn, what); \
	   p_; })

static void
require_setting(const char *value, const char *name)
{
	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_NOT_CONFIGURED),
				 errmsg("%s is not set", name),
				 errhint("The SFTP export needs flexfactor.sftp_host, sftp_user, sftp_private_key_file "
						 "and sftp_known_hosts_file in postgresql.conf.")));
}

/* A lookup in glibc's resolver thread, with everything that thread reads. */
typedef struct Lookup
{
	struct gaicb cb;
	struct addrinfo hints;
	char		host[NI_MAXHOST];
	char		port[16];
} Lookup;

/*
 * Stop a lookup and release it.  One that cannot be cancelled any more keeps
 * its block (malloc'd, about 1 kB) for good, rather than have the resolver
 * thread write into freed memory.
 */
static void
abandon_lookup(Lookup *l)
{
	switch (gai_cancel(&l->cb))
	{
		case EAI_NOTCANCELED:
			return;
		case EAI_ALLDONE:
			if (gai_error(&l->cb) == 0 && l->cb.ar_result != NULL)
				freeaddrinfo(l->cb.ar_result);
			break;
		default:
			break;
	}
	free(l);
}

/*
 * getaddrinfo(), but interruptible and bounded by flexfactor.sftp_timeout_ms:
 * the lookup runs in glibc's resolver thread (getaddrinfo_a) while this
 * process waits on its latch, so pg_cancel_backend(), shutdown and a dead
 * postmaster are seen while DNS is slow.  Returns EAI_AGAIN at the deadline.
 */
static int
resolve(const char *host, const char *port, const struct addrinfo *hints,
		struct addrinfo **result)
{
	Lookup	   *l = calloc(1, sizeof(Lookup));
	struct gaicb *list[1];
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ff_sftp_timeout_ms);
	int			rc;

	if (l == NULL)
		return EAI_MEMORY;
	l->hints = *hints;
	strlcpy(l->host, host, sizeof(l->host));
	strlcpy(l->port, port, sizeof(l->port));
	l->cb.ar_name = l->host;
	l->cb.ar_service = l->port;
	l->cb.ar_request = &l->hints;
	list[0] = &l->cb;
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (rc != 0)
	{
		free(l);
		return rc;
	}
	while ((rc = gai_error(&l->cb)) == EAI_INPROGRESS)
	{
		if (GetCurrentTimestamp() >= deadline)
		{
			abandon_lookup(l);
			return EAI_AGAIN;
		}
		if (INTERRUPTS_PENDING_CONDITION())
		{
			PG_TRY();
			{
				CHECK_FOR_INTERRUPTS();
			}
			PG_CATCH();
			{
				abandon_lookup(l);
				PG_RE_THROW();
			}
			PG_END_TRY();
		}
		(void) ff_fence_wait(WL_TIMEOUT, PGINVALID_SOCKET, 20, ff_wait_event(FF_WAIT_SFTP));
	}
	*result = l->cb.ar_result;
	free(l);
	return rc;
}

/*
 * TCP connect with a timeout into conn->sock.  The socket belongs to the
 * connection from the moment it exists, so whatever ends the wait (an error,
 * an interrupt that throws) leaves it to the connection's cleanup callback;
 * the resolved addresses are copied into palloc'd memory at once, so that
 * nothing outside PostgreSQL's allocator is held across a wait.
 */
static void
connect_tcp(FFSftp *conn)
{
	struct addrinfo hints = {0};
	struct addrinfo *addrs;
	struct sockaddr_storage *candidates;
	socklen_t  *lengths;
	int		   *families;
	int			ncandidates = 0;
	char		port[16];
	int			rc;
	int			last_errno = 0;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", ff_sftp_port);
	rc = resolve(ff_sftp_host, port, &hints, &addrs);
	if (rc != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_CONNECTION),
				 errmsg("could not resolve the SFTP host (flexfactor.sftp_host)"),
				 errdetail("%s", gai_strerror(rc)),
				 errhint("Check flexfactor.sftp_host.")));
	for (struct addrinfo *a = addrs; a != NULL; a = a->ai_next)
		ncandidates++;
	candidates = palloc0(sizeof(struct sockaddr_storage) * Max(ncandidates, 1));
	lengths = palloc0(sizeof(socklen_t) * Max(ncandidates, 1));
	families = palloc0(sizeof(int) * Max(ncandidates, 1));
	ncandidates = 0;
	for (struct addrinfo *a = addrs; a != NULL; a = a->ai_next)
	{
		if (a->ai_addrlen > sizeof(struct sockaddr_storage))
			continue;
		memcpy(&candidates[ncandidates], a->ai_addr, a->ai_addrlen);
		lengths[ncandidates] = a->ai_addrlen;
		families[ncandidates] = a->ai_family;
		ncandidates++;
	}
	freeaddrinfo(addrs);

	for (int i = 0; i < ncandidates; i++)
	{
		TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   ff_sftp_timeout_ms);
		int			flags;

		conn->sock = socket(families[i], SOCK_STREAM, 0);
		if (conn->sock < 0)
		{
			last_errno = errno;
			continue;
		}
		track_socket(conn->sock);
		flags = fcntl(conn->sock, F_GETFL);
		if (flags < 0 || fcntl(conn->sock, F_SETFL, flags | O_NONBLOCK) < 0)
			ereport(ERROR,
					(errcode_for_socket_access(),
					 errmsg("could not make the SFTP socket non-blocking: %m")));
		if (connect(conn->sock, (struct sockaddr *) &candidates[i], lengths[i]) == 0)
			return;
		last_errno = errno;
		if (last_errno == EINPROGRESS)
		{
			for (;;)
			{
				int			err = 0;
				socklen_t	len = sizeof(err);

				rc = wait_for_socket(conn->sock, WL_SOCKET_WRITEABLE, deadline);
				if (rc & WL_SOCKET_WRITEABLE)
				{
					if (getsockopt(conn->sock, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
						err = errno;
					if (err == 0)
						return;
					last_errno = err;
					break;
				}
				if (GetCurrentTimestamp() >= deadline)
				{
					last_errno = ETIMEDOUT;
					break;
				}
			}
		}
		untrack_socket(conn->sock);
		close(conn->sock);
		conn->sock = -1;
	}
	errno = last_errno;
	ereport(ERROR,
			(errcode(ERRCODE_FF_SFTP_CONNECTION),
			 errmsg("could not connect to the SFTP server (flexfactor.sftp_host, sftp_port): %m"),
			 errhint("Check flexfactor.sftp_host and sftp_port, and that this server's address is "
					 "on FlexFactor's allow-list.")));
}

static int
known_host_key_type(int hostkey_type)
{
	switch (hostkey_type)
	{
		case LIBSSH2_HOSTKEY_TYPE_RSA:
			return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
		case LIBSSH2_HOSTKEY_TYPE_DSS:
			return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
		case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
			return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
		case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
			return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
		case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
			return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
		case LIBSSH2_HOSTKEY_TYPE_ED25519:
			return LIBSSH2_KNOWNHOST_KEY_ED25519;
		default:
			return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
	}
}

/* Refuse the connection unless the server's key is the pinned one. */
static void
verify_host_key(FFSftp *conn)
{
	size_t		key_len;
	int			key_type;
	const char *key = libssh2_session_hostkey(conn->session, &key_len, &key_type);
	LIBSSH2_KNOWNHOSTS *known = libssh2_knownhost_init(conn->session);
	int			check;

	if (key == NULL || known == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_HOST_KEY),
				 errmsg("could not read the SFTP server's host key"),
				 errdetail("%s", session_error(conn->session))));
	if (libssh2_knownhost_readfile(known, ff_sftp_known_hosts_file,
								   LIBSSH2_KNOWNHOST_FILE_OPENSSH) < 0)
	{
		libssh2_knownhost_free(known);
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_HOST_KEY),
				 errmsg("could not read flexfactor.sftp_known_hosts_file"),
				 errdetail("%s", session_error(conn->session)),
				 errhint("The file must hold the server's key in OpenSSH known_hosts format "
						 "(\"[host]:port type key\" lines).")));
	}
	check = libssh2_knownhost_checkp(known, ff_sftp_host, ff_sftp_port, key, key_len,
									 LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
									 known_host_key_type(key_type), NULL);
	libssh2_knownhost_free(known);

	if (check == LIBSSH2_KNOWNHOST_CHECK_MATCH)
		return;
	if (check == LIBSSH2_KNOWNHOST_CHECK_MISMATCH)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_HOST_KEY),
				 errmsg("the SFTP server's host key has CHANGED; connection refused"),
				 errdetail("The server at flexfactor.sftp_host presented a key that differs from the one pinned in flexfactor.sftp_known_hosts_file."),
				 errhint("Someone may be intercepting the connection.  Confirm the new key with FlexFactor "
						 "before replacing the pinned entry.")));
	ereport(ERROR,
			(errcode(ERRCODE_FF_SFTP_HOST_KEY),
			 errmsg("the SFTP server's host key is not pinned; connection refused"),
			 errdetail("flexfactor.sftp_known_hosts_file has no entry for flexfactor.sftp_host and sftp_port (use the form \"[host]:port\" for ports other than 22)."),
			 errhint("Add the server's key, obtained from FlexFactor through a trusted channel, to that file.")));
}

/*
 * Public-key authentication failed.  The key files were readable before the
 * connection (sftp_files.c), so libssh2's LIBSSH2_ERROR_FILE means their
 * content: a passphrase that does not unlock the key, or a file libssh2
 * cannot read as a key.  Otherwise the server refused the key, or the
 * connection failed during the exchange.
 */
static void
raise_auth_error(FFSftp *conn, int rc)
{
	if (rc == LIBSSH2_ERROR_FILE && conn->key_kind == FF_KEY_ENCRYPTED)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_AUTH),
				 errmsg("flexfactor.sftp_passphrase does not unlock the SFTP private key"),
				 errdetail("The key in flexfactor.sftp_private_key_file is encrypted, and libssh2 could not decrypt it: %s",
						   session_error(conn->session)),
				 errhint("Set flexfactor.sftp_passphrase to the key's passphrase, then reload the configuration.")));
	if (rc == LIBSSH2_ERROR_FILE)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_AUTH),
				 errmsg("could not use the SFTP private key (flexfactor.sftp_private_key_file)"),
				 errdetail("libssh2 could not read it as a private key: %s", session_error(conn->session)),
				 errhint("The file must hold a private key in OpenSSH or PEM format; if "
						 "flexfactor.sftp_public_key_file is set, it must be that key's public key.")));
	if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_AUTH),
				 errmsg("SFTP authentication failed for user \"%s\": the server refused the key", ff_sftp_user),
				 errdetail("%s", session_error(conn->session)),
				 errhint("FlexFactor must hold the public key of flexfactor.sftp_private_key_file for "
						 "flexfactor.sftp_user; check both settings, and send FlexFactor the public key.")));
	ereport(ERROR,
			(errcode(ERRCODE_FF_SFTP_AUTH),
			 errmsg("SFTP authentication failed for user \"%s\"", ff_sftp_user),
			 errdetail("%s", session_error(conn->session)),
			 errhint("Check flexfactor.sftp_user, sftp_private_key_file and sftp_passphrase, and that "
					 "FlexFactor has the matching public key.")));
}

/* TCP, SSH handshake, host key, authentication, SFTP channel. */
static void
open_connection(FFSftp *conn)
{
	int			rc;

	connect_tcp(conn);
	conn->session = libssh2_session_init();
	if (conn->session == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not create an SSH session")));
	libssh2_session_set_blocking(conn->session, 0);

	if (SSH_CALL(conn, "handshake", libssh2_session_handshake(conn->session, conn->sock)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_CONNECTION),
				 errmsg("SSH handshake with the SFTP server failed"),
				 errdetail("%s", session_error(conn->session)),
				 errhint("Check that flexfactor.sftp_host and sftp_port name an SSH server.")));

	verify_host_key(conn);

	rc = SSH_CALL(conn, "authentication",
				  libssh2_userauth_publickey_fromfile_ex(conn->session, ff_sftp_user, strlen(ff_sftp_user),
														 ff_sftp_public_key_file[0] ? ff_sftp_public_key_file : NULL,
														 ff_sftp_private_key_file,
														 ff_sftp_passphrase[0] ? ff_sftp_passphrase : NULL));
	if (rc != 0)
		raise_auth_error(conn, rc);

	conn->sftp = SSH_OPEN(conn, "subsystem start", libssh2_sftp_init(conn->session));
	if (conn->sftp == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_CONNECTION),
				 errmsg("could not start the SFTP subsystem on the SFTP server"),
				 errdetail("%s", session_error(conn->session))));
}

/*
 * Remove the temporary files of this process's failed uploads.  Best effort:
 * one the server does not remove is left to the stale-file cleanup (a
 * connection that fails here fails the next call anyway).  A session of the
 * failed attempt that still writes writes to a file without a name.
 */
static void
remove_abandoned(FFSftp *conn)
{
	while (n_abandoned > 0)
	{
		char	   *path = abandoned[--n_abandoned];

		PG_TRY();
		{
			(void) SSH_CALL(conn, "remove", libssh2_sftp_unlink_ex(conn->sftp, path, strlen(path)));
		}
		PG_FINALLY();
		{
			free(path);
		}
		PG_END_TRY();
	}
}

/*
 * Open a verified, authenticated SFTP connection; it is closed when the
 * current memory context is reset or deleted, or by ff_sftp_disconnect().
 */
FFSftp *
ff_sftp_connect(void)
{
	FFSftp	   *conn;
	FFKeyKind	key_kind;
	static bool initialised = false;

	require_setting(ff_sftp_host, "flexfactor.sftp_host");
	require_setting(ff_sftp_user, "flexfactor.sftp_user");
	require_setting(ff_sftp_private_key_file, "flexfactor.sftp_private_key_file");
	require_setting(ff_sftp_known_hosts_file, "flexfactor.sftp_known_hosts_file");
	key_kind = ff_sftp_check_files();
	if (!initialised)
	{
		if (libssh2_init(0) != 0)
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not initialise libssh2")));
		initialised = true;
	}

	conn = palloc0(sizeof(FFSftp));
	conn->sock = -1;
	conn->key_kind = key_kind;
	conn->cleanup.func = close_connection;
	conn->cleanup.arg = conn;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &conn->cleanup);

	PG_TRY();
	{
		open_connection(conn);
	}
	PG_CATCH();
	{
		/* a refused connection goes at once, not only when its context goes */
		close_connection(conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	remove_abandoned(conn);
	return conn;
}

/*
 * An SFTP operation failed.  Messages name the file, never its remote folder
 * (a hidden setting), and tell a lost connection (FF030) from a refusal by
 * the server (FF033, with its SFTP status).
 */
static void
raise_io_error(FFSftp *conn, const char *action, const char *path, const char *folder_setting)
{
	unsigned long code = conn->sftp ? libssh2_sftp_last_error(conn->sftp) : 0;
	const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;

	if (libssh2_session_last_errno(conn->session) != LIBSSH2_ERROR_SFTP_PROTOCOL)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_CONNECTION),
				 errmsg("SFTP connection lost while trying to %s \"%s\"", action, name),
				 errdetail("%s", session_error(conn->session)),
				 errhint("The transfer is retried with backoff; check the SFTP server and the network.")));
	ereport(ERROR,
			(errcode(ERRCODE_FF_SFTP_IO),
			 errmsg("could not %s \"%s\" on the SFTP server", action, name),
			 errdetail("SFTP status %lu (%s).", code,
					   code == LIBSSH2_FX_NO_SUCH_FILE ? "no such file or folder" :
					   code == LIBSSH2_FX_PERMISSION_DENIED ? "permission denied" :
					   code == LIBSSH2_FX_FAILURE ? "failure" : "see the SFTP specification"),
			 errhint(code == LIBSSH2_FX_NO_SUCH_FILE ? "Check %s." :
					 code == LIBSSH2_FX_PERMISSION_DENIED ? "The SFTP user may not use %s." :
					 "The server may be out of space, or refuse the operation in %s; it is retried with backoff.",
					 folder_setting)));
}

#define TEMP_SUFFIX	".part"

/*
 * Start an upload of "<dir>/<name>": this attempt's own temporary file,
 * created exclusively (it never takes over, or truncates, another's).
 */
FFSftpUpload *
ff_sftp_begin_upload(FFSftp *conn, const char *dir, const char *name)
{
	FFSftpUpload *up = palloc0(sizeof(FFSftpUpload));
	uint8		nonce[8];
	char		hex[2 * sizeof(nonce) + 1];

	if (!pg_strong_random(nonce, sizeof(nonce)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random name for an upload")));
	for (int i = 0; i < sizeof(nonce); i++)
		snprintf(hex + 2 * i, 3, "%02x", nonce[i]);
	up->conn = conn;
	up->final_path = psprintf("%s/%s", dir, name);
	up->temp_path = psprintf("%s.%d-%s" TEMP_SUFFIX, up->final_path, MyProcPid, hex);
	up->handle = SSH_OPEN(conn, "open",
						  libssh2_sftp_open_ex(conn->sftp, up->temp_path, strlen(up->temp_path),
											   LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_EXCL,
											   0640, LIBSSH2_SFTP_OPENFILE));
	if (up->handle == NULL)
		raise_io_error(conn, "create", up->temp_path, "flexfactor.sftp_inbound_dir");
	up->release.func = note_abandoned;
	up->release.arg = up;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &up->release);
	initStringInfo(&up->buffer);
	enlargeStringInfo(&up->buffer, UPLOAD_BUFFER_SIZE);
	return up;
}

static void
flush_buffer(FFSftpUpload *up)
{
	size_t		done = 0;

	while (done < (size_t) up->buffer.len)
	{
		ssize_t		n;

		start_call(up->conn);
		while ((n = libssh2_sftp_write(up->handle, up->buffer.data + done,
									   up->buffer.len - done)) == LIBSSH2_ERROR_EAGAIN)
			wait_socket(up->conn, "write");
		if (n < 0)
			raise_io_error(up->conn, "write", up->temp_path, "flexfactor.sftp_inbound_dir");
		done += n;
		up->sent += n;
	}
	resetStringInfo(&up->buffer);
}

void
ff_sftp_write(FFSftpUpload *up, const char *data, size_t len)
{
	appendBinaryStringInfo(&up->buffer, data, len);
	if (up->buffer.len >= UPLOAD_BUFFER_SIZE)
		flush_buffer(up);
}

static const char *
base_name(const char *path)
{
	return strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
}

/* A remote file's size; false when there is no such file. */
bool
ff_sftp_size(FFSftp *conn, const char *path, uint64 *size)
{
	LIBSSH2_SFTP_ATTRIBUTES attrs;

	if (SSH_CALL(conn, "stat",
				 libssh2_sftp_stat_ex(conn->sftp, path, strlen(path), LIBSSH2_SFTP_STAT, &attrs)) == 0)
	{
		if (!(attrs.flags & LIBSSH2_SFTP_ATTR_SIZE))
			ereport(ERROR,
					(errcode(ERRCODE_FF_SFTP_IO),
					 errmsg("the SFTP server did not tell the size of \"%s\"", base_name(path)),
					 errhint("flexfactor needs a server that reports file sizes (OpenSSH does).")));
		*size = attrs.filesize;
		return true;
	}
	if (libssh2_session_last_errno(conn->session) == LIBSSH2_ERROR_SFTP_PROTOCOL &&
		libssh2_sftp_last_error(conn->sftp) == LIBSSH2_FX_NO_SUCH_FILE)
		return false;
	raise_io_error(conn, "read the size of", path, "flexfactor.sftp_inbound_dir");
	pg_unreachable();
}

/*
 * Flush and close the temporary file, and check that the server holds
 * exactly the bytes sent: a file of another size (written to by someone
 * else, or losing data) is removed and refused with FF033.
 */
void
ff_sftp_close_upload(FFSftpUpload *up)
{
	uint64		size = 0;

	flush_buffer(up);
	if (SSH_CALL(up->conn, "close", libssh2_sftp_close_handle(up->handle)) != 0)
		raise_io_error(up->conn, "close", up->temp_path, "flexfactor.sftp_inbound_dir");
	up->handle = NULL;

	if (!ff_sftp_size(up->conn, up->temp_path, &size))
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_IO),
				 errmsg("the uploaded file \"%s\" is gone from the SFTP server", base_name(up->temp_path)),
				 errdetail("It disappeared between its last write and its renaming."),
				 errhint("Something else removes files in flexfactor.sftp_inbound_dir; the upload is retried with backoff.")));
	if (size != up->sent)
	{
		ff_sftp_discard_upload(up);
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_IO),
				 errmsg("the uploaded file \"%s\" has %llu bytes on the SFTP server, not %llu",
						base_name(up->temp_path), (unsigned long long) size,
						(unsigned long long) up->sent),
				 errdetail("It was not renamed into place, and was removed."),
				 errhint("Something else writes to flexfactor.sftp_inbound_dir, or the server loses data; "
						 "the upload is retried with backoff.")));
	}
}

/*
 * Rename the closed, verified temporary file to its final name, never over
 * an existing file: false (the temporary file kept) when a file has that
 * name already.  SFTP v3 renames (OpenSSH's) never replace a file; the name
 * is checked first too, for servers that would.
 */
bool
ff_sftp_place_upload(FFSftpUpload *up)
{
	LIBSSH2_SFTP *sftp = up->conn->sftp;
	uint64		size;

	if (ff_sftp_size(up->conn, up->final_path, &size))
		return false;
	/* start_call() checks the postmaster right before the rename */
	if (SSH_CALL(up->conn, "rename",
				 libssh2_sftp_rename_ex(sftp, up->temp_path, strlen(up->temp_path),
										up->final_path, strlen(up->final_path),
										LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE)) == 0)
	{
		up->settled = true;
		return true;
	}
	if (libssh2_session_last_errno(up->conn->session) == LIBSSH2_ERROR_SFTP_PROTOCOL &&
		ff_sftp_size(up->conn, up->final_path, &size))
		return false;			/* another attempt placed it meanwhile */
	raise_io_error(up->conn, "rename to", up->final_path, "flexfactor.sftp_inbound_dir");
	pg_unreachable();
}

/* Remove the final file and rename the temporary file in its place. */
bool
ff_sftp_replace_final(FFSftpUpload *up)
{
	ff_sftp_remove(up->conn, up->final_path, "flexfactor.sftp_inbound_dir");
	return ff_sftp_place_upload(up);
}

/* Remove this attempt's temporary file (gone already is fine). */
void
ff_sftp_discard_upload(FFSftpUpload *up)
{
	ff_sftp_remove(up->conn, up->temp_path, "flexfactor.sftp_inbound_dir");
	up->settled = true;
}

const char *
ff_sftp_upload_final_path(FFSftpUpload *up)
{
	return up->final_path;
}

/*
 * If name is a temporary upload file, the final name it was meant for
 * (palloc'd): "<final>.<pid>-<16 hex digits>.part", or an older version's
 * "<final>.part"; otherwise NULL.
 */
char *
ff_sftp_upload_final_name(const char *name)
{
	size_t		len = strlen(name);
	size_t		suffix = strlen(TEMP_SUFFIX);

	if (len <= suffix || strcmp(name + len - suffix, TEMP_SUFFIX) != 0)
		return NULL;
	len -= suffix;
	/* this version's tag, ".<pid>-<16 hex digits>", goes too */
	if (len > 19 && name[len - 17] == '-' &&
		strspn(name + len - 16, "0123456789abcdef") == 16)
	{
		const char *dot = name + len - 18;

		while (dot > name && isdigit((unsigned char) *dot))
			dot--;
		if (*dot == '.' && dot < name + len - 18)
			return pnstrdup(name, dot - name);
	}
	return pnstrdup(name, len);
}

/*
 * A listing is the SFTP server's to make as long as it likes (an endless
 * stream of names, each call making progress, never trips
 * flexfactor.sftp_timeout_ms): it is read up to LIST_SCAN_MAX names, and
 * only the names the caller wants are kept, at most LIST_KEEP_MAX of them,
 * so one pass's listing takes bounded time and memory whatever the folder
 * holds.  A listing cut short is warned about, at most every
 * LIST_WARN_EVERY_MS per folder; the rest waits for the folder to shrink.
 */
#define LIST_SCAN_MAX		200000
#define LIST_KEEP_MAX		10000
#define LIST_WARN_EVERY_MS	(10 * 60 * 1000)

static void
warn_listing_cut(const char *folder_setting, int scanned, int kept)
{
	static const char *warned_for[4];
	static TimestampTz warned_at[4];
	int			i;

	for (i = 0; i < lengthof(warned_for) - 1 && warned_for[i] != NULL &&
		 strcmp(warned_for[i], folder_setting) != 0; i++)
		;
	if (warned_for[i] != NULL && strcmp(warned_for[i], folder_setting) == 0 &&
		!TimestampDifferenceExceeds(warned_at[i], GetCurrentTimestamp(), LIST_WARN_EVERY_MS))
		return;
	warned_for[i] = folder_setting;
	warned_at[i] = GetCurrentTimestamp();
	ereport(WARNING,
			(errcode(ERRCODE_FF_SFTP_IO),
			 errmsg("the SFTP folder of %s lists too many files; only part of it was looked at",
					folder_setting),
			 errdetail("The listing was read up to %d names (at most %d) and %d files of interest (at most %d).",
					   scanned, LIST_SCAN_MAX, kept, LIST_KEEP_MAX),
			 errhint("Remove or move away the files that do not belong there; the files not looked at wait until then.")));
}

/*
 * The regular files in a remote folder that wanted() accepts (FFSftpEntry,
 * palloc'd, unsorted), within the bounds above.  A name holding a slash or
 * naming the folder or its parent is never returned: it would make a path
 * outside the folder.  folder_setting names the folder in messages.
 */
List *
ff_sftp_list(FFSftp *conn, const char *dir, const char *folder_setting,
			 bool (*wanted) (const char *name))
{
	LIBSSH2_SFTP_HANDLE *h;
	List	   *names = NIL;
	char		name[1024];
	LIBSSH2_SFTP_ATTRIBUTES attrs;
	int			n;
	int			scanned = 0;
	int			kept = 0;

	h = SSH_OPEN(conn, "open folder",
				 libssh2_sftp_open_ex(conn->sftp, dir, strlen(dir), 0, 0, LIBSSH2_SFTP_OPENDIR));
	if (h == NULL)
		raise_io_error(conn, "list", dir, folder_setting);
	for (;;)
	{
		if (scanned >= LIST_SCAN_MAX || kept >= LIST_KEEP_MAX)
		{
			warn_listing_cut(folder_setting, scanned, kept);
			n = 0;
			break;
		}
		n = SSH_CALL(conn, "list folder",
					 libssh2_sftp_readdir_ex(h, name, sizeof(name) - 1, NULL, 0, &attrs));
		if (n <= 0)
			break;
		scanned++;
		name[n] = '\0';
		if ((attrs.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && !LIBSSH2_SFTP_S_ISREG(attrs.permissions))
			continue;
		if ((size_t) n != strlen(name) || strchr(name, '/') != NULL ||
			strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || !wanted(name))
			continue;
		{
			FFSftpEntry *e = palloc0(sizeof(FFSftpEntry));

			e->name = pstrdup(name);
			if (attrs.flags & LIBSSH2_SFTP_ATTR_SIZE)
				e->size = attrs.filesize;
			if (attrs.flags & LIBSSH2_SFTP_ATTR_ACMODTIME)
				e->mtime = attrs.mtime;
			names = lappend(names, e);
			kept++;
		}
	}
	(void) SSH_CALL(conn, "close folder", libssh2_sftp_close_handle(h));
	if (n < 0)
		raise_io_error(conn, "list", dir, folder_setting);
	return names;
}

struct FFSftpReader
{
	FFSftp	   *conn;
	LIBSSH2_SFTP_HANDLE *handle;
	char	   *path;
	const char *folder_setting; /* names the folder in messages */
};

/* Open a remote file for reading, a block at a time. */
FFSftpReader *
ff_sftp_open_read(FFSftp *conn, const char *path, const char *folder_setting)
{
	FFSftpReader *r = palloc0(sizeof(FFSftpReader));

	r->conn = conn;
	r->path = pstrdup(path);
	r->folder_setting = folder_setting;
	r->handle = SSH_OPEN(conn, "open",
						 libssh2_sftp_open_ex(conn->sftp, path, strlen(path), LIBSSH2_FXF_READ, 0,
											  LIBSSH2_SFTP_OPENFILE));
	if (r->handle == NULL)
		raise_io_error(conn, "open", path, folder_setting);
	return r;
}

/* The next bytes of the file, at most size of them; 0 at its end. */
size_t
ff_sftp_read_some(FFSftpReader *r, char *buf, size_t size)
{
	ssize_t		n;

	start_call(r->conn);
	while ((n = libssh2_sftp_read(r->handle, buf, size)) == LIBSSH2_ERROR_EAGAIN)
		wait_socket(r->conn, "read");
	if (n < 0)
		raise_io_error(r->conn, "read", r->path, r->folder_setting);
	return (size_t) n;
}

/* Close the file; a failure only means the server keeps the handle a little longer. */
void
ff_sftp_close_read(FFSftpReader *r)
{
	if (r->handle != NULL)
		(void) SSH_CALL(r->conn, "close", libssh2_sftp_close_handle(r->handle));
	r->handle = NULL;
}

/* A remote file's bytes (NUL-terminated); refuses files over max_bytes. */
char *
ff_sftp_read(FFSftp *conn, const char *path, size_t max_bytes, size_t *len)
{
	FFSftpReader *r = ff_sftp_open_read(conn, path, "flexfactor.sftp_outbound_dir");
	StringInfoData data;
	char		buf[32768];
	size_t		n;

	initStringInfo(&data);
	while ((n = ff_sftp_read_some(r, buf, sizeof(buf))) > 0)
	{
		if (data.len + n > max_bytes)
		{
			ff_sftp_close_read(r);
			ereport(ERROR,
					(errcode(ERRCODE_FF_MALFORMED_RESPONSE),
					 errmsg("remote file \"%s\" is larger than %zu bytes", base_name(path), max_bytes),
					 errhint("Ask FlexFactor about this file.")));
		}
		appendBinaryStringInfo(&data, buf, n);
	}
	ff_sftp_close_read(r);
	*len = data.len;
	return data.data;
}

void
ff_sftp_remove(FFSftp *conn, const char *path, const char *folder_setting)
{
	if (SSH_CALL(conn, "remove", libssh2_sftp_unlink_ex(conn->sftp, path, strlen(path))) != 0 &&
		libssh2_sftp_last_error(conn->sftp) != LIBSSH2_FX_NO_SUCH_FILE)
		raise_io_error(conn, "remove", path, folder_setting);
}

/* Move a remote file into to_dir (created if missing), replacing a namesake. */
void
ff_sftp_move(FFSftp *conn, const char *from, const char *to_dir, const char *name)
{
	char	   *to = psprintf("%s/%s", to_dir, name);
	long		flags = LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC |
		LIBSSH2_SFTP_RENAME_NATIVE;

	(void) SSH_CALL(conn, "create folder",
					libssh2_sftp_mkdir_ex(conn->sftp, to_dir, strlen(to_dir), 0750));
	if (SSH_CALL(conn, "rename", libssh2_sftp_rename_ex(conn->sftp, from, strlen(from),
														 to, strlen(to), flags)) == 0)
		return;
	ff_sftp_remove(conn, to, "flexfactor.sftp_processed_dir");
	if (SSH_CALL(conn, "rename", libssh2_sftp_rename_ex(conn->sftp, from, strlen(from),
														 to, strlen(to), flags)) != 0)
		raise_io_error(conn, "move", from, "flexfactor.sftp_processed_dir");
}
