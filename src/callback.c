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
	(void) FunctionCallInvoke(call);

	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(saved_user, saved_context);
	PG_RETURN_VOID();
}
