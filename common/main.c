/*
 * hikyaku - one binary for every role and the admin commands.
 */
#include <stdio.h>
#include <string.h>

#include "hk_node.h"

static const struct hk_role_ops *const roles[] = { &ingress_ops, &router_ops, &sender_ops };

int
main(int argc, char **argv)
{
	if (argc >= 2 && (!strcmp(argv[1], "ingress") || !strcmp(argv[1], "router") ||
	    !strcmp(argv[1], "sender") || !strcmp(argv[1], "all")))
		return hk_node_main(argc, argv, roles, sizeof(roles) / sizeof(roles[0]));
	if (argc >= 2 && !strcmp(argv[1], "version")) {
		printf("hikyaku 0.1.0\n");
		return 0;
	}
	fprintf(stderr,
	    "usage: hikyaku ingress|router|sender --config FILE --node NAME\n"
	    "       hikyaku all --config FILE\n"
	    "       hikyaku version\n");
	return 2;
}
