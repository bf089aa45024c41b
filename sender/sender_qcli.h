/*
 * sender_qcli - `hikyaku queue`: look at and act on a sender's LMDB queue
 * directly, while the sender runs or not.
 *
 *   hikyaku queue (--config FILE [--node SENDER] | --queue PATH) [--json] COMMAND
 *     list   [--domain D] [--rcpt R] [--id ID] [--limit N]
 *     show   ID
 *     counts
 *     retry  (--id ID | --domain D | --rcpt R | --all)   make due now
 *     delete (--id ID | --domain D | --rcpt R | --all)   remove, no DSN
 *     bounce (--id ID | --domain D | --rcpt R | --all)   remove, and queue
 *                                                        a DSN to the sender
 *
 * LMDB allows another process on the queue at any time: readers never
 * block, and writes take turns with the sender's commits. Reads walk the
 * queue in pieces (a short read transaction each), so a slow terminal does
 * not pin old pages. The running sender keeps only an in-flight set in
 * memory: a recipient deleted or bounced while it is being delivered is
 * reported by the sender as not found at its outcome; a retry of one in
 * flight is overridden by its outcome. Bounce queues each DSN (sender_dsn)
 * as a new message in this same queue, from <>, in the transaction that
 * removes the recipients it reports; the sender delivers it at its next scan.
 *
 * Output goes to stdout (tables, or JSON with --json); the queue's own log
 * lines, if any, go to stderr. Exit 0, 1 on errors (no queue, no such
 * message, a failed write), 2 on usage errors.
 */
#ifndef SENDER_QCLI_H
#define SENDER_QCLI_H

/* sender_qcli_main - argv[1] is "queue". Blocks until done. */
int sender_qcli_main(int argc, char **argv);

#endif
