/*
 * saved_plan.c
 *		SPI plans prepared once per backend and kept (SPI_keepplan) for the
 *		statements the hot paths run on every call: ff_evaluate()'s order
 *		row, the decline queue's insert.
 *
 * The plan cache replans a kept plan after DDL on what it reads, or when
 * the search_path it was planned with changes; every statement prepared
 * here names its objects with their schema and calls no function or
 * operator by an unqualified name, so the path never changes what it means.
 * Must be called inside SPI_connect().
 */
#include "postgres.h"

#include "executor/spi.h"

#include "saved_plan.h"

SPIPlanPtr
ff_saved_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL || SPI_keepplan(p) != 0)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		*plan = p;
	}
	return *plan;
}
