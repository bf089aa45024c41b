/*
 * hikyaku - one binary for every role and the admin commands (passwd here;
 * keygen in hk_curve, cluster in cmd_cluster, queue in sender/sender_qcli).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "hk_curve.h"
#include "cmd_cluster.h"
#include "cmd_status.h"
#include "hk_node.h"
#include "hk_passwd.h"
#include "sender_qcli.h"

static const struct hk_role_ops *const roles[] = { &ingress_ops, &router_ops, &sender_ops };

/* --- hikyaku passwd ------------------------------------------------------ */

/* The terminal as it was before echo went off, put back on every way out,
 * a fatal signal included (tcsetattr is async-signal-safe). */
static struct termios tty_saved;
static volatile sig_atomic_t tty_quiet;

static void
tty_restore(void)
{
	if (tty_quiet) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
		tty_quiet = 0;
	}
}

static void
tty_on_signal(int sig)
{
	tty_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int
tty_echo_off(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };
	struct sigaction sa = { .sa_handler = tty_on_signal };
	struct termios quiet;

	if (tcgetattr(STDIN_FILENO, &tty_saved) != 0)
		return -1;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	quiet = tty_saved;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	tty_quiet = 1;
	/* TCSAFLUSH drops anything typed before the prompt, while it echoed. */
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) != 0) {
		tty_quiet = 0;
		return -1;
	}
	return 0;
}

/* read_line - one line from FD into BUF (NUL-terminated), without its "\n" or
 * "\r\n"; end of file also ends it. Returns 0 or an errno value: ERANGE if it
 * does not fit, EILSEQ if it holds a NUL byte. Reads byte by byte, so nothing
 * past the line is consumed and no stdio buffer keeps a copy of the password. */
static int
read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;
	char ch = '\0';

	for (;;) {
		ssize_t r = read(fd, &ch, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0 || ch == '\n')
			break;
		if (ch == '\0')
			return EILSEQ;
		if (len + 1 >= size)
			return ERANGE;
		buf[len++] = ch;
	}
	if (ch == '\n' && len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	return 0;
}

/* prompt_line - PROMPT on stderr, then a line from the terminal without echo;
 * 0 or an errno value, as read_line. */
static int
prompt_line(const char *prompt, char *buf, size_t size)
{
	int rc;

	fputs(prompt, stderr);
	fflush(stderr);
	rc = read_line(STDIN_FILENO, buf, size);
	fputs("\n", stderr); /* the user's Enter was not echoed */
	return rc;
}

static void
passwd_usage(FILE *f)
{
	fprintf(f,
	    "usage: hikyaku passwd [--rounds N] < password\n"
	    "  prints a SHA-512 crypt hash of the password read from stdin (one line;\n"
	    "  asked twice without echo on a terminal)\n"
	    "  --rounds N   cost, %u to %u (default %u)\n",
	    HK_PASSWD_MIN_ROUNDS, HK_PASSWD_MAX_ROUNDS, HK_PASSWD_DEFAULT_ROUNDS);
}

/* passwd_main - `hikyaku passwd`: 0 and the hash on stdout, 1 on errors, 2 on usage. */
static int
passwd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "rounds", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char pw[HK_PASSWD_MAX_LEN + 2], again[HK_PASSWD_MAX_LEN + 2], hash[HK_PASSWD_HASH_SIZE];
	unsigned long rounds = HK_PASSWD_DEFAULT_ROUNDS;
	const char *fail = NULL;
	char *end;
	int ch, rc;

	optind = 2;
	while ((ch = getopt_long(argc, argv, "r:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'r':
			errno = 0;
			rounds = strtoul(optarg, &end, 10);
			if (errno || *end || optarg[0] < '0' || optarg[0] > '9' ||
			    rounds < HK_PASSWD_MIN_ROUNDS || rounds > HK_PASSWD_MAX_ROUNDS) {
				fprintf(stderr, "hikyaku passwd: --rounds must be %u to %u, not '%s'\n",
				    HK_PASSWD_MIN_ROUNDS, HK_PASSWD_MAX_ROUNDS, optarg);
				return 1;
			}
			break;
		case 'h': passwd_usage(stdout); return 0;
		default: passwd_usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		passwd_usage(stderr);
		return 2;
	}

	if (isatty(STDIN_FILENO)) {
		if (tty_echo_off() != 0) {
			fprintf(stderr, "hikyaku passwd: cannot turn off echo: %s\n", strerror(errno));
			return 1;
		}
		rc = prompt_line("Password: ", pw, sizeof(pw));
		if (rc == 0 && pw[0] != '\0') {
			rc = prompt_line("Retype password: ", again, sizeof(again));
			if (rc == 0 && strcmp(pw, again) != 0)
				fail = "the passwords do not match";
		}
		tty_restore();
		explicit_bzero(again, sizeof(again));
	} else {
		rc = read_line(STDIN_FILENO, pw, sizeof(pw));
	}

	if (rc == 0 && fail == NULL) {
		if (pw[0] == '\0')
			fail = "empty password refused";
		else if (hk_passwd_hash(pw, (unsigned)rounds, hash, sizeof(hash)) != 0)
			rc = errno;
	}
	explicit_bzero(pw, sizeof(pw));
	if (rc == ERANGE) {
		fprintf(stderr, "hikyaku passwd: password too long (at most %d bytes)\n", HK_PASSWD_MAX_LEN);
		return 1;
	}
	if (rc == EILSEQ)
		fail = "password contains a NUL byte";
	else if (rc != 0)
		fail = strerror(rc);
	if (fail != NULL) {
		fprintf(stderr, "hikyaku passwd: %s\n", fail);
		return 1;
	}
	if (printf("%s\n", hash) < 0 || fflush(stdout) != 0) {
		fprintf(stderr, "hikyaku passwd: writing the hash: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 2 && (!strcmp(argv[1], "ingress") || !strcmp(argv[1], "router") ||
	    !strcmp(argv[1], "sender") || !strcmp(argv[1], "all")))
		return hk_node_main(argc, argv, roles, sizeof(roles) / sizeof(roles[0]));
	if (argc >= 2 && !strcmp(argv[1], "passwd"))
		return passwd_main(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "keygen"))
		return hk_keygen_main(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "cluster"))
		return cmd_cluster_main(argc, argv);
	if (argc >= 2 && (!strcmp(argv[1], "shaping") || !strcmp(argv[1], "warmup")))
		return cmd_status_main(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "queue"))
		return sender_qcli_main(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "version")) {
		printf("hikyaku 0.1.0\n");
		return 0;
	}
	fprintf(stderr,
	    "usage: hikyaku ingress|router|sender --config FILE --node NAME\n"
	    "       hikyaku all --config FILE\n"
	    "       hikyaku passwd [--rounds N] < password\n"
	    "       hikyaku keygen [NODE]\n"
	    "       hikyaku cluster status --config FILE\n"
	    "       hikyaku shaping|warmup status --config FILE [--node SENDER] [--json]\n"
	    "       hikyaku queue (--config FILE [--node SENDER] | --queue PATH) [--json]\n"
	    "                     list|show|counts|retry|delete|bounce ... (--help)\n"
	    "       hikyaku version\n");
	return 2;
}
