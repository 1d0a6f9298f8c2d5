/*
 * ext_version.c
 *		What the library does when the extension's SQL objects in a database
 *		are of another release than the library itself.
 *
 * A package upgrade replaces the library; after the server's restart the new
 * library runs against the old SQL objects until the DBA runs ALTER
 * EXTENSION flexfactor UPDATE (docs/upgrading.md).  In between, the worker
 * waits (worker.c asks ff_extension_state() every pass), and the C symbols
 * that older install scripts name, but that this release no longer has, are
 * kept here, doing what they did in their release: an older script's objects
 * must still be creatable (CREATE EXTENSION ... VERSION, pg_upgrade, the
 * upgrade test), keep working where they can (a merchant's decline trigger
 * queues on), and never call code that expects other arguments.  The C
 * functions common to both releases have the same arguments and results.
 *
 * Not here: the upgrade scripts themselves (sql/flexfactor--A--B.sql).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

#include "api.h"

#include "ext_version.h"

FFExtensionState
ff_extension_state(char **version, Oid *extoid)
{
	MemoryContext caller = CurrentMemoryContext;
	FFExtensionState state = FF_EXTENSION_MISSING;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	*version = NULL;
	if (extoid != NULL)
		*extoid = InvalidOid;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("flexfactor"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		*version = MemoryContextStrdup(caller, isnull ? "?" : TextDatumGetCString(d));
		if (extoid != NULL)
			*extoid = ((Form_pg_extension) GETSTRUCT(tuple))->oid;
		state = strcmp(*version, FLEXFACTOR_VERSION) == 0 ?
			FF_EXTENSION_READY : FF_EXTENSION_OTHER_VERSION;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return state;
}

/* ------------------------------------------------------------ 0.1.0 */

static char *
member_text(JsonbContainer *container, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(container, key, strlen(key), &v) == NULL)
		return NULL;
	return ff_json_scalar_text(&v);
}

static bool
is_empty(const char *s)
{
	return s == NULL || s[0] == '\0';
}

/*
 * 0.1.0's flexfactor._check_evaluate_body(payload jsonb, caller text), called
 * by its ff_enqueue_decline() and so by its decline trigger: refuses a body
 * with no order id, transaction id, amount or currency, as 0.1.0 did (same
 * messages).  Kept so that a merchant's billing table with a 0.1.0 trigger
 * keeps taking declines between the restart on the new library and ALTER
 * EXTENSION UPDATE; 0.2.0's complete check is _check_body() (body_check.c).
 */
PG_FUNCTION_INFO_V1(ff_check_evaluate_body_sql);

Datum
ff_check_evaluate_body_sql(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload = PG_GETARG_JSONB_P(0);
	char	   *caller = text_to_cstring(PG_GETARG_TEXT_PP(1));
	JsonbValue	tx;
	JsonbValue	amount;
	char	   *amount_text = NULL;
	char	   *currency = NULL;
	bool		has_tx;

	if (!JB_ROOT_IS_OBJECT(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() expects a JSON object", caller),
				 errhint("Build the body with flexfactor.ff_decline(...).")));
	if (is_empty(member_text(&payload->root, "orderId")))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() payload has no orderId", caller),
				 errdetail("FlexFactor requires the merchant's order id in \"orderId\"."),
				 errhint("Build the body with flexfactor.ff_decline(...).")));
	has_tx = getKeyJsonValueFromContainer(&payload->root, "transaction", 11, &tx) != NULL &&
		tx.type == jbvBinary && JsonContainerIsObject(tx.val.binary.data);
	if (!has_tx || is_empty(member_text(tx.val.binary.data, "id")))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() payload has no transaction.id", caller),
				 errdetail("FlexFactor requires \"transaction\": {\"id\": ..., \"amount\": ..., \"currency\": ...}.")));
	if (getKeyJsonValueFromContainer(tx.val.binary.data, "amount", 6, &amount) != NULL)
		amount_text = ff_json_scalar_text(&amount);
	if (amount_text == NULL || amount.type != jbvNumeric ||
		strspn(amount_text, "0123456789") != strlen(amount_text) ||
		strspn(amount_text, "0") == strlen(amount_text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() payload has an invalid transaction.amount", caller),
				 errdetail("transaction.amount is %s; it must be a positive whole number of cents.",
						   amount_text ? amount_text : "missing"),
				 errhint("Send $19.99 as 1999.")));
	currency = member_text(tx.val.binary.data, "currency");
	if (currency == NULL || strlen(currency) != 3 ||
		!isalpha((unsigned char) currency[0]) || !isalpha((unsigned char) currency[1]) ||
		!isalpha((unsigned char) currency[2]))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s() payload has an invalid transaction.currency", caller),
				 errdetail("transaction.currency must be an ISO 4217 code such as \"USD\".")));
	PG_RETURN_VOID();
}
