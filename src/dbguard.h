/*
 * dbguard.h
 *		Keeps flexfactor's workers from blocking DROP DATABASE and friends.
 */
#ifndef FLEXFACTOR_DBGUARD_H
#define FLEXFACTOR_DBGUARD_H

extern void ff_dbguard_install_hook(void);
extern bool ff_database_released(Oid dboid);

#endif							/* FLEXFACTOR_DBGUARD_H */
