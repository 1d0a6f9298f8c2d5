/*
 * flexfactor.c
 *		Module entry point: defines the settings and, when the library is
 *		preloaded, reserves shared memory, installs hooks and registers the
 *		background launcher.
 *
 * Owns nothing else; each concern lives in its own file (see docs/layout.md).
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "compat.h"
#include "dbguard.h"
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
	ff_define_settings();

	if (!process_shared_preload_libraries_in_progress)
		return;

	ff_shmem_install_hooks();
	ff_dbguard_install_hook();
	ff_register_launcher();
}
