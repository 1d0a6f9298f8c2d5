/*
 * sftp_files.c
 *		Checks the local files of the SFTP connection (private key, public
 *		key, known_hosts) as the server account, before libssh2 reads them.
 *
 * libssh2 reduces a key file that is missing, unreadable or locked by a
 * passphrase to "authentication failed".  Here each file is opened as
 * libssh2 will open it, and a failure is reported as what it is: the file
 * does not exist, or the operating-system user PostgreSQL runs as may not
 * read it (with the file's owner and mode, and what to change), or a folder
 * on its path is closed to that user.  The private key's first bytes tell
 * whether it is a public key by mistake, or encrypted while
 * flexfactor.sftp_passphrase is empty.
 *
 * Messages name the settings, never their values (paths are superuser-only,
 * and messages reach batch_status and ff_worker_status(), which a monitoring
 * role reads); the key's bytes are wiped after they are looked at and never
 * shown.  Not here: what the SFTP server answers (sftp.c).
 */
#include "postgres.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base64.h"

#include "compat.h"
#include "errors.h"
#include "settings.h"
#include "sftp_files.h"

/* a private key is a few kB; more than this is not one */
#define KEY_READ_MAX	(64 * 1024)

/* One local file of the connection, for messages. */
typedef struct FFLocalFile
{
	const char *what;			/* "SFTP private key file" */
	const char *setting;		/* "flexfactor.sftp_private_key_file" */
	const char *should_be;		/* what the setting should name */
	const char *mode;			/* the mode to give it, for chmod */
} FFLocalFile;

/* "name" (uid N) of a user id, for messages */
static char *
describe_uid(uid_t uid)
{
	struct passwd pwbuf;
	struct passwd *pw = NULL;
	char		buf[1024];

	if (getpwuid_r(uid, &pwbuf, buf, sizeof(buf), &pw) == 0 && pw != NULL)
		return psprintf("\"%s\" (uid %u)", pw->pw_name, (unsigned) uid);
	return psprintf("uid %u", (unsigned) uid);
}

/* the name of the operating-system user PostgreSQL runs as */
static char *
server_user(void)
{
	struct passwd pwbuf;
	struct passwd *pw = NULL;
	char		buf[1024];

	if (getpwuid_r(geteuid(), &pwbuf, buf, sizeof(buf), &pw) == 0 && pw != NULL)
		return pstrdup(pw->pw_name);
	return psprintf("%u", (unsigned) geteuid());
}

/*
 * open() failed with EACCES: say why, from what stat() can still see.
 * Never returns.
 */
static void
raise_cannot_read(const char *path, const FFLocalFile *file, int sqlerrcode)
{
	char	   *user = server_user();
	char	   *me = describe_uid(geteuid());
	struct stat st;

	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("the %s (%s) cannot be read by the operating-system user \"%s\" that PostgreSQL runs as",
						file->what, file->setting, user),
				 errdetail("A folder on the file's path does not let %s through (no search permission).", me),
				 errhint("Give \"%s\" search permission (x) on every folder of the path, or keep the file in a folder \"%s\" owns.",
						 user, user)));

	if (st.st_uid == geteuid() && (st.st_mode & S_IRUSR))
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("the %s (%s) cannot be read by the operating-system user \"%s\" that PostgreSQL runs as",
						file->what, file->setting, user),
				 errdetail("The file is owned by %s with mode %04o, which allows reading, so an ACL, AppArmor or SELinux denies it.",
						   me, (unsigned) (st.st_mode & 07777)),
				 errhint("Allow \"%s\" to read the file in that security policy.", user)));

	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg("the %s (%s) cannot be read by the operating-system user \"%s\" that PostgreSQL runs as",
					file->what, file->setting, user),
			 errdetail("The file is owned by %s with mode %04o; PostgreSQL runs as %s.",
					   describe_uid(st.st_uid), (unsigned) (st.st_mode & 07777), me),
			 errhint("Make \"%s\" the file's owner and let it read the file: chown %s FILE; chmod %s FILE, where FILE is the value of %s.",
					 user, user, file->mode, file->setting)));
}

/*
 * Open a local file as the server account, as libssh2 will; an open
 * descriptor is returned, or an error raised that says what is wrong.
 */
static int
open_local_file(const char *path, const FFLocalFile *file, int sqlerrcode)
{
	struct stat st;
	/* O_NONBLOCK: a FIFO named here must not hang the worker in open() */
	int			fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
	{
		int			save_errno = errno;

		if (save_errno == EACCES)
			raise_cannot_read(path, file, sqlerrcode);
		errno = save_errno;
		if (save_errno == ENOENT || save_errno == ENOTDIR)
			ereport(ERROR,
					(errcode(sqlerrcode),
					 errmsg("the %s (%s) does not exist", file->what, file->setting),
					 errdetail("No file of that name exists on the database server."),
					 errhint("Set %s to the absolute path of %s, then reload the configuration.",
							 file->setting, file->should_be)));
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("could not open the %s (%s): %m", file->what, file->setting),
				 errhint("Set %s to the absolute path of %s, then reload the configuration.",
						 file->setting, file->should_be)));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("the %s (%s) is not a regular file", file->what, file->setting),
				 errhint("Set %s to the absolute path of %s, then reload the configuration.",
						 file->setting, file->should_be)));
	}
	return fd;
}

/* Check that a local file exists and that the server account may read it. */
static void
check_readable(const char *path, const FFLocalFile *file, int sqlerrcode)
{
	close(open_local_file(path, file, sqlerrcode));
}

/* Whether an "openssh-key-v1" key names a cipher other than "none". */
static bool
openssh_key_encrypted(const char *body)
{
	static const char magic[] = "openssh-key-v1";	/* and its NUL */
	char		b64[64 + 1];
	uint8		raw[64];
	int			n = 0;
	int			len;
	uint32		cipher_len;

	/* the first 64 base64 digits (48 bytes) hold the magic and the cipher */
	for (const char *p = body; *p && *p != '-' && n < 64; p++)
		if (!isspace((unsigned char) *p))
			b64[n++] = *p;
	b64[n] = '\0';
	len = pg_b64_decode(b64, n - n % 4, (ff_b64_raw *) raw, sizeof(raw));
	if (len < (int) sizeof(magic) + 4 || memcmp(raw, magic, sizeof(magic)) != 0)
		return false;			/* not what we know: libssh2 will tell */
	cipher_len = ((uint32) raw[15] << 24) | ((uint32) raw[16] << 16) |
		((uint32) raw[17] << 8) | raw[18];
	return !(cipher_len == 4 && len >= 23 && memcmp(raw + 19, "none", 4) == 0);
}

/* What the first bytes of a key file say it holds. */
static FFKeyKind
key_kind(const char *text)
{
	const char *openssh = strstr(text, "-----BEGIN OPENSSH PRIVATE KEY-----");

	if (openssh != NULL)
		return openssh_key_encrypted(openssh + strlen("-----BEGIN OPENSSH PRIVATE KEY-----")) ?
			FF_KEY_ENCRYPTED : FF_KEY_PLAIN;
	if (strstr(text, "-----BEGIN ENCRYPTED PRIVATE KEY-----") != NULL)
		return FF_KEY_ENCRYPTED;	/* PKCS#8 */
	if (strstr(text, "PRIVATE KEY-----") != NULL)
		return strstr(text, "Proc-Type: 4,ENCRYPTED") != NULL ? FF_KEY_ENCRYPTED : FF_KEY_PLAIN;
	if (strncmp(text, "ssh-", 4) == 0 || strncmp(text, "ecdsa-", 6) == 0 ||
		strncmp(text, "sk-", 3) == 0 || strstr(text, "BEGIN SSH2 PUBLIC KEY") != NULL)
		return FF_KEY_PUBLIC;
	return FF_KEY_UNKNOWN;
}

static const FFLocalFile private_key_file = {
	"SFTP private key file", "flexfactor.sftp_private_key_file",
	"the private key whose public key FlexFactor holds", "600"
};
static const FFLocalFile public_key_file = {
	"SFTP public key file", "flexfactor.sftp_public_key_file",
	"the public key of flexfactor.sftp_private_key_file (or leave it empty)", "644"
};
static const FFLocalFile known_hosts_file = {
	"SFTP known_hosts file", "flexfactor.sftp_known_hosts_file",
	"a known_hosts file pinning FlexFactor's SFTP host key", "644"
};

/*
 * Check every local file of the SFTP connection before connecting: the
 * known_hosts file (FF031) and the key files (FF032) exist and the server
 * account may read them; the private key is one, and is not locked by a
 * passphrase that is not set.  Returns what the private key is.
 */
FFKeyKind
ff_sftp_check_files(void)
{
	char	   *text = palloc0(KEY_READ_MAX + 1);
	ssize_t		n;
	int			fd;
	FFKeyKind	kind;

	check_readable(ff_sftp_known_hosts_file, &known_hosts_file, ERRCODE_FF_SFTP_HOST_KEY);
	if (ff_sftp_public_key_file[0] != '\0')
		check_readable(ff_sftp_public_key_file, &public_key_file, ERRCODE_FF_SFTP_AUTH);

	fd = open_local_file(ff_sftp_private_key_file, &private_key_file, ERRCODE_FF_SFTP_AUTH);
	n = read(fd, text, KEY_READ_MAX);
	close(fd);
	kind = n > 0 ? key_kind(text) : FF_KEY_UNKNOWN;
	explicit_bzero(text, KEY_READ_MAX + 1);
	pfree(text);

	if (kind == FF_KEY_PUBLIC)
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_AUTH),
				 errmsg("the SFTP private key file (flexfactor.sftp_private_key_file) holds a public key"),
				 errdetail("The file starts like an OpenSSH public key (a .pub file), not a private key."),
				 errhint("Set flexfactor.sftp_private_key_file to the private key, and flexfactor.sftp_public_key_file "
						 "to its .pub file or to nothing.")));
	if (kind == FF_KEY_ENCRYPTED && ff_sftp_passphrase[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_FF_SFTP_AUTH),
				 errmsg("the SFTP private key is protected by a passphrase, and flexfactor.sftp_passphrase is not set"),
				 errdetail("The key in flexfactor.sftp_private_key_file is encrypted; it cannot be used without its passphrase."),
				 errhint("Set flexfactor.sftp_passphrase in a configuration file only the server account can read "
						 "(or with ALTER SYSTEM), then reload; or use a key without a passphrase.")));
	return kind;
}
