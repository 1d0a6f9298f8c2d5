-- sql/install/10_privileges.sql: nothing is granted to PUBLIC.
/* ------------------------------------------------------------ privileges */

REVOKE ALL ON ALL TABLES IN SCHEMA flexfactor FROM PUBLIC;   -- views included
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flexfactor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flexfactor FROM PUBLIC;
