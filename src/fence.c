/*
 * fence.c
 *		Keeps a process from acting for a node that is no longer a writable
 *		primary: one whose postmaster is gone, or a server that is read-only.
 *
 * When a primary's postmaster dies (kill -9, an OOM kill, a host that
 * freezes and comes back), a failover manager promotes a standby within
 * seconds, but the old primary's backends and workers live on until they
 * notice.  Core's waits notice (WL_EXIT_ON_PM_DEATH); a process that is busy
 * sending a file, waiting for libcurl or committing never waits on its
 * latch, and whatever it does then is done for a node that is no longer the
 * primary: a file renamed into FlexFactor's inbound folder while the new
 * primary uploads the same batch, a commit that records an upload or a
 * transmit as done on a node nobody will read again, a webhook answered 200
 * after a commit the new primary never receives.
 *
 * ff_fence_check() ends the process at once, as WL_EXIT_ON_PM_DEATH does,
 * when the postmaster is gone.  It costs a flag test (Linux tells a child of
 * its postmaster's death with a signal), so it is called in every loop that
 * talks to the network (each libssh2 call and wait, each libcurl poll, the
 * listener's loop), before every remote rename and before every commit of
 * a unit of work (work.c), and once more before a webhook is answered.
 * ff_fence_wait() is the latch wait of those loops: the same exit, with the
 * same log line, whichever way the death is noticed.  On the way out the
 * SFTP connection's socket is reset (sftp.c), so that what is still in the
 * kernel's buffers is never delivered after the process is gone.
 *
 * ff_fence_writable() says whether this server may do export and transmit
 * work: not in recovery and not read-only by default_transaction_read_only
 * (which failover managers and DBAs set around a switchover).  The worker
 * pauses quietly while it is not (worker.c) and the listener answers 503;
 * ff_fence_read_only_error() recognises the error of a transaction that
 * found the server read-only anyway, which is then retried shortly instead
 * of logged as a failure.
 *
 * Not here: what the processes do, or how an upload is named (sftp.c).
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "utils/elog.h"

#include "compat.h"
#include "fence.h"

static pg_noreturn void
fence_exit(void)
{
	ereport(LOG,
			(errmsg("%s exits at once: the postmaster is gone",
					MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "flexfactor backend"),
			 errdetail("A process whose postmaster died sends, renames and commits nothing more; "
					   "a standby may already have been promoted.")));
	proc_exit(1);
}

/* End the process at once if its postmaster is gone. */
void
ff_fence_check(void)
{
	/* a standalone backend has no postmaster to lose */
	if (IsUnderPostmaster && !PostmasterIsAlive())
		fence_exit();
}

/*
 * WaitLatchOrSocket() on MyLatch (WL_SOCKET_* events need sock), ending the
 * process when the postmaster is gone.  Returns the events that occurred;
 * the latch is reset when it was set.
 */
int
ff_fence_wait(int events, pgsocket sock, long timeout_ms, uint32 wait_event_info)
{
	int			rc;

	rc = WaitLatchOrSocket(MyLatch, (events & ~WL_EXIT_ON_PM_DEATH) | WL_LATCH_SET | WL_POSTMASTER_DEATH,
						   sock, timeout_ms, wait_event_info);
	if (rc & WL_POSTMASTER_DEATH)
		fence_exit();
	ff_fence_check();
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	return rc;
}

/*
 * Whether this server may do export and transmit work now; if not, *why
 * says why, for messages and ff_worker_status().  default_transaction_read_only
 * is read as this process has it (it reloads on SIGHUP).
 */
bool
ff_fence_writable(const char **why)
{
	if (RecoveryInProgress())
	{
		*why = "the server is in recovery";
		return false;
	}
	if (DefaultXactReadOnly)
	{
		*why = "the server is read-only";
		return false;
	}
	*why = NULL;
	return true;
}

/*
 * ff_fence_writable() for a process's loop, logging only the changes:
 * "<process> pauses: <why>" (with detail) when it stops being writable,
 * "<process> resumes" when it is again.  *paused is the caller's state.
 */
bool
ff_fence_writable_or_pause(bool *paused, const char *detail, const char **why)
{
	const char *who = MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "flexfactor";

	if (ff_fence_writable(why))
	{
		if (*paused)
			ereport(LOG, (errmsg("%s resumes: the server is writable", who)));
		*paused = false;
		return true;
	}
	if (!*paused)
		ereport(LOG, (errmsg("%s pauses: %s", who, *why), errdetail("%s", detail)));
	*paused = true;
	return false;
}

/* The error of a write in a read-only transaction (or during recovery). */
bool
ff_fence_read_only_error(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_READ_ONLY_SQL_TRANSACTION;
}
