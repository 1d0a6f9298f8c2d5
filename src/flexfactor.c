/*
 * flexfactor.c
 *		Module entry point: when the library is preloaded, defines the
 *		settings, reserves shared memory, installs hooks and registers the
 *		background launcher.  Loaded any other way (CREATE EXTENSION, LOAD,
 *		a call of one of its functions in a server that did not preload it)
 *		it raises one clear ERROR before registering anything; in
 *		binary-upgrade mode (pg_upgrade) it loads and does nothing.
 *
 * Owns nothing else; each concern lives in its own file (see docs/layout.md).
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "compat.h"
#include "dbguard.h"
#include "decline_queue.h"
#include "settings.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC_EXT(
					.name = "flexfactor",
					.version = FLEXFACTOR_VERSION
);

void		_PG_init(void);

PG_FUNCTION_INFO_V1(ff_version);

/* The version of the loaded library (the install script may differ). */
Datum
ff_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(FLEXFACTOR_VERSION));
}

void
_PG_init(void)
{
	/*
	 * pg_upgrade restores the functions (which loads the library) in servers
	 * started in binary-upgrade mode: nothing may run or be required there.
	 */
	if (IsBinaryUpgrade)
		return;

	/*
	 * Before anything is registered: core refuses to define a PGC_POSTMASTER
	 * setting after start-up with a FATAL error, and an error half-way would
	 * leave some settings defined.  The library is not remembered as loaded
	 * after an error here, so every later attempt raises the same ERROR.
	 */
	if (!process_shared_preload_libraries_in_progress)
		ff_report_not_preloaded();

	ff_define_settings();
	ff_shmem_install_hooks();
	ff_dbguard_install_hook();
	ff_decline_queue_install_hooks();
	ff_register_launcher();
}
