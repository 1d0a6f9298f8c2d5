/*
 * 00_header.sql -- the top of the install script (the files of sql/install,
 * concatenated in name order into flexfactor--<version>.sql at build time).
 *
 * Owns the schema flexfactor: the order book, the outbound queues (declines
 * for SFTP batches, transmit copies), the batches and their lines, received
 * webhook events and rejected deliveries.  Nothing here is granted to PUBLIC;
 * docs/security.md shows the GRANTs a billing role needs.
 *
 * Every table is state, so each is registered with pg_extension_config_dump
 * right after its definition, with the sequence behind its identity column
 * (pg_dump then dumps its rows and the sequence's position; without the
 * sequence, restored ids would be handed out again).  No row is seeded here,
 * so there is no filter: every row is dumped.  A new table needs the same.
 */
\echo Use "CREATE EXTENSION flexfactor" to load this file. \quit
