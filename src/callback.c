/*
 * callback.c
 *		Runs the billing callback (flexfactor.on_order_status) with its
 *		owner's rights.
 *
 * Status changes are applied by the worker and the listener (superuser
 * sessions) and by the SECURITY DEFINER ff_* functions (the extension's
 * owner).  The callback is the merchant's code: it must never inherit those
 * rights.  It is called as its owner, as a security-restricted operation
 * (no SET ROLE, no temporary objects, no changes of session authorisation),
 * the way PostgreSQL runs index expressions and materialized views as their
 * owner.  A callback owned by a superuser still runs as one: that is the
 * DBA's choice.  Errors are left to the caller's subtransaction, whose abort
 * restores the user and the GUC nesting level.
 *
 * It runs in the transaction that changes the status: in the webhook
 * listener's and the worker's, where nothing else limits it, a callback
 * that waits (on a row lock a billing job holds, say) would hold up every
 * delivery behind it.  There it gets flexfactor.callback_timeout: when it
 * runs longer it is cancelled with FF025, an error its caller records and
 * retries like any other (a plain cancel, 57014, is not caught by PL/pgSQL's
 * WHEN OTHERS and would undo the status change instead).  Where a
 * statement_timeout is armed already (a session's own), that one applies.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "errors.h"
#include "settings.h"

/*
 * Disarm the timeout; returns whether it fired with its cancel still pending.
 * It may fire after the callback's last check for interrupts (as it returns,
 * or while it raises an error of its own): the SIGINT it sent then is still
 * pending, and would surface at the caller's next check as a plain cancel
 * ("canceling statement due to user request", 57014), which undoes the
 * status change.  That cancel is ours: it is taken back here, and the call
 * is failed with FF025 like any other that ran too long.
 */
static bool
disarm_timeout(void)
{
	disable_timeout(STATEMENT_TIMEOUT, true);
	if (!get_timeout_indicator(STATEMENT_TIMEOUT, true))
		return false;
	QueryCancelPending = false;
	return true;
}

static pg_noreturn void
raise_timeout(Oid func)
{
	ereport(ERROR,
			(errcode(ERRCODE_FF_CALLBACK_TIMEOUT),
			 errmsg("callback %s ran longer than flexfactor.callback_timeout (%d ms) and was cancelled",
					format_procedure(func), ff_callback_timeout_ms),
			 errdetail("The status change stays; the call is retried with backoff."),
			 errhint("Make the callback quicker (does it wait on a lock?), or raise flexfactor.callback_timeout.")));
}

/* The call under flexfactor.callback_timeout (see the top of the file). */
static void
call_with_timeout(FunctionCallInfo call, Oid func)
{
	TimestampTz started = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;

	enable_timeout_after(STATEMENT_TIMEOUT, ff_callback_timeout_ms);
	PG_TRY();
	{
		(void) FunctionCallInvoke(call);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		fired = disarm_timeout();

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		/* the cancel our timeout caused was taken by the callback's own check */
		if (!fired && (edata->sqlerrcode != ERRCODE_QUERY_CANCELED ||
					   !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), ff_callback_timeout_ms)))
			PG_RE_THROW();
		FlushErrorState();
		raise_timeout(func);
	}
	PG_END_TRY();
	if (disarm_timeout())
		raise_timeout(func);
}

PG_FUNCTION_INFO_V1(ff_invoke_callback);

Datum
ff_invoke_callback(PG_FUNCTION_ARGS)
{
	Oid			func = PG_GETARG_OID(0);
	HeapTuple	proc;
	Oid			owner;
	Oid			saved_user;
	int			saved_context;
	int			nestlevel;
	FmgrInfo	finfo;
	LOCAL_FCINFO(call, 1);

	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(func));
	if (!HeapTupleIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("callback function %u does not exist", func)));
	owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
	ReleaseSysCache(proc);

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nestlevel = NewGUCNestLevel();

	if (!DatumGetBool(DirectFunctionCall3(has_function_privilege_id_id,
										  ObjectIdGetDatum(owner), ObjectIdGetDatum(func),
										  CStringGetTextDatum("EXECUTE"))))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the owner of callback %s may not execute it", format_procedure(func))));

	fmgr_info(func, &finfo);
	InitFunctionCallInfoData(*call, &finfo, 1, InvalidOid, NULL, NULL);
	call->args[0].value = PG_GETARG_DATUM(1);
	call->args[0].isnull = false;
	if (ff_callback_timeout_ms > 0 && !get_timeout_active(STATEMENT_TIMEOUT))
		call_with_timeout(call, func);
	else
		(void) FunctionCallInvoke(call);

	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(saved_user, saved_context);
	PG_RETURN_VOID();
}
