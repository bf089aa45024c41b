/*
 * cmd_cluster - `hikyaku cluster status --config FILE`: ask every router of
 * the file for its GET /cluster and print its members and the domains each
 * owns. Exit 0, 1 if a router could not be asked, 2 on usage errors.
 */
#ifndef CMD_CLUSTER_H
#define CMD_CLUSTER_H

int cmd_cluster_main(int argc, char **argv);

#endif
