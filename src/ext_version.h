/*
 * ext_version.h
 *		The version of the extension's SQL objects in a database, against the
 *		library's own (FLEXFACTOR_VERSION).
 */
#ifndef FLEXFACTOR_EXT_VERSION_H
#define FLEXFACTOR_EXT_VERSION_H

typedef enum FFExtensionState
{
	FF_EXTENSION_MISSING,		/* no CREATE EXTENSION flexfactor here */
	FF_EXTENSION_OTHER_VERSION, /* installed, but not the library's version */
	FF_EXTENSION_READY			/* installed at the library's version */
} FFExtensionState;

/*
 * The state of the extension in the current database; *version (palloc'd in
 * the caller's context) gets the installed version when there is one, and
 * *extoid (unless NULL) its pg_extension OID (InvalidOid when there is none).
 * Opens its own transaction: call it with none open.
 */
extern FFExtensionState ff_extension_state(char **version, Oid *extoid);

#endif							/* FLEXFACTOR_EXT_VERSION_H */
